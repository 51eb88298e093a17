#include "watcher/watcher.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <climits>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string_view>

#include "core/config.h"
#include "core/line_splitter.h"
#include "core/pool_diff.h"
#include "core/restart_policy.h"
#include "core/listen_address.h"
#include "core/routing.h"
#include "os/listen_socket.h"
#include "os/notify.h"
#include "os/spawn.h"
#include "watcher/channel.h"
#include "watcher/control.h"
#include "watcher/logging.h"

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

std::string SelfExecutable(const char* argv0) {
  char path[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n > 0) return std::string(path, n);
  return argv0;
}

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

template <typename T>
T* Owner(uv_handle_t* handle) {
  return static_cast<T*>(handle->data);
}

}  // namespace

class Watcher : public ControlTarget {
 public:
  Watcher(uv_loop_t* loop, std::string config_path, std::string self_exe)
      : loop_(loop),
        config_path_(std::move(config_path)),
        self_exe_(std::move(self_exe)) {}

  int Run(PoolConfig config);

  // ControlTarget: what `workerpool status|scale|restart|reload|stop` ask.
  nlohmann::json StatusJson() override;
  Status Scale(const std::string& group, int processes) override;
  Status RestartGroup(const std::string& group) override;
  Status Reload() override;
  void Stop() override { BeginStop("workerpool stop"); }

 private:
  struct Group;

  // One index of a group: a child process, or the place where one will be.
  struct Slot {
    Watcher* watcher = nullptr;
    Group* group = nullptr;
    int index = 0;
    pid_t pid = 0;  // 0 while no child runs in the slot
    TimePoint started;
    bool retiring = false;           // stop; remove the slot once it exits
    bool restart_requested = false;  // rolling restart: respawn on exit
    // Backoff wait while pid == 0; kill deadline after SIGTERM otherwise.
    uv_timer_t timer;
    // The child's pool channel while it runs; ready once it said hello.
    Channel* channel = nullptr;
    bool ready = false;
    bool draining = false;         // told to finish its work and exit
    std::set<std::string> routes;  // groups it opened routes to
    nlohmann::json stats = nlohmann::json::object();  // its last kStats
    std::set<std::string> refusals_logged;
    // Started only when the group sets heartbeat_timeout.
    uv_timer_t heartbeat;
    int open_handles = 2;  // timer and heartbeat; deleted when both closed
  };
  static void CloseSlotHandles(Slot* slot);

  struct Group {
    GroupConfig config;
    RestartPolicy policy;
    std::map<int, Slot*> slots;  // by index
    bool failed = false;
    bool removing = false;       // dropped by a reload: drain, then delete
    bool scaled = false;         // `workerpool scale` set processes
    uint64_t recycled = 0;
    std::vector<int> rolling;  // indices still to restart, in order
    Group(GroupConfig c)
        : config(std::move(c)), policy(config.restart, config.processes) {}
  };

  // Reads one child's output pipe and logs it line by line.
  struct OutputReader {
    Watcher* watcher = nullptr;
    uv_pipe_t pipe;
    LineSplitter splitter;
    std::string prefix;  // "group[index] pid"
  };

  // Start-up and stop.
  void StartSignals();
  void StartGroup(Group* group);
  void BeginStop(const char* why);
  void FinishIfStopped();
  void SignalJobsIfIntakeGone();
  void CloseEverything();

  // Children.
  void Spawn(Slot* slot);
  void SignalChild(Slot* slot, int signal_number);
  void StopSlot(Slot* slot);  // SIGTERM now, SIGKILL after stop_timeout
  void ReapChildren();
  void OnChildExit(Slot* slot, int status);
  void ScheduleRestart(Slot* slot, TimePoint started);
  void RemoveSlot(Slot* slot);
  void DeleteGroupIfDrained(Group* group);
  void ContinueRollingRestart(Group* group);
  void ResizeGroup(Group* group);
  std::vector<std::string> ChildEnvironment(const Group& group, int index);

  // Pool channels: routes, links, kills, heartbeats.
  void OnChannelFrame(Slot* slot, const FrameView& frame);
  void OnHello(Slot* slot);
  void OnRouteOpen(Slot* sender, const std::string& target);
  void OnKillPeer(Slot* sender, const nlohmann::json& body);
  void LinkPeers(Slot* sender, Slot* server);
  void BroadcastToSubscribers(const std::string& group, wire::FrameType type,
                              const nlohmann::json& body);
  void ForgetChannel(Slot* slot);
  void ArmHeartbeat(Slot* slot);
  Slot* FindChild(pid_t pid);
  Slot* NewSlot(Group* group, int index);

  // Output capture.
  void StartOutputReader(int fd, const Slot& slot);

  // Listen sockets, bound once here and inherited by every reactor.
  Status BindListenSockets(const PoolConfig& config);
  void CloseUnusedListenSockets();

  Status StartControl();
  void StartRollingRestart(Group* group);

  void ReportStatus();
  Group* FindGroup(const std::string& name);

  static void OnSignal(uv_signal_t* handle, int signal_number);
  static void OnSlotTimer(uv_timer_t* timer);
  static void OnStopTimer(uv_timer_t* timer);

  uv_loop_t* loop_;
  std::string config_path_;
  std::string self_exe_;
  PoolConfig config_;
  std::vector<std::unique_ptr<Group>> groups_;
  std::map<pid_t, Slot*> children_;  // live children by pid
  std::set<OutputReader*> readers_;
  // Target group -> children that opened a route to it.
  std::map<std::string, std::set<Slot*>> subscribers_;
  uint64_t refused_requests_ = 0;
  std::map<std::string, int> listen_fds_;  // by the address as written
  bool jobs_signalled_ = false;  // stop: second phase started
  std::vector<std::string> base_environment_;

  uv_signal_t sigchld_, sigterm_, sigint_, sighup_;
  uv_timer_t stop_timer_;
  bool stopping_ = false;
  bool closed_ = false;
  std::unique_ptr<ControlServer> control_server_;
  std::unique_ptr<MetricsServer> metrics_server_;
  Clock::time_point started_at_ = Clock::now();
  nlohmann::json last_reload_ = nullptr;
};

int Watcher::Run(PoolConfig config) {
  config_ = std::move(config);
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (!IsWatcherOnlyVariable(*entry)) base_environment_.push_back(*entry);
  }
  // Orphaned grandchildren are re-parented to us, so we reap them too.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  RaiseFileLimit();
  if (Status bound = BindListenSockets(config_); !bound.ok()) {
    spdlog::critical("{}", bound.message());
    return 2;
  }
  if (Status control = StartControl(); !control.ok()) {
    spdlog::critical("{}", control.message());
    return 2;
  }
  StartSignals();
  uv_timer_init(loop_, &stop_timer_);
  stop_timer_.data = this;

  spdlog::info("pool {} starting: {} groups from {}", config_.name,
               config_.groups.size(), config_path_);
  for (const GroupConfig& group_config : config_.groups) {
    groups_.push_back(std::make_unique<Group>(group_config));
    StartGroup(groups_.back().get());
  }
  NotifySystemd("READY=1");
  ReportStatus();
  spdlog::info("pool {} ready: {} children", config_.name, children_.size());

  uv_run(loop_, UV_RUN_DEFAULT);
  spdlog::info("pool {} stopped", config_.name);
  return 0;
}

void Watcher::StartSignals() {
  struct Entry {
    uv_signal_t* handle;
    int number;
  };
  for (Entry entry : {Entry{&sigchld_, SIGCHLD}, Entry{&sigterm_, SIGTERM},
                      Entry{&sigint_, SIGINT}, Entry{&sighup_, SIGHUP}}) {
    uv_signal_init(loop_, entry.handle);
    entry.handle->data = this;
    uv_signal_start(entry.handle, OnSignal, entry.number);
  }
  // A child or client closing its end must not kill the Watcher.
  signal(SIGPIPE, SIG_IGN);
}

void Watcher::OnSignal(uv_signal_t* handle, int signal_number) {
  Watcher* self = Owner<Watcher>(reinterpret_cast<uv_handle_t*>(handle));
  switch (signal_number) {
    case SIGCHLD:
      self->ReapChildren();
      break;
    case SIGTERM:
    case SIGINT:
      self->BeginStop(signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
      break;
    case SIGHUP:
      self->Reload();
      break;
  }
}

void Watcher::StartGroup(Group* group) {
  for (int index = 0; index < group->config.processes; ++index) {
    Spawn(NewSlot(group, index));
  }
}

Watcher::Slot* Watcher::NewSlot(Group* group, int index) {
  Slot* slot = new Slot;
  slot->watcher = this;
  slot->group = group;
  slot->index = index;
  uv_timer_init(loop_, &slot->timer);
  slot->timer.data = slot;
  uv_timer_init(loop_, &slot->heartbeat);
  slot->heartbeat.data = slot;
  group->slots[index] = slot;
  return slot;
}

// Later entries win: a group's `env` overrides the Watcher's environment, and
// the WORKERPOOL_* variables override both. getenv() returns the first of
// duplicate names, so duplicates must not reach the child.
static std::vector<std::string> WithoutShadowedVariables(
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

std::vector<std::string> Watcher::ChildEnvironment(const Group& group,
                                                   int index) {
  std::vector<std::string> env = base_environment_;
  for (const auto& [key, value] : group.config.env) {
    env.push_back(key + "=" + value);
  }
  env.push_back("WORKERPOOL_POOL=" + config_.name);
  env.push_back("WORKERPOOL_GROUP=" + group.config.name);
  env.push_back(std::string("WORKERPOOL_TYPE=") +
                GroupTypeName(group.config.type));
  env.push_back("WORKERPOOL_INDEX=" + std::to_string(index));
  if (const auto& rabbitmq = group.config.rabbitmq) {
    nlohmann::json section = {{"url", rabbitmq->url},
                              {"queues", rabbitmq->queues},
                              {"declare", rabbitmq->declare},
                              {"prefetch", rabbitmq->prefetch},
                              {"max_retries", rabbitmq->max_retries},
                              {"dead_letter_queue", rabbitmq->dead_letter_queue},
                              {"routes_to", group.config.routes_to}};
    env.push_back("WORKERPOOL_RABBITMQ=" + section.dump());
  }
  return env;
}

void Watcher::Spawn(Slot* slot) {
  const GroupConfig& config = slot->group->config;
  SpawnSpec spec;
  spec.argv = config.command;
  if (!spec.argv.empty() && spec.argv[0] == "workerpool") {
    spec.argv[0] = self_exe_;
  }
  int channel_fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel_fds) != 0) {
    spdlog::error("cannot start {}[{}]: socketpair: {}", config.name,
                  slot->index, strerror(errno));
    ScheduleRestart(slot, Clock::now());
    return;
  }
  spec.env = ChildEnvironment(*slot->group, slot->index);
  if (config.type == GroupType::kReactor && !config.listen.empty()) {
    // systemd's socket activation protocol: fds from 3, then our channel.
    std::string names;
    for (const std::string& address : config.listen) {
      spec.pass_fds.push_back(listen_fds_.at(address));
      if (!names.empty()) names += ":";
      names += ParseListenAddress(address)->FdName();
    }
    spec.env.push_back("LISTEN_FDS=" + std::to_string(spec.pass_fds.size()));
    spec.env.push_back("LISTEN_FDNAMES=" + names);
    spec.set_listen_pid = true;
  }
  spec.pass_fds.push_back(channel_fds[1]);
  spec.env.push_back("WORKERPOOL_IPC_FD=" +
                     std::to_string(2 + spec.pass_fds.size()));
  spec.env = WithoutShadowedVariables(std::move(spec.env));
  spec.cwd = config.cwd;
  if (geteuid() == 0) {
    spec.uid = config.uid;
    spec.gid = config.gid;
  }
  TimePoint now = Clock::now();
  Result<SpawnedChild> child = SpawnChild(spec);
  close(channel_fds[1]);
  if (!child.ok()) {
    close(channel_fds[0]);
    spdlog::error("cannot start {}[{}]: {}", config.name, slot->index,
                  child.status().message());
    ScheduleRestart(slot, now);
    return;
  }
  slot->pid = child->pid;
  slot->started = now;
  slot->ready = false;
  slot->draining = false;
  slot->stats = nlohmann::json::object();
  children_[slot->pid] = slot;
  slot->channel = Channel::Open(
      loop_, channel_fds[0],
      [this](Channel* channel, const FrameView& frame) {
        OnChannelFrame(static_cast<Slot*>(channel->owner), frame);
      },
      [this](Channel* channel) {
        // The child closed its end: it is exiting; SIGCHLD follows.
        Slot* owner = static_cast<Slot*>(channel->owner);
        if (owner != nullptr && owner->channel == channel) {
          owner->channel = nullptr;
        }
      });
  if (slot->channel != nullptr) slot->channel->owner = slot;
  spdlog::info("spawned {}[{}] pid {}", config.name, slot->index, slot->pid);
  StartOutputReader(child->output_fd, *slot);
}

void Watcher::SignalChild(Slot* slot, int signal_number) {
  if (slot->pid <= 0) return;
  // The child leads its own process group; signal the group so helpers it
  // started go too, and fall back to the pid if it left the group.
  if (kill(-slot->pid, signal_number) != 0) kill(slot->pid, signal_number);
}

void Watcher::StopSlot(Slot* slot) {
  if (slot->pid <= 0) return;
  if (slot->ready && slot->channel != nullptr) {
    // Drain: its senders stop sending to it and close their links once
    // their requests are answered; then it exits by itself.
    slot->draining = true;
    BroadcastToSubscribers(slot->group->config.name,
                           wire::FrameType::kPeerDraining,
                           {{"group", slot->group->config.name},
                            {"index", slot->index},
                            {"pid", slot->pid}});
    slot->channel->Send(wire::FrameType::kDrain, nlohmann::json::object());
  } else {
    SignalChild(slot, SIGTERM);
  }
  uv_timer_start(&slot->timer, OnSlotTimer,
                 static_cast<uint64_t>(config_.stop_timeout.count()), 0);
}

void Watcher::OnSlotTimer(uv_timer_t* timer) {
  Slot* slot = static_cast<Slot*>(timer->data);
  Watcher* self = slot->watcher;
  if (slot->pid > 0) {
    spdlog::warn(
        "{}[{}] pid {} still running {} after it was told to stop: "
        "SIGKILL",
        slot->group->config.name, slot->index, slot->pid,
        FormatDuration(self->config_.stop_timeout));
    self->SignalChild(slot, SIGKILL);
    return;
  }
  if (!self->stopping_ && !slot->group->failed) self->Spawn(slot);
}

void Watcher::ReapChildren() {
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    auto found = children_.find(pid);
    if (found == children_.end()) {
      spdlog::debug("reaped orphaned descendant pid {}: {}", pid,
                    DescribeWaitStatus(status));
      continue;
    }
    Slot* slot = found->second;
    children_.erase(found);
    OnChildExit(slot, status);
  }
  FinishIfStopped();
}

void Watcher::OnChildExit(Slot* slot, int status) {
  Group* group = slot->group;
  const bool expected = stopping_ || slot->retiring || slot->restart_requested;
  std::string how = DescribeWaitStatus(status);
  auto uptime =
      std::chrono::duration_cast<Duration>(Clock::now() - slot->started);
  if (expected) {
    spdlog::info("{}[{}] pid {} {} after {}", group->config.name, slot->index,
                 slot->pid, how, FormatDuration(uptime));
  } else {
    spdlog::warn("{}[{}] pid {} {} after {}", group->config.name, slot->index,
                 slot->pid, how, FormatDuration(uptime));
  }
  uv_timer_stop(&slot->timer);
  BroadcastToSubscribers(group->config.name, wire::FrameType::kPeerGone,
                         {{"group", group->config.name},
                          {"index", slot->index},
                          {"pid", slot->pid},
                          {"how", how}});
  ForgetChannel(slot);
  slot->pid = 0;
  if (stopping_) {
    SignalJobsIfIntakeGone();
    return;
  }

  if (slot->retiring &&
      (group->removing || slot->index >= group->config.processes)) {
    RemoveSlot(slot);
    return;
  }
  slot->retiring = false;
  if (slot->restart_requested) {
    slot->restart_requested = false;
    Spawn(slot);
    ContinueRollingRestart(group);
    return;
  }
  if (group->failed) return;
  ScheduleRestart(slot, slot->started);
}

void Watcher::ScheduleRestart(Slot* slot, TimePoint started) {
  Group* group = slot->group;
  RestartDecision decision =
      group->policy.OnChildExit(slot->index, started, Clock::now());
  if (decision.group_failed) {
    if (!group->failed) {
      group->failed = true;
      spdlog::error(
          "group {} failed: more than {} restarts within {}; not restarting "
          "it until reload or `workerpool restart {}`",
          group->config.name, group->config.restart.intensity.max_restarts,
          FormatDuration(group->config.restart.intensity.period),
          group->config.name);
      ReportStatus();
    }
    return;
  }
  if (decision.delay.count() == 0) {
    Spawn(slot);
    return;
  }
  spdlog::info("restarting {}[{}] in {}", group->config.name, slot->index,
               FormatDuration(decision.delay));
  uv_timer_start(&slot->timer, OnSlotTimer,
                 static_cast<uint64_t>(decision.delay.count()), 0);
}

void Watcher::RemoveSlot(Slot* slot) {
  Group* group = slot->group;
  group->slots.erase(slot->index);
  CloseSlotHandles(slot);
  DeleteGroupIfDrained(group);
}

void Watcher::DeleteGroupIfDrained(Group* group) {
  if (!group->removing || !group->slots.empty()) return;
  spdlog::info("group {} removed", group->config.name);
  std::erase_if(groups_, [group](const std::unique_ptr<Group>& g) {
    return g.get() == group;
  });
  ReportStatus();
}

void Watcher::ContinueRollingRestart(Group* group) {
  while (!group->rolling.empty()) {
    int index = group->rolling.front();
    group->rolling.erase(group->rolling.begin());
    auto found = group->slots.find(index);
    if (found == group->slots.end()) continue;
    Slot* slot = found->second;
    if (slot->pid <= 0 || slot->retiring) continue;  // starts anew anyway
    // One child at a time: the group never drops below processes - 1.
    slot->restart_requested = true;
    StopSlot(slot);
    return;
  }
}

void Watcher::ResizeGroup(Group* group) {
  const int wanted = group->config.processes;
  group->policy.Resize(wanted);
  // Shrink: the highest indices go, so 0..processes-1 stay dense.
  for (auto& [index, slot] : group->slots) {
    if (index >= wanted && !slot->retiring) {
      slot->retiring = true;
      if (slot->pid > 0) {
        StopSlot(slot);
      } else {
        uv_timer_stop(&slot->timer);
      }
    }
  }
  std::vector<Slot*> idle;
  for (auto& [index, slot] : group->slots) {
    if (slot->retiring && slot->pid <= 0) idle.push_back(slot);
  }
  for (Slot* slot : idle) RemoveSlot(slot);
  // Grow: a retiring slot still inside the new size is respawned on exit.
  for (int index = 0; index < wanted; ++index) {
    if (group->slots.count(index) != 0) continue;
    Slot* slot = NewSlot(group, index);
    if (!group->failed) Spawn(slot);
  }
}

void Watcher::StartOutputReader(int fd, const Slot& slot) {
  auto* reader = new OutputReader;
  reader->watcher = this;
  reader->prefix = slot.group->config.name + "[" + std::to_string(slot.index) +
                   "] " + std::to_string(slot.pid);
  uv_pipe_init(loop_, &reader->pipe, 0);
  reader->pipe.data = reader;
  if (uv_pipe_open(&reader->pipe, fd) != 0) {
    close(fd);
    uv_close(reinterpret_cast<uv_handle_t*>(&reader->pipe),
             [](uv_handle_t* h) { delete Owner<OutputReader>(h); });
    return;
  }
  readers_.insert(reader);
  auto on_alloc = [](uv_handle_t*, size_t, uv_buf_t* buf) {
    // One loop thread, and each read is consumed before the next alloc.
    static char buffer[64 * 1024];
    *buf = uv_buf_init(buffer, sizeof(buffer));
  };
  auto on_read = [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* reader = Owner<OutputReader>(reinterpret_cast<uv_handle_t*>(stream));
    auto log_line = [reader](std::string_view line) {
      spdlog::info("{}: {}", reader->prefix, line);
    };
    if (nread > 0) {
      reader->splitter.Feed(std::string_view(buf->base, nread), log_line);
      return;
    }
    if (nread == 0) return;  // EAGAIN
    reader->splitter.Finish(log_line);
    reader->watcher->readers_.erase(reader);
    uv_close(reinterpret_cast<uv_handle_t*>(stream),
             [](uv_handle_t* h) { delete Owner<OutputReader>(h); });
    reader->watcher->FinishIfStopped();
  };
  uv_read_start(reinterpret_cast<uv_stream_t*>(&reader->pipe), on_alloc,
                on_read);
}

void Watcher::BeginStop(const char* why) {
  if (stopping_) {
    spdlog::warn("{} again while stopping: SIGKILL to every child", why);
    for (auto& [pid, slot] : children_) SignalChild(slot, SIGKILL);
    return;
  }
  stopping_ = true;
  if (metrics_server_) metrics_server_->Close();
  spdlog::info("{}: stopping {} children (SIGKILL after {})", why,
               children_.size(), FormatDuration(config_.stop_timeout));
  NotifySystemd("STOPPING=1\nSTATUS=stopping");
  for (auto& group : groups_) {
    for (auto& [index, slot] : group->slots) uv_timer_stop(&slot->timer);
  }
  // Intake first: reactors and services stop taking work and finish what
  // they sent; jobs follow once nobody can send them more.
  for (auto& [pid, slot] : children_) {
    if (slot->group->config.type != GroupType::kJob) SignalChild(slot, SIGTERM);
  }
  uv_timer_start(&stop_timer_, OnStopTimer,
                 static_cast<uint64_t>(config_.stop_timeout.count()), 0);
  SignalJobsIfIntakeGone();
  FinishIfStopped();
}

void Watcher::SignalJobsIfIntakeGone() {
  if (!stopping_ || jobs_signalled_) return;
  for (auto& [pid, slot] : children_) {
    if (slot->group->config.type != GroupType::kJob) return;
  }
  jobs_signalled_ = true;
  for (auto& [pid, slot] : children_) SignalChild(slot, SIGTERM);
}

void Watcher::OnStopTimer(uv_timer_t* timer) {
  Watcher* self = static_cast<Watcher*>(timer->data);
  spdlog::warn("{} children still running after {}: SIGKILL",
               self->children_.size(),
               FormatDuration(self->config_.stop_timeout));
  for (auto& [pid, slot] : self->children_) self->SignalChild(slot, SIGKILL);
  // Output pipes held open by stray descendants must not keep us alive.
  self->FinishIfStopped();
}

void Watcher::FinishIfStopped() {
  if (!stopping_ || closed_ || !children_.empty()) return;
  // Give output readers the chance to drain; a descendant that kept a pipe
  // open past the stop timeout does not hold the exit.
  if (!readers_.empty() &&
      uv_is_active(reinterpret_cast<uv_handle_t*>(&stop_timer_))) {
    return;
  }
  CloseEverything();
}

void Watcher::CloseEverything() {
  closed_ = true;
  if (control_server_) control_server_->Close();
  auto close_handle = [](void* handle) {
    uv_handle_t* h = static_cast<uv_handle_t*>(handle);
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  };
  for (uv_signal_t* handle : {&sigchld_, &sigterm_, &sigint_, &sighup_}) {
    close_handle(handle);
  }
  close_handle(&stop_timer_);
  for (OutputReader* reader : readers_) {
    reader->splitter.Finish([reader](std::string_view line) {
      spdlog::info("{}: {}", reader->prefix, line);
    });
    uv_close(reinterpret_cast<uv_handle_t*>(&reader->pipe),
             [](uv_handle_t* h) { delete Owner<OutputReader>(h); });
  }
  readers_.clear();
  for (auto& group : groups_) {
    for (auto& [index, slot] : group->slots) CloseSlotHandles(slot);
    group->slots.clear();
  }
}

Status Watcher::Reload() {
  if (stopping_) return Status::Error("the pool is stopping");
  NotifySystemd("RELOADING=1\nSTATUS=reloading " + config_path_);
  spdlog::info("SIGHUP: reloading {}", config_path_);
  ConfigLoad load = LoadConfigFile(config_path_);
  if (!load.ok()) {
    for (const ConfigError& error : load.errors) {
      spdlog::error("reload failed, keeping the running pool: {}",
                    error.ToString());
    }
    NotifySystemd("READY=1\nSTATUS=reload failed (" +
                  load.errors.front().ToString() + "); running the old pool");
    std::string text = load.ErrorText();
    if (!text.empty() && text.back() == '\n') text.pop_back();
    last_reload_ = {{"ok", false}, {"error", text}, {"unix", time(nullptr)}};
    return Status::Error(text);
  }
  PoolConfig next = std::move(*load.config);
  if (Status bound = BindListenSockets(next); !bound.ok()) {
    spdlog::error("reload failed, keeping the running pool: {}",
                  bound.message());
    CloseUnusedListenSockets();  // the ones this attempt bound
    NotifySystemd("READY=1\nSTATUS=reload failed (" + bound.message() +
                  "); running the old pool");
    last_reload_ = {
        {"ok", false}, {"error", bound.message()}, {"unix", time(nullptr)}};
    return bound;
  }
  PoolDiff diff = DiffPools(config_, next);
  spdlog::info("reload: {}", diff.Summary());
  if (next.log != config_.log) SetupLogging(next.log);

  for (const GroupChange& change : diff.changes) {
    Group* group = FindGroup(change.group);
    const GroupConfig* next_config = next.FindGroup(change.group);
    switch (change.kind) {
      case GroupChange::Kind::kAdded: {
        groups_.push_back(std::make_unique<Group>(*next_config));
        StartGroup(groups_.back().get());
        break;
      }
      case GroupChange::Kind::kRemoved: {
        group->removing = true;
        group->rolling.clear();
        std::vector<Slot*> idle;
        for (auto& [index, slot] : group->slots) {
          slot->retiring = true;
          if (slot->pid > 0) {
            StopSlot(slot);
          } else {
            idle.push_back(slot);
          }
        }
        for (Slot* slot : idle) RemoveSlot(slot);
        if (idle.empty()) DeleteGroupIfDrained(group);
        break;
      }
      case GroupChange::Kind::kUnchanged:
      case GroupChange::Kind::kResized:
      case GroupChange::Kind::kRestarted: {
        const bool restart = change.kind == GroupChange::Kind::kRestarted;
        group->config = *next_config;
        group->scaled = false;  // the file's processes win again
        group->policy.SetConfig(next_config->restart);
        if (group->failed) {
          // A reload gives a failed group a fresh start.
          group->failed = false;
          group->policy.Reset();
          for (auto& [index, slot] : group->slots) {
            if (slot->pid <= 0 && !slot->retiring) Spawn(slot);
          }
        }
        ResizeGroup(group);
        if (restart) StartRollingRestart(group);
        break;
      }
    }
  }
  config_ = std::move(next);
  // Reactors still draining keep their own copies of removed sockets.
  CloseUnusedListenSockets();
  last_reload_ = {{"ok", true}, {"summary", diff.Summary()},
                  {"unix", time(nullptr)}};
  NotifySystemd("READY=1");
  ReportStatus();
  return Status::Ok();
}

void Watcher::StartRollingRestart(Group* group) {
  group->rolling.clear();
  for (auto& [index, slot] : group->slots) {
    if (!slot->retiring) group->rolling.push_back(index);
  }
  ContinueRollingRestart(group);
}

Status Watcher::StartControl() {
  Result<std::unique_ptr<ControlServer>> control =
      ControlServer::Start(loop_, config_.control_socket, this);
  if (!control.ok()) return control.status();
  control_server_ = std::move(*control);
  spdlog::info("control socket {}", config_.control_socket);
  if (!config_.metrics.empty()) {
    Result<std::unique_ptr<MetricsServer>> metrics =
        MetricsServer::Start(loop_, config_.metrics, this);
    if (!metrics.ok()) return metrics.status();
    metrics_server_ = std::move(*metrics);
    spdlog::info("metrics on http://{}/metrics", config_.metrics);
  }
  return Status::Ok();
}

Status Watcher::Scale(const std::string& name, int processes) {
  if (stopping_) return Status::Error("the pool is stopping");
  Group* group = FindGroup(name);
  if (group == nullptr) return Status::Error("unknown group '" + name + "'");
  if (processes < 0 || processes > 100000) {
    return Status::Error("processes must be 0..100000, got " +
                         std::to_string(processes));
  }
  spdlog::info("scale {}: {} -> {} processes (until the next reload)", name,
               group->config.processes, processes);
  group->config.processes = processes;
  group->scaled = true;
  ResizeGroup(group);
  ReportStatus();
  return Status::Ok();
}

Status Watcher::RestartGroup(const std::string& name) {
  if (stopping_) return Status::Error("the pool is stopping");
  Group* group = FindGroup(name);
  if (group == nullptr) return Status::Error("unknown group '" + name + "'");
  spdlog::info("rolling restart of group {}", name);
  if (group->failed) {
    group->failed = false;
    group->policy.Reset();
    for (auto& [index, slot] : group->slots) {
      if (slot->pid <= 0 && !slot->retiring) Spawn(slot);
    }
  }
  StartRollingRestart(group);
  return Status::Ok();
}

nlohmann::json Watcher::StatusJson() {
  using nlohmann::json;
  const auto now = Clock::now();
  json groups = json::array();
  for (auto& group : groups_) {
    json children = json::array();
    json app = json::array();
    json requests = json::object();
    uint64_t inflight = 0, queued = 0;
    int live = 0, ready = 0;
    for (auto& [index, slot] : group->slots) {
      if (slot->pid <= 0) continue;
      ++live;
      if (slot->ready) ++ready;
      children.push_back(
          {{"index", index},
           {"pid", slot->pid},
           {"uptime_ms",
            std::chrono::duration_cast<Duration>(now - slot->started).count()},
           {"ready", slot->ready},
           {"draining", slot->draining || slot->retiring}});
      for (auto& [key, value] : slot->stats.items()) {
        if (key == "app") {
          if (value.is_object() && !value.empty()) {
            json entry = value;
            entry["index"] = index;
            entry["pid"] = slot->pid;
            app.push_back(entry);
          }
        } else if (value.is_number_unsigned()) {
          uint64_t number = value.get<uint64_t>();
          if (key == "inflight") {
            inflight += number;
          } else if (key == "queued") {
            queued += number;
          } else {
            requests[key] = requests.value(key, uint64_t{0}) + number;
          }
        }
      }
    }
    std::string state = group->removing                   ? "removing"
                        : group->failed                   ? "failed"
                        : live < group->config.processes ? "starting"
                                                          : "running";
    groups.push_back({{"name", group->config.name},
                      {"type", GroupTypeName(group->config.type)},
                      {"desired", group->config.processes},
                      {"live", live},
                      {"ready", ready},
                      {"restarts", group->policy.restarts()},
                      {"state", state},
                      {"scaled_until_reload", group->scaled},
                      {"inflight", inflight},
                      {"queued", queued},
                      {"requests", requests},
                      {"recycled", group->recycled},
                      {"app", app},
                      {"children", children}});
  }
  return {{"pool", config_.name},
          {"config", config_path_},
          {"pid", getpid()},
          {"state", stopping_ ? "stopping" : "running"},
          {"uptime_ms",
           std::chrono::duration_cast<Duration>(now - started_at_).count()},
          {"last_reload", last_reload_},
          {"refused_routes", refused_requests_},
          {"groups", groups}};
}


Status Watcher::BindListenSockets(const PoolConfig& config) {
  for (const GroupConfig& group : config.groups) {
    if (group.type != GroupType::kReactor) continue;
    for (const std::string& text : group.listen) {
      if (listen_fds_.count(text) != 0) continue;
      Result<ListenAddress> address = ParseListenAddress(text);
      if (!address.ok()) {
        return Status::Error("group " + group.name + ": listen " +
                             address.status().message());
      }
      Result<int> fd = BindListenSocket(*address);
      if (!fd.ok()) {
        return Status::Error("group " + group.name + ": " +
                             fd.status().message());
      }
      listen_fds_[text] = *fd;
      spdlog::info("listening on {} for group {}", text, group.name);
    }
  }
  return Status::Ok();
}

void Watcher::CloseUnusedListenSockets() {
  for (auto it = listen_fds_.begin(); it != listen_fds_.end();) {
    bool used = false;
    for (const GroupConfig& group : config_.groups) {
      for (const std::string& address : group.listen) used |= address == it->first;
    }
    if (used) {
      ++it;
      continue;
    }
    spdlog::info("closing listen socket {}", it->first);
    close(it->second);
    it = listen_fds_.erase(it);
  }
}

void Watcher::CloseSlotHandles(Slot* slot) {
  auto on_closed = [](uv_handle_t* handle) {
    Slot* owner = Owner<Slot>(handle);
    if (--owner->open_handles == 0) delete owner;
  };
  uv_close(reinterpret_cast<uv_handle_t*>(&slot->timer), on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&slot->heartbeat), on_closed);
}

void Watcher::OnChannelFrame(Slot* slot, const FrameView& frame) {
  if (slot == nullptr || slot->pid <= 0) return;
  nlohmann::json body =
      nlohmann::json::parse(frame.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) body = nlohmann::json::object();
  switch (frame.header.type) {
    case wire::FrameType::kHello:
      OnHello(slot);
      break;
    case wire::FrameType::kRouteOpen: {
      auto group = body.find("group");
      OnRouteOpen(slot, group != body.end() && group->is_string()
                            ? group->get<std::string>()
                            : std::string());
      break;
    }
    case wire::FrameType::kKillPeer:
      OnKillPeer(slot, body);
      break;
    case wire::FrameType::kHeartbeat:
      if (uv_is_active(reinterpret_cast<uv_handle_t*>(&slot->heartbeat))) {
        uv_timer_again(&slot->heartbeat);
      }
      break;
    case wire::FrameType::kStats:
      slot->stats = std::move(body);
      break;
    default:
      spdlog::warn(
          "{}[{}] pid {} sent an unexpected frame type {} on its "
          "pool channel; ignored",
          slot->group->config.name, slot->index, slot->pid,
          static_cast<int>(frame.header.type));
  }
}

void Watcher::OnHello(Slot* slot) {
  if (slot->ready) return;
  slot->ready = true;
  const GroupConfig& config = slot->group->config;
  slot->channel->Send(wire::FrameType::kConfig,
                      {{"max_inflight", config.max_inflight},
                       {"heartbeat_ms", config.heartbeat_timeout.count()}});
  ArmHeartbeat(slot);
  if (slot->draining || stopping_) return;
  // Every child that routes to this group gets a link to the newcomer.
  auto subscribers = subscribers_.find(config.name);
  if (subscribers == subscribers_.end()) return;
  for (Slot* sender : subscribers->second) LinkPeers(sender, slot);
}

void Watcher::ArmHeartbeat(Slot* slot) {
  const Duration timeout = slot->group->config.heartbeat_timeout;
  if (timeout.count() <= 0) return;
  uv_timer_start(
      &slot->heartbeat,
      [](uv_timer_t* timer) {
        Slot* hung = static_cast<Slot*>(timer->data);
        if (hung->pid <= 0) return;
        spdlog::error("{}[{}] pid {} is hung: no heartbeat for {}; SIGKILL",
                      hung->group->config.name, hung->index, hung->pid,
                      FormatDuration(hung->group->config.heartbeat_timeout));
        hung->watcher->SignalChild(hung, SIGKILL);
      },
      static_cast<uint64_t>(timeout.count()),
      static_cast<uint64_t>(timeout.count()));
}

void Watcher::OnRouteOpen(Slot* sender, const std::string& target) {
  const std::string& from = sender->group->config.name;
  Status allowed = CheckRequestRoute(config_, from, target);
  if (!allowed.ok()) {
    ++refused_requests_;
    if (sender->refusals_logged.insert(target).second) {
      spdlog::warn("refused {}[{}] pid {} -> {}: {}", from, sender->index,
                   sender->pid, target, allowed.message());
    }
    sender->channel->Send(wire::FrameType::kRouteRefused,
                          {{"group", target}, {"error", allowed.message()}});
    return;
  }
  Group* group = FindGroup(target);
  sender->routes.insert(target);
  subscribers_[target].insert(sender);
  if (group != nullptr) {
    for (auto& [index, server] : group->slots) {
      if (server->pid > 0 && server->ready && !server->draining) {
        LinkPeers(sender, server);
      }
    }
  }
  const GroupConfig* config = config_.FindGroup(target);
  sender->channel->Send(
      wire::FrameType::kRouteOpened,
      {{"group", target},
       {"max_inflight", config->max_inflight},
       {"queue_limit", config->queue_limit},
       {"request_timeout_ms", config->request_timeout.count()}});
}

void Watcher::LinkPeers(Slot* sender, Slot* server) {
  if (sender->channel == nullptr || server->channel == nullptr) return;
  int ends[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
    spdlog::error("cannot link {}[{}] to {}[{}]: socketpair: {}",
                  sender->group->config.name, sender->index,
                  server->group->config.name, server->index, strerror(errno));
    return;
  }
  server->channel->Send(wire::FrameType::kPeerAdded,
                        {{"role", "server"},
                         {"group", sender->group->config.name},
                         {"index", sender->index},
                         {"pid", sender->pid}},
                        ends[0]);
  sender->channel->Send(wire::FrameType::kPeerAdded,
                        {{"role", "sender"},
                         {"group", server->group->config.name},
                         {"index", server->index},
                         {"pid", server->pid}},
                        ends[1]);
}

void Watcher::OnKillPeer(Slot* sender, const nlohmann::json& body) {
  pid_t pid = body.value("pid", 0);
  std::string reason = body.value("reason", std::string("no reason given"));
  Slot* target = FindChild(pid);
  if (target == nullptr ||
      sender->routes.count(target->group->config.name) == 0) {
    spdlog::warn(
        "{}[{}] pid {} asked to kill pid {}, which it does not send "
        "to; ignored",
        sender->group->config.name, sender->index, sender->pid, pid);
    return;
  }
  spdlog::warn("killing {}[{}] pid {}: {} (reported by {}[{}] pid {})",
               target->group->config.name, target->index, target->pid, reason,
               sender->group->config.name, sender->index, sender->pid);
  SignalChild(target, SIGKILL);
}

void Watcher::BroadcastToSubscribers(const std::string& group,
                                     wire::FrameType type,
                                     const nlohmann::json& body) {
  auto subscribers = subscribers_.find(group);
  if (subscribers == subscribers_.end()) return;
  for (Slot* sender : subscribers->second) {
    if (sender->channel != nullptr) sender->channel->Send(type, body);
  }
}

void Watcher::ForgetChannel(Slot* slot) {
  uv_timer_stop(&slot->heartbeat);
  if (slot->channel != nullptr) {
    slot->channel->Close();
    slot->channel = nullptr;
  }
  for (const std::string& target : slot->routes) {
    auto subscribers = subscribers_.find(target);
    if (subscribers != subscribers_.end()) subscribers->second.erase(slot);
  }
  slot->routes.clear();
  slot->refusals_logged.clear();
  slot->ready = false;
}

Watcher::Slot* Watcher::FindChild(pid_t pid) {
  auto found = children_.find(pid);
  return found == children_.end() ? nullptr : found->second;
}

Watcher::Group* Watcher::FindGroup(const std::string& name) {
  for (auto& group : groups_) {
    if (group->config.name == name && !group->removing) return group.get();
  }
  return nullptr;
}

void Watcher::ReportStatus() {
  size_t desired = 0;
  size_t failed = 0;
  for (auto& group : groups_) {
    if (group->removing) continue;
    desired += group->config.processes;
    if (group->failed) ++failed;
  }
  std::string status = "STATUS=" + std::to_string(children_.size()) + "/" +
                       std::to_string(desired) + " children running in " +
                       std::to_string(groups_.size()) + " groups";
  if (failed > 0) status += ", " + std::to_string(failed) + " failed";
  NotifySystemd(status);
}

int RunWatcher(const std::string& config_path, const char* argv0) {
  ConfigLoad load = LoadConfigFile(config_path);
  if (!load.ok()) {
    std::fputs(load.ErrorText().c_str(), stderr);
    return 1;
  }
  SetupLogging(load.config->log);
  uv_loop_t* loop = uv_default_loop();
  Watcher watcher(loop, config_path, SelfExecutable(argv0));
  int code = watcher.Run(std::move(*load.config));
  uv_loop_close(loop);
  return code;
}

}  // namespace workerpool
