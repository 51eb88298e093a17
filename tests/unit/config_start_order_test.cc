// The keys of start order, readiness and one-shot groups: restart.policy,
// depends_on, ready, health, and {index} in what a child is started with.
#include <doctest/doctest.h>

#include <string>

#include "core/config.h"

namespace workerpool {
namespace {

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

ConfigLoad Parse(std::string text) {
  if (!text.empty() && text.front() == '\n') text.erase(0, 1);
  return ParseConfig(text, "test.yaml", ConfigEnvironment{});
}

// One job group at line 3 with EXTRA (indented 4) from line 6 on.
ConfigLoad ParseGroup(const std::string& extra) {
  return Parse(
      "pool: {name: t}\n"
      "groups:\n"
      "  - name: work\n"
      "    type: job\n"
      "    command: [x]\n" +
      extra);
}

std::string OnlyError(const ConfigLoad& load) {
  INFO("all errors:\n" << load.ErrorText());
  REQUIRE(load.errors.size() == 1);
  CHECK_FALSE(load.config.has_value());
  return load.errors[0].ToString();
}

GroupConfig Group0(const ConfigLoad& load) {
  INFO("errors:\n" << load.ErrorText());
  REQUIRE(load.ok());
  return load.config->groups[0];
}

TEST_CASE("the issue's example parses to what it says") {
  ConfigLoad load = Parse(R"(
pool: {name: t}
groups:
  - name: migrate
    type: job
    command: [./manage, migrate]
    restart: {policy: never}
  - name: cache
    type: job
    processes: 2
    command: [./cache-server, --port, "70{index}"]
    ready:
      tcp: "127.0.0.1:70{index}"
      timeout: 30s
    health:
      http: "http://127.0.0.1:70{index}/healthz"
      every: 10s
      failures: 3
  - name: web
    type: reactor
    command: [./web]
    depends_on: [migrate, cache]
)");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  const auto& groups = load.config->groups;
  CHECK(groups[0].restart.policy == RestartMode::kNever);
  CHECK(groups[1].restart.policy == RestartMode::kAlways);
  REQUIRE(groups[1].ready.has_value());
  CHECK(groups[1].ready->kind == ProbeConfig::Kind::kTcp);
  CHECK(groups[1].ready->target == "127.0.0.1:70{index}");
  CHECK(groups[1].ready->timeout == std::chrono::seconds(30));
  REQUIRE(groups[1].health.has_value());
  CHECK(groups[1].health->kind == ProbeConfig::Kind::kHttp);
  CHECK(groups[1].health->every == std::chrono::seconds(10));
  CHECK(groups[1].health->failures == 3);
  CHECK(groups[1].health->timeout == std::chrono::seconds(5));  // default
  CHECK(groups[2].depends_on == std::vector<std::string>{"migrate", "cache"});
  CHECK_FALSE(groups[2].ready.has_value());
}

TEST_CASE("restart.policy takes always, on-failure and never") {
  CHECK(Group0(ParseGroup("    restart: {policy: on-failure}\n"))
            .restart.policy == RestartMode::kOnFailure);
  CHECK(Group0(ParseGroup("    restart: {policy: always}\n")).restart.policy ==
        RestartMode::kAlways);
  std::string error = OnlyError(ParseGroup("    restart: {policy: nevr}\n"));
  CHECK(Contains(error, "test.yaml:6:23: groups[0].restart.policy"));
  CHECK(Contains(error, "did you mean 'never'"));
  CHECK(Contains(OnlyError(ParseGroup("    restart: {policy: [never]}\n")),
                 "groups[0].restart.policy"));
}

TEST_CASE("ready and health take each probe kind") {
  const GroupConfig http = Group0(
      ParseGroup("    ready: {http: \"http://localhost:8{index}/h\"}\n"));
  CHECK(http.ready->kind == ProbeConfig::Kind::kHttp);
  CHECK(http.ready->timeout == std::chrono::seconds(30));
  const GroupConfig exec =
      Group0(ParseGroup("    ready: {exec: [./probe, \"{index}\"]}\n"));
  CHECK(exec.ready->kind == ProbeConfig::Kind::kExec);
  CHECK(exec.ready->argv == std::vector<std::string>{"./probe", "{index}"});
  const GroupConfig after = Group0(ParseGroup("    ready: {after: 2s}\n"));
  CHECK(after.ready->kind == ProbeConfig::Kind::kAfter);
  CHECK(after.ready->after == std::chrono::seconds(2));
  const GroupConfig health = Group0(ParseGroup(
      "    health: {tcp: \"[::1]:80\", every: 1s, failures: 1, timeout: "
      "500ms}\n"));
  CHECK(health.health->kind == ProbeConfig::Kind::kTcp);
  CHECK(health.health->every == std::chrono::seconds(1));
  CHECK(health.health->timeout == std::chrono::milliseconds(500));
}

TEST_CASE("garbage in ready and health: one clear error each") {
  struct Case {
    const char* lines;
    const char* where;
    const char* says;
  };
  const Case cases[] = {
      {"    ready: {}\n", "groups[0].ready", "says nothing to probe"},
      {"    ready: tcp\n", "groups[0].ready", "mapping"},
      {"    ready: {tcp: \"1.2.3.4:80\", http: \"http://1.2.3.4/\"}\n",
       "groups[0].ready.http", "one probe only"},
      {"    ready: {tcp: \"example.com:80\"}\n", "groups[0].ready.tcp",
       "IP address or localhost"},
      {"    ready: {tcp: \"127.0.0.1\"}\n", "groups[0].ready.tcp", "no port"},
      {"    ready: {tcp: \"127.0.0.1:99999\"}\n", "groups[0].ready.tcp",
       "invalid port"},
      {"    ready: {tcp: \"127.0.0.1:{port}\"}\n", "groups[0].ready.tcp",
       "invalid port"},
      {"    ready: {http: \"https://127.0.0.1/\"}\n", "groups[0].ready.http",
       "https is not supported"},
      {"    ready: {http: \"127.0.0.1:80/x\"}\n", "groups[0].ready.http",
       "not an http URL"},
      {"    ready: {exec: []}\n", "groups[0].ready.exec", "empty"},
      {"    ready: {exec: ./probe}\n", "groups[0].ready.exec", "list"},
      {"    ready: {after: soon}\n", "groups[0].ready.after", ""},
      {"    ready: {after: 1s, timeout: 0s}\n", "groups[0].ready.timeout",
       "longer than 0"},
      {"    ready: {after: 1s, every: 1s}\n", "groups[0].ready.every",
       "unknown key"},
      {"    health: {after: 1s}\n", "groups[0].health.after",
       "only a ready probe"},
      {"    health: {tcp: \"127.0.0.1:1\", every: 0s}\n",
       "groups[0].health.every", "longer than 0"},
      {"    health: {tcp: \"127.0.0.1:1\", failures: 0}\n",
       "groups[0].health.failures", ""},
      {"    health: {tcp: \"127.0.0.1:1\", failures: many}\n",
       "groups[0].health.failures", ""},
  };
  for (const Case& c : cases) {
    CAPTURE(c.lines);
    ConfigLoad load = ParseGroup(c.lines);
    INFO("errors:\n" << load.ErrorText());
    REQUIRE(load.errors.size() == 1);
    CHECK(load.errors[0].key == c.where);
    CHECK(load.errors[0].line == 6);
    CHECK(Contains(load.errors[0].message, c.says));
  }
}

TEST_CASE("depends_on: unknown, itself, twice, a cycle: errors at the entry") {
  std::string unknown = OnlyError(ParseGroup("    depends_on: [cahce]\n"));
  CHECK(Contains(unknown, "test.yaml:6:18: groups[0].depends_on[0]"));
  CHECK(Contains(unknown, "unknown group 'cahce'"));

  std::string self = OnlyError(ParseGroup("    depends_on: [work]\n"));
  CHECK(Contains(self, "test.yaml:6:18: groups[0].depends_on[0]"));
  CHECK(Contains(self, "depends on itself"));

  ConfigLoad twice = Parse(R"(
pool: {name: t}
groups:
  - {name: a, type: job, command: [x]}
  - {name: b, type: job, command: [x], depends_on: [a, a]}
)");
  CHECK(Contains(OnlyError(twice), "test.yaml:4:56: groups[1].depends_on[1]"));

  ConfigLoad cycle = Parse(R"(
pool: {name: t}
groups:
  - {name: a, type: job, command: [x], depends_on: [c]}
  - {name: b, type: job, command: [x], depends_on: [a]}
  - {name: c, type: job, command: [x], depends_on: [b]}
)");
  std::string loop = OnlyError(cycle);
  CHECK(Contains(loop, "test.yaml:4:53: groups[1].depends_on[0]"));
  CHECK(Contains(loop, "dependency cycle: a -> c -> b -> a"));

  CHECK(Contains(OnlyError(ParseGroup("    depends_on: a\n")), "list"));
  CHECK(Contains(OnlyError(ParseGroup("    depends_on: [\"a b\"]\n")),
                 "invalid name"));
}

}  // namespace
}  // namespace workerpool
