// The child table: every group and slot of the running pool, and the one
// place that executes the slot lifecycle (core/slot_lifecycle.h). It spawns
// children with their environment, reaps them, runs each slot's timer
// (start grace, backoff, kill deadline), asks the restart policy after an
// unexpected end, and carries out what groups need: resize, rolling restart,
// retire, recycle (max_requests, max_rss).
//
// Reports upward through Observer: a slot came up or went, a group failed,
// a child was reaped (the loop settles the start or a reload, and finishes
// the stop). Runs on the Watcher's loop thread.
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/file_limit.h"
#include "core/start_order.h"
#include "core/status.h"
#include "core/upgrade_state.h"
#include "os/exit_watch.h"
#include "os/spawner.h"
#include "watcher/child_channels.h"
#include "watcher/child_environment.h"
#include "watcher/output_capture.h"
#include "watcher/pool_state.h"
#include "watcher/probes.h"

namespace workerpool {

class ListenSockets;

class ChildTable : private Probes::Listener {
 public:
  class Observer {
   public:
    virtual ~Observer() = default;
    // Something changed that may end the start, a reload or the stop.
    virtual void OnPoolChanged() = 0;
    // A group reached its restart limit (systemd's STATUS= shows it).
    virtual void OnGroupFailed() = 0;
  };

  ChildTable(uv_loop_t* loop, std::string self_exe,
             const ListenSockets* sockets, Observer* observer);
  ~ChildTable();

  // The definition in force (owned by the reload room; outlives the table).
  void SetConfig(const PoolConfig* config) { config_ = config; }
  const PoolConfig& config() const { return *config_; }

  // Adds a group from CONFIG and starts its children, or, when a group in
  // its depends_on is not ready yet, marks it waiting (started later by
  // StartWaitingGroups).
  Group* AddGroup(const GroupConfig& config);
  // Starts every waiting group whose dependencies are all ready now.
  void StartWaitingGroups();
  // Every process of GROUP up or done, none missing (core/start_order.h).
  bool GroupReady(const Group& group) const;
  // A waiting GROUP can start some day: none of its dependencies, direct or
  // not, failed. Else the name of one that did.
  std::string FailedDependency(const Group& group) const;
  // GROUP's state for status and metrics: "running", "starting", "done",
  // "waiting", "failed", "removing"; DETAIL the line status shows ("waiting
  // for cache", "failed: migrate exited with code 1").
  std::string StateOf(const Group& group, std::string* detail) const;
  // The stop: SIGTERM to each group whose dependents are gone (and, for
  // jobs, the intake that could send them work); true when every group
  // with children has been told.
  void SignalStoppableGroups();
  // `workerpool restart GROUP --with-dependents`: rolling restarts of
  // GROUP, then of each group that depends on it, one after another.
  void RestartWithDependents(Group* group);
  // A reload dropped GROUP: its children drain, then it is deleted.
  void RemoveGroup(Group* group);
  // Applies group->config.processes: retires the idlest extra slots, starts
  // new ones in the lowest free indices.
  void Resize(Group* group);
  // Replaces every child of GROUP one at a time (new generation).
  void StartRollingRestart(Group* group);
  // A failed group gets another chance (reload, `workerpool restart`).
  void RetryFailedGroup(Group* group);
  // A reload changed GROUP's limits: its running children get new
  // max_requests limits, and they and their senders hear of the limits.
  void ApplyLimits(Group* group);
  // A reload changed GROUP's health section: its up children are probed
  // by the new one (or no more), without a restart.
  void ApplyHealth(Group* group);
  // Recycles SLOT's child when it answered max_requests requests.
  void CheckRequestCount(Slot* slot);
  // Starts or stops max_rss sampling as the groups need it.
  void UpdateRssSampling();

  // Autoscaling (child_table_autoscale.cc). Sets up, changes or drops
  // GROUP's autoscaler after its config changed (start, reload).
  void ConfigureAutoscale(Group* group);
  // Something that feeds autoscaling changed (a stats frame, a child up or
  // gone): the autoscaled groups are looked at soon, once for many changes.
  void LoadChanged();
  // `workerpool scale GROUP auto`: the autoscaler decides again.
  void ResumeAutoscale(Group* group);
  // What GROUP carries now (for the policy and for status).
  GroupLoad LoadOf(const Group& group) const;

  // Descriptors (child_table_scale.cc): raises RLIMIT_NOFILE for a pool of
  // CHILDREN in GROUPS groups (core/file_limit.h) and says whether it fits;
  // an error names the limit and what to raise. Chooses how the next
  // spawns' output is captured (a pipe each, or a socket per group when
  // only that fits).
  Status FitFileLimit(std::uint64_t children, std::uint64_t groups);
  // The most children the running pool may have (PoolChildren of the
  // groups as they are now, `scale` included).
  std::uint64_t PlannedChildren() const;
  // The running pool's groups (not those being removed).
  std::uint64_t PlannedGroups() const;
  OutputMode output_mode() const { return output_mode_; }
  // How many children may have a pidfd (os/exit_watch.h) under the limit,
  // and how many have one now.
  std::uint64_t pidfd_budget() const { return pidfd_budget_; }
  std::size_t pidfd_children() const { return exit_watch_.watched(); }
  std::uint64_t file_limit() const { return file_limit_; }
  const Spawner& spawner() const { return spawner_; }

  // SIGCHLD: reaps every child that exited. How (see "Reaping" in
  // child_table.cc): children with a pidfd are reaped by it, not here;
  // the spawner, exec probes and children without one by their pid
  // (waitpid(pid) is O(1) in the kernel, waitpid(-1) O(children)); anything
  // else (orphans the subreaper inherits) by a waitpid(-1) sweep after this
  // turn, at most once per (children / 10) ms. With more than half of the
  // children lacking a pidfd (WORKERPOOL_REAP=waitpid, a limit with little
  // room) it sweeps at once, as it always did.
  void Reap();
  // The pool stops: no spawns and no restarts from here on; every timer of
  // every slot stops (the loop's stop timer takes over).
  void BeginStop();
  // Sends SIGNAL to every child (of every group when JOBS_TOO, else to the
  // reactors and services only).
  void SignalAll(int signal_number, bool jobs_too);
  // True while a child of a reactor or service group runs.
  bool IntakeRunning() const;
  // Closes every slot's handles (the pool has stopped).
  void CloseAll();

  // In-place upgrade (child_table_upgrade.cc, watcher/upgrade.h). The
  // groups and slots as the next Watcher needs them, with the descriptors
  // it will find open (STATE's groups; NOW is the clock reading the ages
  // and remaining times count from).
  void SaveState(UpgradeState* state, TimePoint now) const;
  // Whether every channel has written every frame it was given (nothing
  // queued in this process would be lost by exec).
  bool ChannelsFlushed() const;
  // The next Watcher: rebuilds every group and slot of STATE without
  // spawning or signalling anything, checked first (a group the definition
  // in force lacks, a slot state it does not know, a descriptor that is
  // not open): an error then, and nothing was built.
  Status AdoptState(const UpgradeState& state, TimePoint now);
  // Pidfds do not survive exec: AdoptState watches every adopted child
  // again (as Spawn does a new one).
  void WatchAdoptedChildren();

  // SLOT's child broke the protocol too often: it loses its channel and is
  // stopped, then restarted with backoff.
  void Evict(Slot* slot);
  void Signal(Slot* slot, int signal_number);
  // Feeds EVENT to SLOT's lifecycle and executes what the table decides.
  void Apply(Slot* slot, SlotEvent event);

  Slot* FindChild(pid_t pid) const;
  // A group of the running pool (not one being removed); nullptr if none.
  Group* FindGroup(const std::string& name) const;
  const std::vector<std::unique_ptr<Group>>& groups() const { return groups_; }
  std::size_t child_count() const { return children_.size(); }
  bool stopping() const { return stopping_; }
  uv_loop_t* loop() const { return loop_; }
  ChildChannels& channels() { return channels_; }
  const ChildChannels& channels() const { return channels_; }
  OutputCapture& output() { return output_; }

 private:
  Slot* NewSlot(Group* group, int index);
  void Spawn(Slot* slot);
  void OnChildExit(Slot* slot, int status);
  // Reaping (child_table.cc): one reaped process, whoever it was; the
  // exit of a new child watched by pidfd or not; the pids reaped one by one
  // on SIGCHLD; the waitpid(-1) sweep and its scheduling.
  void Reaped(pid_t pid, int status);
  void WatchExit(Slot* slot);
  void ReapKnownPids();
  void Sweep();
  void ScheduleSweep();
  void AfterReaping();
  void AskPolicy(Slot* slot);
  void StopPredecessor(Slot* slot, SlotEvent because);
  void DetachSuccessor(Slot* slot);
  void Remove(Slot* slot);
  void ArmTimer(Slot* slot, Duration after);
  bool ReplaceSlot(Slot* slot);
  void ContinueRollingRestart(Group* group);
  void Recycle(Slot* slot, const std::string& why);
  void SampleRss();
  void DeleteDrainedGroups();
  void DropAutoscale(Group* group);
  void Autoscale(Group* group);
  void AutoscaleAll();
  void CloseSlotHandles(Slot* slot);
  void StartGroup(Group* group);
  void FailGroup(Group* group, std::string reason);
  void ContinueRestartChain();
  std::vector<GroupNode> Nodes() const;
  static void OnSlotTimer(uv_timer_t* timer);
  // Probes::Listener.
  void OnReadyProbePassed(Slot* slot) override;
  void OnHealthProbe(Slot* slot, bool passed,
                     const std::string& detail) override;

  uv_loop_t* loop_;
  const PoolConfig* config_ = nullptr;
  const ListenSockets* sockets_;
  Observer* observer_;
  ChildEnvironment environment_;
  ChildChannels channels_{this};
  OutputCapture output_;
  Probes probes_;
  std::vector<std::unique_ptr<Group>> groups_;
  // --with-dependents: the groups still to restart, in order.
  std::vector<std::string> restart_chain_;
  std::map<pid_t, Slot*> children_;  // live children by pid
  std::uint64_t spawns_ = 0;         // serials of children
  std::uint64_t file_limit_ = 1024;  // RLIMIT_NOFILE, raised at start
  OutputMode output_mode_ = OutputMode::kPipePerChild;
  bool fitted_ = false;  // FitFileLimit ran (the start logged the mode)
  Spawner spawner_;      // creates the children (os/spawner.h)
  // Reaping. Children with a pidfd; the pids of those without one; how
  // many may have one (FitFileLimit); the sweep's timer and last run.
  ExitWatch exit_watch_;
  std::set<pid_t> unwatched_;
  bool pidfds_wanted_;
  std::uint64_t pidfd_budget_ = 0;
  uv_timer_t sweep_timer_;
  std::uint64_t last_sweep_ms_ = 0;
  bool running_as_root_;
  bool stopping_ = false;
  std::mt19937_64 random_;  // recycling jitter
  uv_timer_t rss_timer_;    // runs only while some group sets max_rss
  // Coalesces LoadChanged() calls: armed by the first, fires once.
  uv_timer_t load_timer_;
};

}  // namespace workerpool
