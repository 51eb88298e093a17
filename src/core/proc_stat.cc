#include "core/proc_stat.h"

#include <charconv>

namespace workerpool {
namespace {

// Field NUMBER (1-based, as proc(5) counts; NUMBER >= 3) of a stat line, or
// nothing when the line is shorter.
std::optional<std::string_view> Field(std::string_view stat, int number) {
  const size_t paren = stat.rfind(')');
  if (paren == std::string_view::npos) return std::nullopt;
  // After ") " comes field 3 (state).
  std::string_view rest = stat.substr(paren + 1);
  for (int field = 3;; ++field) {
    const size_t start = rest.find_first_not_of(' ');
    if (start == std::string_view::npos) return std::nullopt;
    rest.remove_prefix(start);
    const size_t end = rest.find_first_of(" \n");
    if (field == number) return rest.substr(0, end);
    if (end == std::string_view::npos) return std::nullopt;
    rest.remove_prefix(end);
  }
}

// A whole field as an unsigned number (no sign, no trailing text).
std::optional<std::uint64_t> Unsigned(std::optional<std::string_view> value) {
  if (!value || value->empty()) return std::nullopt;
  std::uint64_t number = 0;
  auto [ptr, error] =
      std::from_chars(value->data(), value->data() + value->size(), number);
  if (error != std::errc() || ptr != value->data() + value->size()) {
    return std::nullopt;
  }
  return number;
}

}  // namespace

std::optional<int> ProcStatProcessor(std::string_view stat) {
  std::optional<std::uint64_t> cpu = Unsigned(Field(stat, 39));
  if (!cpu || *cpu > 1 << 20) return std::nullopt;
  return static_cast<int>(*cpu);
}

std::optional<int> ProcStatParent(std::string_view stat) {
  std::optional<std::uint64_t> ppid = Unsigned(Field(stat, 4));
  if (!ppid || *ppid == 0 || *ppid > (1u << 30)) return std::nullopt;
  return static_cast<int>(*ppid);
}

std::optional<ProcStatUsage> ProcStatUsageOf(std::string_view stat) {
  std::optional<std::uint64_t> utime = Unsigned(Field(stat, 14));
  std::optional<std::uint64_t> stime = Unsigned(Field(stat, 15));
  std::optional<std::uint64_t> rss = Unsigned(Field(stat, 24));
  if (!utime || !stime || !rss) return std::nullopt;
  return ProcStatUsage{*utime + *stime, *rss};
}

}  // namespace workerpool
