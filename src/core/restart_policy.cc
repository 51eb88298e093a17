#include "core/restart_policy.h"

#include <algorithm>
#include <limits>

namespace workerpool {

RestartPolicy::RestartPolicy(RestartConfig config, int slots)
    : config_(config), quick_deaths_(std::max(slots, 0), 0) {}

RestartDecision RestartPolicy::OnChildExit(int slot, TimePoint started,
                                           TimePoint now, bool succeeded) {
  RestartDecision decision;
  if (failed_) {
    decision.group_failed = true;
    return decision;
  }
  if (config_.policy != RestartMode::kAlways && succeeded) {
    decision.done = true;  // a one-shot that did its work
    return decision;
  }
  if (config_.policy == RestartMode::kNever) {
    failed_ = true;
    decision.group_failed = true;
    return decision;
  }
  if (slot >= static_cast<int>(quick_deaths_.size())) Resize(slot + 1);

  // Intensity: forget restarts older than the period, then count this one.
  while (!recent_.empty() && now - recent_.front() > config_.intensity.period) {
    recent_.pop_front();
  }
  if (static_cast<int>(recent_.size()) >= config_.intensity.max_restarts) {
    failed_ = true;
    decision.group_failed = true;
    return decision;
  }
  recent_.push_back(now);
  ++restarts_;

  int& deaths = quick_deaths_[slot];
  if (now - started >= config_.backoff.reset_after) deaths = 0;
  if (deaths > 0) {
    const Duration max = config_.backoff.max;
    Duration delay = config_.backoff.initial;
    // Doubling stops at max; comparing against max / 2 first keeps a huge
    // max (up to int64 milliseconds from the YAML) from overflowing.
    for (int i = 1; i < deaths && delay < max; ++i) {
      delay = delay > max / 2 ? max : delay * 2;
    }
    decision.delay = std::min(delay, max);
  }
  ++deaths;
  return decision;
}

std::int64_t RecycleAfter(std::int64_t max_requests, std::uint64_t random) {
  if (max_requests <= 0) return 0;
  const std::int64_t jitter = max_requests / 10;
  const std::uint64_t span = static_cast<std::uint64_t>(jitter) * 2 + 1;
  const std::int64_t offset = static_cast<std::int64_t>(random % span) - jitter;
  if (offset > 0 &&
      max_requests > std::numeric_limits<std::int64_t>::max() - offset) {
    return std::numeric_limits<std::int64_t>::max();
  }
  return std::max<std::int64_t>(1, max_requests + offset);
}

void RestartPolicy::Reset() {
  std::fill(quick_deaths_.begin(), quick_deaths_.end(), 0);
  recent_.clear();
  failed_ = false;
  restarts_ = 0;
}

void RestartPolicy::Resize(int slots) {
  quick_deaths_.resize(std::max(slots, 0), 0);
}

}  // namespace workerpool
