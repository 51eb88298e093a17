#include "core/pool_diff.h"

#include <doctest/doctest.h>

namespace workerpool {
namespace {

GroupConfig Group(const std::string& name, int processes) {
  GroupConfig group;
  group.name = name;
  group.type = GroupType::kJob;
  group.processes = processes;
  group.command = {"sleep", "100"};
  return group;
}

const GroupChange& ChangeOf(const PoolDiff& diff, const std::string& name) {
  for (const GroupChange& change : diff.changes) {
    if (change.group == name) return change;
  }
  FAIL("no change for " << name);
  static GroupChange none;
  return none;
}

TEST_CASE("reload diff: grown, shrunk, restarted, added, removed, same") {
  PoolConfig old_pool;
  old_pool.groups = {Group("same", 2), Group("grow", 2), Group("shrink", 3),
                     Group("cmd", 2), Group("gone", 1)};
  PoolConfig new_pool;
  new_pool.groups = {Group("same", 2), Group("grow", 4), Group("shrink", 1),
                     Group("cmd", 2), Group("new", 2)};
  new_pool.groups[3].command = {"sleep", "200"};
  PoolDiff diff = DiffPools(old_pool, new_pool);
  using Kind = GroupChange::Kind;
  CHECK(ChangeOf(diff, "same").kind == Kind::kUnchanged);
  CHECK(ChangeOf(diff, "grow").kind == Kind::kResized);
  CHECK(ChangeOf(diff, "grow").new_processes == 4);
  CHECK(ChangeOf(diff, "shrink").kind == Kind::kResized);
  CHECK(ChangeOf(diff, "cmd").kind == Kind::kRestarted);
  CHECK(ChangeOf(diff, "gone").kind == Kind::kRemoved);
  CHECK(ChangeOf(diff, "new").kind == Kind::kAdded);
  CHECK_FALSE(diff.pool_settings_changed);
  CHECK(diff.Summary().find("cmd: restarted") != std::string::npos);
}

TEST_CASE("env, cwd and user changes restart; limits change in place") {
  GroupConfig base = Group("g", 1);
  GroupConfig env = base;
  env.env["A"] = "1";
  CHECK(SpawnSettingsDiffer(base, env));
  GroupConfig cwd = base;
  cwd.cwd = "/srv";
  CHECK(SpawnSettingsDiffer(base, cwd));
  GroupConfig user = base;
  user.user = "nobody";
  CHECK(SpawnSettingsDiffer(base, user));
  GroupConfig limits = base;
  limits.max_inflight = 8;
  limits.queue_limit = 5;
  limits.routes_to = {"x"};
  CHECK_FALSE(SpawnSettingsDiffer(base, limits));
  GroupConfig busy_poll = base;
  busy_poll.busy_poll_us = 0;
  CHECK_FALSE(SpawnSettingsDiffer(base, busy_poll));
  CHECK(LimitsDiffer(base, busy_poll));
}

TEST_CASE("limits and routes_to are flagged for in-place application") {
  PoolConfig old_pool;
  old_pool.groups = {Group("front", 1), Group("jobs", 2), Group("calm", 1)};
  old_pool.groups[0].type = GroupType::kReactor;
  old_pool.groups[0].routes_to = {"jobs"};
  PoolConfig new_pool = old_pool;
  new_pool.groups[0].routes_to = {};
  new_pool.groups[1].max_inflight = 4;
  new_pool.groups[1].processes = 3;
  PoolDiff diff = DiffPools(old_pool, new_pool);
  const GroupChange& front = ChangeOf(diff, "front");
  CHECK(front.kind == GroupChange::Kind::kUnchanged);
  CHECK(front.routes_changed);
  CHECK_FALSE(front.limits_changed);
  const GroupChange& jobs = ChangeOf(diff, "jobs");
  CHECK(jobs.kind == GroupChange::Kind::kResized);
  CHECK(jobs.limits_changed);
  CHECK_FALSE(jobs.routes_changed);
  CHECK_FALSE(ChangeOf(diff, "calm").limits_changed);
  CHECK(diff.Summary() ==
        "front: routes_to changed; jobs: resized (2 -> 3 processes), limits "
        "changed");
}

TEST_CASE("each limit counts as a limit change, and none restarts") {
  GroupConfig base = Group("g", 1);
  auto changed = [&base](auto edit) {
    GroupConfig other = base;
    edit(other);
    return LimitsDiffer(base, other) && !SpawnSettingsDiffer(base, other);
  };
  CHECK(changed([](GroupConfig& g) { g.max_inflight = 3; }));
  CHECK(changed([](GroupConfig& g) { g.queue_limit = 3; }));
  CHECK(changed([](GroupConfig& g) { g.request_timeout = Duration(5); }));
  CHECK(changed([](GroupConfig& g) { g.heartbeat_timeout = Duration(5); }));
  CHECK(changed([](GroupConfig& g) { g.max_requests = 100; }));
  CHECK(changed([](GroupConfig& g) { g.max_rss = 1 << 20; }));
  CHECK_FALSE(LimitsDiffer(base, base));
}

AutoscaleConfig Autoscale(int min, int max) {
  AutoscaleConfig config;
  config.min = min;
  config.max = max;
  return config;
}

TEST_CASE("a changed autoscale section is applied in place") {
  PoolConfig old_pool;
  old_pool.groups = {Group("bounds", 1), Group("delay", 2), Group("on", 2),
                     Group("off", 2), Group("start", 1)};
  old_pool.groups[0].autoscale = Autoscale(1, 8);
  old_pool.groups[1].autoscale = Autoscale(2, 8);
  old_pool.groups[3].autoscale = Autoscale(2, 4);
  old_pool.groups[4].autoscale = Autoscale(1, 8);
  PoolConfig new_pool = old_pool;
  new_pool.groups[0].autoscale = Autoscale(2, 16);  // bounds
  new_pool.groups[0].processes = 2;  // absent processes follows min
  new_pool.groups[1].autoscale->down_after = Duration(5000);
  new_pool.groups[2].autoscale = Autoscale(1, 4);  // autoscale added
  new_pool.groups[3].autoscale.reset();            // and removed
  new_pool.groups[3].processes = 3;
  new_pool.groups[4].processes = 4;  // only where it starts: nothing to do
  PoolDiff diff = DiffPools(old_pool, new_pool);
  using Kind = GroupChange::Kind;
  for (const char* name : {"bounds", "delay", "on"}) {
    CAPTURE(name);
    const GroupChange& change = ChangeOf(diff, name);
    CHECK(change.kind == Kind::kUnchanged);  // the autoscaler sizes it
    CHECK(change.autoscale_changed);
    CHECK_FALSE(change.limits_changed);
  }
  const GroupChange& off = ChangeOf(diff, "off");
  CHECK(off.kind == Kind::kResized);  // back to a fixed count
  CHECK(off.autoscale_changed);
  const GroupChange& start = ChangeOf(diff, "start");
  CHECK(start.kind == Kind::kUnchanged);
  CHECK_FALSE(start.autoscale_changed);
  CHECK(diff.Summary() ==
        "bounds: autoscale changed; delay: autoscale changed; on: autoscale "
        "changed; off: resized (2 -> 3 processes), autoscale changed");
  // An autoscale change restarts nobody and is not a limit.
  GroupConfig base = Group("g", 1);
  GroupConfig scaled = base;
  scaled.autoscale = Autoscale(1, 4);
  CHECK_FALSE(SpawnSettingsDiffer(base, scaled));
  CHECK_FALSE(LimitsDiffer(base, scaled));
}

TEST_CASE("an identical pool has nothing to do") {
  PoolConfig pool;
  pool.groups = {Group("a", 1), Group("b", 2)};
  CHECK(DiffPools(pool, pool).Summary() == "no group changed");
}

}  // namespace
}  // namespace workerpool
