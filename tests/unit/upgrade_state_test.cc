#include "core/upgrade_state.h"

#include <doctest/doctest.h>

#include <string>

namespace workerpool {
namespace {

using nlohmann::json;

UpgradeState Sample() {
  UpgradeState state;
  state.from_version = "0.9.0";
  state.config_path = "/etc/workerpool/demo.yaml";
  state.config_content = "pool:\n  name: demo\ngroups: []\n";
  state.pool_name = "demo";
  state.control_socket = "/run/workerpool/demo.sock";
  state.metrics = "127.0.0.1:9100";
  state.phase = "reloading";
  state.uptime_ms = 123456;
  state.started_unix = 1700000000;
  state.last_reload = {
      {"ok", true}, {"summary", "1 group resized"}, {"unix", 1700000100}};
  state.reload_generation = 3;
  state.reload_queued = true;
  state.refused_routes = 2;
  state.spawns = 41;
  state.upgrades = 5;
  state.last_upgrade_unix = 1700000200;
  state.last_upgrade_error = "the new binary crashed";
  state.control_fd = 7;
  state.metrics_fd = 8;
  state.fallback_exe_fd = 3;
  state.listen_fds = {{"127.0.0.1:8080", 5}, {"unix:/tmp/x.sock", 6}};
  state.spawner_pid = 4321;
  state.spawner_fd = 17;
  state.handing_since_ns = 5000000000;
  UpgradeGroup group;
  group.name = "web";
  group.type = "reactor";
  group.command = {"workerpool", "builtin", "http-reactor"};
  group.processes = 2;
  group.scaled = true;
  group.speaks_protocol = true;
  group.failed_reason = "migrate exited with code 1";
  group.waiting = true;
  group.generation = 1;
  group.recycled = 4;
  group.protocol_errors = 1;
  group.rolling = {1};
  group.policy.quick_deaths = {0, 2};
  group.policy.recent_ages_ms = {1500, 20};
  group.policy.restarts = 2;
  group.autoscale_ups = 1;
  group.output_fd = 15;
  group.output_child_fd = 16;
  UpgradeSlot slot;
  slot.index = 0;
  slot.state = "up";
  slot.pid = 1234;
  slot.serial = 40;
  slot.age_ms = 60000;
  slot.generation = 1;
  slot.ready = true;
  slot.heartbeat = true;
  slot.links_connect = true;
  slot.recycle_after = 1000;
  slot.exit_status = 256;
  slot.ready_probe_passed = true;
  slot.not_ready_in_time = true;
  slot.health_failures = 2;
  slot.routes = {"jobs"};
  slot.refused_routes = {"secret"};
  slot.counters = {{"served", 17}, {"failed", 0}, {"we\"ird\n\\", 1}};
  slot.app = {{"hits", 3}};
  slot.offences = 1;
  slot.channel_pending = std::string("\x00\x01\xff partial", 11);
  slot.output_pending = "half a li";
  slot.fds = {9, 10, 11, 12};
  slot.heartbeat_ms = 1234;
  slot.latency = {{"jobs", {{5, 50}, {3, 2, 1}, 77}}};
  slot.route_load = {{"jobs", {4, 2}}};
  group.slots.push_back(slot);
  UpgradeSlot backoff;
  backoff.index = 1;
  backoff.state = "backoff";
  backoff.backoff_ms = 400;
  backoff.timer_ms = 250;
  group.slots.push_back(backoff);
  UpgradeSlot outgoing = slot;
  outgoing.outgoing = true;
  outgoing.state = "replaced";
  outgoing.pid = 999;
  outgoing.serial = 12;
  outgoing.fds = {13, 14, -1, -1};
  group.slots.push_back(outgoing);
  group.slots[1].replaces_serial = 12;
  state.groups.push_back(group);
  UpgradeGroup removing;
  removing.name = "old";
  removing.type = "job";
  removing.command = {"sleep", "100", "quote\" and \\ and \u00e9"};
  removing.removing = true;
  state.groups.push_back(removing);
  return state;
}

json SampleJson() { return json::parse(FormatUpgradeState(Sample())); }

std::string ErrorOf(const std::string& text) {
  Result<UpgradeState> parsed = ParseUpgradeState(text);
  REQUIRE_FALSE(parsed.ok());
  return parsed.status().message();
}

TEST_CASE("upgrade state: a round trip gives back every member") {
  Result<UpgradeState> parsed = ParseUpgradeState(FormatUpgradeState(Sample()));
  REQUIRE(parsed.ok());
  CHECK(*parsed == Sample());
}

TEST_CASE("upgrade state: an empty pool round-trips too") {
  UpgradeState state;
  state.phase = "running";
  Result<UpgradeState> parsed = ParseUpgradeState(FormatUpgradeState(state));
  REQUIRE(parsed.ok());
  CHECK(*parsed == state);
}

TEST_CASE("upgrade state: every descriptor it names is listed") {
  std::vector<int> fds = UpgradeStateFds(Sample());
  std::sort(fds.begin(), fds.end());
  CHECK(fds ==
        std::vector<int>{3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17});
}

TEST_CASE("upgrade state: garbage and truncation are clear errors") {
  CHECK(ErrorOf("").find("not a JSON document") != std::string::npos);
  CHECK(ErrorOf("\x01\x02garbage").find("not a JSON document") !=
        std::string::npos);
  const std::string whole = FormatUpgradeState(Sample());
  for (std::size_t cut :
       {std::size_t{1}, whole.size() / 3, whole.size() / 2, whole.size() - 1}) {
    CAPTURE(cut);
    CHECK(ErrorOf(whole.substr(0, cut)).find("truncated") != std::string::npos);
  }
  CHECK(ErrorOf("[1,2]") == "upgrade state: expected a JSON object");
  CHECK(ErrorOf("{}") == "upgrade state: workerpool_upgrade_state: missing");
}

TEST_CASE("upgrade state: a newer or invalid version is refused by number") {
  json document = SampleJson();
  document["workerpool_upgrade_state"] = kUpgradeStateVersion + 1;
  CHECK(ErrorOf(document.dump()).find("is newer than this workerpool") !=
        std::string::npos);
  document["workerpool_upgrade_state"] = 0;
  CHECK(ErrorOf(document.dump()).find("version 0 is not valid") !=
        std::string::npos);
  document["workerpool_upgrade_state"] = "1";
  CHECK(ErrorOf(document.dump()) ==
        "upgrade state: workerpool_upgrade_state: expected an integer");
}

TEST_CASE("upgrade state: wrong types name the member") {
  json document = SampleJson();
  SUBCASE("pid as a string") {
    document["groups"][0]["slots"][0]["pid"] = "1234";
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].pid: expected an integer");
  }
  SUBCASE("a negative pid") {
    document["groups"][0]["slots"][0]["pid"] = -5;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].pid: out of range");
  }
  SUBCASE("an fd too large for an int") {
    document["fds"]["control"] = 1LL << 40;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: fds.control: out of range");
  }
  SUBCASE("a listen fd that is no descriptor") {
    document["fds"]["listen"]["127.0.0.1:8080"] = -1;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: fds.listen.127.0.0.1:8080: not a descriptor");
  }
  SUBCASE("groups not a list") {
    document["groups"] = json::object();
    CHECK(ErrorOf(document.dump()) == "upgrade state: groups: expected a list");
  }
  SUBCASE("a group of an unknown type") {
    document["groups"][1]["type"] = "daemon";
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[1].type: expected reactor, job or service");
  }
  SUBCASE("a bool as a number") {
    document["groups"][0]["failed"] = 0;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].failed: expected true or false");
  }
  SUBCASE("routes with a number") {
    document["groups"][0]["slots"][0]["routes"] = json::array({"a", 3});
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].routes: expected a list of "
          "strings");
  }
  SUBCASE("pending bytes that are not hex") {
    document["groups"][0]["slots"][0]["channel_pending"] = "zz";
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].channel_pending: expected hex "
          "bytes");
  }
  SUBCASE("a counter that is negative") {
    document["groups"][0]["slots"][0]["counters"]["served"] = -1;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].counters.served: out of range");
  }
  SUBCASE("an unknown phase") {
    document["phase"] = "stopping";
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: phase: expected starting, running or reloading");
  }
  SUBCASE("a missing member") {
    document["groups"][0]["slots"][1].erase("state");
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[1].state: missing");
  }
  SUBCASE("quick deaths with a float") {
    document["groups"][0]["policy"]["quick_deaths"] = json::array({1.5});
    CHECK(ErrorOf(document.dump())
              .find("groups[0].policy.quick_deaths: item 0") !=
          std::string::npos);
  }
}

TEST_CASE("upgrade state: links is optional, fd when absent, else checked") {
  json document = SampleJson();
  document["groups"][0]["slots"][0].erase("links");
  Result<UpgradeState> parsed = ParseUpgradeState(document.dump());
  REQUIRE(parsed.ok());
  CHECK_FALSE(parsed->groups[0].slots[0].links_connect);
  document["groups"][0]["slots"][0]["links"] = "pigeon";
  CHECK(ErrorOf(document.dump()) ==
        "upgrade state: groups[0].slots[0].links: expected fd or connect");
}

TEST_CASE("upgrade state: unknown members are ignored (a newer writer)") {
  json document = SampleJson();
  document["something_new"] = {1, 2, 3};
  document["groups"][0]["slots"][0]["also_new"] = true;
  Result<UpgradeState> parsed = ParseUpgradeState(document.dump());
  REQUIRE(parsed.ok());
  CHECK(*parsed == Sample());
}

// A version 1 state as workerpool 0.1.0 wrote it: every member present.
constexpr const char* kVersion1 = R"({
  "workerpool_upgrade_state": 1, "from_version": "0.1.0",
  "config_path": "/etc/workerpool/demo.yaml",
  "config_content": "pool: {name: demo}\ngroups: []\n",
  "pool_name": "demo", "control_socket": "/run/workerpool/demo.sock",
  "metrics": "", "phase": "running", "uptime_ms": 1000,
  "started_unix": 1700000000, "last_reload": null,
  "reload_generation": 0, "reload_queued": false, "refused_routes": 0,
  "spawns": 7, "upgrades": 1, "last_upgrade_unix": 1700000100,
  "last_upgrade_error": "",
  "fds": {"control": 5, "metrics": -1, "fallback_exe": 3,
          "listen": {"127.0.0.1:8080": 6}},
  "groups": [{
    "name": "web", "type": "reactor", "command": ["workerpool"],
    "processes": 1, "scaled": false, "failed": false, "removing": false,
    "speaks_protocol": true, "generation": 1, "recycled": 0,
    "protocol_errors": 0, "rolling": [],
    "policy": {"quick_deaths": [0], "recent_ages_ms": [], "failed": false,
               "restarts": 0},
    "autoscale": {"ups": 0, "downs": 0, "last_unix": 0},
    "slots": [{
      "index": 0, "state": "up", "pid": 1234, "serial": 7, "age_ms": 5000,
      "generation": 1, "outgoing": false, "replaces_serial": 0,
      "backoff_ms": 0, "timer_ms": -1, "ready": true, "heartbeat": true,
      "recycle_after": 0, "routes": ["work"], "refused_routes": [],
      "counters": {"served": 3}, "app": {}, "offences": 0,
      "channel_pending": "", "output_pending": "6869",
      "fds": {"channel": 9, "output": 10, "output_write": -1,
              "channel_child": -1}}]}]})";

TEST_CASE("upgrade state: version 1 still reads (a 0.1.0 Watcher hands over)") {
  Result<UpgradeState> parsed = ParseUpgradeState(kVersion1);
  REQUIRE(parsed.ok());
  CHECK(parsed->version == 1);
  CHECK(parsed->spawner_fd == -1);
  CHECK(parsed->handing_since_ns == 0);
  REQUIRE(parsed->groups.size() == 1);
  CHECK(parsed->groups[0].output_fd == -1);
  REQUIRE(parsed->groups[0].slots.size() == 1);
  const UpgradeSlot& slot = parsed->groups[0].slots[0];
  CHECK(slot.pid == 1234);
  CHECK(slot.heartbeat);
  CHECK(slot.heartbeat_ms == -1);  // not handed over: a whole period
  CHECK(slot.latency.empty());
  CHECK(slot.route_load.empty());
  CHECK(slot.counters.at("served") == 3);
  CHECK(slot.output_pending == "hi");
  CHECK(slot.fds == UpgradeSlotFds{9, 10, -1, -1});
  // Written again, it is a version 2 state with the same content.
  Result<UpgradeState> again = ParseUpgradeState(FormatUpgradeState(*parsed));
  REQUIRE(again.ok());
  CHECK(again->version == kUpgradeStateVersion);
  again->version = 1;
  CHECK(*again == *parsed);
}

TEST_CASE("upgrade state: version 1 requires every slot member") {
  json document = json::parse(kVersion1);
  document["groups"][0]["slots"][0].erase("serial");
  CHECK(ErrorOf(document.dump()) ==
        "upgrade state: groups[0].slots[0].serial: missing");
  // Version 2 members in a version 1 state are not read.
  document = json::parse(kVersion1);
  document["spawner"] = {{"pid", 9}, {"fd", 10}};
  document["groups"][0]["slots"][0]["heartbeat_ms"] = 5;
  Result<UpgradeState> parsed = ParseUpgradeState(document.dump());
  REQUIRE(parsed.ok());
  CHECK(parsed->spawner_fd == -1);
  CHECK(parsed->groups[0].slots[0].heartbeat_ms == -1);
}

TEST_CASE("upgrade state: version 2 leaves out what holds its default") {
  UpgradeState state;
  state.phase = "running";
  UpgradeGroup group;
  group.name = "many";
  group.type = "job";
  UpgradeSlot idle;
  idle.index = 3;
  idle.state = "up";
  idle.pid = 77;
  idle.fds.channel = 20;
  group.slots.push_back(idle);
  state.groups.push_back(group);
  const json written = json::parse(FormatUpgradeState(state));
  CHECK(written["workerpool_upgrade_state"] == 2);
  const json& slot = written["groups"][0]["slots"][0];
  CHECK(
      slot ==
      json::parse(R"({"index":3,"state":"up","pid":77,"fds":{"channel":20}})"));
  CHECK_FALSE(written.contains("spawner"));
  CHECK_FALSE(written["groups"][0].contains("output"));
  Result<UpgradeState> parsed = ParseUpgradeState(written.dump());
  REQUIRE(parsed.ok());
  CHECK(*parsed == state);
  // The smallest slot: index and state.
  json minimal = written;
  minimal["groups"][0]["slots"][0] = {{"index", 0}, {"state", "backoff"}};
  parsed = ParseUpgradeState(minimal.dump());
  REQUIRE(parsed.ok());
  CHECK(parsed->groups[0].slots[0].timer_ms == -1);
  CHECK(parsed->groups[0].slots[0].fds == UpgradeSlotFds{});
  minimal["groups"][0]["slots"][0].erase("state");
  CHECK(ErrorOf(minimal.dump()) ==
        "upgrade state: groups[0].slots[0].state: missing");
}

TEST_CASE("upgrade state: version 2 members that are wrong name the member") {
  json document = SampleJson();
  SUBCASE("a histogram with too few counts") {
    document["groups"][0]["slots"][0]["latency"]["jobs"]["counts"] =
        json::array({1});
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].latency.jobs.counts: expected "
          "one more than bounds_ms");
  }
  SUBCASE("a histogram that is no object") {
    document["groups"][0]["slots"][0]["latency"]["jobs"] = 3;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].latency.jobs: expected an "
          "object");
  }
  SUBCASE("a negative route load") {
    document["groups"][0]["slots"][0]["route_load"]["jobs"]["queued"] = -1;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].route_load.jobs.queued: out of "
          "range");
  }
  SUBCASE("a heartbeat time below -1") {
    document["groups"][0]["slots"][0]["heartbeat_ms"] = -7;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].slots[0].heartbeat_ms: out of range");
  }
  SUBCASE("one end of a group's output socket") {
    document["groups"][0]["output"]["child_fd"] = -1;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: groups[0].output.child_fd: expected both ends or "
          "neither");
  }
  SUBCASE("a spawner without a pid") {
    document["spawner"]["pid"] = 0;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: spawner.pid: out of range");
  }
  SUBCASE("a spawner fd that is a string") {
    document["spawner"]["fd"] = "17";
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: spawner.fd: expected an integer");
  }
  SUBCASE("a negative clock reading") {
    document["handing_since_ns"] = -1;
    CHECK(ErrorOf(document.dump()) ==
          "upgrade state: handing_since_ns: out of range");
  }
}

}  // namespace
}  // namespace workerpool
