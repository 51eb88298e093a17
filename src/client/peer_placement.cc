#include "client/peer_placement.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <string>
#include <string_view>

#include "core/proc_stat.h"

namespace workerpool {

PeerPlacement::~PeerPlacement() {
  if (stat_fd_ >= 0) close(stat_fd_);
}

PeerPlacement::Where PeerPlacement::Check(uint64_t now_ms) {
  // A reading that could not tell is not retried.
  if (checked_ &&
      (where_ == Where::kUnknown || now_ms - checked_ms_ < kRecheckMs)) {
    return where_;
  }
  checked_ = true;
  checked_ms_ = now_ms;
  where_ = Read();
  return where_;
}

PeerPlacement::Where PeerPlacement::Read() {
  if (pid_ <= 0) return Where::kUnknown;
  if (stat_fd_ < 0) {
    // Kept open: each reading is then one pread, not open+read+close.
    const std::string path = "/proc/" + std::to_string(pid_) + "/stat";
    stat_fd_ = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (stat_fd_ < 0) return Where::kUnknown;
  }
  char line[1024];
  const ssize_t n = pread(stat_fd_, line, sizeof(line) - 1, 0);
  if (n <= 0) return Where::kUnknown;
  const std::optional<int> peer_cpu =
      ProcStatProcessor(std::string_view(line, static_cast<size_t>(n)));
  const int own_cpu = sched_getcpu();
  if (!peer_cpu || own_cpu < 0) return Where::kUnknown;
  return *peer_cpu == own_cpu ? Where::kSameCpu : Where::kOtherCpu;
}

}  // namespace workerpool
