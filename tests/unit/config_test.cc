#include "core/config.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/amqp_url.h"

namespace workerpool {
namespace {

using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

constexpr char kFile[] = "test.yaml";

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The users the tests' passwd database knows; "broken" makes the lookup
// itself fail. Nothing here reads /etc/passwd.
Result<std::optional<UserIds>> FakeUser(const std::string& name) {
  if (name == "root") return std::optional(UserIds{0, 0});
  if (name == "nobody") return std::optional(UserIds{65534, 65534});
  if (name == "alice") return std::optional(UserIds{1000, 100});
  if (name == "broken") return Status::Error("Input/output error");
  return std::optional<UserIds>();
}

// A machine with FakeUser's users and no RUNTIME_DIRECTORY.
ConfigEnvironment TestEnvironment(std::string runtime_directory = "") {
  return ConfigEnvironment{FakeUser, std::move(runtime_directory)};
}

// Raw string literals read best starting on their own line; the YAML starts
// after that first newline so line numbers match what is written.
ConfigLoad Parse(std::string text,
                 const ConfigEnvironment& environment = TestEnvironment()) {
  if (!text.empty() && text.front() == '\n') text.erase(0, 1);
  return ParseConfig(text, kFile, environment);
}

// A valid pool: one job group at line 3; EXTRA adds lines to that group
// (indented 4), from line 6 on.
ConfigLoad ParseWithGroupLines(const std::string& extra,
                               const std::string& type = "job") {
  return Parse(
      "pool: {name: t}\n"
      "groups:\n"
      "  - name: work\n"
      "    type: " +
      type +
      "\n"
      "    command: [x]\n" +
      extra);
}

// The one error about KEY, as printed; fails the test when there is not
// exactly one.
std::string ErrorAt(const ConfigLoad& load, const std::string& key) {
  std::string found;
  int count = 0;
  for (const ConfigError& error : load.errors) {
    if (error.key == key) {
      found = error.ToString();
      ++count;
    }
  }
  INFO("all errors:\n" << load.ErrorText());
  CHECK_MESSAGE(count == 1, "expected one error about " << key);
  return found;
}

// The only error of LOAD, as printed.
std::string OnlyError(const ConfigLoad& load) {
  INFO("all errors:\n" << load.ErrorText());
  REQUIRE(load.errors.size() == 1);
  CHECK_FALSE(load.config.has_value());
  return load.errors[0].ToString();
}

// --- Valid configurations --------------------------------------------------

// DESIGN.md's example, as written there.
constexpr char kDesignExample[] = R"(
pool:
  name: demo
  control_socket: /run/workerpool/demo.sock  # default: $RUNTIME_DIRECTORY/<name>.sock, else /tmp/workerpool-<name>.sock; mode 0600
  stop_timeout: 10s           # SIGTERM, then SIGKILL after this
  metrics: 127.0.0.1:9464     # optional Prometheus text endpoint
  log: {level: info, format: text}   # text | json
groups:
  - name: web
    type: reactor
    processes: 2
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:8080"]   # bound once by the Watcher, inherited by every reactor
    routes_to: [compute]
  - name: compute
    type: job
    processes: 4
    command: [./build/examples/my_job, --flag]
    env: {MODEL: small}
    cwd: /srv/app
    user: nobody                  # optional drop of privileges
    max_inflight: 1               # requests handed to one job process at once
    queue_limit: 1000             # requests waiting for a free job; beyond it, an error reply
    request_timeout: 30s          # a job past this is killed and the request fails or retries
    heartbeat_timeout: 10s        # a child silent this long is hung: killed and restarted
    max_requests: 10000           # recycle a job after this many (with jitter)
    max_rss: 512MB                # recycle a job whose resident memory passes this
    restart:
      backoff: {initial: 100ms, max: 30s}
      intensity: {max_restarts: 10, period: 60s}   # over this the group is marked failed
  - name: intake
    type: service
    processes: 1
    routes_to: [compute]
    rabbitmq:                     # gives the built-in rabbitmq-service as the command
      url: amqp://guest:guest@127.0.0.1:5672   # no trailing slash: "/" would name the empty vhost
      queues: [tasks]
      declare: true               # declare the queues durable if absent
      prefetch: 32
      max_retries: 5
      dead_letter_queue: tasks.dead
)";

TEST_CASE("the DESIGN.md example parses to what it says") {
  ConfigLoad load = Parse(kDesignExample);
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  REQUIRE(load.config.has_value());
  const PoolConfig& pool = *load.config;
  CHECK(pool.path == kFile);
  CHECK(pool.name == "demo");
  CHECK(pool.control_socket == "/run/workerpool/demo.sock");
  CHECK(pool.stop_timeout == seconds(10));
  CHECK(pool.metrics == "127.0.0.1:9464");
  CHECK(pool.log.level == "info");
  CHECK(pool.log.format == "text");
  REQUIRE(pool.groups.size() == 3);

  const GroupConfig& web = pool.groups[0];
  CHECK(web.name == "web");
  CHECK(web.type == GroupType::kReactor);
  CHECK(web.processes == 2);
  CHECK(web.command ==
        std::vector<std::string>{"workerpool", "builtin", "http-reactor"});
  CHECK(web.listen == std::vector<std::string>{"127.0.0.1:8080"});
  CHECK(web.routes_to == std::vector<std::string>{"compute"});
  CHECK(web.line == 8);
  CHECK(web.column == 5);

  const GroupConfig& compute = pool.groups[1];
  CHECK(compute.name == "compute");
  CHECK(compute.type == GroupType::kJob);
  CHECK(compute.processes == 4);
  CHECK(compute.command ==
        std::vector<std::string>{"./build/examples/my_job", "--flag"});
  CHECK(compute.env == std::map<std::string, std::string>{{"MODEL", "small"}});
  CHECK(compute.cwd == "/srv/app");
  CHECK(compute.user == "nobody");
  CHECK(compute.uid == 65534);
  CHECK(compute.gid == 65534);
  CHECK(compute.max_inflight == 1);
  CHECK(compute.queue_limit == 1000);
  CHECK(compute.request_timeout == seconds(30));
  CHECK(compute.heartbeat_timeout == seconds(10));
  CHECK(compute.max_requests == 10000);
  CHECK(compute.max_rss == 512 * 1024 * 1024);
  CHECK(compute.restart.backoff.initial == milliseconds(100));
  CHECK(compute.restart.backoff.max == seconds(30));
  CHECK(compute.restart.intensity.max_restarts == 10);
  CHECK(compute.restart.intensity.period == seconds(60));
  CHECK_FALSE(compute.rabbitmq.has_value());

  const GroupConfig& intake = pool.groups[2];
  CHECK(intake.type == GroupType::kService);
  CHECK(intake.routes_to == std::vector<std::string>{"compute"});
  CHECK(intake.command ==
        std::vector<std::string>{"workerpool", "builtin", "rabbitmq-service"});
  REQUIRE(intake.rabbitmq.has_value());
  CHECK(intake.rabbitmq->url == "amqp://guest:guest@127.0.0.1:5672");
  CHECK(intake.rabbitmq->queues == std::vector<std::string>{"tasks"});
  CHECK(intake.rabbitmq->declare);
  CHECK(intake.rabbitmq->prefetch == 32);
  CHECK(intake.rabbitmq->max_retries == 5);
  CHECK(intake.rabbitmq->dead_letter_queue == "tasks.dead");

  CHECK(pool.FindGroup("compute") == &pool.groups[1]);
  CHECK(pool.FindGroup("nope") == nullptr);
}

TEST_CASE("absent keys take their documented defaults") {
  ConfigLoad load = Parse(R"(
pool:
  name: mini
groups:
  - name: work
    type: job
    command: [./work]
)");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  const PoolConfig& pool = *load.config;
  CHECK(pool.control_socket == "/tmp/workerpool-mini.sock");
  CHECK(pool.stop_timeout == seconds(10));
  CHECK(pool.metrics.empty());
  CHECK(pool.log.level == "info");
  CHECK(pool.log.format == "text");

  const GroupConfig& group = pool.groups.at(0);
  CHECK(group.processes == 1);
  CHECK(group.env.empty());
  CHECK(group.cwd.empty());
  CHECK(group.user.empty());
  CHECK(group.uid == -1);
  CHECK(group.gid == -1);
  CHECK(group.listen.empty());
  CHECK(group.routes_to.empty());
  CHECK(group.max_inflight == 1);
  CHECK(group.queue_limit == 1000);
  CHECK(group.request_timeout == seconds(30));
  CHECK(group.heartbeat_timeout == Duration(0));  // no heartbeats
  CHECK(group.max_requests == 0);
  CHECK(group.busy_poll_us == 50);
  CHECK(group.max_rss == 0);
  CHECK(group.restart == RestartConfig{});
  CHECK(group.restart.backoff.reset_after == seconds(10));
  CHECK_FALSE(group.rabbitmq.has_value());
}

TEST_CASE("an empty groups list is a valid, empty pool") {
  ConfigLoad load = Parse("pool: {name: empty}\ngroups: []\n");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups.empty());
}

TEST_CASE("rabbitmq defaults and the built-in command for a service") {
  ConfigLoad load = Parse(R"(
pool: {name: t}
groups:
  - name: intake
    type: service
    rabbitmq: {url: "amqps://broker.example", queues: [a, b]}
  - name: custom
    type: service
    command: [./my_consumer]
    rabbitmq: {url: "amqp://[::1]:5672/vhost", queues: [c]}
)");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  const GroupConfig& intake = load.config->groups[0];
  CHECK(intake.command ==
        std::vector<std::string>{"workerpool", "builtin", "rabbitmq-service"});
  REQUIRE(intake.rabbitmq.has_value());
  CHECK(intake.rabbitmq->queues == std::vector<std::string>{"a", "b"});
  CHECK_FALSE(intake.rabbitmq->declare);
  CHECK(intake.rabbitmq->prefetch == 32);
  CHECK(intake.rabbitmq->max_retries == 5);
  CHECK(intake.rabbitmq->dead_letter_queue.empty());
  // An explicit command wins over the built-in one.
  CHECK(load.config->groups[1].command ==
        std::vector<std::string>{"./my_consumer"});
}

TEST_CASE("env takes scalars of any kind as their text") {
  ConfigLoad load = ParseWithGroupLines(
      "    env: {COUNT: 3, RATIO: 1.5, DEBUG: true, EMPTY: \"\", S: text}\n");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].env ==
        std::map<std::string, std::string>{{"COUNT", "3"},
                                           {"DEBUG", "true"},
                                           {"EMPTY", ""},
                                           {"RATIO", "1.5"},
                                           {"S", "text"}});
}

TEST_CASE("command elements that look like numbers are kept as text") {
  ConfigLoad load = Parse(R"(
pool: {name: t}
groups:
  - {name: sleeper, type: job, command: [sleep, 5]}
)");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].command ==
        std::vector<std::string>{"sleep", "5"});
}

TEST_CASE("user resolves to uid and gid through the injected lookup") {
  ConfigLoad load = ParseWithGroupLines("    user: alice\n");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].user == "alice");
  CHECK(load.config->groups[0].uid == 1000);
  CHECK(load.config->groups[0].gid == 100);
}

TEST_CASE("without a user lookup every user is unknown") {
  ConfigLoad load = ParseConfig(
      "pool: {name: t}\ngroups:\n  - {name: w, type: job, command: [x], "
      "user: root}\n",
      kFile, ConfigEnvironment{});
  CHECK(OnlyError(load) ==
        "test.yaml:3:46: groups[0].user: unknown user 'root': not in the "
        "passwd database (give a user name from /etc/passwd, or remove "
        "'user')");
}

TEST_CASE("a restart section sets backoff and intensity") {
  ConfigLoad load = ParseWithGroupLines(R"(    restart:
      backoff: {initial: 1s, max: 1s, reset_after: 5m}
      intensity: {max_restarts: 0, period: 1h}
)");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  const RestartConfig& restart = load.config->groups[0].restart;
  CHECK(restart.backoff.initial == seconds(1));
  CHECK(restart.backoff.max == seconds(1));
  CHECK(restart.backoff.reset_after == minutes(5));
  CHECK(restart.intensity.max_restarts == 0);
  CHECK(restart.intensity.period == minutes(60));
}

TEST_CASE("every log level and format is accepted") {
  for (const char* level :
       {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    for (const char* format : {"text", "json"}) {
      CAPTURE(level);
      CAPTURE(format);
      ConfigLoad load =
          Parse(std::string("pool: {name: t, log: {level: ") + level +
                ", format: " + format + "}}\ngroups: []\n");
      REQUIRE(load.ok());
      CHECK(load.config->log.level == level);
      CHECK(load.config->log.format == format);
    }
  }
}

TEST_CASE("pool and group names take letters, digits, '_', '.' and '-'") {
  ConfigLoad load = Parse(R"(
pool: {name: My_pool.v2-a}
groups:
  - {name: A.b_c-9, type: job, command: [x]}
)");
  INFO(load.ErrorText());
  CHECK(load.ok());
}

// --- Control socket default ------------------------------------------------

TEST_CASE("DefaultControlSocket uses RUNTIME_DIRECTORY when set") {
  CHECK(DefaultControlSocket("demo", "/run/workerpool") ==
        "/run/workerpool/demo.sock");
  CHECK(DefaultControlSocket("demo", "/run/workerpool/") ==
        "/run/workerpool/demo.sock");
  // systemd joins several RuntimeDirectory= entries with ':'.
  CHECK(DefaultControlSocket("demo", "/run/a:/run/b") == "/run/a/demo.sock");
  CHECK(DefaultControlSocket("demo", "") == "/tmp/workerpool-demo.sock");
  CHECK(DefaultControlSocket("demo", ":/run/b") == "/tmp/workerpool-demo.sock");
}

TEST_CASE("the loaded pool gets the default control socket") {
  ConfigLoad load =
      Parse("pool: {name: demo}\ngroups: []\n", TestEnvironment("/run/wp"));
  REQUIRE(load.ok());
  CHECK(load.config->control_socket == "/run/wp/demo.sock");
}

TEST_CASE("a control socket path too long for sun_path is an error") {
  std::string long_path = "/run/" + std::string(120, 'x') + ".sock";
  CHECK(Contains(ErrorAt(Parse("pool: {name: t, control_socket: " + long_path +
                               "}\ngroups: []\n"),
                         "pool.control_socket"),
                 "test.yaml:1:33: pool.control_socket: socket path"));

  std::string error =
      ErrorAt(Parse("pool: {name: t}\ngroups: []\n",
                    TestEnvironment("/run/" + std::string(120, 'y'))),
              "pool.name");
  CHECK(
      Contains(error, "test.yaml:1:14: pool.name: the default control socket"));
  CHECK(Contains(error, "set pool.control_socket"));
}

// --- Error formatting ------------------------------------------------------

TEST_CASE("ConfigError::ToString leaves out what is absent") {
  CHECK(ConfigError{"f.yaml", 3, 7, "groups[1].processes", "bad"}.ToString() ==
        "f.yaml:3:7: groups[1].processes: bad");
  CHECK(ConfigError{"f.yaml", 0, 0, "pool", "bad"}.ToString() ==
        "f.yaml: pool: bad");
  CHECK(ConfigError{"f.yaml", 3, 7, "", "bad"}.ToString() == "f.yaml:3:7: bad");
  CHECK(ConfigError{"f.yaml", 0, 0, "", "bad"}.ToString() == "f.yaml: bad");
}

TEST_CASE("ErrorText gives every error on its own line") {
  ConfigLoad load;
  load.errors.push_back(ConfigError{"a", 1, 2, "k", "one"});
  load.errors.push_back(ConfigError{"a", 0, 0, "", "two"});
  CHECK(load.ErrorText() == "a:1:2: k: one\na: two\n");
  CHECK(ConfigLoad{}.ErrorText().empty());
}

// --- Document-level errors -------------------------------------------------

TEST_CASE("a missing pool section is an error") {
  CHECK(OnlyError(Parse("groups: []\n")) ==
        "test.yaml:1:1: pool: missing required key 'pool'; expected a "
        "mapping of keys to values");
}

TEST_CASE("a missing groups key is an error, an empty list is not") {
  CHECK(Contains(OnlyError(Parse("pool: {name: t}\n")),
                 "test.yaml:1:1: groups: missing required key 'groups'"));
  CHECK(Contains(OnlyError(Parse("pool: {name: t}\ngroups:\n")),
                 "test.yaml:2:1: groups: has no value; list the groups, or "
                 "write 'groups: []'"));
}

TEST_CASE("pool and groups of the wrong shape") {
  CHECK(OnlyError(Parse("pool: [a]\ngroups: []\n")) ==
        "test.yaml:1:7: pool: must be a mapping of keys to values, got a "
        "list");
  CHECK(Contains(OnlyError(Parse("pool: {name: t}\ngroups: {a: 1}\n")),
                 "test.yaml:2:9: groups: must be a list of groups"));
  CHECK(Contains(OnlyError(Parse("pool: {name: t}\ngroups: [web]\n")),
                 "test.yaml:2:10: groups[0]: must be a mapping with name, "
                 "type and command, got 'web'"));
}

TEST_CASE("a document that is not a mapping is one error") {
  CHECK(OnlyError(Parse("- pool\n- groups\n")) ==
        "test.yaml:1:1: the pool definition must be a mapping with keys "
        "'pool' and 'groups', got a list");
  CHECK(Contains(OnlyError(Parse("just text\n")), "got 'just text'"));
}

TEST_CASE("YAML syntax errors carry their position") {
  std::string error = OnlyError(Parse("pool: {name: t}\ngroups: [a,\n"));
  CHECK(Contains(error, "test.yaml:3:1: invalid YAML: "));
  CHECK(Contains(OnlyError(Parse("pool:\n  name: a: b\n")), "test.yaml:2:"));
}

TEST_CASE("more than one YAML document is an error") {
  CHECK(Contains(
      OnlyError(Parse("pool: {name: t}\ngroups: []\n---\npool: {name: u}\n")),
      "test.yaml:3:1: holds more than one YAML document"));
}

TEST_CASE("deep nesting is refused, not a crash") {
  std::string deep = "pool: " + std::string(100000, '[') + "\n";
  CHECK(Contains(OnlyError(Parse(deep)), "invalid YAML"));
}

TEST_CASE("binary text given to ParseConfig is not a text file") {
  CHECK(OnlyError(ParseConfig(std::string("pool:\n  na\0me", 12), kFile,
                              TestEnvironment())) ==
        "test.yaml:2:5: not a text file: it contains a NUL byte; a pool "
        "definition is UTF-8 YAML (is this the right file?)");
  CHECK(Contains(OnlyError(ParseConfig("pool: {name: caf\xff}\n", kFile,
                                       TestEnvironment())),
                 "test.yaml:1:17: not a text file: it contains invalid UTF-8 "
                 "(byte 0xff)"));
  // Overlong and surrogate encodings are invalid UTF-8 too.
  CHECK(Contains(
      OnlyError(ParseConfig("a: \xc0\xaf\n", kFile, TestEnvironment())),
      "not a text file"));
  CHECK(Contains(
      OnlyError(ParseConfig("a: \xed\xa0\x80\n", kFile, TestEnvironment())),
      "not a text file"));
  CHECK(Contains(
      OnlyError(ParseConfig("a: \xe2\x82\n", kFile, TestEnvironment())),
      "not a text file"));
}

TEST_CASE("UTF-8 text and a byte order mark are fine") {
  ConfigLoad load = ParseConfig(
      "\xef\xbb\xbfpool: {name: t}\ngroups:\n  - name: w\n    type: job\n"
      "    command: [echo, \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"]\n",
      kFile, TestEnvironment());
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].command[1] ==
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST_CASE("a duplicate key is an error naming the first") {
  CHECK(ErrorAt(ParseWithGroupLines("    processes: 2\n    processes: 3\n"),
                "groups[0].processes") ==
        "test.yaml:7:5: groups[0].processes: duplicate key 'processes' "
        "(first given at line 6)");
}

TEST_CASE("a key without a value is an error") {
  CHECK(ErrorAt(ParseWithGroupLines("    cwd:\n"), "groups[0].cwd") ==
        "test.yaml:6:5: groups[0].cwd: has no value; give one or remove the "
        "key");
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    env: {A: ~}\n"), "groups[0].env.A"),
      "test.yaml:6:11: groups[0].env.A: has no value; write \"\""));
}

// --- Unknown keys ------------------------------------------------------------

TEST_CASE("unknown keys are errors at every level, with a suggestion") {
  struct Case {
    std::string yaml;
    std::string expected;
  };
  const Case cases[] = {
      {"pool: {name: t}\ngroups: []\ngroup: []\n",
       "test.yaml:3:1: group: unknown key 'group' (did you mean 'groups'?)"},
      {"pool: {name: t, stop_timout: 1s}\ngroups: []\n",
       "test.yaml:1:17: pool.stop_timout: unknown key 'stop_timout' (did you "
       "mean 'stop_timeout'?)"},
      {"pool: {name: t, log: {levle: info}}\ngroups: []\n",
       "test.yaml:1:23: pool.log.levle: unknown key 'levle' (did you mean "
       "'level'?)"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.yaml);
    CHECK(OnlyError(Parse(c.yaml)) == c.expected);
  }
  CHECK(
      ErrorAt(ParseWithGroupLines("    proceses: 2\n"), "groups[0].proceses") ==
      "test.yaml:6:5: groups[0].proceses: unknown key 'proceses' (did you "
      "mean 'processes'?)");
  CHECK(ErrorAt(ParseWithGroupLines(
                    "    restart: {backoff: {initial: 1s, mx: 2s}}\n"),
                "groups[0].restart.backoff.mx") ==
        "test.yaml:6:38: groups[0].restart.backoff.mx: unknown key 'mx' "
        "(did you mean 'max'?)");
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    restart: {intensity: {periods: 1s}}\n"),
              "groups[0].restart.intensity.periods"),
      "did you mean 'period'?"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    restart: {limit: 1}\n"),
              "groups[0].restart.limit"),
      "unknown key 'limit'; known keys here: backoff, intensity, policy"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines(
                  "    rabbitmq: {url: amqp://h, queues: [q], prefech: 1}\n",
                  "service"),
              "groups[0].rabbitmq.prefech"),
      "did you mean 'prefetch'?"));
}

TEST_CASE("an unknown key far from any known one lists the known keys") {
  std::string error =
      ErrorAt(ParseWithGroupLines("    zzzzzz: 1\n"), "groups[0].zzzzzz");
  CHECK(Contains(error,
                 "unknown key 'zzzzzz'; known keys here: name, type, "
                 "processes, command"));
  CHECK(Contains(error, "rabbitmq"));
}

TEST_CASE("YAML merge keys are reported as unsupported") {
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    <<: {processes: 2}\n"), "groups[0].<<"),
      "merge keys are not supported"));
}

// --- Pool section ------------------------------------------------------------

TEST_CASE("pool.name is required, non-empty and limited to a charset") {
  CHECK(Contains(OnlyError(Parse("pool: {stop_timeout: 1s}\ngroups: []\n")),
                 "test.yaml:1:7: pool.name: missing required key 'name'"));
  CHECK(OnlyError(Parse("pool: {name: \"a b\"}\ngroups: []\n")) ==
        "test.yaml:1:14: pool.name: invalid name 'a b': use one or more "
        "letters, digits, '_', '.' or '-'");
  CHECK(Contains(OnlyError(Parse("pool: {name: \"\"}\ngroups: []\n")),
                 "pool.name: invalid name ''"));
  CHECK(Contains(OnlyError(Parse("pool: {name: a/b}\ngroups: []\n")),
                 "invalid name 'a/b'"));
}

TEST_CASE("pool.stop_timeout must be a duration") {
  CHECK(OnlyError(Parse("pool: {name: t, stop_timeout: 10}\ngroups: []\n")) ==
        "test.yaml:1:31: pool.stop_timeout: duration '10' has no unit: add "
        "ms, s, m or h (e.g. 10s)");
  CHECK(Contains(
      OnlyError(Parse("pool: {name: t, stop_timeout: soon}\ngroups: []\n")),
      "pool.stop_timeout: invalid duration 'soon': expected a whole number "
      "followed by ms, s, m or h"));
}

TEST_CASE("pool.metrics must be HOST:PORT with a port from 1 to 65535") {
  auto metrics_error = [](const std::string& value) {
    return OnlyError(
        Parse("pool:\n  name: t\n  metrics: " + value + "\ngroups: []\n"));
  };
  CHECK(metrics_error("9464") ==
        "test.yaml:3:12: pool.metrics: address '9464' has no port: expected "
        "HOST:PORT such as 127.0.0.1:9464 or [::1]:9464");
  CHECK(Contains(metrics_error("127.0.0.1:0"), "invalid port '0'"));
  CHECK(Contains(metrics_error("127.0.0.1:65536"), "invalid port '65536'"));
  CHECK(Contains(metrics_error("127.0.0.1:http"), "invalid port 'http'"));
  CHECK(Contains(metrics_error("\"127.0.0.1:\""), "invalid port ''"));
  CHECK(Contains(metrics_error("\":9464\""), "has no host"));
  CHECK(Contains(metrics_error("\"::1:9464\""), "IPv6 host in brackets"));
  CHECK(Parse("pool: {name: t, metrics: \"[::1]:9464\"}\ngroups: []\n").ok());
  CHECK(Parse("pool: {name: t, metrics: \"localhost:65535\"}\ngroups: []\n")
            .ok());
}

TEST_CASE("pool.log level and format take the listed words only") {
  CHECK(OnlyError(Parse("pool: {name: t, log: {level: verbose}}\n"
                        "groups: []\n")) ==
        "test.yaml:1:30: pool.log.level: must be trace, debug, info, warn, "
        "error, critical or off, got 'verbose'");
  CHECK(OnlyError(Parse("pool: {name: t, log: {format: jsn}}\ngroups: []\n")) ==
        "test.yaml:1:31: pool.log.format: must be text or json, got 'jsn' "
        "(did you mean 'json'?)");
  CHECK(Contains(OnlyError(Parse("pool: {name: t, log: debug}\ngroups: []\n")),
                 "pool.log: must be a mapping of keys to values, got 'debug'"));
}

// --- Group keys
// ----------------------------------------------------------------

TEST_CASE("a group needs a name and a valid type") {
  CHECK(Contains(
      ErrorAt(
          Parse("pool: {name: t}\ngroups:\n  - {type: job, command: [x]}\n"),
          "groups[0].name"),
      "test.yaml:3:5: groups[0].name: missing required key 'name'"));
  CHECK(Contains(
      ErrorAt(Parse("pool: {name: t}\ngroups:\n  - {name: a, command: [x]}\n"),
              "groups[0].type"),
      "test.yaml:3:5: groups[0].type: missing required key 'type'; expected "
      "reactor, job or service"));
  CHECK(ErrorAt(Parse("pool: {name: t}\ngroups:\n"
                      "  - {name: a, type: worker, command: [x]}\n"),
                "groups[0].type") ==
        "test.yaml:3:21: groups[0].type: must be reactor, job or service, got "
        "'worker'");
  CHECK(Contains(ErrorAt(Parse("pool: {name: t}\ngroups:\n"
                               "  - {name: a, type: jobs, command: [x]}\n"),
                         "groups[0].type"),
                 "(did you mean 'job'?)"));
  CHECK(
      Contains(ErrorAt(Parse("pool: {name: t}\ngroups:\n"
                             "  - {name: \"a b\", type: job, command: [x]}\n"),
                       "groups[0].name"),
               "test.yaml:3:12: groups[0].name: invalid name 'a b'"));
}

TEST_CASE("duplicate group names: error at the second, naming the first") {
  ConfigLoad load = Parse(R"(
pool: {name: t}
groups:
  - name: work
    type: job
    command: [x]
  - name: work
    type: job
    command: [y]
)");
  CHECK(OnlyError(load) ==
        "test.yaml:6:11: groups[1].name: duplicate group name 'work': already "
        "used by groups[0] at line 3");
}

TEST_CASE("processes must be a non-negative integer, strictly") {
  struct Case {
    const char* value;
    const char* expected;
  };
  const Case cases[] = {
      {"abc", "must be a non-negative integer, got 'abc'"},
      {"\"abc\"", "must be a non-negative integer, got 'abc'"},
      {"[1]", "must be a non-negative integer, got a list"},
      {"{a: 1}", "must be a non-negative integer, got a mapping"},
      {"-1", "must be a non-negative integer, got '-1'"},
      {"1.5", "must be a non-negative integer, got '1.5'"},
      {"1e3", "must be a non-negative integer, got '1e3'"},
      {"0x10", "must be a non-negative integer, got '0x10'"},
      {"+1", "must be a non-negative integer, got '+1'"},
      {"true", "must be a non-negative integer, got 'true'"},
      {"\"4\"",
       "must be a non-negative integer, got the quoted string '4'; write the "
       "number without quotes"},
      {"3000000000",
       "must be a non-negative integer, got '3000000000' (at most "
       "2147483647)"},
      {"99999999999999999999999",
       "must be a non-negative integer, got '99999999999999999999999' (at "
       "most 2147483647)"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.value);
    ConfigLoad load =
        ParseWithGroupLines(std::string("    processes: ") + c.value + "\n");
    CHECK(ErrorAt(load, "groups[0].processes") ==
          std::string("test.yaml:6:16: groups[0].processes: ") + c.expected);
    CHECK_FALSE(load.ok());
  }
  ConfigLoad zero = ParseWithGroupLines("    processes: 0\n");
  REQUIRE(zero.ok());
  CHECK(zero.config->groups[0].processes == 0);
}

TEST_CASE("other counts have their own ranges") {
  CHECK(ErrorAt(ParseWithGroupLines("    max_inflight: 0\n"),
                "groups[0].max_inflight") ==
        "test.yaml:6:19: groups[0].max_inflight: must be an integer >= 1, got "
        "'0'");
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    queue_limit: -5\n"),
                         "groups[0].queue_limit"),
                 "must be a non-negative integer, got '-5'"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    max_requests: -1\n"),
                         "groups[0].max_requests"),
                 "must be a non-negative integer, got '-1'"));
  CHECK(Contains(
      ErrorAt(
          ParseWithGroupLines("    restart: {intensity: {max_restarts: -1}}\n"),
          "groups[0].restart.intensity.max_restarts"),
      "test.yaml:6:41: groups[0].restart.intensity.max_restarts: must be a "
      "non-negative integer, got '-1'"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    busy_poll_us: -1\n"),
                         "groups[0].busy_poll_us"),
                 "must be an integer from 0 to 10000, got '-1'"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    busy_poll_us: 10001\n"),
                         "groups[0].busy_poll_us"),
                 "must be an integer from 0 to 10000, got '10001'"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    busy_poll_us: 50us\n"),
                         "groups[0].busy_poll_us"),
                 "'50us'"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    busy_poll_us: [1]\n"),
                         "groups[0].busy_poll_us"),
                 "groups[0].busy_poll_us"));
  ConfigLoad off = ParseWithGroupLines("    busy_poll_us: 0\n");
  REQUIRE(off.ok());
  CHECK(off.config->groups[0].busy_poll_us == 0);
  ConfigLoad big = ParseWithGroupLines("    max_requests: 10000000000\n");
  REQUIRE(big.ok());
  CHECK(big.config->groups[0].max_requests == 10000000000);
}

TEST_CASE("durations and sizes in a group") {
  CHECK(ErrorAt(ParseWithGroupLines("    request_timeout: 1.5s\n"),
                "groups[0].request_timeout") ==
        "test.yaml:6:22: groups[0].request_timeout: invalid duration '1.5s': "
        "fractions are not accepted; use a smaller unit (1500ms, not 1.5s); "
        "expected a whole number followed by ms, s, m or h (e.g. 100ms, 10s, "
        "5m, 1h), or 0");
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    heartbeat_timeout: [1s]\n"),
                         "groups[0].heartbeat_timeout"),
                 "must be a string, got a list"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    max_rss: 512mb\n"), "groups[0].max_rss"),
      "test.yaml:6:14: groups[0].max_rss: invalid size '512mb'"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    max_rss: -1MB\n"), "groups[0].max_rss"),
      "invalid size '-1MB'"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    request_timeout: 9999999999999999h\n"),
              "groups[0].request_timeout"),
      "too large"));
  ConfigLoad load = ParseWithGroupLines(
      "    max_rss: 1GB\n    request_timeout: 0\n    heartbeat_timeout: 2m\n");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].max_rss == 1024 * 1024 * 1024);
  CHECK(load.config->groups[0].request_timeout == Duration(0));
  CHECK(load.config->groups[0].heartbeat_timeout == minutes(2));
}

TEST_CASE("backoff.initial must not exceed backoff.max") {
  CHECK(ErrorAt(ParseWithGroupLines(
                    "    restart: {backoff: {initial: 1m, max: 30s}}\n"),
                "groups[0].restart.backoff.initial") ==
        "test.yaml:6:34: groups[0].restart.backoff.initial: initial backoff "
        "1m is longer than max 30s; initial must be <= max");
  // Against the default max, the message says so.
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    restart: {backoff: {initial: 1m}}\n"),
              "groups[0].restart.backoff.initial"),
      "longer than max 30s (the default)"));
  // A max below the default initial is reported at max.
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    restart: {backoff: {max: 50ms}}\n"),
              "groups[0].restart.backoff.max"),
      "initial backoff 100ms is longer than max 50ms"));
}

TEST_CASE("command must be a non-empty list of strings") {
  CHECK(ErrorAt(Parse("pool: {name: t}\ngroups:\n"
                      "  - {name: a, type: job, command: ./job --flag}\n"),
                "groups[0].command") ==
        "test.yaml:3:35: groups[0].command: must be a list such as "
        "[./my_job, --flag], got './job --flag' (a single string is not a "
        "list)");
  CHECK(Contains(ErrorAt(Parse("pool: {name: t}\ngroups:\n"
                               "  - {name: a, type: job, command: []}\n"),
                         "groups[0].command"),
                 "must not be an empty list"));
  CHECK(Contains(ErrorAt(Parse("pool: {name: t}\ngroups:\n"
                               "  - {name: a, type: job, command: [\"\"]}\n"),
                         "groups[0].command[0]"),
                 "test.yaml:3:36: groups[0].command[0]: the program to run "
                 "must not be empty"));
  CHECK(Contains(ErrorAt(Parse("pool: {name: t}\ngroups:\n"
                               "  - {name: a, type: job, command: [x, [y]]}\n"),
                         "groups[0].command[1]"),
                 "test.yaml:3:39: groups[0].command[1]: must be a string, got "
                 "a list"));
}

TEST_CASE("a group without command is an error") {
  for (const char* type : {"reactor", "job", "service"}) {
    CAPTURE(type);
    ConfigLoad load = Parse(std::string("pool: {name: t}\ngroups:\n"
                                        "  - name: a\n    type: ") +
                            type + "\n");
    CHECK(OnlyError(load) ==
          "test.yaml:3:5: groups[0].command: missing command: give the "
          "program to run as a list, e.g. command: [./my_job, --flag]");
  }
}

TEST_CASE("env must map names to scalars") {
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    env: [A=1]\n"), "groups[0].env"),
      "test.yaml:6:10: groups[0].env: must be a mapping of keys to "
      "values, got a list"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    env: {A: [1, 2]}\n"), "groups[0].env.A"),
      "test.yaml:6:14: groups[0].env.A: must be a string, got a "
      "list"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    env: {\"A=B\": 1}\n"),
                         "groups[0].env.A=B"),
                 "must not contain '='"));
  CHECK(
      Contains(ErrorAt(ParseWithGroupLines("    env: {WORKERPOOL_GROUP: x}\n"),
                       "groups[0].env.WORKERPOOL_GROUP"),
               "is set by the pool"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    env: {LISTEN_FDS: 3}\n"),
                         "groups[0].env.LISTEN_FDS"),
                 "is set by the pool"));
}

TEST_CASE("cwd and user must be non-empty strings; user must exist") {
  CHECK(
      Contains(ErrorAt(ParseWithGroupLines("    cwd: \"\"\n"), "groups[0].cwd"),
               "test.yaml:6:10: groups[0].cwd: must not be empty"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    cwd: {a: b}\n"), "groups[0].cwd"),
      "must be a string, got a mapping"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    user: no_such_user_xq\n"),
                         "groups[0].user"),
                 "test.yaml:6:11: groups[0].user: unknown user "
                 "'no_such_user_xq'"));
  // The lookup itself failing is not "unknown": it says why.
  CHECK(ErrorAt(ParseWithGroupLines("    user: broken\n"), "groups[0].user") ==
        "test.yaml:6:11: groups[0].user: cannot look up user 'broken': "
        "Input/output error");
}

TEST_CASE("listen is for reactors only, and takes listen addresses") {
  CHECK(ErrorAt(ParseWithGroupLines("    listen: [\"127.0.0.1:8080\"]\n"),
                "groups[0].listen") ==
        "test.yaml:6:5: groups[0].listen: only reactor groups listen; this "
        "group is a job (remove listen, or make it a reactor)");
  CHECK(Contains(ErrorAt(ParseWithGroupLines(
                             "    listen: [\"127.0.0.1:8080\"]\n", "service"),
                         "groups[0].listen"),
                 "this group is a service"));
  CHECK(Contains(ErrorAt(ParseWithGroupLines("    listen: [8080]\n", "reactor"),
                         "groups[0].listen[0]"),
                 "test.yaml:6:14: groups[0].listen[0]: '8080': expected "
                 "HOST:PORT, [IPv6]:PORT or unix:/PATH"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    listen: [\"127.0.0.1:0\"]\n", "reactor"),
              "groups[0].listen[0]"),
      "port must be 1..65535"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    listen: \"0.0.0.0:80\"\n", "reactor"),
              "groups[0].listen"),
      "must be a list such as [\"127.0.0.1:8080\"]"));
  ConfigLoad load = ParseWithGroupLines(
      "    listen: [\"0.0.0.0:80\", \"[::]:81\", \"unix:/run/a.sock\"]\n",
      "reactor");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].listen ==
        std::vector<std::string>{"0.0.0.0:80", "[::]:81", "unix:/run/a.sock"});
}

// --- routes_to ---------------------------------------------------------------

// A pool of one group of each type plus extra lines for the named group.
ConfigLoad ParseRoutes(const std::string& reactor_routes,
                       const std::string& job_routes,
                       const std::string& service_routes) {
  auto routes = [](const std::string& list) {
    return list.empty() ? std::string() : ", routes_to: " + list;
  };
  return Parse(
      "pool: {name: t}\n"
      "groups:\n"
      "  - {name: web, type: reactor, command: [x]" +
      routes(reactor_routes) +
      "}\n"
      "  - {name: compute, type: job, command: [x]" +
      routes(job_routes) +
      "}\n"
      "  - {name: intake, type: service, command: [x]" +
      routes(service_routes) + "}\n");
}

TEST_CASE("routes_to allowed by the rules load") {
  ConfigLoad load = ParseRoutes("[compute, intake]", "", "[compute]");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].routes_to ==
        std::vector<std::string>{"compute", "intake"});
}

TEST_CASE("routes_to naming an unknown group: error at that element") {
  CHECK(OnlyError(ParseRoutes("[compute, nowhere]", "", "")) ==
        "test.yaml:3:67: groups[0].routes_to[1]: unknown group 'nowhere'; "
        "groups are: web, compute, intake");
  CHECK(Contains(OnlyError(ParseRoutes("[compte]", "", "")),
                 "unknown group 'compte' (did you mean 'compute'?)"));
}

TEST_CASE("a job may not have routes_to at all") {
  CHECK(OnlyError(ParseRoutes("", "[intake]", "")) ==
        "test.yaml:4:46: groups[1].routes_to: a job only replies: it may not "
        "send requests; remove routes_to from this job group");
  CHECK(Contains(OnlyError(ParseRoutes("", "[]", "")), "a job only replies"));
}

TEST_CASE("routes that break the type rules are refused") {
  CHECK(OnlyError(ParseRoutes("", "", "[intake]")) ==
        "test.yaml:5:61: groups[2].routes_to[0]: route 'intake' -> 'intake' "
        "is not allowed: a service may not send to a service (allowed: "
        "reactor->job, reactor->service, service->job)");
  CHECK(Contains(OnlyError(ParseRoutes("[web]", "", "")),
                 "groups[0].routes_to[0]: route 'web' -> 'web' is not "
                 "allowed: a reactor may not send to a reactor"));
  CHECK(Contains(OnlyError(ParseRoutes("", "", "[web]")),
                 "groups[2].routes_to[0]: route 'intake' -> 'web' is not "
                 "allowed: a service may not send to a reactor"));
}

TEST_CASE("a route listed twice is an error") {
  CHECK(Contains(OnlyError(ParseRoutes("[compute, compute]", "", "")),
                 "groups[0].routes_to[1]: group 'compute' is listed twice"));
}

TEST_CASE("routes_to must be a list of names") {
  CHECK(Contains(OnlyError(ParseRoutes("compute", "", "")),
                 "groups[0].routes_to: must be a list such as [compute], got "
                 "'compute'"));
}

// --- rabbitmq ----------------------------------------------------------------

std::string RabbitmqError(const std::string& section, const std::string& key,
                          const std::string& type = "service") {
  return ErrorAt(ParseWithGroupLines("    rabbitmq: " + section + "\n", type),
                 key);
}

TEST_CASE("rabbitmq is allowed on service groups only") {
  CHECK(RabbitmqError("{url: amqp://h, queues: [q]}", "groups[0].rabbitmq",
                      "job") ==
        "test.yaml:6:5: groups[0].rabbitmq: only service groups consume from "
        "RabbitMQ; this group is a job (use type: service)");
  CHECK(Contains(RabbitmqError("{url: amqp://h, queues: [q]}",
                               "groups[0].rabbitmq", "reactor"),
                 "this group is a reactor"));
}

TEST_CASE("rabbitmq.url is required and must be an AMQP URL with a host") {
  CHECK(Contains(RabbitmqError("{queues: [q]}", "groups[0].rabbitmq.url"),
                 "test.yaml:6:15: groups[0].rabbitmq.url: missing required "
                 "key 'url'"));
  CHECK(RabbitmqError("{url: \"http://h\", queues: [q]}",
                      "groups[0].rabbitmq.url") ==
        "test.yaml:6:21: groups[0].rabbitmq.url: invalid RabbitMQ URL "
        "'http://h': must start with amqp:// or amqps://; expected "
        "amqp://USER:PASSWORD@HOST[:PORT][/VHOST] (or amqps://)");
  CHECK(Contains(RabbitmqError("{url: \"amqp://\", queues: [q]}",
                               "groups[0].rabbitmq.url"),
                 "no host"));
  CHECK(Contains(RabbitmqError("{url: \"amqp://user@/vhost\", queues: [q]}",
                               "groups[0].rabbitmq.url"),
                 "no host"));
  CHECK(Contains(RabbitmqError("{url: \"amqp://h:99999\", queues: [q]}",
                               "groups[0].rabbitmq.url"),
                 "port '99999' is not a number from 1 to 65535"));
  CHECK(Contains(RabbitmqError("{url: \"amqp://h:\", queues: [q]}",
                               "groups[0].rabbitmq.url"),
                 "port ''"));
  CHECK(Contains(RabbitmqError("{url: \"amqp://[::1\", queues: [q]}",
                               "groups[0].rabbitmq.url"),
                 "unclosed '['"));
  CHECK(Contains(RabbitmqError("{url: \"amqp://h st\", queues: [q]}",
                               "groups[0].rabbitmq.url"),
                 "white space"));
}

// config.cc had its own URL grammar, looser than the service's: these were
// accepted by `workerpool check` and refused by the rabbitmq-service at every
// start. Now both read the URL with ParseAmqpUrl.
TEST_CASE("rabbitmq.url: check refuses exactly what the service refuses") {
  for (const char* url : {
           "amqp://h#frag",                   // a fragment
           "amqp://h/a/b",                    // '/' inside the vhost
           "amqp://h/%zz",                    // bad escape in the vhost
           "amqp://u%zz:p@h",                 // bad escape in the user
           "amqp://u:p%4@h",                  // bad escape in the password
           "amqp://h?frame_max=1",            // unknown query parameter
           "amqp://h?heartbeat=x",            // heartbeat not a number
           "amqp://h?heartbeat=65536",        // heartbeat out of range
           "amqp://h?connection_timeout=0",   // no timeout is no timeout
           "amqp://h?connection_timeout=-5",  // negative
       }) {
    CAPTURE(url);
    Result<AmqpUrl> service = ParseAmqpUrl(url);
    REQUIRE_FALSE(service.ok());
    CHECK(RabbitmqError(std::string("{url: \"") + url + "\", queues: [q]}",
                        "groups[0].rabbitmq.url") ==
          "test.yaml:6:21: groups[0].rabbitmq.url: " +
              service.status().message());
  }
}

TEST_CASE("rabbitmq.url: what the service accepts, check accepts") {
  for (const char* url : {
           "amqp://h",
           "amqps://u:p@h:5671/",
           "amqp://u:p@[::1]:5680/%2f?heartbeat=0&connection_timeout=2500",
           "amqp://a%40b:p%3Aw@h/v%20x",
       }) {
    CAPTURE(url);
    REQUIRE(ParseAmqpUrl(url).ok());
    ConfigLoad load = ParseWithGroupLines(
        std::string("    rabbitmq: {url: \"") + url + "\", queues: [q]}\n",
        "service");
    INFO(load.ErrorText());
    REQUIRE(load.ok());
    CHECK(load.config->groups[0].rabbitmq->url == url);
  }
}

TEST_CASE("a password in a bad rabbitmq.url is not repeated in the message") {
  std::string error =
      RabbitmqError("{url: \"amqp://guest:s3cret@:5672\", queues: [q]}",
                    "groups[0].rabbitmq.url");
  CHECK(Contains(error, "'amqp://guest:***@:5672'"));
  CHECK_FALSE(Contains(error, "s3cret"));
}

TEST_CASE("rabbitmq.queues must be a non-empty list of names") {
  CHECK(Contains(RabbitmqError("{url: amqp://h}", "groups[0].rabbitmq.queues"),
                 "missing required key 'queues'"));
  CHECK(Contains(
      RabbitmqError("{url: amqp://h, queues: []}", "groups[0].rabbitmq.queues"),
      "must not be an empty list; expected a list such as [tasks]"));
  CHECK(Contains(RabbitmqError("{url: amqp://h, queues: tasks}",
                               "groups[0].rabbitmq.queues"),
                 "got 'tasks' (a single string is not a list)"));
  CHECK(Contains(RabbitmqError("{url: amqp://h, queues: [a, \"\"]}",
                               "groups[0].rabbitmq.queues[1]"),
                 "must not be empty"));
}

TEST_CASE("rabbitmq numbers and flags are checked") {
  CHECK(RabbitmqError("{url: amqp://h, queues: [q], prefetch: 0}",
                      "groups[0].rabbitmq.prefetch") ==
        "test.yaml:6:54: groups[0].rabbitmq.prefetch: must be an integer from "
        "1 to 65535, got '0'");
  CHECK(Contains(RabbitmqError("{url: amqp://h, queues: [q], prefetch: 65536}",
                               "groups[0].rabbitmq.prefetch"),
                 "must be an integer from 1 to 65535, got '65536'"));
  CHECK(Contains(RabbitmqError("{url: amqp://h, queues: [q], max_retries: -1}",
                               "groups[0].rabbitmq.max_retries"),
                 "must be a non-negative integer, got '-1'"));
  CHECK(Contains(RabbitmqError("{url: amqp://h, queues: [q], declare: yes}",
                               "groups[0].rabbitmq.declare"),
                 "must be true or false, got 'yes'"));
  CHECK(
      Contains(RabbitmqError("{url: amqp://h, queues: [q], declare: \"true\"}",
                             "groups[0].rabbitmq.declare"),
               "got the quoted string 'true'; write it without quotes"));
  CHECK(Contains(
      RabbitmqError("{url: amqp://h, queues: [q], dead_letter_queue: \"\"}",
                    "groups[0].rabbitmq.dead_letter_queue"),
      "must not be empty"));
  ConfigLoad load = ParseWithGroupLines(
      "    rabbitmq: {url: amqp://h, queues: [q], prefetch: 65535, "
      "max_retries: 0, declare: false}\n",
      "service");
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].rabbitmq->prefetch == 65535);
  CHECK(load.config->groups[0].rabbitmq->max_retries == 0);
  CHECK_FALSE(load.config->groups[0].rabbitmq->declare);
}

// --- All errors at once ------------------------------------------------------

TEST_CASE("every error is collected, in file order") {
  ConfigLoad load = Parse(R"(
pool:
  name: "bad name"
  stop_timeout: soon
groups:
  - name: web
    type: reactor
    processes: -2
    command: [x]
    routes_to: [ghost]
  - name: compute
    type: job
    proceses: 2
)");
  CHECK_FALSE(load.ok());
  CHECK_FALSE(load.config.has_value());
  std::vector<std::string> keys;
  for (const ConfigError& error : load.errors) {
    CHECK(error.file == kFile);
    CHECK(error.line > 0);
    CHECK(error.column > 0);
    keys.push_back(error.key);
  }
  CHECK(keys == std::vector<std::string>{
                    "pool.name", "pool.stop_timeout", "groups[0].processes",
                    "groups[0].routes_to[0]", "groups[1].command",
                    "groups[1].proceses"});
  std::string text = load.ErrorText();
  CHECK(std::count(text.begin(), text.end(), '\n') == 6);
}

TEST_CASE("each listen address is parsed at load time, with its position") {
  // Line 6 is the listen line; the second item starts at column 32.
  ConfigLoad load = ParseWithGroupLines(
      "    listen: [\"127.0.0.1:8080\", \"127.0.0.1:99999\"]\n", "reactor");
  CHECK(ErrorAt(load, "groups[0].listen[1]") ==
        "test.yaml:6:32: groups[0].listen[1]: '127.0.0.1:99999': port must be "
        "1..65535, got '99999'");
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    listen: [\"8080\"]\n", "reactor"),
              "groups[0].listen[0]"),
      "test.yaml:6:14: groups[0].listen[0]: '8080': expected "
      "HOST:PORT"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    listen: [\"::1:80\"]\n", "reactor"),
              "groups[0].listen[0]"),
      "in brackets"));
  CHECK(
      Contains(ErrorAt(ParseWithGroupLines(
                           "    listen: [\"unix:relative.sock\"]\n", "reactor"),
                       "groups[0].listen[0]"),
               "absolute path"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    listen: [\"unix:/run/a.sock,mode=9\"]\n",
                                  "reactor"),
              "groups[0].listen[0]"),
      "mode=OCTAL"));
  ConfigLoad good = ParseWithGroupLines(
      "    listen: [\"[::1]:8080\", \"unix:/run/a.sock,mode=0600\", "
      "\"0.0.0.0:80\"]\n",
      "reactor");
  REQUIRE(good.ok());
  CHECK(good.config->groups[0].listen.size() == 3);
}

TEST_CASE("recycling keys: max_requests and max_rss") {
  ConfigLoad load =
      ParseWithGroupLines("    max_requests: 500\n    max_rss: 200MB\n");
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].max_requests == 500);
  CHECK(load.config->groups[0].max_rss == 200LL * 1024 * 1024);
  ConfigLoad service = ParseWithGroupLines("    max_requests: 3\n", "service");
  CHECK(service.ok());
  // A reactor never answers requests: a count of them would never trigger.
  CHECK(ErrorAt(ParseWithGroupLines("    max_requests: 10\n", "reactor"),
                "groups[0].max_requests") ==
        "test.yaml:6:5: groups[0].max_requests: a reactor does not serve "
        "requests, so it is never recycled by count; use max_rss, or move "
        "max_requests to the job group it sends to");
  ConfigLoad rss = ParseWithGroupLines("    max_rss: 1GB\n", "reactor");
  CHECK(rss.ok());
}

// --- groups[].autoscale ----------------------------------------------------

TEST_CASE("autoscale: bounds, delays, and processes as the starting count") {
  ConfigLoad load = ParseWithGroupLines(
      "    processes: 2\n"
      "    autoscale: {min: 1, max: 16, up_after: 500ms, down_after: 1m}\n");
  REQUIRE(load.ok());
  const GroupConfig& group = load.config->groups[0];
  CHECK(group.processes == 2);
  REQUIRE(group.autoscale.has_value());
  CHECK(group.autoscale->min == 1);
  CHECK(group.autoscale->max == 16);
  CHECK(group.autoscale->up_after == milliseconds(500));
  CHECK(group.autoscale->down_after == minutes(1));
  // Defaults: 1s and 30s; processes absent starts at min.
  ConfigLoad defaults =
      ParseWithGroupLines("    autoscale:\n      min: 3\n      max: 8\n");
  REQUIRE(defaults.ok());
  CHECK(defaults.config->groups[0].processes == 3);
  CHECK(defaults.config->groups[0].autoscale->up_after == seconds(1));
  CHECK(defaults.config->groups[0].autoscale->down_after == seconds(30));
  // Without autoscale, nothing changes.
  ConfigLoad fixed = ParseWithGroupLines("    processes: 4\n");
  REQUIRE(fixed.ok());
  CHECK_FALSE(fixed.config->groups[0].autoscale.has_value());
  CHECK(fixed.config->groups[0].processes == 4);
  // min == max is a fixed count written another way: allowed.
  CHECK(ParseWithGroupLines("    autoscale: {min: 2, max: 2}\n").ok());
}

TEST_CASE("autoscale: min and max are required") {
  CHECK(OnlyError(ParseWithGroupLines("    autoscale: {max: 4}\n")) ==
        "test.yaml:6:16: groups[0].autoscale.min: missing required key "
        "'min': autoscale needs both bounds, e.g. autoscale: {min: 1, max: "
        "16}");
  CHECK(Contains(
      OnlyError(ParseWithGroupLines("    autoscale:\n      min: 1\n")),
      "test.yaml:7:7: groups[0].autoscale.max: missing required key 'max'"));
  ConfigLoad empty = ParseWithGroupLines("    autoscale: {}\n");
  CHECK(empty.errors.size() == 2);
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    autoscale:\n"), "groups[0].autoscale"),
      "has no value"));
  CHECK(Contains(
      ErrorAt(ParseWithGroupLines("    autoscale: 4\n"), "groups[0].autoscale"),
      "must be a mapping"));
}

TEST_CASE("autoscale: min > max, negative and out-of-range counts") {
  CHECK(OnlyError(ParseWithGroupLines("    autoscale: {min: 8, max: 4}\n")) ==
        "test.yaml:6:30: groups[0].autoscale.max: max 4 is below min 8; min "
        "must be <= max");
  CHECK(OnlyError(ParseWithGroupLines("    autoscale: {min: -1, max: 4}\n")) ==
        "test.yaml:6:22: groups[0].autoscale.min: must be an integer from 0 "
        "to 100000, got '-1'");
  CHECK(Contains(
      OnlyError(ParseWithGroupLines("    autoscale: {min: 1, max: -4}\n")),
      "groups[0].autoscale.max: must be an integer from 1 to 100000, got "
      "'-4'"));
  CHECK(Contains(
      OnlyError(ParseWithGroupLines("    autoscale: {min: 0, max: 0}\n")),
      "groups[0].autoscale.max: must be an integer from 1 to 100000"));
  CHECK(Contains(
      OnlyError(ParseWithGroupLines("    autoscale: {min: 1, max: 100001}\n")),
      "groups[0].autoscale.max: must be an integer from 1 to 100000"));
  CHECK(Contains(
      OnlyError(ParseWithGroupLines("    autoscale: {min: 1, max: \"8\"}\n")),
      "write the number without quotes"));
  CHECK(Contains(
      OnlyError(ParseWithGroupLines("    autoscale: {min: 1.5, max: 8}\n")),
      "groups[0].autoscale.min: must be an integer"));
}

TEST_CASE("autoscale: processes must lie within [min, max]") {
  CHECK(OnlyError(ParseWithGroupLines(
            "    processes: 20\n    autoscale: {min: 1, max: 16}\n")) ==
        "test.yaml:6:16: groups[0].processes: processes 20 is outside "
        "autoscale's bounds [1, 16]: with autoscale, processes is the count "
        "the group starts with (min when absent)");
  CHECK(Contains(OnlyError(ParseWithGroupLines(
                     "    processes: 1\n    autoscale: {min: 2, max: 16}\n")),
                 "processes 1 is outside autoscale's bounds [2, 16]"));
  CHECK(ParseWithGroupLines("    processes: 16\n    autoscale: {min: 2, max: "
                            "16}\n")
            .ok());
  // A processes that is itself wrong is one error, not two.
  CHECK(Contains(OnlyError(ParseWithGroupLines(
                     "    processes: x\n    autoscale: {min: 2, max: 16}\n")),
                 "groups[0].processes: must be a non-negative integer"));
  // Bounds that are wrong say so; processes is not judged against them.
  CHECK(Contains(OnlyError(ParseWithGroupLines(
                     "    processes: 3\n    autoscale: {min: 8, max: 4}\n")),
                 "max 4 is below min 8"));
}

TEST_CASE("autoscale: durations need units, and keys are known") {
  CHECK(OnlyError(ParseWithGroupLines(
            "    autoscale: {min: 1, max: 4, up_after: 5}\n")) ==
        "test.yaml:6:43: groups[0].autoscale.up_after: duration '5' has no "
        "unit: add ms, s, m or h (e.g. 5s)");
  CHECK(Contains(OnlyError(ParseWithGroupLines(
                     "    autoscale: {min: 1, max: 4, down_after: 1.5s}\n")),
                 "groups[0].autoscale.down_after: invalid duration '1.5s': "
                 "fractions are not accepted"));
  CHECK(OnlyError(ParseWithGroupLines(
            "    autoscale: {min: 1, max: 4, down_afer: 10s}\n")) ==
        "test.yaml:6:33: groups[0].autoscale.down_afer: unknown key "
        "'down_afer' (did you mean 'down_after'?)");
  CHECK(ParseWithGroupLines("    autoscale: {min: 1, max: 4, up_after: 0}\n")
            .ok());
}

TEST_CASE("autoscale: job groups only, and the error says why") {
  CHECK(OnlyError(ParseWithGroupLines("    autoscale: {min: 1, max: 4}\n",
                                      "reactor")) ==
        "test.yaml:6:5: groups[0].autoscale: a reactor is not autoscaled: no "
        "signal fits it (its load is the connections waiting in the kernel's "
        "accept queue, which the pool does not see, and what it sends waits "
        "on the job groups it routes to); put autoscale on those job groups, "
        "and give the reactor a fixed processes count");
  CHECK(Contains(OnlyError(ParseWithGroupLines(
                     "    autoscale: {min: 1, max: 4}\n", "service")),
                 "test.yaml:6:5: groups[0].autoscale: a service is not "
                 "autoscaled"));
  // One error: bounds and processes are not judged on a reactor.
  CHECK(Contains(
      OnlyError(ParseWithGroupLines(
          "    processes: 9\n    autoscale: {min: 0, max: 4}\n", "reactor")),
      "a reactor is not autoscaled"));
}

TEST_CASE("autoscale: min 0 only for a job group fed by services alone") {
  constexpr char kFedByService[] = R"(
pool: {name: t}
groups:
  - name: intake
    type: service
    command: [x]
    routes_to: [compute]
  - name: compute
    type: job
    command: [y]
    autoscale: {min: 0, max: 8}
)";
  ConfigLoad fed = Parse(kFedByService);
  REQUIRE(fed.ok());
  CHECK(fed.config->groups[1].processes == 0);
  CHECK(fed.config->groups[1].autoscale->min == 0);
  CHECK(OnlyError(ParseWithGroupLines("    autoscale: {min: 0, max: 4}\n")) ==
        "test.yaml:6:22: groups[0].autoscale.min: min 0 is only for a job "
        "group fed by services alone (a service group lists it in "
        "routes_to): their RabbitMQ messages wait in the queue while the "
        "first process starts; no service routes to 'work', so nothing "
        "would ever start its first process; use min: 1");
  ConfigLoad with_reactor = Parse(R"(
pool: {name: t}
groups:
  - name: web
    type: reactor
    command: [x]
    routes_to: [compute]
  - name: intake
    type: service
    command: [x]
    routes_to: [compute]
  - name: compute
    type: job
    command: [y]
    autoscale: {min: 0, max: 8}
)");
  CHECK(OnlyError(with_reactor) ==
        "test.yaml:14:22: groups[2].autoscale.min: min 0 is only for a job "
        "group fed by services alone (a service group lists it in "
        "routes_to): their RabbitMQ messages wait in the queue while the "
        "first process starts; group 'web' also routes to 'compute' and its "
        "requests would fail while no process runs; use min: 1");
  // min 1 behind a reactor is the ordinary case.
  ConfigLoad behind_reactor = Parse(R"(
pool: {name: t}
groups:
  - name: web
    type: reactor
    command: [x]
    routes_to: [compute]
  - name: compute
    type: job
    command: [y]
    autoscale: {min: 1, max: 8}
)");
  CHECK(behind_reactor.ok());
}

// Found by tests/fuzz/fuzz_config: yaml-cpp 0.7's LoadAll never returns on
// these; the loader must answer at once with one error.
TEST_CASE("input on which yaml-cpp's LoadAll hangs is one clear error") {
  for (const char* text : {",", ", \"a\"], \"b]"}) {
    CAPTURE(text);
    CHECK(Contains(OnlyError(Parse(text)), "invalid YAML"));
  }
}

TEST_CASE("a reactor may not listen on the control socket or metrics port") {
  ConfigLoad control = Parse(R"(
pool: {name: t, control_socket: /tmp/t.sock}
groups:
  - name: web
    type: reactor
    command: [x]
    listen: ["127.0.0.1:8080", "unix:/tmp/t.sock"]
)");
  CHECK(OnlyError(control) ==
        "test.yaml:6:32: groups[0].listen[1]: 'unix:/tmp/t.sock' is the "
        "pool's control socket (pool.control_socket); choose another "
        "address");
  ConfigLoad metrics = Parse(R"(
pool: {name: t, metrics: "127.0.0.1:9464"}
groups:
  - name: web
    type: reactor
    command: [x]
    listen: ["0.0.0.0:9464"]
)");
  CHECK(OnlyError(metrics) ==
        "test.yaml:6:14: groups[0].listen[0]: '0.0.0.0:9464' takes the port "
        "of the pool's metrics endpoint (pool.metrics: 127.0.0.1:9464); "
        "choose another address");
  // Same port on another host, another path: fine.
  CHECK(Parse(R"(
pool: {name: t, metrics: "127.0.0.1:9464", control_socket: /tmp/t.sock}
groups:
  - name: web
    type: reactor
    command: [x]
    listen: ["127.0.0.2:9464", "unix:/tmp/u.sock"]
)")
            .ok());
}

}  // namespace
}  // namespace workerpool
