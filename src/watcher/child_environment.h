// What a child is started with: its argv (with `workerpool builtin NAME`
// resolved to the builtin executable), its environment (the Watcher's,
// minus what describes the Watcher's own place under systemd, plus the
// group's `env` and the WORKERPOOL_* variables of docs/PROTOCOL.md), its
// listen sockets, working directory and user. Runs on the Watcher's loop
// thread; reads nothing but the Watcher's environment (once) and, once per
// program, realpath().
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/config.h"
#include "os/spawn.h"

namespace workerpool {

class ListenSockets;

class ChildEnvironment {
 public:
  // SELF_EXE: the running workerpool binary. Captures the Watcher's
  // environment now.
  explicit ChildEnvironment(std::string self_exe);

  // The spec for a child of GROUP at INDEX in POOL, whose pool channel is
  // CHANNEL_FD (passed last). With RUNNING_AS_ROOT the group's user applies.
  SpawnSpec SpecFor(const PoolConfig& pool, const GroupConfig& group, int index,
                    const ListenSockets& sockets, int channel_fd,
                    bool running_as_root);

  // The spec for one try of an exec probe (groups[].ready/health exec) of
  // the child CHILD_PID of GROUP at INDEX: ARGV with {index} expanded, run
  // as the child would be (the group's cwd, user when RUNNING_AS_ROOT, and
  // environment with its `env`), plus WORKERPOOL_CHILD_PID naming the child
  // probed. Not the child's WORKERPOOL_* variables, nor any descriptor: a
  // probe is not a member of the pool, and must not pass for one.
  SpawnSpec ProbeSpecFor(const GroupConfig& group, int index, pid_t child_pid,
                         const std::vector<std::string>& argv,
                         bool running_as_root) const;

 private:
  // What a child of GROUP at INDEX and its probes share: ARGV with {index}
  // expanded, the Watcher's environment with the group's `env` after it
  // (duplicates not removed yet: callers add theirs, then remove them),
  // the group's cwd and, when RUNNING_AS_ROOT, its user.
  SpawnSpec GroupSpec(const GroupConfig& group, int index,
                      const std::vector<std::string>& argv,
                      bool running_as_root) const;
  bool IsThisWorkerpool(const std::string& program);

  std::string self_exe_;
  // "" when missing; then `workerpool builtin` runs and says what is missing.
  std::string builtin_exe_;
  std::map<std::string, bool> is_this_workerpool_;  // by command[0]
  std::vector<std::string> base_environment_;
};

}  // namespace workerpool
