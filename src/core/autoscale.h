// Autoscaling a group from its live load (groups[].autoscale). Pure: no
// processes, no timers, no clock of its own; the Watcher's child table feeds
// it a snapshot of the group's load whenever that may have changed (a stats
// frame, a child up or gone, the timer the last decision asked for) and
// resizes the group to the target it returns.
//
// Contract:
// - Up fast: sustained load (up_after) raises the target to what the load
//   needs in one step (not +1 per decision), bounded by max and by
//   kMaxStepUp per decision (no fork storm).
// - Down gently: only after down_after without load beyond what fewer
//   processes could carry, one step down to what the load needs (>= min);
//   the child table retires the idlest processes, each drained first.
// - Zero cost at rest: a decision asks for a recheck (recheck_after > 0)
//   only while a condition is being timed (load sustained, idleness
//   sustained); a group at rest with no pending condition asks for none.
// - The caller does not ask while the group is failed, stopping, or pinned
//   by `workerpool scale GROUP N`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/pool_model.h"
#include "core/units.h"

namespace workerpool {

// What the group carries now, summed over its children and its senders.
struct GroupLoad {
  int processes = 0;      // running and up (not draining, not replaced)
  int starting = 0;       // spawned, not up yet (counted towards the target)
  int max_inflight = 1;   // per process (groups[].max_inflight)
  std::uint64_t serving = 0;  // requests its children are handling
  // Requests its senders hold for lack of a free process of this group
  // (the senders' per-route queue), and ready messages waiting in the
  // RabbitMQ queues of the services that route to it.
  std::uint64_t queued = 0;
  std::uint64_t backlog_messages = 0;
};

struct AutoscaleDecision {
  int target = 0;  // processes wanted from now on, in [min, max]
  // Ask again after this long even if nothing else happens; 0: no timer.
  Duration recheck_after{0};
  // One line for the log and `status`, e.g. "up 2 -> 6: 11 queued, 4 of 4
  // busy for 1s"; empty when the target did not change.
  std::string reason;
};

// At most this many processes are added by one decision.
inline constexpr int kMaxStepUp = 64;

class Autoscaler {
 public:
  explicit Autoscaler(const AutoscaleConfig& config) : config_(config) {}

  // New bounds or delays from a reload; the current target is clamped.
  void SetConfig(const AutoscaleConfig& config);
  const AutoscaleConfig& config() const { return config_; }

  // The decision for LOAD observed at NOW, given the CURRENT target.
  AutoscaleDecision Observe(const GroupLoad& load, int current, TimePoint now);

  // The last decision that changed the target, for status ("" before any).
  const std::string& last_reason() const { return last_reason_; }

 private:
  AutoscaleConfig config_;
  // Since when the load has needed more processes than the target (unset
  // while it does not), and since when it has needed fewer.
  std::optional<TimePoint> overloaded_since_;
  std::optional<TimePoint> idle_since_;
  std::string last_reason_;
};

}  // namespace workerpool
