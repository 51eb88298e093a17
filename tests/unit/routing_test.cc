#include "core/routing.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace workerpool {
namespace {

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

GroupConfig Group(std::string name, GroupType type,
                  std::vector<std::string> routes_to = {}) {
  GroupConfig group;
  group.name = std::move(name);
  group.type = type;
  group.command = {"true"};
  group.routes_to = std::move(routes_to);
  return group;
}

// DESIGN.md "Routing rules", row by row.
TEST_CASE("TypeMayRequest follows the DESIGN.md table") {
  struct Cell {
    GroupType from;
    GroupType to;
    bool allowed;
  };
  const Cell table[] = {
      {GroupType::kReactor, GroupType::kReactor, false},
      {GroupType::kReactor, GroupType::kJob, true},
      {GroupType::kReactor, GroupType::kService, true},
      {GroupType::kJob, GroupType::kReactor, false},
      {GroupType::kJob, GroupType::kJob, false},
      {GroupType::kJob, GroupType::kService, false},
      {GroupType::kService, GroupType::kReactor, false},
      {GroupType::kService, GroupType::kJob, true},
      {GroupType::kService, GroupType::kService, false},
  };
  for (const Cell& cell : table) {
    CAPTURE(GroupTypeName(cell.from));
    CAPTURE(GroupTypeName(cell.to));
    CHECK(TypeMayRequest(cell.from, cell.to) == cell.allowed);
    // A refusal always says why; an allowed route has nothing to say.
    CHECK(RuleViolation(cell.from, cell.to).empty() == cell.allowed);
  }
}

TEST_CASE("RuleViolation names the rule that was broken") {
  CHECK(Contains(RuleViolation(GroupType::kJob, GroupType::kJob),
                 "a job only replies"));
  CHECK(Contains(RuleViolation(GroupType::kJob, GroupType::kService),
                 "a job only replies"));
  std::string service_to_service =
      RuleViolation(GroupType::kService, GroupType::kService);
  CHECK(Contains(service_to_service, "a service may not send to a service"));
  CHECK(Contains(service_to_service, "allowed:"));
  CHECK(Contains(RuleViolation(GroupType::kReactor, GroupType::kReactor),
                 "a reactor may not send to a reactor"));
  CHECK(Contains(RuleViolation(GroupType::kService, GroupType::kReactor),
                 "a service may not send to a reactor"));
}

TEST_CASE("GroupTypeName spells the YAML names") {
  CHECK(std::string(GroupTypeName(GroupType::kReactor)) == "reactor");
  CHECK(std::string(GroupTypeName(GroupType::kJob)) == "job");
  CHECK(std::string(GroupTypeName(GroupType::kService)) == "service");
}

PoolConfig ExamplePool() {
  PoolConfig pool;
  pool.name = "demo";
  pool.groups = {
      Group("web", GroupType::kReactor, {"compute", "intake"}),
      Group("compute", GroupType::kJob),
      Group("intake", GroupType::kService, {"compute"}),
      Group("other_job", GroupType::kJob),
      Group("other_web", GroupType::kReactor),
  };
  return pool;
}

TEST_CASE("CheckRequestRoute allows routes in routes_to that the rules allow") {
  PoolConfig pool = ExamplePool();
  CHECK(CheckRequestRoute(pool, "web", "compute").ok());
  CHECK(CheckRequestRoute(pool, "web", "intake").ok());
  CHECK(CheckRequestRoute(pool, "intake", "compute").ok());
}

TEST_CASE("CheckRequestRoute refuses a target missing from routes_to") {
  PoolConfig pool = ExamplePool();
  Status status = CheckRequestRoute(pool, "web", "other_job");
  REQUIRE_FALSE(status.ok());
  CHECK(Contains(status.message(), "'web'"));
  CHECK(Contains(status.message(), "'other_job'"));
  CHECK(Contains(status.message(), "routes_to"));
}

TEST_CASE("CheckRequestRoute refuses every request from a job") {
  PoolConfig pool = ExamplePool();
  for (const char* target : {"web", "compute", "intake", "other_job", "nope"}) {
    CAPTURE(target);
    Status status = CheckRequestRoute(pool, "compute", target);
    REQUIRE_FALSE(status.ok());
    CHECK(Contains(status.message(), "a job only replies"));
  }
}

TEST_CASE("CheckRequestRoute refuses by type even before routes_to") {
  PoolConfig pool = ExamplePool();
  Status to_reactor = CheckRequestRoute(pool, "web", "other_web");
  REQUIRE_FALSE(to_reactor.ok());
  CHECK(Contains(to_reactor.message(), "a reactor may not send to a reactor"));

  Status service_to_service = CheckRequestRoute(pool, "intake", "intake");
  REQUIRE_FALSE(service_to_service.ok());
  CHECK(Contains(service_to_service.message(),
                 "a service may not send to a service"));

  Status service_to_reactor = CheckRequestRoute(pool, "intake", "web");
  REQUIRE_FALSE(service_to_reactor.ok());
  CHECK(Contains(service_to_reactor.message(), "may not send to a reactor"));
}

TEST_CASE("CheckRequestRoute names an unknown sender or target") {
  PoolConfig pool = ExamplePool();
  Status unknown_target = CheckRequestRoute(pool, "web", "missing");
  REQUIRE_FALSE(unknown_target.ok());
  CHECK(Contains(unknown_target.message(), "unknown group 'missing'"));

  Status unknown_sender = CheckRequestRoute(pool, "ghost", "compute");
  REQUIRE_FALSE(unknown_sender.ok());
  CHECK(Contains(unknown_sender.message(), "'ghost'"));
}

TEST_CASE("FindGroup finds by exact name") {
  PoolConfig pool = ExamplePool();
  REQUIRE(pool.FindGroup("intake") != nullptr);
  CHECK(pool.FindGroup("intake")->type == GroupType::kService);
  CHECK(pool.FindGroup("Intake") == nullptr);
  CHECK(pool.FindGroup("") == nullptr);
}

}  // namespace
}  // namespace workerpool
