// The pool definition: YAML -> PoolConfig. This module is the only user of
// yaml-cpp. Loading never throws and never touches processes; it does look up
// `user` in the passwd database (an unknown user is a config error).
//
// Every error is one line: "FILE:LINE:COL: KEY: what is wrong", where KEY is a
// path like "groups[1].processes" (1-based line and column, as editors show).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/units.h"
#include "workerpool/wire.h"

namespace workerpool {

enum class GroupType { kReactor, kJob, kService };
const char* GroupTypeName(GroupType type);

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

struct RestartConfig {
  BackoffConfig backoff;
  IntensityConfig intensity;
  bool operator==(const RestartConfig&) const = default;
};

struct RabbitmqConfig {
  std::string url;
  std::vector<std::string> queues;
  bool declare = false;
  int prefetch = 32;
  int max_retries = 5;
  std::string dead_letter_queue;  // empty: none
  bool operator==(const RabbitmqConfig&) const = default;
};

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

struct ConfigError {
  std::string file;
  int line = 0;    // 1-based; 0 when the error has no position
  int column = 0;  // 1-based
  std::string key;
  std::string message;
  // "FILE:LINE:COL: KEY: MESSAGE" (position and key omitted when absent).
  std::string ToString() const;
};

struct ConfigLoad {
  std::optional<PoolConfig> config;  // set iff errors is empty
  std::vector<ConfigError> errors;
  bool ok() const { return errors.empty(); }
  // Every error, one per line.
  std::string ErrorText() const;
};

// Reads and validates FILE. A missing file, a directory, an empty file and
// binary garbage each give one clear error.
ConfigLoad LoadConfigFile(const std::string& path);

// Parses TEXT as if read from FILE_NAME (for tests and fuzzing).
ConfigLoad ParseConfig(const std::string& text, const std::string& file_name);

// The default control socket for a pool: $RUNTIME_DIRECTORY/<name>.sock when
// RUNTIME_DIRECTORY is set, else /tmp/workerpool-<name>.sock.
std::string DefaultControlSocket(const std::string& pool_name);

}  // namespace workerpool
