// Fuzzes the in-place upgrade state parser (src/core/upgrade_state.h): the
// new Watcher reads it from a memfd the old one wrote, but a Watcher of
// another version, a bug or a corrupt write may hand over anything. Any
// bytes must parse to a state or to a one-line error, never crash or throw;
// a parsed state must format back to text that parses to the same state.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/upgrade_state.h"
#include "fuzz_check.h"

using workerpool::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = workerpool::ParseUpgradeState(text);
  if (!parsed.ok()) {
    Check(!parsed.status().message().empty());
    Check(parsed.status().message().find('\n') == std::string::npos);
    return 0;
  }
  Check(parsed->version >= 1 &&
        parsed->version <= workerpool::kUpgradeStateVersion);
  for (int fd : workerpool::UpgradeStateFds(*parsed)) Check(fd >= 0);
  std::string again_text = workerpool::FormatUpgradeState(*parsed);
  auto again = workerpool::ParseUpgradeState(again_text);
  Check(again.ok());
  return 0;
}
