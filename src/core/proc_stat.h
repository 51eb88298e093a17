// Reads fields of /proc/<pid>/stat (proc(5)). Pure: the caller reads the
// file. The second field, the command name, is in parentheses and may hold
// spaces and ')' itself, so fields are counted from the last ')'.
#pragma once

#include <optional>
#include <string_view>

namespace workerpool {

// Field 39, "processor": the CPU the process last ran on. Nothing when
// STAT is not a stat line (truncated, garbage, a negative or huge value).
std::optional<int> ProcStatProcessor(std::string_view stat);

}  // namespace workerpool
