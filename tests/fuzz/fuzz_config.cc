// Fuzzes the pool definition loader (src/core/config.h): any bytes, as the
// text of a YAML file, must give a config or errors, never a crash, a hang
// or an exception; every error is one line.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  workerpool::ConfigLoad load = workerpool::ParseConfig(text, "fuzz.yaml");
  if (load.ok() != load.config.has_value()) std::abort();
  for (const workerpool::ConfigError& error : load.errors) {
    if (error.ToString().find('\n') != std::string::npos) std::abort();
  }
  return 0;
}
