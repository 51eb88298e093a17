// Reads fields of /proc/<pid>/stat (proc(5)). Pure: the caller reads the
// file. The second field, the command name, is in parentheses and may hold
// spaces and ')' itself, so fields are counted from the last ')'.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace workerpool {

// Field 39, "processor": the CPU the process last ran on. Nothing when
// STAT is not a stat line (truncated, garbage, a negative or huge value).
std::optional<int> ProcStatProcessor(std::string_view stat);

// Field 4, "ppid": the parent's pid. Nothing when STAT is not a stat line
// (or the value is not a positive pid).
std::optional<int> ProcStatParent(std::string_view stat);

// What a process has used, in the units of /proc/<pid>/stat.
struct ProcStatUsage {
  std::uint64_t cpu_ticks = 0;  // fields 14 + 15: utime + stime, clock ticks
  std::uint64_t rss_pages = 0;  // field 24: resident set size, pages
};

// Fields 14, 15 and 24. Nothing when STAT is not a stat line (truncated,
// garbage, a negative or non-numeric value).
std::optional<ProcStatUsage> ProcStatUsageOf(std::string_view stat);

}  // namespace workerpool
