// The child table, part one: slots. Spawning, reaping, the slot timer and the
// executor of the lifecycle table. Groups (resize, rolling restart,
// recycling) are in child_table_groups.cc.
#include "watcher/child_table.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "os/spawn.h"
#include "os/uv_owner.h"
#include "watcher/channel.h"
#include "watcher/listen_sockets.h"

namespace workerpool {
namespace {

// How long a child may take to say hello before it is taken as up anyway:
// children that do not use the client library never say it. A group whose
// children have spoken the protocol waits longer, since hello is what links
// a child to its senders.
constexpr Duration kPlainStartGrace{1000};
constexpr Duration kProtocolStartGrace{30000};

// Reaping. The waitpid(-1) sweep (for orphans the subreaper inherits: no
// one knows their pids) walks every child in the kernel: 2.6 ms with
// 10,000 children here, 0.26 us per child. It runs after the turn's exact
// reaping, so never before a restart, and at most once per (children /
// kSweepChildrenPerMs) ms: its share of a core stays near 0.26% whatever
// the pool's size, and a storm of deaths pays for a few sweeps, not one
// per death. An orphan's zombie waits that long at most (1 s at 10,000
// children; at once in a small pool).
constexpr std::uint64_t kSweepChildrenPerMs = 10;
// waitpid(pid) costs about 0.6 us here whatever the pool, the walk 0.26 us
// per child: with more than half of the children lacking a pidfd, one
// walk costs less than a waitpid(pid) for each, and SIGCHLD sweeps at once
// (as it always did) instead.
constexpr std::size_t kSweepWhenUnwatchedOf = 2;

// How a child ended, nginx-style: "exited with code 3",
// "killed by signal SIGKILL (9)", "... (core dumped)".
std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) {
    return "exited with code " + std::to_string(WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) {
    std::string text = "killed by signal " + SignalName(WTERMSIG(status)) +
                       " (" + std::to_string(WTERMSIG(status)) + ")";
    if (WCOREDUMP(status)) text += " (core dumped)";
    return text;
  }
  return "ended with wait status " + std::to_string(status);
}

}  // namespace

ChildTable::ChildTable(uv_loop_t* loop, std::string self_exe,
                       const ListenSockets* sockets, Observer* observer)
    : loop_(loop),
      sockets_(sockets),
      observer_(observer),
      environment_(self_exe),
      output_(loop, [observer] { observer->OnPoolChanged(); }),
      probes_(loop, this,
              [this](const Slot& slot, const std::vector<std::string>& argv) {
                return environment_.ProbeSpecFor(slot.group->config, slot.index,
                                                 slot.pid, argv,
                                                 running_as_root_);
              }),
      file_limit_(RaiseFileLimit()),
      spawner_(SpawnerExecutable(self_exe)),
      exit_watch_(
          loop, [this](pid_t pid, int status) { Reaped(pid, status); },
          [this] { AfterReaping(); }),
      pidfds_wanted_(PidfdReapingWanted()),
      running_as_root_(geteuid() == 0),
      random_(std::random_device{}()) {
  for (uv_timer_t* timer : {&rss_timer_, &load_timer_, &sweep_timer_}) {
    uv_timer_init(loop_, timer);
    timer->data = this;
  }
}

ChildTable::~ChildTable() = default;

Slot* ChildTable::NewSlot(Group* group, int index) {
  Slot* slot = new Slot;
  slot->table = this;
  slot->group = group;
  slot->index = index;
  uv_timer_init(loop_, &slot->timer);
  slot->timer.data = slot;
  uv_timer_init(loop_, &slot->heartbeat);
  slot->heartbeat.data = slot;
  group->slots[index] = slot;
  return slot;
}

Group* ChildTable::AddGroup(const GroupConfig& config) {
  groups_.push_back(std::make_unique<Group>(config));
  Group* group = groups_.back().get();
  ConfigureAutoscale(group);
  group->waiting = true;
  StartWaitingGroups();  // now, unless a dependency is not ready
  if (group->waiting) {
    std::string detail;
    StateOf(*group, &detail);
    spdlog::info("group {} {}", group->config.name, detail);
  }
  return group;
}

void ChildTable::Spawn(Slot* slot) {
  const GroupConfig& config = slot->group->config;
  slot->started = Clock::now();
  slot->exit_status = -1;
  slot->ready_probe_passed = false;
  slot->not_ready_in_time = false;
  slot->health_failures = 0;
  int channel_fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel_fds) != 0) {
    spdlog::error("cannot start {}[{}]: socketpair: {}", config.name,
                  slot->index, strerror(errno));
    Apply(slot, SlotEvent::kSpawnFailed);
    return;
  }
  SpawnSpec spec =
      environment_.SpecFor(*config_, config, slot->index, *sockets_,
                           channel_fds[1], running_as_root_);
  // A pool too large for a pipe per child writes to its group's socket
  // (core/file_limit.h OutputMode); -1: a pipe.
  if (output_mode_ == OutputMode::kSocketPerGroup) {
    spec.shared_output = output_.SharedOutputFor(slot->group);
  }
  // Sized for the whole pool: ends held by the first children would leave
  // no room for the last ones.
  const bool hold_ends =
      spec.shared_output < 0 &&
      output_.HoldsChildEnds(
          std::max<std::uint64_t>(children_.size(), PlannedChildren()),
          file_limit_);
  spec.keep_output_write = hold_ends;
  Result<SpawnedChild> child = spawner_.Spawn(spec);
  if (hold_ends && child.ok()) {
    slot->channel_child_end = channel_fds[1];
    slot->output_write_end = child->output_write_fd;
  } else {
    close(channel_fds[1]);
  }
  if (!child.ok()) {
    close(channel_fds[0]);
    spdlog::error("cannot start {}[{}]: {}", config.name, slot->index,
                  child.status().message());
    Apply(slot, SlotEvent::kSpawnFailed);
    return;
  }
  slot->pid = child->pid;
  slot->serial = ++spawns_;
  slot->generation = slot->group->generation;
  slot->ready = false;
  slot->conversation = ChildConversation(slot->pid);
  slot->recycle_after = RecycleAfter(config.max_requests, random_());
  children_[slot->pid] = slot;
  WatchExit(slot);
  channels_.Open(slot, channel_fds[0]);
  spdlog::info("spawned {}[{}] pid {}", config.name, slot->index, slot->pid);
  if (spec.shared_output >= 0) {
    output_.StartShared(slot);
  } else {
    output_.Start(child->output_fd, slot);
  }
  Apply(slot, config.ready ? SlotEvent::kSpawnedProbed : SlotEvent::kSpawned);
}

// Executes the cell of the lifecycle table for SLOT's state and EVENT, in
// the order of the effect bits. An effect that feeds the same slot another
// event (kAskPolicy, kSpawn, kMarkUp's recycling) is the last of its cell,
// so a nested Apply never runs under effects still to come.
void ChildTable::Apply(Slot* slot, SlotEvent event) {
  const SlotTransition transition = NextSlotState(slot->state, event);
  slot->state = transition.next;
  const std::uint32_t effects = transition.effects;
  const GroupConfig& config = slot->group->config;
  if (effects & kStopProbes) probes_.Stop(slot);
  if (effects & kCancelTimer) uv_timer_stop(&slot->timer);
  if (effects & kGreet) channels_.Greet(slot);
  if (effects & kStopPredecessor) StopPredecessor(slot, event);
  if (effects & kStartHealth) probes_.StartHealth(slot);
  if (effects & kMarkUp) {
    CheckRequestCount(slot);
    LoadChanged();
    StartWaitingGroups();
    ContinueRestartChain();
    observer_->OnPoolChanged();
  }
  if (effects & kMarkDone) {
    spdlog::info("{}[{}] done", config.name, slot->index);
    StartWaitingGroups();
    observer_->OnPoolChanged();
  }
  if (effects & kAskPolicy) AskPolicy(slot);
  if (effects & kArmBackoff) ArmTimer(slot, slot->backoff);
  if (effects & kSpawn) Spawn(slot);
  if (effects & kArmStartGrace) {
    if (config.ready) {
      // The ready timeout; `after` waits that long before it counts.
      Duration wait = config.ready->timeout;
      if (config.ready->kind == ProbeConfig::Kind::kAfter) {
        wait += config.ready->after;
      }
      ArmTimer(slot, wait);
    } else {
      ArmTimer(slot, slot->group->speaks_protocol ? kProtocolStartGrace
                                                  : kPlainStartGrace);
    }
  }
  if (effects & kStartReadyProbe) probes_.StartReady(slot);
  if ((effects & kStopChild) && !channels_.Drain(slot)) {
    spdlog::info("stopping {}[{}] pid {} (SIGTERM)", config.name, slot->index,
                 slot->pid);
    Signal(slot, SIGTERM);
  }
  if (effects & kTerminateChild) Signal(slot, SIGTERM);
  if (effects & kArmKillDeadline) ArmTimer(slot, config_->stop_timeout);
  if (effects & kKillChild) {
    spdlog::warn(
        "{}[{}] pid {} still running {} after it was told to stop: SIGKILL",
        config.name, slot->index, slot->pid,
        FormatDuration(config_->stop_timeout));
    Signal(slot, SIGKILL);
  }
  if (effects & kDetachSuccessor) DetachSuccessor(slot);
  if (effects & kRemove) Remove(slot);
  // A child that speaks the protocol is up once it said hello and its
  // ready probe passed, in either order.
  if (event == SlotEvent::kHello && slot->state == SlotState::kProbing &&
      slot->ready_probe_passed) {
    Apply(slot, SlotEvent::kReady);
  }
}

void ChildTable::OnReadyProbePassed(Slot* slot) {
  if (slot->state != SlotState::kProbing) return;
  // A group whose children speak the protocol: hello must come too.
  if (slot->group->speaks_protocol && !slot->ready) return;
  const std::optional<ProbeConfig>& ready = slot->group->config.ready;
  spdlog::info("{}[{}] pid {} is ready ({} probe passed)",
               slot->group->config.name, slot->index, slot->pid,
               ready ? ProbeKindName(ready->kind) : "its");
  Apply(slot, SlotEvent::kReady);
}

void ChildTable::OnHealthProbe(Slot* slot, bool passed,
                               const std::string& detail) {
  if (!slot->up() || !slot->group->config.health) return;
  if (passed) {
    slot->health_failures = 0;
    return;
  }
  const ProbeConfig& health = *slot->group->config.health;
  ++slot->health_failures;
  if (slot->health_failures < health.failures) {
    spdlog::warn("{}[{}] pid {} health probe failed ({} of {}): {}",
                 slot->group->config.name, slot->index, slot->pid,
                 slot->health_failures, health.failures, detail);
    return;
  }
  spdlog::error(
      "{}[{}] pid {} is hung: {} health probes failed in a row ({}); "
      "stopping it to restart it",
      slot->group->config.name, slot->index, slot->pid, health.failures,
      detail);
  Apply(slot, SlotEvent::kHealthFailed);
}

void ChildTable::ArmTimer(Slot* slot, Duration after) {
  uv_timer_start(&slot->timer, OnSlotTimer,
                 static_cast<uint64_t>(std::max<int64_t>(0, after.count())), 0);
}

void ChildTable::OnSlotTimer(uv_timer_t* timer) {
  Slot* slot = Owner<Slot>(timer);
  if (slot->state == SlotState::kStarting) {
    spdlog::debug("{}[{}] pid {} did not say hello; taken as up",
                  slot->group->config.name, slot->index, slot->pid);
  } else if (slot->state == SlotState::kProbing) {
    slot->not_ready_in_time = true;
    // A reload may have dropped `ready` since the spawn.
    const std::optional<ProbeConfig>& ready = slot->group->config.ready;
    spdlog::warn(
        "{}[{}] pid {} not ready within {}: a failed start; stopping it",
        slot->group->config.name, slot->index, slot->pid,
        ready ? FormatDuration(ready->timeout) : "its ready timeout");
  }
  slot->table->Apply(slot, SlotEvent::kTimer);
}

void ChildTable::Signal(Slot* slot, int signal_number) {
  if (slot->pid <= 0) return;
  // The child leads its own process group; signal the group so helpers it
  // started go too, and fall back to the pid if it left the group.
  if (kill(-slot->pid, signal_number) != 0) kill(slot->pid, signal_number);
}

void ChildTable::Evict(Slot* slot) {
  channels_.Forget(slot);
  Apply(slot, SlotEvent::kEvict);
}

// The restart policy's verdict on an unexpected end, fed back as an event.
void ChildTable::AskPolicy(Slot* slot) {
  Group* group = slot->group;
  if (stopping_) return;
  if (group->failed) {
    Apply(slot, SlotEvent::kGroupFailed);
    return;
  }
  const int status = slot->exit_status;
  const bool succeeded =
      status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  RestartDecision decision = group->policy.OnChildExit(
      slot->index, slot->started, Clock::now(), succeeded);
  if (decision.done) {
    Apply(slot, SlotEvent::kFinished);
    return;
  }
  if (decision.group_failed) {
    std::string who = group->config.name;
    if (group->config.processes > 1) {
      who += "[" + std::to_string(slot->index) + "]";
    }
    if (group->config.restart.policy == RestartMode::kNever) {
      std::string how = status >= 0 ? DescribeWaitStatus(status)
                                    : std::string("could not start");
      if (slot->not_ready_in_time && group->config.ready) {
        how =
            "not ready within " + FormatDuration(group->config.ready->timeout);
      }
      FailGroup(group, who + " " + how);
    } else {
      FailGroup(
          group,
          "more than " +
              std::to_string(group->config.restart.intensity.max_restarts) +
              " restarts within " +
              FormatDuration(group->config.restart.intensity.period));
    }
    // Every slot of the group without a child waits with this one.
    for (auto& [index, other] : group->slots) {
      Apply(other, SlotEvent::kGroupFailed);
    }
    observer_->OnGroupFailed();
    return;
  }
  if (decision.delay.count() == 0) {
    Apply(slot, SlotEvent::kRestartNow);
    return;
  }
  spdlog::info("restarting {}[{}] in {}", group->config.name, slot->index,
               FormatDuration(decision.delay));
  slot->backoff = decision.delay;
  Apply(slot, SlotEvent::kRestartLater);
}

void ChildTable::StopPredecessor(Slot* slot, SlotEvent because) {
  Slot* predecessor = slot->replaces;
  if (predecessor == nullptr) return;
  slot->replaces = nullptr;
  predecessor->replaced_by = nullptr;
  if (because == SlotEvent::kHello || because == SlotEvent::kTimer) {
    spdlog::info("{}[{}] pid {} is up; it replaces pid {}",
                 slot->group->config.name, slot->index, slot->pid,
                 predecessor->pid);
  }
  Apply(predecessor, SlotEvent::kStop);
}

void ChildTable::DetachSuccessor(Slot* slot) {
  if (Slot* successor = slot->replaced_by) {
    successor->replaces = nullptr;
    slot->replaced_by = nullptr;
  }
}

// Takes SLOT out of its group. A group left empty by a reload is deleted
// later, from DeleteDrainedGroups: callers may still hold it.
void ChildTable::Remove(Slot* slot) {
  Group* group = slot->group;
  if (slot->outgoing) {
    std::erase(group->outgoing, slot);
    CloseSlotHandles(slot);
    ContinueRollingRestart(group);
    return;
  }
  auto found = group->slots.find(slot->index);
  if (found != group->slots.end() && found->second == slot) {
    group->slots.erase(found);
  }
  CloseSlotHandles(slot);
}

// Reaping. Measured with 10,000 children (perf record -g on the Watcher
// while children were killed one by one, then 1,000 at once): 73% of its
// CPU was waitpid(-1) walking the children in the kernel, so a restart at
// 10,000 cost 1.7x or more what it cost at 10, and a storm cost
// storm x pool. Now a child with a pidfd (os/exit_watch.h) is reaped
// alone when it becomes readable; SIGCHLD reaps the few pids it knows one
// by one and leaves the rest to the rate-limited sweep.
void ChildTable::WatchExit(Slot* slot) {
  if (pidfds_wanted_ && exit_watch_.watched() < pidfd_budget_ &&
      exit_watch_.Watch(slot->pid)) {
    return;
  }
  unwatched_.insert(slot->pid);
}

void ChildTable::WatchAdoptedChildren() {
  if (pidfds_wanted_ && exit_watch_.usable()) {
    pidfd_budget_ =
        PidfdsAllowed(file_limit_, PlannedChildren(), PlannedGroups());
  }
  for (auto& [pid, slot] : children_) {
    if (!exit_watch_.watching(pid)) WatchExit(slot);
  }
}

void ChildTable::Reaped(pid_t pid, int status) {
  if (spawner_.Reaped(pid, status)) return;
  if (probes_.OnProcessExit(pid, status)) return;  // an exec probe
  auto found = children_.find(pid);
  if (found == children_.end()) {
    spdlog::debug("reaped orphaned descendant pid {}: {}", pid,
                  DescribeWaitStatus(status));
    output_.ForgetDescendant(pid);
    return;
  }
  Slot* slot = found->second;
  children_.erase(found);
  exit_watch_.Forget(pid);  // reaped by a sweep: its pidfd goes now
  unwatched_.erase(pid);
  output_.DrainAfterExit(slot);
  OnChildExit(slot, status);
}

void ChildTable::AfterReaping() {
  DeleteDrainedGroups();
  observer_->OnPoolChanged();
}

void ChildTable::Reap() {
  // Children with a pidfd first: their restarts then never wait for the
  // slower reaping below.
  exit_watch_.ReapNow();
  if (unwatched_.size() * kSweepWhenUnwatchedOf > children_.size()) {
    Sweep();
  } else {
    ReapKnownPids();
    ScheduleSweep();
  }
  AfterReaping();
}

void ChildTable::ReapKnownPids() {
  std::vector<pid_t> pids;
  pids.reserve(unwatched_.size() + probes_.exec_pids_.size() + 1);
  if (spawner_.pid() > 0) pids.push_back(spawner_.pid());
  for (const auto& [pid, run] : probes_.exec_pids_) pids.push_back(pid);
  pids.insert(pids.end(), unwatched_.begin(), unwatched_.end());
  for (pid_t pid : pids) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) Reaped(pid, status);
  }
}

void ChildTable::ScheduleSweep() {
  auto* handle = reinterpret_cast<uv_handle_t*>(&sweep_timer_);
  // Closing: the stop ended while this SIGCHLD was being handled.
  if (uv_is_active(handle) || uv_is_closing(handle)) return;
  const std::uint64_t now = uv_now(loop_);
  const std::uint64_t due =
      last_sweep_ms_ + children_.size() / kSweepChildrenPerMs;
  // A 0 ms timer runs at the start of the next turn: after this turn's
  // pidfds, whose readiness came with or before this SIGCHLD.
  uv_timer_start(
      &sweep_timer_,
      [](uv_timer_t* timer) {
        ChildTable* table = Owner<ChildTable>(timer);
        table->Sweep();
        table->AfterReaping();
      },
      due > now ? due - now : 0, 0);
}

void ChildTable::Sweep() {
  last_sweep_ms_ = uv_now(loop_);
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    Reaped(pid, status);
  }
}

void ChildTable::OnChildExit(Slot* slot, int status) {
  const GroupConfig& config = slot->group->config;
  // A one-shot (restart.policy on-failure or never) that exited 0 did
  // what it was for.
  const bool finished = config.restart.policy != RestartMode::kAlways &&
                        WIFEXITED(status) && WEXITSTATUS(status) == 0;
  const bool expected = stopping_ || finished ||
                        slot->state == SlotState::kStopping ||
                        slot->state == SlotState::kReplaced;
  const std::string how = DescribeWaitStatus(status);
  const auto uptime =
      std::chrono::duration_cast<Duration>(Clock::now() - slot->started);
  spdlog::log(expected ? spdlog::level::info : spdlog::level::warn,
              "{}[{}] pid {} {} after {}", config.name, slot->index, slot->pid,
              how, FormatDuration(uptime));
  channels_.PeerGone(slot, how);
  channels_.Forget(slot);
  slot->pid = 0;
  slot->exit_status = status;
  Apply(slot, SlotEvent::kExited);
  LoadChanged();
}

void ChildTable::BeginStop() {
  stopping_ = true;
  spawner_.Stop();
  uv_timer_stop(&rss_timer_);
  uv_timer_stop(&load_timer_);
  for (auto& group : groups_) {
    group->rolling.clear();
    std::vector<Slot*> slots;
    group->ForEachSlot([&slots](Slot* slot) { slots.push_back(slot); });
    for (Slot* slot : slots) Apply(slot, SlotEvent::kPoolStop);
  }
}

void ChildTable::SignalAll(int signal_number, bool jobs_too) {
  for (auto& [pid, slot] : children_) {
    if (jobs_too || slot->group->config.type != GroupType::kJob) {
      Signal(slot, signal_number);
    }
  }
}

bool ChildTable::IntakeRunning() const {
  for (const auto& [pid, slot] : children_) {
    if (slot->group->config.type != GroupType::kJob) return true;
  }
  return false;
}

Slot* ChildTable::FindChild(pid_t pid) const {
  auto found = children_.find(pid);
  return found == children_.end() ? nullptr : found->second;
}

Group* ChildTable::FindGroup(const std::string& name) const {
  for (const auto& group : groups_) {
    if (group->config.name == name && !group->removing) return group.get();
  }
  return nullptr;
}

void ChildTable::CloseSlotHandles(Slot* slot) {
  OutputCapture::ReleaseChildEnds(slot);
  if (slot->output != nullptr) slot->output->slot = nullptr;
  slot->output = nullptr;
  auto on_closed = [](uv_handle_t* handle) {
    Slot* owner = Owner<Slot>(handle);
    if (--owner->open_handles == 0) delete owner;
  };
  uv_close(reinterpret_cast<uv_handle_t*>(&slot->timer), on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&slot->heartbeat), on_closed);
}

void ChildTable::CloseAll() {
  exit_watch_.Close();
  for (uv_timer_t* timer : {&rss_timer_, &load_timer_, &sweep_timer_}) {
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(timer))) {
      uv_close(reinterpret_cast<uv_handle_t*>(timer), nullptr);
    }
  }
  for (auto& group : groups_) DropAutoscale(group.get());
  output_.CloseAll();
  channels_.CloseAll();
  for (auto& group : groups_) {
    group->ForEachSlot([this](Slot* slot) { probes_.Stop(slot); });
  }
  probes_.CloseAll();
  for (auto& group : groups_) {
    for (auto& [index, slot] : group->slots) CloseSlotHandles(slot);
    group->slots.clear();
    for (Slot* slot : group->outgoing) CloseSlotHandles(slot);
    group->outgoing.clear();
  }
}

}  // namespace workerpool
