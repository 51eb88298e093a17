// The dependency graph of groups: checks, start and stop order.
#include "core/start_order.h"

#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

namespace workerpool {
namespace {

GroupConfig G(std::string name, std::vector<std::string> depends_on = {},
              GroupType type = GroupType::kJob) {
  GroupConfig group;
  group.name = std::move(name);
  group.depends_on = std::move(depends_on);
  group.type = type;
  return group;
}

TEST_CASE("start order: a well-formed graph has no problems") {
  CHECK(CheckDependencies(
            {G("migrate"), G("cache"), G("web", {"migrate", "cache"})})
            .empty());
  CHECK(CheckDependencies({}).empty());
}

TEST_CASE("start order: unknown name, self, twice, each at its entry") {
  auto problems = CheckDependencies({G("a", {"a"}), G("b", {"a", "zz", "a"})});
  REQUIRE(problems.size() == 3);
  CHECK(problems[0].group == 0);
  CHECK(problems[0].entry == 0);
  CHECK(problems[0].message.find("depends on itself") != std::string::npos);
  CHECK(problems[1].group == 1);
  CHECK(problems[1].entry == 1);
  CHECK(problems[1].message.find("unknown group 'zz'") != std::string::npos);
  CHECK(problems[2].entry == 2);
  CHECK(problems[2].message.find("listed twice") != std::string::npos);
}

TEST_CASE("start order: a cycle is reported once, naming the loop") {
  auto problems = CheckDependencies(
      {G("a", {"b"}), G("b", {"c"}), G("c", {"a"}), G("d", {"a"})});
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].group == 2);
  CHECK(problems[0].message.find("a -> b -> c -> a") != std::string::npos);
  // Two loops, two errors.
  CHECK(CheckDependencies(
            {G("a", {"b"}), G("b", {"a"}), G("c", {"d"}), G("d", {"c"})})
            .size() == 2);
}

TEST_CASE("start order: what a group waits for, and a failed dependency") {
  std::vector<GroupNode> nodes =
      NodesOf({G("migrate"), G("cache"), G("web", {"migrate", "cache"}),
               G("edge", {"web"}, GroupType::kReactor)});
  auto ready = [](const std::string& name) { return name == "migrate"; };
  CHECK(UnreadyDependencies(nodes[2], ready) ==
        std::vector<std::string>{"cache"});
  CHECK(UnreadyDependencies(nodes[0], ready).empty());
  auto failed = [](const std::string& name) { return name == "migrate"; };
  CHECK(FailedDependency("edge", nodes, failed) == "migrate");
  CHECK(FailedDependency("cache", nodes, failed) == "");
}

TEST_CASE("start order: dependents in start order, for --with-dependents") {
  std::vector<GroupNode> nodes =
      NodesOf({G("web", {"cache", "api"}), G("db"), G("api", {"cache"}),
               G("cache", {"db"}), G("other")});
  CHECK(DependentsInStartOrder("db", nodes) ==
        std::vector<std::string>{"cache", "api", "web"});
  CHECK(DependentsInStartOrder("cache", nodes) ==
        std::vector<std::string>{"api", "web"});
  CHECK(DependentsInStartOrder("web", nodes).empty());
  CHECK(DependentsInStartOrder("other", nodes).empty());
}

TEST_CASE("stop order: dependents first, jobs after the intake") {
  // web (reactor) -> cache (job) -> db (job); and a plain job.
  std::vector<GroupNode> nodes =
      NodesOf({G("db"), G("cache", {"db"}),
               G("web", {"cache"}, GroupType::kReactor), G("plain")});
  for (GroupNode& node : nodes) node.running = true;
  CHECK(MayStopNow(nodes) == std::vector<bool>{false, false, true, false});
  nodes[2].running = false;  // web gone
  CHECK(MayStopNow(nodes) == std::vector<bool>{false, true, true, true});
  nodes[1].running = false;  // cache gone
  CHECK(MayStopNow(nodes)[0]);
}

TEST_CASE("stop order: a job that depends on a reactor stops before it") {
  // No deadlock: the reactor waits for its dependent job, and the job does
  // not wait for intake it depends on.
  std::vector<GroupNode> nodes =
      NodesOf({G("web", {}, GroupType::kReactor), G("after", {"web"})});
  for (GroupNode& node : nodes) node.running = true;
  CHECK(MayStopNow(nodes) == std::vector<bool>{false, true});
}

TEST_CASE("stop order: without depends_on, the old rule") {
  std::vector<GroupNode> nodes =
      NodesOf({G("web", {}, GroupType::kReactor), G("jobs"),
               G("svc", {}, GroupType::kService)});
  for (GroupNode& node : nodes) node.running = true;
  CHECK(MayStopNow(nodes) == std::vector<bool>{true, false, true});
  nodes[0].running = nodes[2].running = false;
  CHECK(MayStopNow(nodes)[1]);
}

}  // namespace
}  // namespace workerpool
