// The autoscaling policy (src/core/autoscale.h), driven by hand: loads and
// clock readings in, targets and timers out. No processes, no timers.
#include "core/autoscale.h"

#include <doctest/doctest.h>

#include <chrono>
#include <string>

namespace workerpool {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const TimePoint kStart = TimePoint() + std::chrono::hours(1000);

AutoscaleConfig Bounds(int min, int max, Duration up_after = seconds(1),
                       Duration down_after = seconds(30)) {
  AutoscaleConfig config;
  config.min = min;
  config.max = max;
  config.up_after = up_after;
  config.down_after = down_after;
  return config;
}

// PROCESSES up, each with max_inflight SLOTS, SERVING in hand, QUEUED
// waiting at the senders.
GroupLoad Load(int processes, std::uint64_t serving, std::uint64_t queued,
               int slots = 1) {
  GroupLoad load;
  load.processes = processes;
  load.max_inflight = slots;
  load.serving = serving;
  load.queued = queued;
  return load;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_CASE("autoscale: need is requests over max_inflight, rounded up") {
  CHECK(Autoscaler::Need(Load(2, 0, 0), 2) == 0);
  CHECK(Autoscaler::Need(Load(2, 2, 0), 2) == 2);
  CHECK(Autoscaler::Need(Load(2, 2, 9), 2) == 11);
  CHECK(Autoscaler::Need(Load(2, 17, 0, 16), 2) == 2);
  CHECK(Autoscaler::Need(Load(2, 16, 0, 16), 2) == 1);
  CHECK(Autoscaler::Need(Load(2, 1, 0, 0), 2) == 1);  // max_inflight 0 as 1
  GroupLoad huge = Load(1, ~std::uint64_t{0}, ~std::uint64_t{0});
  CHECK(Autoscaler::Need(huge, 1) == std::numeric_limits<int>::max());
}

TEST_CASE("autoscale: a step of load gets what it needs in one decision") {
  Autoscaler scaler(Bounds(2, 16));
  // 12 concurrent requests on 2 processes of max_inflight 1: 10 wait.
  GroupLoad step = Load(2, 2, 10);
  AutoscaleDecision first = scaler.Observe(step, 2, kStart);
  CHECK(first.target == 2);  // not before up_after
  CHECK(first.recheck_after == seconds(1));
  CHECK(first.reason.empty());
  // Half-way a stats frame shows the same load: the timer is what is left.
  AutoscaleDecision middle =
      scaler.Observe(step, 2, kStart + milliseconds(400));
  CHECK(middle.target == 2);
  CHECK(middle.recheck_after == milliseconds(600));
  AutoscaleDecision up = scaler.Observe(step, 2, kStart + seconds(1));
  CHECK(up.target == 12);
  CHECK(up.recheck_after == Duration(0));  // nothing more to time
  CHECK(Contains(up.reason, "up 2 -> 12"));
  CHECK(Contains(up.reason, "2 serving, 10 queued"));
  CHECK(Contains(up.reason, "for 1s"));
  CHECK(scaler.last_reason() == up.reason);
  // The new processes starting, then up and busy: 12 of 12, nothing more.
  GroupLoad starting = step;
  starting.starting = 10;
  CHECK(scaler.Observe(starting, 12, kStart + milliseconds(1100)).target == 12);
  AutoscaleDecision served =
      scaler.Observe(Load(12, 12, 0), 12, kStart + seconds(2));
  CHECK(served.target == 12);
  CHECK(served.recheck_after == Duration(0));
}

TEST_CASE("autoscale: up by at least one, and never past max") {
  Autoscaler scaler(Bounds(1, 4));
  // Need 2 on a target of 1 gives 2; need 50 on a max of 4 gives 4.
  scaler.Observe(Load(1, 1, 1), 1, kStart);
  CHECK(scaler.Observe(Load(1, 1, 1), 1, kStart + seconds(1)).target == 2);
  scaler.Observe(Load(2, 2, 48), 2, kStart + seconds(2));
  AutoscaleDecision capped =
      scaler.Observe(Load(2, 2, 48), 2, kStart + seconds(3));
  CHECK(capped.target == 4);
  CHECK(Contains(capped.reason, "max is 4"));
  // At max, more load times nothing: no timer.
  AutoscaleDecision at_max =
      scaler.Observe(Load(4, 4, 100), 4, kStart + seconds(4));
  CHECK(at_max.target == 4);
  CHECK(at_max.recheck_after == Duration(0));
}

TEST_CASE("autoscale: one decision adds at most kMaxStepUp processes") {
  Autoscaler scaler(Bounds(1, 1000));
  GroupLoad flood = Load(1, 1, 999);
  scaler.Observe(flood, 1, kStart);
  AutoscaleDecision first = scaler.Observe(flood, 1, kStart + seconds(1));
  CHECK(first.target == 1 + kMaxStepUp);
  CHECK(Contains(first.reason, "starting at once"));
  // Still short: timed afresh, the next step after up_after again.
  CHECK(first.recheck_after == seconds(1));
  flood.starting = kMaxStepUp;
  AutoscaleDecision holding =
      scaler.Observe(flood, first.target, kStart + seconds(2));
  CHECK(holding.target == first.target);        // 64 starting: no more forks
  CHECK(holding.recheck_after == Duration(0));  // their coming up observes
  flood.starting = 0;
  flood.processes = first.target;
  flood.serving = static_cast<std::uint64_t>(first.target);
  flood.queued = 1000 - flood.serving;
  AutoscaleDecision second =
      scaler.Observe(flood, first.target, kStart + milliseconds(2100));
  CHECK(second.target == 1 + 2 * kMaxStepUp);
}

TEST_CASE("autoscale: load that comes and goes within up_after adds nothing") {
  Autoscaler scaler(Bounds(2, 16));
  TimePoint now = kStart;
  // 300 ms of queue, 300 ms without, for 10 s: never sustained for 1 s.
  for (int i = 0; i < 17; ++i) {
    GroupLoad load = i % 2 == 0 ? Load(2, 2, 5) : Load(2, 2, 0);
    AutoscaleDecision decision = scaler.Observe(load, 2, now);
    CHECK(decision.target == 2);
    now += milliseconds(300);
  }
  CHECK(scaler.last_reason().empty());
}

TEST_CASE("autoscale: noise around the target neither grows nor shrinks") {
  Autoscaler scaler(Bounds(1, 16, seconds(1), seconds(5)));
  TimePoint now = kStart;
  // Target 6; the need wanders 5, 6, 7, 6, 5, ... every 200 ms for a minute.
  const int needs[] = {5, 6, 7, 6};
  for (int i = 0; i < 300; ++i) {
    int need = needs[i % 4];
    GroupLoad load = Load(6, static_cast<std::uint64_t>(std::min(need, 6)),
                          static_cast<std::uint64_t>(std::max(0, need - 6)));
    CHECK(scaler.Observe(load, 6, now).target == 6);
    now += milliseconds(200);
  }
  CHECK(scaler.last_reason().empty());
}

TEST_CASE("autoscale: down only after down_after, to the peak need seen") {
  Autoscaler scaler(Bounds(2, 16, seconds(1), seconds(30)));
  AutoscaleDecision first = scaler.Observe(Load(12, 3, 0), 12, kStart);
  CHECK(first.target == 12);
  CHECK(first.recheck_after == seconds(30));
  // The load dips to 1 and comes back to 5, always below 12.
  CHECK(scaler.Observe(Load(12, 1, 0), 12, kStart + seconds(10)).target == 12);
  AutoscaleDecision later =
      scaler.Observe(Load(12, 5, 0), 12, kStart + seconds(20));
  CHECK(later.target == 12);
  CHECK(later.recheck_after == seconds(10));
  AutoscaleDecision just_before =
      scaler.Observe(Load(12, 1, 0), 12, kStart + milliseconds(29999));
  CHECK(just_before.target == 12);
  CHECK(just_before.recheck_after == milliseconds(1));
  // The timer: down to 5, the most needed during the 30 s, not to 1.
  AutoscaleDecision down =
      scaler.Observe(Load(12, 1, 0), 12, kStart + seconds(30));
  CHECK(down.target == 5);
  CHECK(Contains(down.reason, "down 12 -> 5"));
  CHECK(Contains(down.reason, "for 30s"));
  // Then 30 s more of 1 goes to 2 (min), not below.
  scaler.Observe(Load(5, 1, 0), 5, kStart + seconds(31));
  CHECK(scaler.Observe(Load(5, 0, 0), 5, kStart + seconds(61)).target == 2);
}

TEST_CASE("autoscale: load back at the target restarts the idle clock") {
  Autoscaler scaler(Bounds(1, 8, seconds(1), seconds(30)));
  scaler.Observe(Load(4, 0, 0), 4, kStart);
  // Busy again at 25 s: the 30 s start over from the next dip.
  CHECK(scaler.Observe(Load(4, 4, 0), 4, kStart + seconds(25)).recheck_after ==
        Duration(0));
  AutoscaleDecision dip =
      scaler.Observe(Load(4, 0, 0), 4, kStart + seconds(26));
  CHECK(dip.recheck_after == seconds(30));
  CHECK(scaler.Observe(Load(4, 0, 0), 4, kStart + seconds(55)).target == 4);
  CHECK(scaler.Observe(Load(4, 0, 0), 4, kStart + seconds(56)).target == 1);
}

TEST_CASE("autoscale: no timer at rest") {
  Autoscaler scaler(Bounds(2, 16));
  // At min with no traffic: nothing to time, whatever the clock says.
  for (int i = 0; i < 5; ++i) {
    AutoscaleDecision decision =
        scaler.Observe(Load(2, 0, 0), 2, kStart + seconds(60 * i));
    CHECK(decision.target == 2);
    CHECK(decision.recheck_after == Duration(0));
    CHECK(decision.reason.empty());
  }
  // Busy exactly at capacity, no one waiting: nothing to time either.
  AutoscaleDecision full = scaler.Observe(Load(2, 2, 0), 2, kStart);
  CHECK(full.recheck_after == Duration(0));
}

TEST_CASE("autoscale: min 0 starts the first process at once, ends at 0") {
  Autoscaler scaler(Bounds(0, 4, seconds(1), seconds(10)));
  CHECK(scaler.Observe(Load(0, 0, 0), 0, kStart).recheck_after == Duration(0));
  // Work with nothing to run it: no up_after to wait.
  AutoscaleDecision first = scaler.Observe(Load(0, 0, 3), 0, kStart);
  CHECK(first.target == 3);
  CHECK(Contains(first.reason, "from 0"));
  scaler.Observe(Load(3, 0, 0), 3, kStart + seconds(5));
  AutoscaleDecision idle =
      scaler.Observe(Load(3, 0, 0), 3, kStart + seconds(15));
  CHECK(idle.target == 0);
  // A RabbitMQ backlog alone starts one.
  GroupLoad backlog = Load(0, 0, 0);
  backlog.backlog_messages = 500;
  CHECK(scaler.Observe(backlog, 0, kStart + seconds(20)).target == 1);
}

TEST_CASE("autoscale: a RabbitMQ backlog at most doubles the group a step") {
  Autoscaler scaler(Bounds(1, 64));
  GroupLoad load = Load(4, 4, 0);
  load.backlog_messages = 100000;
  CHECK(Autoscaler::Need(load, 4) == 8);
  scaler.Observe(load, 4, kStart);
  AutoscaleDecision up = scaler.Observe(load, 4, kStart + seconds(1));
  CHECK(up.target == 8);
  CHECK(Contains(up.reason, "100000 ready in RabbitMQ"));
  // While the 4 new ones start, the backlog does not count.
  load.starting = 4;
  CHECK(Autoscaler::Need(load, 8) == 4);
  // Up and full: it doubles again after up_after.
  load.starting = 0;
  load.processes = 8;
  load.serving = 8;
  scaler.Observe(load, 8, kStart + seconds(2));
  CHECK(scaler.Observe(load, 8, kStart + seconds(3)).target == 16);
  // Processes with room to spare: the backlog is not theirs to take (the
  // services' prefetch is the limit), so it adds nothing.
  GroupLoad idle = Load(16, 3, 0);
  idle.backlog_messages = 100000;
  CHECK(Autoscaler::Need(idle, 16) == 3);
  // A small backlog counts for what it is.
  GroupLoad small = Load(4, 4, 0);
  small.backlog_messages = 2;
  CHECK(Autoscaler::Need(small, 4) == 6);
}

TEST_CASE("autoscale: new bounds clamp the target at once") {
  Autoscaler scaler(Bounds(2, 16));
  scaler.SetConfig(Bounds(1, 8));
  AutoscaleDecision lower = scaler.Observe(Load(12, 0, 0), 12, kStart);
  CHECK(lower.target == 8);
  CHECK(Contains(lower.reason, "bounds 12 -> 8: max is 8"));
  scaler.SetConfig(Bounds(10, 20));
  AutoscaleDecision higher = scaler.Observe(Load(8, 8, 0), 8, kStart);
  CHECK(higher.target == 10);
  CHECK(Contains(higher.reason, "min is 10"));
}

TEST_CASE("autoscale: SetConfig makes a hand-built config consistent") {
  Autoscaler scaler(Bounds(-3, -5, milliseconds(-1), milliseconds(-1)));
  CHECK(scaler.config().min == 0);
  CHECK(scaler.config().max == 0);
  CHECK(scaler.config().up_after == Duration(0));
  CHECK(scaler.config().down_after == Duration(0));
  scaler.SetConfig(Bounds(5, 2));
  CHECK(scaler.config().min == 5);
  CHECK(scaler.config().max == 5);
  CHECK(scaler.Observe(Load(1, 0, 0), 1, kStart).target == 5);
}

TEST_CASE("autoscale: new delays time a pending condition") {
  Autoscaler scaler(Bounds(1, 8, seconds(5), seconds(30)));
  scaler.Observe(Load(1, 1, 3), 1, kStart);
  scaler.SetConfig(Bounds(1, 8, seconds(1), seconds(30)));
  AutoscaleDecision up = scaler.Observe(Load(1, 1, 3), 1, kStart + seconds(1));
  CHECK(up.target == 4);
}

TEST_CASE("autoscale: Reset forgets load seen before a pin") {
  Autoscaler scaler(Bounds(1, 8));
  scaler.Observe(Load(1, 1, 3), 1, kStart);
  scaler.Reset();
  AutoscaleDecision after =
      scaler.Observe(Load(1, 1, 3), 1, kStart + seconds(5));
  CHECK(after.target == 1);
  CHECK(after.recheck_after == seconds(1));
}

TEST_CASE("autoscale: up_after 0 and down_after 0 decide at once") {
  Autoscaler scaler(Bounds(1, 8, Duration(0), Duration(0)));
  CHECK(scaler.Observe(Load(1, 1, 3), 1, kStart).target == 4);
  CHECK(scaler.Observe(Load(4, 0, 0), 4, kStart).target == 1);
}

}  // namespace
}  // namespace workerpool
