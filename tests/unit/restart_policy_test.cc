#include "core/restart_policy.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <vector>

namespace workerpool {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// A fixed origin: the policy only looks at differences between readings.
const TimePoint kStart = TimePoint() + std::chrono::hours(1000);

RestartConfig Config(Duration initial, Duration max, Duration reset_after,
                     int max_restarts, Duration period) {
  RestartConfig config;
  config.backoff.initial = initial;
  config.backoff.max = max;
  config.backoff.reset_after = reset_after;
  config.intensity.max_restarts = max_restarts;
  config.intensity.period = period;
  return config;
}

// Intensity out of the way, to look at backoff alone.
RestartConfig BackoffOnly(Duration initial, Duration max,
                          Duration reset_after = seconds(10)) {
  return Config(initial, max, reset_after, 1000000, seconds(1));
}

TEST_CASE("backoff: 0, initial, 2x, 4x ... capped at max") {
  RestartPolicy policy(BackoffOnly(milliseconds(100), seconds(1)), 1);
  TimePoint now = kStart;
  std::vector<long> delays;
  for (int i = 0; i < 8; ++i) {
    TimePoint started = now;
    now += milliseconds(10);  // dies quickly every time
    RestartDecision decision = policy.OnChildExit(0, started, now);
    CHECK_FALSE(decision.group_failed);
    delays.push_back(static_cast<long>(decision.delay.count()));
  }
  CHECK(delays == std::vector<long>{0, 100, 200, 400, 800, 1000, 1000, 1000});
  CHECK(policy.restarts() == 8);
}

TEST_CASE("backoff: max below initial still caps") {
  RestartPolicy policy(BackoffOnly(seconds(5), seconds(2)), 1);
  CHECK(policy.OnChildExit(0, kStart, kStart).delay == Duration(0));
  CHECK(policy.OnChildExit(0, kStart, kStart).delay == seconds(2));
}

TEST_CASE("backoff: a long deep sequence neither overflows nor exceeds max") {
  RestartPolicy policy(BackoffOnly(milliseconds(1), seconds(30)), 1);
  Duration last{0};
  for (int i = 0; i < 500; ++i) {
    last = policy.OnChildExit(0, kStart, kStart).delay;
    CHECK(last <= seconds(30));
    CHECK(last >= Duration(0));
  }
  CHECK(last == seconds(30));
}

TEST_CASE("backoff: a huge max does not overflow the doubling") {
  // Durations in the YAML go up to int64 milliseconds; doubling towards such
  // a max used to overflow into a zero or negative delay.
  RestartPolicy policy(BackoffOnly(milliseconds(1), Duration::max()), 1);
  Duration previous{0};
  for (int i = 0; i < 100; ++i) {
    Duration delay = policy.OnChildExit(0, kStart, kStart).delay;
    CAPTURE(i);
    CHECK(delay >= previous);
    previous = delay;
  }
  CHECK(previous == Duration::max());
}

TEST_CASE("backoff: a stable run resets the slot") {
  RestartPolicy policy(BackoffOnly(milliseconds(100), seconds(30), seconds(10)),
                       1);
  TimePoint now = kStart;
  CHECK(policy.OnChildExit(0, now, now).delay == Duration(0));
  CHECK(policy.OnChildExit(0, now, now).delay == milliseconds(100));
  CHECK(policy.OnChildExit(0, now, now).delay == milliseconds(200));

  // Up for exactly reset_after: stable, so it restarts at once ...
  TimePoint started = now;
  now += seconds(10);
  CHECK(policy.OnChildExit(0, started, now).delay == Duration(0));
  // ... and the next quick death starts the sequence again.
  CHECK(policy.OnChildExit(0, now, now).delay == milliseconds(100));

  // Up just short of reset_after is not stable.
  started = now;
  now += seconds(10) - milliseconds(1);
  CHECK(policy.OnChildExit(0, started, now).delay == milliseconds(200));
}

TEST_CASE("backoff is per slot") {
  RestartPolicy policy(BackoffOnly(milliseconds(100), seconds(30)), 2);
  CHECK(policy.OnChildExit(0, kStart, kStart).delay == Duration(0));
  CHECK(policy.OnChildExit(0, kStart, kStart).delay == milliseconds(100));
  CHECK(policy.OnChildExit(0, kStart, kStart).delay == milliseconds(200));
  CHECK(policy.OnChildExit(1, kStart, kStart).delay == Duration(0));
  CHECK(policy.OnChildExit(1, kStart, kStart).delay == milliseconds(100));
}

TEST_CASE("a slot past the end grows the policy") {
  RestartPolicy policy(BackoffOnly(milliseconds(100), seconds(30)), 1);
  CHECK(policy.OnChildExit(5, kStart, kStart).delay == Duration(0));
  CHECK(policy.OnChildExit(5, kStart, kStart).delay == milliseconds(100));
}

TEST_CASE("Resize: new slots start clean, surviving slots keep their count") {
  RestartPolicy policy(BackoffOnly(milliseconds(100), seconds(30)), 2);
  policy.OnChildExit(0, kStart, kStart);
  policy.OnChildExit(1, kStart, kStart);
  policy.OnChildExit(1, kStart, kStart);
  policy.Resize(1);
  policy.Resize(3);
  CHECK(policy.OnChildExit(0, kStart, kStart).delay == milliseconds(100));
  CHECK(policy.OnChildExit(1, kStart, kStart).delay == Duration(0));
  CHECK(policy.OnChildExit(2, kStart, kStart).delay == Duration(0));
}

TEST_CASE("intensity: more than max_restarts within period fails the group") {
  RestartPolicy policy(
      Config(milliseconds(100), seconds(30), seconds(10), 3, seconds(60)), 4);
  TimePoint now = kStart;
  for (int slot = 0; slot < 3; ++slot) {
    now += seconds(1);
    CHECK_FALSE(policy.OnChildExit(slot, now - seconds(1), now).group_failed);
  }
  CHECK_FALSE(policy.failed());
  CHECK(policy.restarts() == 3);
  now += seconds(1);
  CHECK(policy.OnChildExit(3, now - seconds(1), now).group_failed);
  CHECK(policy.failed());
  // A failed group restarts nothing, whatever the slot or the time.
  CHECK(policy.OnChildExit(0, now, now + seconds(3600)).group_failed);
  CHECK(policy.restarts() == 3);
}

TEST_CASE("intensity: restarts older than the period are forgotten") {
  RestartPolicy policy(
      Config(milliseconds(100), seconds(30), seconds(10), 2, seconds(60)), 1);
  TimePoint now = kStart;
  CHECK_FALSE(policy.OnChildExit(0, now, now).group_failed);
  now += seconds(30);
  CHECK_FALSE(policy.OnChildExit(0, now, now).group_failed);
  // The first restart is now 61s old: only one counts within the period.
  now += seconds(31);
  CHECK_FALSE(policy.OnChildExit(0, now, now).group_failed);
  // Two within 60s (at +30s and +61s): a third fails the group.
  now += seconds(1);
  CHECK(policy.OnChildExit(0, now, now).group_failed);
}

TEST_CASE("intensity: max_restarts 0 refuses the first restart") {
  RestartPolicy policy(
      Config(milliseconds(100), seconds(30), seconds(10), 0, seconds(60)), 1);
  CHECK(policy.OnChildExit(0, kStart, kStart).group_failed);
  CHECK(policy.failed());
}

TEST_CASE("Reset clears failure, history and backoff") {
  RestartPolicy policy(
      Config(milliseconds(100), seconds(30), seconds(10), 2, seconds(60)), 1);
  TimePoint now = kStart;
  policy.OnChildExit(0, now, now);
  policy.OnChildExit(0, now, now);
  REQUIRE(policy.OnChildExit(0, now, now).group_failed);

  policy.Reset();
  CHECK_FALSE(policy.failed());
  CHECK(policy.restarts() == 0);
  RestartDecision decision = policy.OnChildExit(0, now, now);
  CHECK_FALSE(decision.group_failed);
  CHECK(decision.delay == Duration(0));  // backoff starts over too
  CHECK(policy.OnChildExit(0, now, now).delay == milliseconds(100));
  CHECK(policy.OnChildExit(0, now, now).group_failed);  // history restarted
}

TEST_CASE("SetConfig applies to the next decision") {
  RestartPolicy policy(BackoffOnly(milliseconds(100), seconds(30)), 1);
  policy.OnChildExit(0, kStart, kStart);
  policy.SetConfig(BackoffOnly(seconds(1), seconds(30)));
  CHECK(policy.OnChildExit(0, kStart, kStart).delay == seconds(1));
}

TEST_CASE("recycle limit: 0 never, else within +-10% and at least 1") {
  CHECK(RecycleAfter(0, 12345) == 0);
  CHECK(RecycleAfter(-5, 12345) == 0);
  std::int64_t low = 1000, high = 0;
  for (std::uint64_t random = 0; random < 1000; ++random) {
    std::int64_t limit = RecycleAfter(1000, random * 7919);
    low = std::min(low, limit);
    high = std::max(high, limit);
  }
  CHECK(low == 900);
  CHECK(high == 1100);
  // Below 10 the jitter is 0: small limits stay exact (tests rely on it).
  for (std::uint64_t random = 0; random < 50; ++random) {
    CHECK(RecycleAfter(5, random) == 5);
    CHECK(RecycleAfter(1, random) == 1);
  }
  // The top of the range does not overflow.
  const std::int64_t max = std::numeric_limits<std::int64_t>::max();
  for (std::uint64_t random : {0ull, 1ull, ~0ull, 12345678901ull}) {
    std::int64_t limit = RecycleAfter(max, random);
    CHECK(limit >= max - max / 10);
    CHECK(limit <= max);
  }
}

TEST_CASE("restart.policy always: exit 0 restarts like any other end") {
  RestartPolicy policy(BackoffOnly(milliseconds(100), seconds(1)), 1);
  RestartDecision decision = policy.OnChildExit(0, kStart, kStart, true);
  CHECK_FALSE(decision.done);
  CHECK_FALSE(decision.group_failed);
  CHECK(policy.restarts() == 1);
}

TEST_CASE("restart.policy on-failure: exit 0 is done, failures restart") {
  RestartConfig config = BackoffOnly(milliseconds(100), seconds(1));
  config.policy = RestartMode::kOnFailure;
  RestartPolicy policy(config, 2);
  RestartDecision failed = policy.OnChildExit(0, kStart, kStart, false);
  CHECK_FALSE(failed.done);
  CHECK_FALSE(failed.group_failed);
  RestartDecision done = policy.OnChildExit(0, kStart, kStart, true);
  CHECK(done.done);
  CHECK(policy.restarts() == 1);  // a done process is no restart
  // The crash-loop limit still fails the group.
  config.intensity.max_restarts = 1;
  RestartPolicy limited(config, 1);
  CHECK_FALSE(limited.OnChildExit(0, kStart, kStart, false).group_failed);
  CHECK(limited.OnChildExit(0, kStart, kStart, false).group_failed);
}

TEST_CASE("restart.policy never: exit 0 is done, a failure fails the group") {
  RestartConfig config = BackoffOnly(milliseconds(100), seconds(1));
  config.policy = RestartMode::kNever;
  RestartPolicy policy(config, 2);
  CHECK(policy.OnChildExit(0, kStart, kStart, true).done);
  RestartDecision failed = policy.OnChildExit(1, kStart, kStart, false);
  CHECK(failed.group_failed);
  CHECK(policy.failed());
  CHECK(policy.restarts() == 0);
  policy.Reset();
  CHECK_FALSE(policy.failed());
}

}  // namespace
}  // namespace workerpool

namespace workerpool {
namespace {

// An in-place upgrade hands the policy over (core/upgrade_state.h): the
// restored one decides as the one it was taken from would have.
TEST_CASE("restart policy: a restored policy decides as the original") {
  const RestartConfig config =
      Config(milliseconds(100), seconds(1), seconds(10), 3, seconds(60));
  RestartPolicy original(config, 2);
  TimePoint now = kStart;
  original.OnChildExit(0, now, now + milliseconds(5));
  original.OnChildExit(0, now, now + milliseconds(10));
  RestartPolicy restored(config, 2);
  restored.Restore(original.quick_deaths(), original.recent(),
                   original.failed(), original.restarts());
  CHECK(restored.restarts() == 2);
  now += milliseconds(20);
  RestartDecision a = original.OnChildExit(0, now, now);
  RestartDecision b = restored.OnChildExit(0, now, now);
  CHECK(a.delay == b.delay);
  CHECK(a.delay == milliseconds(200));
  // The intensity history came along: the fourth restart fails the group.
  CHECK(original.OnChildExit(1, now, now).group_failed);
  CHECK(restored.OnChildExit(1, now, now).group_failed);
}

}  // namespace
}  // namespace workerpool
