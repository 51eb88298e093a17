#include "watcher/child_environment.h"

#include <climits>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "core/amqp_service_config.h"
#include "core/listen_address.h"
#include "core/probe_spec.h"
#include "os/builtin_path.h"
#include "watcher/listen_sockets.h"

extern char** environ;

namespace workerpool {
namespace {

// Variables of the Watcher's own environment that must not leak into
// children: they describe the Watcher's place under systemd, not theirs.
bool IsWatcherOnlyVariable(std::string_view entry) {
  static const char* const kPrefixes[] = {
      "NOTIFY_SOCKET=", "LISTEN_FDS=",   "LISTEN_PID=", "LISTEN_FDNAMES=",
      "WATCHDOG_USEC=", "WATCHDOG_PID=", "WORKERPOOL_"};
  for (const char* prefix : kPrefixes) {
    if (entry.starts_with(prefix)) return true;
  }
  return false;
}

// Later entries win: a group's `env` overrides the Watcher's environment, and
// the WORKERPOOL_* variables override both. getenv() returns the first of
// duplicate names, so duplicates must not reach the child.
std::vector<std::string> WithoutShadowedVariables(
    std::vector<std::string> env) {
  std::set<std::string_view> seen;
  std::vector<std::string> kept;
  for (auto entry = env.rbegin(); entry != env.rend(); ++entry) {
    std::string_view name(*entry);
    name = name.substr(0, name.find('='));
    if (seen.insert(name).second) kept.push_back(*entry);
  }
  return {kept.rbegin(), kept.rend()};
}

}  // namespace

ChildEnvironment::ChildEnvironment(std::string self_exe)
    : self_exe_(std::move(self_exe)),
      builtin_exe_(BuiltinExecutable(self_exe_)) {
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (!IsWatcherOnlyVariable(*entry)) base_environment_.push_back(*entry);
  }
}

// "workerpool", or a path to this very binary (/usr/local/bin/workerpool,
// as a systemd unit's pool file names it).
// Resolved once per program: restarts of a group do not repeat it.
bool ChildEnvironment::IsThisWorkerpool(const std::string& program) {
  if (program == "workerpool") return true;
  if (program.find('/') == std::string::npos) return false;
  auto [known, inserted] = is_this_workerpool_.try_emplace(program, false);
  if (inserted) {
    char resolved[PATH_MAX];
    known->second =
        realpath(program.c_str(), resolved) != nullptr && self_exe_ == resolved;
  }
  return known->second;
}

SpawnSpec ChildEnvironment::GroupSpec(const GroupConfig& group, int index,
                                      const std::vector<std::string>& argv,
                                      bool running_as_root) const {
  SpawnSpec spec;
  // {index}: each process its own port, directory, ... (core/probe_spec.h).
  for (const std::string& word : argv) {
    spec.argv.push_back(ExpandIndex(word, index));
  }
  spec.env = base_environment_;
  for (const auto& [key, value] : group.env) {
    spec.env.push_back(key + "=" + ExpandIndex(value, index));
  }
  spec.cwd = ExpandIndex(group.cwd, index);
  if (running_as_root) {
    spec.uid = group.uid;
    spec.gid = group.gid;
  }
  return spec;
}

SpawnSpec ChildEnvironment::SpecFor(const PoolConfig& pool,
                                    const GroupConfig& group, int index,
                                    const ListenSockets& sockets,
                                    int channel_fd, bool running_as_root) {
  SpawnSpec spec = GroupSpec(group, index, group.command, running_as_root);
  if (spec.argv.size() >= 3 && spec.argv[1] == "builtin" &&
      !builtin_exe_.empty() && IsThisWorkerpool(spec.argv[0])) {
    // One exec, not two: `workerpool builtin NAME` would exec it anyway.
    spec.argv.erase(spec.argv.begin());
    spec.argv[0] = builtin_exe_;
  } else if (!spec.argv.empty() && spec.argv[0] == "workerpool") {
    spec.argv[0] = self_exe_;
  }
  spec.env.push_back("WORKERPOOL_POOL=" + pool.name);
  spec.env.push_back("WORKERPOOL_GROUP=" + group.name);
  spec.env.push_back(std::string("WORKERPOOL_TYPE=") +
                     GroupTypeName(group.type));
  spec.env.push_back("WORKERPOOL_INDEX=" + std::to_string(index));
  if (group.rabbitmq) {
    spec.env.push_back("WORKERPOOL_RABBITMQ=" +
                       AmqpServiceEnvironment(pool, group));
  }
  if (group.type == GroupType::kReactor && !group.listen.empty()) {
    // systemd's socket activation protocol: fds from 3, then our channel.
    std::string names;
    for (const std::string& address : group.listen) {
      spec.pass_fds.push_back(sockets.Fd(address));
      if (!names.empty()) names += ":";
      Result<ListenAddress> parsed = ParseListenAddress(address);
      if (parsed.ok()) names += parsed->FdName();
    }
    spec.env.push_back("LISTEN_FDS=" + std::to_string(spec.pass_fds.size()));
    spec.env.push_back("LISTEN_FDNAMES=" + names);
    spec.set_listen_pid = true;
  }
  spec.pass_fds.push_back(channel_fd);
  spec.env.push_back("WORKERPOOL_IPC_FD=" +
                     std::to_string(2 + spec.pass_fds.size()));
  spec.env = WithoutShadowedVariables(std::move(spec.env));
  return spec;
}

SpawnSpec ChildEnvironment::ProbeSpecFor(const GroupConfig& group, int index,
                                         pid_t child_pid,
                                         const std::vector<std::string>& argv,
                                         bool running_as_root) const {
  SpawnSpec spec = GroupSpec(group, index, argv, running_as_root);
  spec.env.push_back("WORKERPOOL_CHILD_PID=" + std::to_string(child_pid));
  spec.env = WithoutShadowedVariables(std::move(spec.env));
  return spec;
}

}  // namespace workerpool
