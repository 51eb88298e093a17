#include "core/autoscale.h"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace workerpool {
namespace {

constexpr std::int64_t kNeedCap = std::numeric_limits<int>::max();

AutoscaleConfig Consistent(AutoscaleConfig config) {
  config.min = std::max(0, config.min);
  config.max = std::max(config.min, config.max);
  config.up_after = std::max(Duration(0), config.up_after);
  config.down_after = std::max(Duration(0), config.down_after);
  return config;
}

// a + b, stopping at the largest uint64 instead of wrapping: the counts
// come from children's stats frames.
std::uint64_t AddCapped(std::uint64_t a, std::uint64_t b) {
  return a > std::numeric_limits<std::uint64_t>::max() - b
             ? std::numeric_limits<std::uint64_t>::max()
             : a + b;
}

// "4 serving, 7 queued" and ", 5000 ready in RabbitMQ" when there is some.
std::string LoadText(const GroupLoad& load) {
  std::string text = std::to_string(load.serving) + " serving, " +
                     std::to_string(load.queued) + " queued";
  if (load.backlog_messages > 0) {
    text += ", " + std::to_string(load.backlog_messages) + " ready in RabbitMQ";
  }
  return text;
}

std::string Since(TimePoint since, TimePoint now) {
  return FormatDuration(std::chrono::duration_cast<Duration>(now - since));
}

// A timer of at least 1 ms: 0 means "no timer" to the caller.
Duration Remaining(TimePoint since, Duration delay, TimePoint now) {
  Duration left = delay - std::chrono::duration_cast<Duration>(now - since);
  return std::max(Duration(1), left);
}

void Append(std::string* reason, const std::string& part) {
  if (!reason->empty()) *reason += "; ";
  *reason += part;
}

}  // namespace

Autoscaler::Autoscaler(const AutoscaleConfig& config)
    : config_(Consistent(config)) {}

void Autoscaler::SetConfig(const AutoscaleConfig& config) {
  config_ = Consistent(config);
}

void Autoscaler::Reset() {
  overloaded_since_.reset();
  idle_since_.reset();
  idle_peak_need_ = 0;
}

std::int64_t Autoscaler::Need(const GroupLoad& load, int current) {
  const std::uint64_t slots =
      static_cast<std::uint64_t>(std::max(1, load.max_inflight));
  const std::uint64_t demand = AddCapped(load.serving, load.queued);
  const std::uint64_t held =
      static_cast<std::uint64_t>(std::max(0, load.processes)) * slots;
  // The RabbitMQ backlog is work the group cannot see yet. It counts only
  // when the group could not take it anyway (every up process full, none
  // starting: processes on their way show what they can do first), and at
  // most one current target's worth: ready messages say nothing about how
  // long each takes, so a backlog grows the group by doubling, one decision
  // at a time, instead of jumping to max.
  std::uint64_t counted = 0;
  if (load.backlog_messages > 0 && load.starting <= 0 && demand >= held) {
    const std::uint64_t at_most =
        static_cast<std::uint64_t>(std::max(1, current)) * slots;
    counted = std::min(load.backlog_messages, at_most);
  }
  const std::uint64_t total = AddCapped(demand, counted);
  const std::uint64_t need = total / slots + (total % slots != 0 ? 1 : 0);
  return static_cast<std::int64_t>(
      std::min<std::uint64_t>(need, static_cast<std::uint64_t>(kNeedCap)));
}

AutoscaleDecision Autoscaler::Observe(const GroupLoad& load, int current,
                                      TimePoint now) {
  AutoscaleDecision decision;
  int target = std::clamp(current, config_.min, config_.max);
  std::string reason;
  if (target != current) {
    // New bounds (a reload) or a count set by hand: no reason to wait.
    reason = "bounds " + std::to_string(current) + " -> " +
             std::to_string(target) + ": " +
             (target > current ? "min is " : "max is ") +
             std::to_string(target);
  }

  const std::int64_t need = Need(load, target);
  if (need > target && target < config_.max) {
    idle_since_.reset();
    if (!overloaded_since_) overloaded_since_ = now;
    // From 0 nothing can serve the work at all: start at once.
    const bool from_zero = target == 0;
    const bool sustained = now - *overloaded_since_ >= config_.up_after;
    const int room = kMaxStepUp - std::max(0, load.starting);
    if ((from_zero || sustained) && room > 0) {
      const std::int64_t wanted = std::min<std::int64_t>(
          config_.max, std::max<std::int64_t>(need, target + 1));
      const int next = static_cast<int>(
          std::min<std::int64_t>(wanted, std::int64_t{target} + room));
      std::string part = "up " + std::to_string(target) + " -> " +
                         std::to_string(next) + ": " + LoadText(load) +
                         " need " + std::to_string(need) + " processes";
      part += from_zero && !sustained
                  ? " (from 0: at once)"
                  : " for " + Since(*overloaded_since_, now);
      if (need > config_.max) {
        part += ", max is " + std::to_string(config_.max);
      } else if (next < wanted) {
        part += ", at most " + std::to_string(kMaxStepUp) + " starting at once";
      }
      Append(&reason, part);
      target = next;
      // More is still needed (capped by the step): time it afresh, so the
      // next step waits for these to start and for up_after again.
      if (need > target && target < config_.max) {
        overloaded_since_ = now;
      } else {
        overloaded_since_.reset();
      }
    }
    // While room <= 0 the decision waits for the starting processes: their
    // coming up (or dying) makes the caller observe again, so no timer.
    if (overloaded_since_ && room > 0) {
      decision.recheck_after =
          Remaining(*overloaded_since_, config_.up_after, now);
    }
  } else if (need < target && target > config_.min) {
    overloaded_since_.reset();
    if (!idle_since_) {
      idle_since_ = now;
      idle_peak_need_ = need;
    } else {
      idle_peak_need_ = std::max(idle_peak_need_, need);
    }
    if (now - *idle_since_ >= config_.down_after) {
      const int next = static_cast<int>(
          std::max<std::int64_t>(config_.min, idle_peak_need_));
      Append(&reason, "down " + std::to_string(target) + " -> " +
                          std::to_string(next) + ": at most " +
                          std::to_string(idle_peak_need_) +
                          " processes needed for " + Since(*idle_since_, now) +
                          " (now " + LoadText(load) + ")");
      target = next;
      idle_since_.reset();
      idle_peak_need_ = 0;
    } else {
      decision.recheck_after = Remaining(*idle_since_, config_.down_after, now);
    }
  } else {
    // At the target, or at a bound the load would push past: nothing to
    // time, so no timer (a group at rest costs no wake-up).
    overloaded_since_.reset();
    idle_since_.reset();
    idle_peak_need_ = 0;
  }

  decision.target = target;
  if (target != current) {
    decision.reason = reason;
    last_reason_ = std::move(reason);
  }
  return decision;
}

}  // namespace workerpool
