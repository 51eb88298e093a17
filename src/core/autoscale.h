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
// - Each decision replaces the previous one's recheck: the caller re-arms
//   its one timer to recheck_after, or stops it when that is 0. Besides the
//   timer, the caller observes on every stats frame of the group's children
//   and senders and whenever a child of the group comes up or goes.
//
// The policy, rule by rule, with the reasons for each, is in
// docs/OPERATIONS.md ("Autoscaling"); in short:
//   need = ceil((serving + queued + counted backlog) / max_inflight), where
//   the RabbitMQ backlog counts only while every up process is full and
//   none is starting, and at most one current target's worth of it (so a
//   sustained backlog at most doubles the group per decision);
//   up after up_after of need > target: target = min(max, max(need,
//   target + 1)), at most kMaxStepUp starting at once; from 0 at once;
//   down after down_after of need < target: to max(min, the highest need
//   seen during those down_after);
//   a target outside [min, max] (new bounds) is clamped at once.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/pool_model.h"
#include "core/restart_policy.h"  // TimePoint
#include "core/units.h"

namespace workerpool {

// What the group carries now, summed over its children and its senders.
struct GroupLoad {
  int processes = 0;     // running and up (not draining, not replaced)
  int starting = 0;      // spawned, not up yet (counted towards the target)
  int max_inflight = 1;  // per process (groups[].max_inflight)
  std::uint64_t serving = 0;  // requests its children are handling
  // Requests its senders hold for lack of a free process of this group
  // (the senders' per-route queue).
  std::uint64_t queued = 0;
  // Ready messages (not yet delivered to any consumer) in the RabbitMQ
  // queues of the services that route to it, as the services last reported.
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

// At most this many processes are added by one decision, and at most this
// many are starting at once (GroupLoad::starting included): no fork storm
// when max is large.
inline constexpr int kMaxStepUp = 64;

class Autoscaler {
 public:
  // CONFIG as given, made consistent (see SetConfig).
  explicit Autoscaler(const AutoscaleConfig& config);

  // New bounds or delays from a reload. A config built by hand is made
  // consistent (min >= 0, max >= min, delays >= 0; a parsed one already
  // is). The current target is clamped into the new bounds by the next
  // Observe, which the caller makes right after; pending conditions keep
  // their start and are timed against the new delays.
  void SetConfig(const AutoscaleConfig& config);
  const AutoscaleConfig& config() const { return config_; }

  // Forgets pending conditions (not last_reason): for a group that goes back
  // to autoscaling after `workerpool scale GROUP N` pinned it, so load seen
  // before the pin does not count.
  void Reset();

  // The decision for LOAD observed at NOW, given the CURRENT target. NOW
  // never goes backwards between calls.
  AutoscaleDecision Observe(const GroupLoad& load, int current, TimePoint now);

  // How many processes LOAD needs given the CURRENT target, before bounds:
  // the number Observe compares with the target (exposed for status and
  // tests).
  static std::int64_t Need(const GroupLoad& load, int current);

  // The last decision that changed the target, for status ("" before any).
  const std::string& last_reason() const { return last_reason_; }

 private:
  AutoscaleConfig config_;
  // Since when the load has needed more processes than the target (unset
  // while it does not), and since when it has needed fewer.
  std::optional<TimePoint> overloaded_since_;
  std::optional<TimePoint> idle_since_;
  // The highest need observed since idle_since_: a down step goes to it,
  // not to the need of the moment, so load that dips and comes back does
  // not make the group flap.
  std::int64_t idle_peak_need_ = 0;
  std::string last_reason_;
};

}  // namespace workerpool
