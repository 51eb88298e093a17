#include "core/proc_stat.h"

#include <charconv>

namespace workerpool {

std::optional<int> ProcStatProcessor(std::string_view stat) {
  const size_t paren = stat.rfind(')');
  if (paren == std::string_view::npos) return std::nullopt;
  // After ") " comes field 3 (state); field 39 is 36 fields further.
  constexpr int kFieldsToSkip = 39 - 3;
  std::string_view rest = stat.substr(paren + 1);
  for (int field = 0; field <= kFieldsToSkip; ++field) {
    const size_t start = rest.find_first_not_of(' ');
    if (start == std::string_view::npos) return std::nullopt;
    rest.remove_prefix(start);
    const size_t end = rest.find_first_of(" \n");
    std::string_view value = rest.substr(0, end);
    if (field == kFieldsToSkip) {
      int cpu = -1;
      auto [ptr, error] =
          std::from_chars(value.data(), value.data() + value.size(), cpu);
      if (error != std::errc() || ptr != value.data() + value.size() ||
          cpu < 0 || cpu > 1 << 20) {
        return std::nullopt;
      }
      return cpu;
    }
    if (end == std::string_view::npos) return std::nullopt;
    rest.remove_prefix(end);
  }
  return std::nullopt;
}

}  // namespace workerpool
