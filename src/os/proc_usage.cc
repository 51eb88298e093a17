#include "os/proc_usage.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string_view>

#include "core/proc_stat.h"

namespace workerpool {

std::optional<ProcessUsage> ReadProcessUsage(pid_t pid) {
  char path[48];
  if (pid == 0) {
    std::snprintf(path, sizeof(path), "/proc/self/stat");
  } else {
    std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  // A stat line is some 52 numbers and a command name of at most 16 bytes:
  // well under 1 KiB. One read returns it whole (the kernel makes it at
  // once).
  char buffer[1024];
  ssize_t n;
  do {
    n = read(fd, buffer, sizeof(buffer));
  } while (n < 0 && errno == EINTR);
  close(fd);
  if (n <= 0) return std::nullopt;
  std::optional<ProcStatUsage> usage =
      ProcStatUsageOf(std::string_view(buffer, static_cast<size_t>(n)));
  if (!usage) return std::nullopt;
  static const long ticks_per_second = sysconf(_SC_CLK_TCK);
  static const long page_size = sysconf(_SC_PAGESIZE);
  ProcessUsage result;
  result.rss_bytes = static_cast<std::int64_t>(usage->rss_pages) * page_size;
  result.cpu_ms = ticks_per_second > 0
                      ? static_cast<std::int64_t>(
                            usage->cpu_ticks * 1000 /
                            static_cast<std::uint64_t>(ticks_per_second))
                      : 0;
  return result;
}

}  // namespace workerpool
