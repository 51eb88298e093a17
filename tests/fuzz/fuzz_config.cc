// Fuzzes the pool definition parser (src/core/config.h): any bytes, as the
// text of a YAML file, must give a config or errors, never a crash, a hang
// or an exception; every error is one line. The environment is a fixed fake
// (two users, one runtime directory): the parser is pure, so no passwd
// database is read while fuzzing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "core/config.h"

namespace {

workerpool::Result<std::optional<workerpool::UserIds>> FakeUser(
    const std::string& name) {
  if (name == "root") return std::optional(workerpool::UserIds{0, 0});
  if (name == "nobody") {
    return std::optional(workerpool::UserIds{65534, 65534});
  }
  return std::optional<workerpool::UserIds>();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  static const workerpool::ConfigEnvironment environment{FakeUser, "/run/fuzz"};
  std::string text(reinterpret_cast<const char*>(data), size);
  workerpool::ConfigLoad load =
      workerpool::ParseConfig(text, "fuzz.yaml", environment);
  if (load.ok() != load.config.has_value()) std::abort();
  for (const workerpool::ConfigError& error : load.errors) {
    if (error.ToString().find('\n') != std::string::npos) std::abort();
  }
  return 0;
}
