// The probes room: groups[].ready and groups[].health, run from outside the
// child on the Watcher's loop (libuv): a TCP connect, an HTTP GET, or a
// command that must exit 0 (core/probe_spec.h parses what they aim at).
//
// A ready probe tries at once, then every kReadyRetry, until it passes (the
// slot's own timer, the ready timeout, bounds the whole wait; each try is
// bounded too). A health probe runs once every `every`, each bounded by its
// `timeout`: an idle pool wakes for it only that often. Results go to the
// Listener (the child table), which feeds the slot lifecycle.
//
// One probe at most runs per slot. Stop() forgets it at once: no result of
// it is reported afterwards. Runs on the Watcher's loop thread.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/units.h"
#include "os/spawn.h"
#include "watcher/pool_state.h"

namespace workerpool {

class Probes {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    // SLOT's ready probe passed (reported once per Start).
    virtual void OnReadyProbePassed(Slot* slot) = 0;
    // One health probe of SLOT ended; DETAIL says why when it failed.
    virtual void OnHealthProbe(Slot* slot, bool passed,
                               const std::string& detail) = 0;
  };

  // What one try of SLOT's exec probe ARGV runs as: the child table knows
  // the group's user, cwd and environment (watcher/child_environment.h).
  using ExecSpecFor = std::function<SpawnSpec(
      const Slot& slot, const std::vector<std::string>& argv)>;

  Probes(uv_loop_t* loop, Listener* listener, ExecSpecFor exec_spec_for);
  ~Probes();

  // REQUIRES: slot->group->config.ready. Replaces any probe of SLOT.
  void StartReady(Slot* slot);
  // Starts SLOT's health probes if its group has them.
  void StartHealth(Slot* slot);
  // No probe of SLOT runs or reports any more.
  void Stop(Slot* slot);
  // The child table reaps every process (waitpid(-1)); an exec probe's
  // exit comes here. True when PID was one.
  bool OnProcessExit(pid_t pid, int status);
  // The pool stopped: every probe stops, handles close.
  void CloseAll();

 private:
  void Start(Slot* slot, bool health);
  void OnTimer(ProbeRun* run);
  void Attempt(ProbeRun* run);
  void AttemptDone(ProbeRun* run, bool passed, const std::string& detail);
  void Release(ProbeRun* run);

 public:
  // For a tcp or http try's callbacks (probes.cc).
  void AttemptDoneFromConnection(ProbeRun* run, bool passed,
                                 const std::string& detail);

  uv_loop_t* loop_;
  Listener* listener_;
  ExecSpecFor exec_spec_for_;
  std::map<pid_t, ProbeRun*> exec_pids_;  // exec probes not reaped yet
  bool closed_ = false;
};

}  // namespace workerpool
