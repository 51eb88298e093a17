// When to restart a dead child, and when to give up on its group.
// Pure: the caller passes the clock readings in; no timers, no processes.
//
// Backoff is per slot (one index of a group): the first death after a stable
// run restarts at once; each further quick death waits initial, 2*initial,
// 4*initial, ... capped at max. A child that stayed up reset_after or longer
// counts as stable and resets its slot.
//
// restart.policy on-failure and never: a process that exited 0 is done,
// not restarted; under never, one that failed fails its group at once.
//
// Intensity is per group: more than max_restarts restarts within period
// marks the group failed; a failed group restarts nothing until Reset()
// (reload or `workerpool restart GROUP`).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "core/pool_model.h"

namespace workerpool {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

struct RestartDecision {
  bool group_failed = false;  // give up: do not restart
  bool done = false;          // a one-shot finished: do not restart
  Duration delay{0};          // wait this long, then restart the slot
};

// Recycling by count: after how many answered requests one process is
// replaced, MAX_REQUESTS spread by +-10% (RANDOM picks where in the range)
// so a group's processes do not all recycle at once. 0 stays 0 (never);
// the result is at least 1 otherwise.
std::int64_t RecycleAfter(std::int64_t max_requests, std::uint64_t random);

class RestartPolicy {
 public:
  RestartPolicy(RestartConfig config, int slots);

  // The child in SLOT, started at STARTED, ended at NOW; SUCCEEDED when it
  // exited with code 0 (a spawn that failed did not).
  RestartDecision OnChildExit(int slot, TimePoint started, TimePoint now,
                              bool succeeded = false);

  // Clears every slot's backoff and the group's failed state and history.
  void Reset();
  // Grows or shrinks the number of slots (new slots start clean).
  void Resize(int slots);
  void SetConfig(RestartConfig config) { config_ = config; }

  // What an in-place upgrade hands over (core/upgrade_state.h), and how the
  // next Watcher takes it back: every restart of RECENT is a reading of the
  // same steady clock.
  const std::vector<int>& quick_deaths() const { return quick_deaths_; }
  const std::deque<TimePoint>& recent() const { return recent_; }
  void Restore(std::vector<int> quick_deaths, std::deque<TimePoint> recent,
               bool failed, long restarts) {
    quick_deaths_ = std::move(quick_deaths);
    recent_ = std::move(recent);
    failed_ = failed;
    restarts_ = restarts;
  }

  bool failed() const { return failed_; }
  // Restarts decided since the last Reset() (for status and metrics).
  long restarts() const { return restarts_; }

 private:
  RestartConfig config_;
  std::vector<int> quick_deaths_;  // per slot, since its last stable run
  std::deque<TimePoint> recent_;   // restart times within the period
  bool failed_ = false;
  long restarts_ = 0;
};

}  // namespace workerpool
