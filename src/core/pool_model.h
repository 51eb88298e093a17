// The pool model: what a pool definition says, as plain values with their
// defaults. Built from YAML by src/core/config.h (or by hand in tests); read
// by the restart policy, routing, the reload diff and the Watcher. Nothing
// here parses or validates: a PoolConfig from ParseConfig has passed every
// check of the format; one built by hand has only the defaults below.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/units.h"
#include "workerpool/wire.h"

namespace workerpool {

enum class GroupType { kReactor, kJob, kService };
// "reactor", "job" or "service", as written in the YAML.
const char* GroupTypeName(GroupType type);
// The inverse of GroupTypeName; nullopt for any other word.
std::optional<GroupType> GroupTypeFromName(std::string_view name);

struct BackoffConfig {
  Duration initial{100};
  Duration max{30000};
  // A child that stayed up this long resets its slot's backoff (team key).
  Duration reset_after{10000};
  bool operator==(const BackoffConfig&) const = default;
};

struct IntensityConfig {
  int max_restarts = 10;
  Duration period{60000};
  bool operator==(const IntensityConfig&) const = default;
};

// restart.policy: whether a process that ended is started again.
//   kAlways     always (the default): a pool of long-running children
//   kOnFailure  only when it failed (exit code not 0, or a signal); a
//               process that exited 0 is done for good
//   kNever      never: exit 0 is done, anything else fails its group
enum class RestartMode { kAlways, kOnFailure, kNever };
// "always", "on-failure", "never", as written in the YAML.
const char* RestartModeName(RestartMode mode);

struct RestartConfig {
  RestartMode policy = RestartMode::kAlways;
  BackoffConfig backoff;
  IntensityConfig intensity;
  bool operator==(const RestartConfig&) const = default;
};

// A service's `rabbitmq.publish` section: it serves requests from reactors
// by publishing each one to RabbitMQ (docs/RABBITMQ.md, "Publishing").
struct RabbitmqPublishConfig {
  std::string exchange;      // "": the default exchange
  std::string routing_key;   // required; "" only with a named exchange
  std::string mode = "rpc";  // rpc | enqueue
  Duration timeout{30000};   // rpc: the wait for the reply
  bool persistent = true;    // delivery_mode 2
  // Requests one process holds waiting for a confirm or a reply; beyond
  // it a request is answered "queue full" at once.
  int max_pending = 1000;
  bool operator==(const RabbitmqPublishConfig&) const = default;
};

// A publishing service's max_inflight when the group does not set one: no
// limit in practice, so that every request reaches the service at once and
// it answers "queue full" itself beyond publish.max_pending.
inline constexpr int kPublishingServiceMaxInflight = 1000000;
// A publishing service's request_timeout when the group does not set one:
// publish.timeout plus this, so that the service answers "timeout" before
// its senders give up on it (and kill it).
inline constexpr Duration kPublishTimeoutMargin{5000};

struct RabbitmqConfig {
  std::string url;
  std::vector<std::string> queues;  // may be empty when publish is set
  bool declare = false;
  int prefetch = 32;
  int max_retries = 5;
  std::string dead_letter_queue;  // empty: none
  // What declare: true declares: "classic" or "quorum".
  std::string queue_type = "classic";
  int delivery_limit = 20;  // quorum queues: x-delivery-limit
  // The broker's consumer_timeout (RabbitMQ's default); 0: it has none.
  Duration consumer_timeout{30 * 60 * 1000};
  std::optional<RabbitmqPublishConfig> publish;
  bool operator==(const RabbitmqConfig&) const = default;
};

// groups[].autoscale: the group sizes itself between min and max
// (core/autoscale.h).
struct AutoscaleConfig {
  int min = 1;
  int max = 1;
  Duration up_after{1000};     // load sustained this long adds processes
  Duration down_after{30000};  // idleness sustained this long retires some
  bool operator==(const AutoscaleConfig&) const = default;
};

// groups[].ready and groups[].health: how the Watcher asks a child, from
// outside, whether it answers. Text may hold {index} (core/probe_spec.h).
struct ProbeConfig {
  enum class Kind {
    kTcp,    // a TCP connect to host:port succeeds
    kHttp,   // GET url answers with a 2xx or 3xx status
    kExec,   // the command exits 0
    kAfter,  // ready: this long after the spawn (no probe at all)
  };
  Kind kind = Kind::kTcp;
  std::string target;             // tcp: host:port; http: the URL
  std::vector<std::string> argv;  // exec
  Duration after{0};              // after
  // ready: the whole wait (not ready by then: a failed start); health: one
  // probe's bound.
  Duration timeout{30000};
  Duration every{10000};  // health: the pause between probes
  int failures = 3;       // health: this many in a row kill the child
  bool operator==(const ProbeConfig&) const = default;
};
// "tcp", "http", "exec", "after".
const char* ProbeKindName(ProbeConfig::Kind kind);

struct GroupConfig {
  std::string name;
  GroupType type = GroupType::kJob;
  int processes = 1;
  // argv; command[0] "workerpool" means the running workerpool binary.
  std::vector<std::string> command;
  std::map<std::string, std::string> env;
  std::string cwd;   // empty: the Watcher's working directory
  std::string user;  // empty: do not change user
  // Resolved from `user` at load time; -1 when `user` is empty.
  std::int64_t uid = -1;
  std::int64_t gid = -1;
  std::vector<std::string> listen;
  std::vector<std::string> routes_to;
  int max_inflight = 1;
  int queue_limit = 1000;
  Duration request_timeout{30000};
  Duration heartbeat_timeout{0};  // 0: no heartbeats (no idle wake-ups)
  std::int64_t max_requests = 0;  // 0: never recycle by count
  std::int64_t max_rss = 0;       // bytes; 0: never recycle by memory
  // How long a child reads a busy link without blocking before it sleeps in
  // its loop (client library, docs/PROTOCOL.md "Busy polling"); 0: never.
  int busy_poll_us = wire::kDefaultBusyPollUs;
  RestartConfig restart;
  std::optional<RabbitmqConfig> rabbitmq;
  std::optional<AutoscaleConfig> autoscale;
  // Groups that must be ready (or done) before this one starts; the pool
  // stops in the reverse order (core/start_order.h).
  std::vector<std::string> depends_on;
  std::optional<ProbeConfig> ready;   // up only once this probe passes
  std::optional<ProbeConfig> health;  // while up: failures restart it

  // Where the group was defined, for messages about it.
  int line = 0;
  int column = 0;

  bool operator==(const GroupConfig&) const = default;
};

struct LogConfig {
  std::string level = "info";   // trace debug info warn error critical off
  std::string format = "text";  // text | json
  bool operator==(const LogConfig&) const = default;
};

struct PoolConfig {
  std::string path;  // the file it was loaded from
  std::string name;
  std::string control_socket;  // resolved default when absent in the YAML
  Duration stop_timeout{10000};
  std::string metrics;  // host:port; empty: no endpoint
  LogConfig log;
  std::vector<GroupConfig> groups;

  const GroupConfig* FindGroup(const std::string& name) const;
};

}  // namespace workerpool
