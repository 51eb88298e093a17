// Whether a peer process last ran on the CPU this process runs on now, read
// from /proc/<pid>/stat at most once per interval. The client library uses
// it to choose how to write a burst of frames to that peer (WriteSlice):
// early slices let a peer on another CPU work in parallel, and only cost
// context switches when both share one CPU. A hint, not a fact: the pid is
// the one the Watcher spawned (a wrapper that forks the real server, or a
// server thread other than the main one, is not what /proc shows), and the
// kernel may move either process at any time.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace workerpool {

class PeerPlacement {
 public:
  enum class Where { kUnknown, kSameCpu, kOtherCpu };

  // The kernel moves processes between CPUs; a steady stream of requests
  // keeps them where they are for far longer than this.
  static constexpr uint64_t kRecheckMs = 100;

  explicit PeerPlacement(pid_t pid) : pid_(pid) {}
  ~PeerPlacement();
  PeerPlacement(const PeerPlacement&) = delete;
  PeerPlacement& operator=(const PeerPlacement&) = delete;

  // The answer as of NOW_MS (a loop's clock): re-read once kRecheckMs has
  // passed since the last reading, else the last answer. kUnknown for good
  // once /proc cannot tell (no /proc, the peer gone, an unreadable line).
  Where Check(uint64_t now_ms);

 private:
  Where Read();

  pid_t pid_;
  int stat_fd_ = -1;
  bool checked_ = false;
  uint64_t checked_ms_ = 0;
  Where where_ = Where::kUnknown;
};

}  // namespace workerpool
