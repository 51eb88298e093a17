// What a process uses now, read from /proc/<pid>/stat on demand: for the
// status report (`workerpool status --json`, `workerpool top`, metrics).
// Nothing samples in the background; each call is one open, one read and
// one close. Callable from any thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>

namespace workerpool {

struct ProcessUsage {
  std::int64_t rss_bytes = 0;  // resident set size
  std::int64_t cpu_ms = 0;     // user + system CPU time since it started
};

// PID's usage; 0 means the calling process. Nothing when the process is
// gone (or reaped between the caller's look and this read) or /proc cannot
// be read.
std::optional<ProcessUsage> ReadProcessUsage(pid_t pid);

}  // namespace workerpool
