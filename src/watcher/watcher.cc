#include "watcher/watcher.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string_view>
#include <tuple>

#include "core/config.h"
#include "core/line_splitter.h"
#include "core/listen_address.h"
#include "core/pool_diff.h"
#include "core/restart_policy.h"
#include "core/routing.h"
#include "os/builtin_path.h"
#include "os/config_file.h"
#include "os/listen_socket.h"
#include "os/notify.h"
#include "os/spawn.h"
#include "watcher/channel.h"
#include "watcher/control.h"
#include "watcher/logging.h"

extern char** environ;

namespace workerpool {
namespace {

// Every read of a child's output lands here (one loop thread, and each read
// is consumed before the next): one buffer for all pipes, not one each.
constexpr size_t kOutputBufferSize = 64 * 1024;
char* OutputBuffer() {
  static char buffer[kOutputBufferSize];
  return buffer;
}

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

// "123.4MB", for recycling messages.
std::string FormatMegabytes(std::int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1fMB",
                static_cast<double>(bytes) / (1024.0 * 1024.0));
  return text;
}

template <typename T>
T* Owner(uv_handle_t* handle) {
  return static_cast<T*>(handle->data);
}

}  // namespace

// How long a child may take to say hello before it is taken as up anyway:
// children that do not use the client library never say it. A group whose
// children have spoken the protocol waits longer, since hello is what links
// a child to its senders.
constexpr Duration kPlainStartGrace{1000};
constexpr Duration kProtocolStartGrace{30000};
// max_rss is checked this often, and only while some group sets it.
constexpr uint64_t kRssSampleMs = 1000;

class Watcher : public ControlTarget {
 public:
  Watcher(uv_loop_t* loop, std::string config_path, std::string self_exe)
      : loop_(loop),
        config_path_(std::move(config_path)),
        self_exe_(std::move(self_exe)),
        builtin_exe_(BuiltinExecutable(self_exe_)),
        random_(std::random_device{}()) {}

  int Run(PoolConfig config);

  // ControlTarget: what `workerpool status|scale|restart|reload|stop` ask.
  nlohmann::json StatusJson() override;
  Status Scale(const std::string& group, int processes) override;
  Status RestartGroup(const std::string& group) override;
  Status Reload() override;
  void Stop() override { BeginStop("workerpool stop"); }

 private:
  struct Group;

  // What the pool is doing, for systemd and for queueing reloads: a reload
  // (or the start) is finished once every group is up again and every child
  // it replaced or removed has exited.
  enum class Phase { kStarting, kRunning, kReloading, kStopping };

  struct OutputReader;

  // What a slot's timer is counting down to.
  enum class TimerUse { kNone, kBackoff, kStartGrace, kKillDeadline };

  // One index of a group: a child process, or the place where one will be.
  struct Slot {
    Watcher* watcher = nullptr;
    Group* group = nullptr;
    int index = 0;
    pid_t pid = 0;  // 0 while no child runs in the slot
    TimePoint started;
    int generation = 0;     // the group's generation it was started with
    bool retiring = false;  // stop; remove the slot once it exits
    // Replaced (rolling restart, recycling): kept in Group::outgoing and
    // serving until its replacement is up, then drained.
    bool outgoing = false;
    Slot* replaces = nullptr;     // the outgoing child this one replaces
    Slot* replaced_by = nullptr;  // for an outgoing slot
    TimerUse timer_use = TimerUse::kNone;
    uv_timer_t timer;
    // The child's pool channel while it runs; ready once it said hello.
    Channel* channel = nullptr;
    bool ready = false;
    bool up = false;               // said hello, or ran through the start grace
    bool draining = false;         // told to finish its work and exit
    std::set<std::string> routes;  // groups it opened routes to
    nlohmann::json stats = nlohmann::json::object();  // its last kStats
    // Groups it asked for and was refused; asked again for it when a
    // reload allows them.
    std::set<std::string> refused_routes;
    std::int64_t recycle_after = 0;  // answered requests; 0: never
    // Started only when the group sets heartbeat_timeout.
    uv_timer_t heartbeat;
    int open_handles = 2;  // timer and heartbeat; deleted when both closed
    // The child's ends of its output pipe and pool channel, held while it
    // runs (see HoldsChildEnds) so that its exit closes neither: one
    // wake-up for a death (SIGCHLD) instead of three. -1 when not held.
    int output_write_end = -1;
    int channel_child_end = -1;
    OutputReader* output = nullptr;  // its output reader, until reaped
  };
  static void CloseSlotHandles(Slot* slot);

  struct Group {
    GroupConfig config;
    RestartPolicy policy;
    std::map<int, Slot*> slots;   // by index
    std::vector<Slot*> outgoing;  // replaced children still running
    bool failed = false;
    bool removing = false;         // dropped by a reload: drain, then delete
    bool scaled = false;           // `workerpool scale` set processes
    bool speaks_protocol = false;  // one of its children said hello
    int generation = 0;            // bumped when its children must restart
    uint64_t recycled = 0;
    std::vector<int> rolling;  // indices still to restart, in order
    Group(GroupConfig c)
        : config(std::move(c)), policy(config.restart, config.processes) {}
  };

  // Reads one child's output pipe and logs it line by line.
  struct OutputReader {
    Watcher* watcher = nullptr;
    Slot* slot = nullptr;  // while the child runs
    uv_pipe_t pipe;
    LineSplitter splitter;
    std::string prefix;  // "group[index] pid"
    // The lines of one read leave in one write (a chatty child, such as a
    // reactor's access log, would otherwise cost the Watcher a write(2) per
    // line).
    void Feed(std::string_view bytes) {
      LogBatch batch;
      splitter.Feed(bytes, [this](std::string_view line) { Log(line); });
    }
    void Finish() {
      LogBatch batch;
      splitter.Finish([this](std::string_view line) { Log(line); });
    }
    // At the level the child gave the line with a syslog prefix ("<3>...",
    // as systemd reads stderr), else at info. Never above error: critical
    // lines are the Watcher's own (operators alert on them).
    void Log(std::string_view line) const {
      spdlog::level::level_enum level = spdlog::level::info;
      switch (TakeLinePriority(&line)) {
        case 0:
        case 1:
        case 2:
        case 3:
          level = spdlog::level::err;
          break;
        case 4:
          level = spdlog::level::warn;
          break;
        case 7:
          level = spdlog::level::debug;
          break;
        default:
          break;
      }
      spdlog::log(level, "{}: {}", prefix, line);
    }
  };

  // Start-up and stop.
  void StartSignals();
  void StartWatchdog();
  void StartGroup(Group* group);
  void BeginStop(const char* why);
  void FinishIfStopped();
  void SignalJobsIfIntakeGone();
  void CloseEverything();

  // Children.
  void Spawn(Slot* slot);
  bool IsThisWorkerpool(const std::string& program);
  void SignalChild(Slot* slot, int signal_number);
  void StopSlot(Slot* slot);  // drain or SIGTERM; SIGKILL after stop_timeout
  void RetireSlot(Slot* slot);
  void StartSlotTimer(Slot* slot, TimerUse use, Duration after);
  void MarkUp(Slot* slot);
  void ReapChildren();
  void OnChildExit(Slot* slot, int status);
  void OnOutgoingExit(Slot* slot);
  void ScheduleRestart(Slot* slot, TimePoint started);
  void RemoveSlot(Slot* slot);
  void DeleteGroupIfDrained(Group* group);
  void ReplaceSlot(Slot* slot);
  void ContinueRollingRestart(Group* group);
  void StartRollingRestart(Group* group);
  void ResizeGroup(Group* group);
  void RestartFailedGroup(Group* group);
  std::vector<std::string> ChildEnvironment(const Group& group, int index);

  // Recycling.
  void Recycle(Slot* slot, const std::string& why);
  void CheckRequestCount(Slot* slot);
  void UpdateRssSampling();
  void SampleRss();

  // Reload.
  Status ApplyReload();
  void ApplyLimits(Group* group);
  void ApplyRoutes();
  void FailReload(const std::string& error);
  bool Settled() const;
  void CheckSettled();

  // Pool channels: routes, links, kills, heartbeats.
  void OnChannelFrame(Slot* slot, const FrameView& frame);
  void OnHello(Slot* slot);
  void SendChildConfig(Slot* slot);
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
  OutputReader* StartOutputReader(int fd, Slot* slot);
  void DrainOutput(Slot* slot);
  static void ReleaseChildEnds(Slot* slot);
  bool HoldsChildEnds() const;

  // Listen sockets, bound once here and inherited by every reactor.
  Status BindListenSockets(const PoolConfig& config);
  void CloseUnusedListenSockets();

  Status StartControl();

  void ReportStatus();
  std::string StatusLine() const;
  Group* FindGroup(const std::string& name);

  static void OnSignal(uv_signal_t* handle, int signal_number);
  static void OnSlotTimer(uv_timer_t* timer);
  static void OnStopTimer(uv_timer_t* timer);

  uv_loop_t* loop_;
  std::string config_path_;
  std::string self_exe_;
  // "" when missing; then `workerpool builtin` runs and says what is missing.
  std::string builtin_exe_;
  std::map<std::string, bool> is_this_workerpool_;  // by command[0]
  PoolConfig config_;
  std::vector<std::unique_ptr<Group>> groups_;
  std::map<pid_t, Slot*> children_;  // live children by pid
  std::set<OutputReader*> readers_;
  // Target group -> children that opened a route to it.
  std::map<std::string, std::set<Slot*>> subscribers_;
  uint64_t refused_requests_ = 0;
  std::uint64_t file_limit_ = 1024;  // RLIMIT_NOFILE, raised at start
  bool running_as_root_ = geteuid() == 0;
  std::map<std::string, int> listen_fds_;  // by the address as written
  bool jobs_signalled_ = false;            // stop: second phase started
  std::vector<std::string> base_environment_;
  std::mt19937_64 random_;  // recycling jitter

  uv_signal_t sigchld_, sigterm_, sigint_, sighup_;
  uv_timer_t stop_timer_;
  uv_timer_t watchdog_timer_;  // runs only when systemd's watchdog is on
  uv_timer_t rss_timer_;       // runs only while some group sets max_rss
  uv_timer_t reload_timer_;    // starts a queued reload from a clean stack
  Phase phase_ = Phase::kStarting;
  bool reload_queued_ = false;
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
  file_limit_ = RaiseFileLimit();
  if (Status bound = BindListenSockets(config_); !bound.ok()) {
    spdlog::critical("{}", bound.message());
    return 2;
  }
  if (Status control = StartControl(); !control.ok()) {
    spdlog::critical("{}", control.message());
    return 2;
  }
  StartSignals();
  for (uv_timer_t* timer :
       {&stop_timer_, &watchdog_timer_, &rss_timer_, &reload_timer_}) {
    uv_timer_init(loop_, timer);
    timer->data = this;
  }
  StartWatchdog();

  spdlog::info("pool {} starting: {} groups from {}", config_.name,
               config_.groups.size(), config_path_);
  for (const GroupConfig& group_config : config_.groups) {
    groups_.push_back(std::make_unique<Group>(group_config));
    StartGroup(groups_.back().get());
  }
  UpdateRssSampling();
  CheckSettled();  // READY=1 once every group is up

  uv_run(loop_, UV_RUN_DEFAULT);
  spdlog::info("pool {} stopped", config_.name);
  return 0;
}

void Watcher::StartWatchdog() {
  const std::chrono::milliseconds every = WatchdogInterval();
  if (every.count() <= 0) return;  // no timer, no wake-ups
  spdlog::info("systemd watchdog: WATCHDOG=1 every {}",
               FormatDuration(Duration(every.count())));
  uv_timer_start(
      &watchdog_timer_,
      // The timer firing is the proof of health: the loop turns.
      [](uv_timer_t*) { NotifySystemd("WATCHDOG=1"); },
      static_cast<uint64_t>(every.count()),
      static_cast<uint64_t>(every.count()));
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
    nlohmann::json section = {
        {"url", rabbitmq->url},
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

// "workerpool", or a path to this very binary (/usr/local/bin/workerpool,
// as a systemd unit's pool file names it).
// Resolved once per program: restarts of a group do not repeat it.
bool Watcher::IsThisWorkerpool(const std::string& program) {
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

void Watcher::Spawn(Slot* slot) {
  const GroupConfig& config = slot->group->config;
  SpawnSpec spec;
  spec.argv = config.command;
  if (spec.argv.size() >= 3 && spec.argv[1] == "builtin" &&
      !builtin_exe_.empty() && IsThisWorkerpool(spec.argv[0])) {
    // One exec, not two: `workerpool builtin NAME` would exec it anyway.
    spec.argv.erase(spec.argv.begin());
    spec.argv[0] = builtin_exe_;
  } else if (!spec.argv.empty() && spec.argv[0] == "workerpool") {
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
  if (running_as_root_) {
    spec.uid = config.uid;
    spec.gid = config.gid;
  }
  const bool hold_ends = HoldsChildEnds();
  spec.keep_output_write = hold_ends;
  TimePoint now = Clock::now();
  Result<SpawnedChild> child = SpawnChild(spec);
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
    ScheduleRestart(slot, now);
    return;
  }
  slot->pid = child->pid;
  slot->started = now;
  slot->generation = slot->group->generation;
  slot->ready = false;
  slot->up = false;
  slot->draining = false;
  slot->stats = nlohmann::json::object();
  slot->recycle_after = RecycleAfter(config.max_requests, random_());
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
  slot->output = StartOutputReader(child->output_fd, slot);
  StartSlotTimer(
      slot, TimerUse::kStartGrace,
      slot->group->speaks_protocol ? kProtocolStartGrace : kPlainStartGrace);
}

void Watcher::SignalChild(Slot* slot, int signal_number) {
  if (slot->pid <= 0) return;
  // The child leads its own process group; signal the group so helpers it
  // started go too, and fall back to the pid if it left the group.
  if (kill(-slot->pid, signal_number) != 0) kill(slot->pid, signal_number);
}

void Watcher::StartSlotTimer(Slot* slot, TimerUse use, Duration after) {
  slot->timer_use = use;
  uv_timer_start(&slot->timer, OnSlotTimer,
                 static_cast<uint64_t>(std::max<int64_t>(0, after.count())), 0);
}

void Watcher::StopSlot(Slot* slot) {
  // A replacement stopped before it came up takes the child it was to
  // replace along: nobody else will drain that one.
  if (Slot* predecessor = slot->replaces) {
    slot->replaces = nullptr;
    predecessor->replaced_by = nullptr;
    StopSlot(predecessor);
  }
  if (slot->pid <= 0 || slot->draining) return;
  slot->draining = true;
  if (slot->ready && slot->channel != nullptr) {
    // Drain: its senders stop sending to it and close their links once
    // their requests are answered; then it exits by itself.
    spdlog::info("draining {}[{}] pid {}", slot->group->config.name,
                 slot->index, slot->pid);
    BroadcastToSubscribers(slot->group->config.name,
                           wire::FrameType::kPeerDraining,
                           {{"group", slot->group->config.name},
                            {"index", slot->index},
                            {"pid", slot->pid}});
    slot->channel->Send(wire::FrameType::kDrain, nlohmann::json::object());
  } else {
    spdlog::info("stopping {}[{}] pid {} (SIGTERM)", slot->group->config.name,
                 slot->index, slot->pid);
    SignalChild(slot, SIGTERM);
  }
  StartSlotTimer(slot, TimerUse::kKillDeadline, config_.stop_timeout);
}

void Watcher::RetireSlot(Slot* slot) {
  if (slot->retiring) return;
  slot->retiring = true;
  if (slot->pid > 0) {
    StopSlot(slot);
    return;
  }
  // No child runs (backoff wait): the slot goes now.
  if (Slot* predecessor = slot->replaces) {
    slot->replaces = nullptr;
    predecessor->replaced_by = nullptr;
    StopSlot(predecessor);
  }
  RemoveSlot(slot);
}

void Watcher::OnSlotTimer(uv_timer_t* timer) {
  Slot* slot = static_cast<Slot*>(timer->data);
  Watcher* self = slot->watcher;
  const TimerUse use = slot->timer_use;
  slot->timer_use = TimerUse::kNone;
  switch (use) {
    case TimerUse::kNone:
      break;
    case TimerUse::kBackoff:
      if (slot->pid <= 0 && !self->stopping_ && !slot->group->failed &&
          !slot->retiring) {
        self->Spawn(slot);
      }
      break;
    case TimerUse::kStartGrace:
      if (slot->pid > 0 && !slot->up) {
        spdlog::debug("{}[{}] pid {} did not say hello; taken as up",
                      slot->group->config.name, slot->index, slot->pid);
        self->MarkUp(slot);
      }
      break;
    case TimerUse::kKillDeadline:
      if (slot->pid > 0) {
        spdlog::warn(
            "{}[{}] pid {} still running {} after it was told to stop: "
            "SIGKILL",
            slot->group->config.name, slot->index, slot->pid,
            FormatDuration(self->config_.stop_timeout));
        self->SignalChild(slot, SIGKILL);
      }
      break;
  }
}

// Up: said hello (linked to its senders by now), or ran through the start
// grace. A replacement that is up lets the child it replaces drain.
void Watcher::MarkUp(Slot* slot) {
  if (slot->up) return;
  slot->up = true;
  if (slot->timer_use == TimerUse::kStartGrace) {
    uv_timer_stop(&slot->timer);
    slot->timer_use = TimerUse::kNone;
  }
  if (Slot* predecessor = slot->replaces) {
    slot->replaces = nullptr;
    predecessor->replaced_by = nullptr;
    spdlog::info("{}[{}] pid {} is up; it replaces pid {}",
                 slot->group->config.name, slot->index, slot->pid,
                 predecessor->pid);
    StopSlot(predecessor);
  }
  CheckRequestCount(slot);
  CheckSettled();
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
    DrainOutput(slot);
    OnChildExit(slot, status);
  }
  FinishIfStopped();
  CheckSettled();
}

void Watcher::OnChildExit(Slot* slot, int status) {
  Group* group = slot->group;
  const bool expected =
      stopping_ || slot->retiring || slot->outgoing || slot->draining;
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
  slot->timer_use = TimerUse::kNone;
  BroadcastToSubscribers(group->config.name, wire::FrameType::kPeerGone,
                         {{"group", group->config.name},
                          {"index", slot->index},
                          {"pid", slot->pid},
                          {"how", how}});
  ForgetChannel(slot);
  slot->pid = 0;
  slot->up = false;
  slot->draining = false;
  if (stopping_) {
    SignalJobsIfIntakeGone();
    return;
  }
  if (slot->outgoing) {
    OnOutgoingExit(slot);
    return;
  }
  if (slot->retiring) {
    RemoveSlot(slot);
    DeleteGroupIfDrained(group);
    return;
  }
  if (group->failed) return;
  // A replacement that died before it came up still replaces: its
  // predecessor keeps serving until a later try is up.
  ScheduleRestart(slot, slot->started);
}

void Watcher::OnOutgoingExit(Slot* slot) {
  Group* group = slot->group;
  std::erase(group->outgoing, slot);
  if (Slot* successor = slot->replaced_by) {
    // It went before its replacement was up: nothing left to drain.
    successor->replaces = nullptr;
    slot->replaced_by = nullptr;
  }
  if (Slot* predecessor = slot->replaces) {
    slot->replaces = nullptr;
    predecessor->replaced_by = nullptr;
    StopSlot(predecessor);
  }
  CloseSlotHandles(slot);
  ContinueRollingRestart(group);
  DeleteGroupIfDrained(group);
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
  StartSlotTimer(slot, TimerUse::kBackoff, decision.delay);
}

// Takes SLOT out of its group's table (the caller decides about the group).
void Watcher::RemoveSlot(Slot* slot) {
  Group* group = slot->group;
  auto found = group->slots.find(slot->index);
  if (found != group->slots.end() && found->second == slot) {
    group->slots.erase(found);
  }
  CloseSlotHandles(slot);
}

void Watcher::DeleteGroupIfDrained(Group* group) {
  if (!group->removing || !group->slots.empty() || !group->outgoing.empty()) {
    return;
  }
  spdlog::info("group {} removed", group->config.name);
  std::erase_if(groups_, [group](const std::unique_ptr<Group>& g) {
    return g.get() == group;
  });
}

// Moves SLOT's child aside (it keeps serving) and starts its replacement in
// the same index; the old child drains once the new one is up (MarkUp).
void Watcher::ReplaceSlot(Slot* slot) {
  Group* group = slot->group;
  group->slots.erase(slot->index);
  slot->outgoing = true;
  group->outgoing.push_back(slot);
  Slot* fresh = NewSlot(group, slot->index);
  fresh->replaces = slot;
  slot->replaced_by = fresh;
  Spawn(fresh);
}

// One child at a time: the next index is replaced once the previous old
// child has exited, so the group has between processes and processes + 1
// children throughout, and never fewer than processes - 1 up.
void Watcher::ContinueRollingRestart(Group* group) {
  if (group->removing || group->failed || !group->outgoing.empty()) return;
  for (auto& [index, slot] : group->slots) {
    if (slot->replaces != nullptr) return;  // a replacement is starting
  }
  while (!group->rolling.empty()) {
    int index = group->rolling.front();
    group->rolling.erase(group->rolling.begin());
    auto found = group->slots.find(index);
    if (found == group->slots.end()) continue;
    Slot* slot = found->second;
    if (slot->retiring || slot->generation == group->generation) continue;
    if (slot->pid <= 0) continue;  // its next start uses the new settings
    spdlog::info("rolling restart of {}: replacing {}[{}] pid {}",
                 group->config.name, group->config.name, index, slot->pid);
    ReplaceSlot(slot);
    return;
  }
  CheckSettled();
}

void Watcher::StartRollingRestart(Group* group) {
  ++group->generation;
  group->rolling.clear();
  for (auto& [index, slot] : group->slots) {
    if (!slot->retiring) group->rolling.push_back(index);
  }
  ContinueRollingRestart(group);
}

void Watcher::ResizeGroup(Group* group) {
  const int wanted = group->config.processes;
  std::vector<Slot*> active;
  for (auto& [index, slot] : group->slots) {
    if (!slot->retiring) active.push_back(slot);
  }
  if (static_cast<int>(active.size()) > wanted) {
    // Shrink, idle first: no child before a starting one, a starting one
    // before an up one, an idle one before a busy one (as its last stats
    // say), then the highest index, so indices stay dense when all are
    // alike.
    auto rank = [](const Slot* slot) {
      const bool running = slot->pid > 0;
      const uint64_t serving = slot->stats.value("serving", uint64_t{0}) +
                               slot->stats.value("inflight", uint64_t{0});
      return std::make_tuple(running, slot->up, serving, -slot->index);
    };
    std::stable_sort(
        active.begin(), active.end(),
        [&rank](const Slot* a, const Slot* b) { return rank(a) < rank(b); });
    const size_t extra = active.size() - static_cast<size_t>(wanted);
    for (size_t i = 0; i < extra; ++i) RetireSlot(active[i]);
  }
  // Grow into the lowest free indices.
  int live = std::min<int>(static_cast<int>(active.size()), wanted);
  for (int index = 0; live < wanted; ++index) {
    if (group->slots.count(index) != 0) continue;
    Slot* slot = NewSlot(group, index);
    ++live;
    if (!group->failed) Spawn(slot);
  }
  int slots = wanted;
  if (!group->slots.empty()) {
    slots = std::max(slots, group->slots.rbegin()->first + 1);
  }
  group->policy.Resize(slots);
}

void Watcher::RestartFailedGroup(Group* group) {
  if (!group->failed) return;
  group->failed = false;
  group->policy.Reset();
  for (auto& [index, slot] : group->slots) {
    if (slot->pid <= 0 && !slot->retiring) {
      uv_timer_stop(&slot->timer);
      slot->timer_use = TimerUse::kNone;
      Spawn(slot);
    }
  }
}

// ---------------------------------------------------------------- recycling

void Watcher::Recycle(Slot* slot, const std::string& why) {
  Group* group = slot->group;
  if (stopping_ || group->removing || slot->pid <= 0 || !slot->up ||
      slot->retiring || slot->outgoing || slot->draining) {
    return;
  }
  ++group->recycled;
  spdlog::info("recycling {}[{}] pid {}: {}", group->config.name, slot->index,
               slot->pid, why);
  ReplaceSlot(slot);
}

void Watcher::CheckRequestCount(Slot* slot) {
  if (slot->recycle_after <= 0 || !slot->up) return;
  const uint64_t answered = slot->stats.value("served", uint64_t{0}) +
                            slot->stats.value("served_errors", uint64_t{0});
  if (answered < static_cast<uint64_t>(slot->recycle_after)) return;
  Recycle(slot, "answered " + std::to_string(answered) +
                    " requests (max_requests " +
                    std::to_string(slot->group->config.max_requests) + ")");
}

void Watcher::UpdateRssSampling() {
  bool wanted = false;
  for (auto& group : groups_) {
    wanted |= !group->removing && group->config.max_rss > 0;
  }
  const bool running =
      uv_is_active(reinterpret_cast<uv_handle_t*>(&rss_timer_)) != 0;
  if (wanted && !running && !stopping_) {
    uv_timer_start(
        &rss_timer_,
        [](uv_timer_t* timer) {
          Owner<Watcher>(reinterpret_cast<uv_handle_t*>(timer))->SampleRss();
        },
        kRssSampleMs, kRssSampleMs);
  } else if (!wanted && running) {
    uv_timer_stop(&rss_timer_);
  }
}

void Watcher::SampleRss() {
  std::vector<std::pair<Slot*, std::int64_t>> over;
  for (auto& group : groups_) {
    const std::int64_t limit = group->config.max_rss;
    if (limit <= 0 || group->removing) continue;
    for (auto& [index, slot] : group->slots) {
      if (slot->pid <= 0 || !slot->up || slot->draining) continue;
      Result<std::int64_t> rss = ResidentBytes(slot->pid);
      if (rss.ok() && *rss > limit) over.emplace_back(slot, *rss);
    }
  }
  for (auto& [slot, rss] : over) {
    Recycle(slot, "resident memory " + FormatMegabytes(rss) +
                      " is over max_rss " +
                      FormatMegabytes(slot->group->config.max_rss));
  }
}

Watcher::OutputReader* Watcher::StartOutputReader(int fd, Slot* slot) {
  auto* reader = new OutputReader;
  reader->watcher = this;
  reader->prefix = slot->group->config.name + "[" +
                   std::to_string(slot->index) + "] " +
                   std::to_string(slot->pid);
  uv_pipe_init(loop_, &reader->pipe, 0);
  reader->pipe.data = reader;
  if (uv_pipe_open(&reader->pipe, fd) != 0) {
    close(fd);
    uv_close(reinterpret_cast<uv_handle_t*>(&reader->pipe),
             [](uv_handle_t* h) { delete Owner<OutputReader>(h); });
    return nullptr;
  }
  reader->slot = slot;
  readers_.insert(reader);
  auto on_alloc = [](uv_handle_t*, size_t, uv_buf_t* buf) {
    *buf = uv_buf_init(OutputBuffer(), kOutputBufferSize);
  };
  auto on_read = [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* reader = Owner<OutputReader>(reinterpret_cast<uv_handle_t*>(stream));
    if (nread > 0) {
      reader->Feed(std::string_view(buf->base, nread));
      return;
    }
    if (nread == 0) return;  // EAGAIN
    reader->Finish();
    if (reader->slot != nullptr) reader->slot->output = nullptr;
    reader->watcher->readers_.erase(reader);
    uv_close(reinterpret_cast<uv_handle_t*>(stream),
             [](uv_handle_t* h) { delete Owner<OutputReader>(h); });
    reader->watcher->FinishIfStopped();
  };
  uv_read_start(reinterpret_cast<uv_stream_t*>(&reader->pipe), on_alloc,
                on_read);
  return reader;
}

bool Watcher::HoldsChildEnds() const {
  // Two more fds per child: only while the limit leaves ample room (with a
  // low RLIMIT_NOFILE, more children matter more than fewer wake-ups).
  return (children_.size() + 1) * 6 + 256 < file_limit_;
}

void Watcher::DrainOutput(Slot* slot) {
  OutputReader* reader = slot->output;
  if (reader == nullptr) {
    ReleaseChildEnds(slot);
    return;
  }
  if (slot->output_write_end >= 0) {
    // The child is gone but our write end keeps the pipe from reaching EOF:
    // log what it wrote now, before its exit, then let EOF come (at once, or
    // when a descendant that inherited the pipe closes it too). Bounded, so
    // a descendant writing without pause cannot hold the loop here.
    uv_os_fd_t fd = -1;
    uv_fileno(reinterpret_cast<uv_handle_t*>(&reader->pipe), &fd);
    for (size_t drained = 0; fd >= 0 && drained < 4 * kOutputBufferSize;) {
      ssize_t n = read(fd, OutputBuffer(), kOutputBufferSize);
      if (n <= 0) break;
      reader->Feed(std::string_view(OutputBuffer(), n));
      drained += static_cast<size_t>(n);
    }
  }
  reader->slot = nullptr;
  slot->output = nullptr;
  ReleaseChildEnds(slot);
}

void Watcher::ReleaseChildEnds(Slot* slot) {
  for (int* fd : {&slot->output_write_end, &slot->channel_child_end}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void Watcher::BeginStop(const char* why) {
  if (stopping_) {
    spdlog::warn("{} again while stopping: SIGKILL to every child", why);
    for (auto& [pid, slot] : children_) SignalChild(slot, SIGKILL);
    return;
  }
  stopping_ = true;
  phase_ = Phase::kStopping;
  reload_queued_ = false;
  if (metrics_server_) metrics_server_->Close();
  spdlog::info("{}: stopping {} children (SIGKILL after {})", why,
               children_.size(), FormatDuration(config_.stop_timeout));
  NotifySystemd("STOPPING=1\nSTATUS=stopping " +
                std::to_string(children_.size()) + " children (" + why + ")");
  uv_timer_stop(&rss_timer_);
  uv_timer_stop(&reload_timer_);
  for (auto& group : groups_) {
    group->rolling.clear();
    for (auto& [index, slot] : group->slots) {
      uv_timer_stop(&slot->timer);
      slot->timer_use = TimerUse::kNone;
    }
    for (Slot* slot : group->outgoing) {
      uv_timer_stop(&slot->timer);
      slot->timer_use = TimerUse::kNone;
    }
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
  for (uv_timer_t* timer :
       {&stop_timer_, &watchdog_timer_, &rss_timer_, &reload_timer_}) {
    close_handle(timer);
  }
  for (OutputReader* reader : readers_) {
    reader->Finish();
    uv_close(reinterpret_cast<uv_handle_t*>(&reader->pipe),
             [](uv_handle_t* h) { delete Owner<OutputReader>(h); });
  }
  readers_.clear();
  for (auto& group : groups_) {
    for (auto& [index, slot] : group->slots) CloseSlotHandles(slot);
    group->slots.clear();
    for (Slot* slot : group->outgoing) CloseSlotHandles(slot);
    group->outgoing.clear();
  }
}

// ---------------------------------------------------------------- reload

Status Watcher::Reload() {
  if (stopping_) return Status::Error("the pool is stopping");
  if (phase_ == Phase::kRunning && !reload_queued_) return ApplyReload();
  // A reload (or the start) is still being applied: this one waits for it,
  // so two never interleave. The file is checked now, to answer at once,
  // and read again when its turn comes.
  ConfigLoad load = LoadConfigFile(config_path_);
  if (!load.ok()) {
    std::string text = load.ErrorText();
    if (!text.empty() && text.back() == '\n') text.pop_back();
    for (const ConfigError& error : load.errors) {
      spdlog::error("reload refused, keeping the running pool: {}",
                    error.ToString());
    }
    last_reload_ = {{"ok", false}, {"error", text}, {"unix", time(nullptr)}};
    ReportStatus();
    return Status::Error(text);
  }
  if (!reload_queued_) {
    spdlog::info("reload queued: the {} is still being applied",
                 phase_ == Phase::kStarting ? "start" : "previous reload");
  }
  reload_queued_ = true;
  return Status::Ok();
}

void Watcher::FailReload(const std::string& error) {
  last_reload_ = {{"ok", false}, {"error", error}, {"unix", time(nullptr)}};
  // RELOADING=1 went out: systemd waits for READY=1 to end the reload.
  NotifySystemd("READY=1\nSTATUS=" + StatusLine());
}

Status Watcher::ApplyReload() {
  NotifySystemd("RELOADING=1\n" + MonotonicUsecField() + "\nSTATUS=reloading " +
                config_path_);
  spdlog::info("reloading {}", config_path_);
  ConfigLoad load = LoadConfigFile(config_path_);
  if (!load.ok()) {
    for (const ConfigError& error : load.errors) {
      spdlog::error("reload failed, keeping the running pool: {}",
                    error.ToString());
    }
    std::string text = load.ErrorText();
    if (!text.empty() && text.back() == '\n') text.pop_back();
    FailReload(text);
    return Status::Error(text);
  }
  PoolConfig next = std::move(*load.config);
  if (Status bound = BindListenSockets(next); !bound.ok()) {
    spdlog::error("reload failed, keeping the running pool: {}",
                  bound.message());
    CloseUnusedListenSockets();  // the ones this attempt bound
    FailReload(bound.message());
    return bound;
  }
  PoolDiff diff = DiffPools(config_, next);
  spdlog::info("reload: {}", diff.Summary());
  if (next.log != config_.log) SetupLogging(next.log);
  if (next.stop_timeout != config_.stop_timeout ||
      next.metrics != config_.metrics ||
      next.control_socket != config_.control_socket ||
      next.name != config_.name) {
    // These are read at start or when used; the control socket and the
    // metrics endpoint stay where they are until a restart.
    if (next.control_socket != config_.control_socket ||
        next.metrics != config_.metrics || next.name != config_.name) {
      spdlog::warn(
          "reload: pool name, control_socket and metrics take effect at the "
          "next start");
    }
  }
  phase_ = Phase::kReloading;
  // The new definition is in force from here: spawns below use it.
  PoolConfig previous = std::move(config_);
  config_ = std::move(next);
  // Pool-level settings that cannot move at run time stay as they were.
  config_.name = previous.name;
  config_.control_socket = previous.control_socket;
  config_.metrics = previous.metrics;

  for (const GroupChange& change : diff.changes) {
    Group* group = FindGroup(change.group);
    const GroupConfig* next_config = config_.FindGroup(change.group);
    switch (change.kind) {
      case GroupChange::Kind::kAdded: {
        groups_.push_back(std::make_unique<Group>(*next_config));
        StartGroup(groups_.back().get());
        break;
      }
      case GroupChange::Kind::kRemoved: {
        if (group == nullptr) break;
        group->removing = true;
        group->rolling.clear();
        std::vector<Slot*> slots;
        for (auto& [index, slot] : group->slots) slots.push_back(slot);
        for (Slot* slot : slots) RetireSlot(slot);
        for (Slot* slot : std::vector<Slot*>(group->outgoing)) StopSlot(slot);
        DeleteGroupIfDrained(group);
        break;
      }
      case GroupChange::Kind::kUnchanged:
      case GroupChange::Kind::kResized:
      case GroupChange::Kind::kRestarted: {
        if (group == nullptr) break;
        group->config = *next_config;
        if (group->scaled) {
          spdlog::info("group {}: the file's processes ({}) replace `scale`",
                       group->config.name, next_config->processes);
        }
        group->scaled = false;
        group->policy.SetConfig(next_config->restart);
        RestartFailedGroup(group);  // a reload gives a failed group a chance
        ResizeGroup(group);
        if (change.kind == GroupChange::Kind::kRestarted) {
          StartRollingRestart(group);
        }
        if (change.limits_changed) ApplyLimits(group);
        break;
      }
    }
  }
  ApplyRoutes();
  UpdateRssSampling();
  last_reload_ = {
      {"ok", true}, {"summary", diff.Summary()}, {"unix", time(nullptr)}};
  CheckSettled();
  return Status::Ok();
}

// Limits reach running children without a restart: their own (kConfig)
// and their senders' view of the group (kRouteOpened again).
void Watcher::ApplyLimits(Group* group) {
  const GroupConfig& config = group->config;
  auto apply = [this, &config](Slot* slot) {
    if (slot->pid <= 0) return;
    slot->recycle_after = RecycleAfter(config.max_requests, random_());
    if (!slot->ready) return;
    SendChildConfig(slot);
    ArmHeartbeat(slot);
  };
  for (auto& [index, slot] : group->slots) apply(slot);
  for (Slot* slot : group->outgoing) apply(slot);
  auto subscribers = subscribers_.find(config.name);
  if (subscribers != subscribers_.end()) {
    for (Slot* sender : subscribers->second) {
      if (sender->channel == nullptr) continue;
      sender->channel->Send(
          wire::FrameType::kRouteOpened,
          {{"group", config.name},
           {"max_inflight", config.max_inflight},
           {"queue_limit", config.queue_limit},
           {"request_timeout_ms", config.request_timeout.count()}});
    }
  }
  std::vector<Slot*> slots;
  for (auto& [index, slot] : group->slots) slots.push_back(slot);
  for (Slot* slot : slots) CheckRequestCount(slot);
}

// Routes are checked against the new definition: one no longer allowed is
// revoked (requests already sent finish), one refused before and allowed
// now is opened for the child that asked.
void Watcher::ApplyRoutes() {
  for (auto& group : groups_) {
    auto visit = [this](Slot* slot) {
      if (slot->pid <= 0 || slot->channel == nullptr) return;
      const std::string& from = slot->group->config.name;
      for (const std::string& target :
           std::vector<std::string>(slot->routes.begin(), slot->routes.end())) {
        Status allowed = CheckRequestRoute(config_, from, target);
        if (allowed.ok()) continue;
        spdlog::info("route {}[{}] pid {} -> {} revoked: {}", from, slot->index,
                     slot->pid, target, allowed.message());
        slot->routes.erase(target);
        subscribers_[target].erase(slot);
        slot->refused_routes.insert(target);
        slot->channel->Send(wire::FrameType::kRouteRefused,
                            {{"group", target}, {"error", allowed.message()}});
      }
      for (const std::string& target : std::vector<std::string>(
               slot->refused_routes.begin(), slot->refused_routes.end())) {
        if (!CheckRequestRoute(config_, from, target).ok()) continue;
        if (FindGroup(target) == nullptr) continue;
        spdlog::info("route {}[{}] pid {} -> {} allowed by the reload", from,
                     slot->index, slot->pid, target);
        slot->refused_routes.erase(target);
        OnRouteOpen(slot, target);
      }
    };
    if (group->removing) continue;
    for (auto& [index, slot] : group->slots) visit(slot);
    for (Slot* slot : group->outgoing) visit(slot);
  }
}

bool Watcher::Settled() const {
  for (const auto& group : groups_) {
    if (group->removing) return false;
    // A failed group waits for a reload or `workerpool restart`; its old
    // children, if a rolling restart left any, serve until then.
    if (group->failed) continue;
    if (!group->outgoing.empty() || !group->rolling.empty()) return false;
    for (const auto& [index, slot] : group->slots) {
      if (slot->retiring || !slot->up) return false;
    }
  }
  return true;
}

// Ends the start or a reload once the pool has settled: READY=1 to systemd,
// then the queued reload, if any.
void Watcher::CheckSettled() {
  if (phase_ != Phase::kStarting && phase_ != Phase::kReloading) return;
  if (!Settled()) return;
  const bool starting = phase_ == Phase::kStarting;
  phase_ = Phase::kRunning;
  // Listen sockets dropped by the reload close once their reactors are gone.
  CloseUnusedListenSockets();
  NotifySystemd("READY=1\nSTATUS=" + StatusLine());
  if (starting) {
    spdlog::info("pool {} ready: {} children", config_.name, children_.size());
  } else {
    spdlog::info("reload finished: {} children", children_.size());
  }
  if (reload_queued_) {
    // From a fresh loop turn: we may be deep inside a child's exit here.
    uv_timer_start(
        &reload_timer_,
        [](uv_timer_t* timer) {
          auto* self = Owner<Watcher>(reinterpret_cast<uv_handle_t*>(timer));
          if (!self->reload_queued_ || self->stopping_) return;
          self->reload_queued_ = false;
          self->ApplyReload();
        },
        0, 0);
  }
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
  RestartFailedGroup(group);
  StartRollingRestart(group);
  return Status::Ok();
}

nlohmann::json Watcher::StatusJson() {
  using nlohmann::json;
  const auto now = Clock::now();
  // Request latency per target group, summed over every sender's
  // histogram (stats "latency": {"<group>": {bounds_ms, counts, sum_ms}}).
  std::map<std::string, json> latency;
  auto add_latency = [&](const Slot* slot) {
    auto found = slot->stats.find("latency");
    if (found == slot->stats.end() || !found->is_object()) return;
    for (auto& [target, histogram] : found->items()) {
      if (!histogram.is_object()) continue;
      const json& bounds = histogram.value("bounds_ms", json());
      const json& counts = histogram.value("counts", json());
      if (!bounds.is_array() || !counts.is_array() ||
          counts.size() != bounds.size() + 1) {
        continue;
      }
      json& total = latency[target];
      if (total.is_null()) {
        total = {{"bounds_ms", bounds},
                 {"counts", std::vector<uint64_t>(counts.size(), 0)},
                 {"sum_ms", uint64_t{0}}};
      }
      if (total["bounds_ms"] != bounds) continue;  // another library version
      for (std::size_t i = 0; i < counts.size(); ++i) {
        if (counts[i].is_number_unsigned()) {
          total["counts"][i] =
              total["counts"][i].get<uint64_t>() + counts[i].get<uint64_t>();
        }
      }
      if (histogram.value("sum_ms", json()).is_number_unsigned()) {
        total["sum_ms"] = total["sum_ms"].get<uint64_t>() +
                          histogram["sum_ms"].get<uint64_t>();
      }
    }
  };
  for (auto& group : groups_) {
    for (auto& [index, slot] : group->slots) add_latency(slot);
    for (Slot* slot : group->outgoing) add_latency(slot);
  }
  json groups = json::array();
  for (auto& group : groups_) {
    json children = json::array();
    json app = json::array();
    json requests = json::object();
    uint64_t inflight = 0, queued = 0;
    int live = 0, ready = 0;
    auto add_child = [&](int index, Slot* slot) {
      if (slot->pid <= 0) return;
      if (!slot->outgoing) {
        ++live;
        if (slot->ready) ++ready;
      }
      children.push_back(
          {{"index", index},
           {"pid", slot->pid},
           {"uptime_ms",
            std::chrono::duration_cast<Duration>(now - slot->started).count()},
           {"ready", slot->ready},
           {"draining", slot->draining || slot->retiring || slot->outgoing}});
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
          } else if (key != "serving") {
            requests[key] = requests.value(key, uint64_t{0}) + number;
          }
        }
      }
    };
    for (auto& [index, slot] : group->slots) add_child(index, slot);
    for (Slot* slot : group->outgoing) add_child(slot->index, slot);
    std::string state = group->removing                  ? "removing"
                        : group->failed                  ? "failed"
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
    if (auto found = latency.find(group->config.name); found != latency.end()) {
      groups.back()["latency"] = found->second;
    }
  }
  const char* state = "running";
  switch (phase_) {
    case Phase::kStarting:
      state = "starting";
      break;
    case Phase::kRunning:
      break;
    case Phase::kReloading:
      state = "reloading";
      break;
    case Phase::kStopping:
      state = "stopping";
      break;
  }
  return {{"pool", config_.name},
          {"config", config_path_},
          {"pid", getpid()},
          {"state", state},
          {"reload_queued", reload_queued_},
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
      for (const std::string& address : group.listen) {
        used |= address == it->first;
      }
    }
    if (used) {
      ++it;
      continue;
    }
    spdlog::info("closing listen socket {}", it->first);
    close(it->second);
    // Our socket file: nothing listens on it any more.
    Result<ListenAddress> address = ParseListenAddress(it->first);
    if (address.ok() && address->kind == ListenAddress::Kind::kUnix) {
      unlink(address->path.c_str());
    }
    it = listen_fds_.erase(it);
  }
}

void Watcher::CloseSlotHandles(Slot* slot) {
  ReleaseChildEnds(slot);
  if (slot->output != nullptr) slot->output->slot = nullptr;
  slot->output = nullptr;
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
      CheckRequestCount(slot);
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
  slot->group->speaks_protocol = true;
  SendChildConfig(slot);
  ArmHeartbeat(slot);
  if (!slot->draining && !stopping_) {
    // Every child that routes to this group gets a link to the newcomer.
    auto subscribers = subscribers_.find(slot->group->config.name);
    if (subscribers != subscribers_.end()) {
      for (Slot* sender : subscribers->second) LinkPeers(sender, slot);
    }
  }
  MarkUp(slot);
}

void Watcher::SendChildConfig(Slot* slot) {
  if (slot->channel == nullptr) return;
  const GroupConfig& config = slot->group->config;
  slot->channel->Send(wire::FrameType::kConfig,
                      {{"max_inflight", config.max_inflight},
                       {"heartbeat_ms", config.heartbeat_timeout.count()},
                       {"max_requests", slot->recycle_after},
                       {"busy_poll_us", config.busy_poll_us}});
}

void Watcher::ArmHeartbeat(Slot* slot) {
  const Duration timeout = slot->group->config.heartbeat_timeout;
  if (timeout.count() <= 0) {
    uv_timer_stop(&slot->heartbeat);
    return;
  }
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
    if (sender->refused_routes.insert(target).second) {
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
  const GroupConfig* config = config_.FindGroup(target);
  if (group != nullptr) {
    config = &group->config;
    auto link = [this, sender](Slot* server) {
      if (server->pid > 0 && server->ready && !server->draining) {
        LinkPeers(sender, server);
      }
    };
    for (auto& [index, server] : group->slots) link(server);
    // Replaced children serve until their replacement is up.
    for (Slot* server : group->outgoing) link(server);
  }
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
  slot->refused_routes.clear();
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

// One line for systemctl status: "demo: 6/6 children up in 2 groups;
// failed: web; last reload failed: FILE:LINE:COL: ...".
std::string Watcher::StatusLine() const {
  size_t desired = 0;
  size_t up = 0;
  size_t groups = 0;
  std::string failed;
  for (const auto& group : groups_) {
    if (group->removing) continue;
    ++groups;
    desired += group->config.processes;
    for (const auto& [index, slot] : group->slots) up += slot->up ? 1 : 0;
    if (group->failed)
      failed += (failed.empty() ? "" : ", ") + group->config.name;
  }
  std::string line = config_.name + ": " + std::to_string(up) + "/" +
                     std::to_string(desired) + " children up in " +
                     std::to_string(groups) + " groups";
  if (phase_ == Phase::kReloading) line += "; reloading";
  if (reload_queued_) line += "; reload queued";
  if (!failed.empty()) line += "; failed: " + failed;
  if (last_reload_.is_object() && !last_reload_.value("ok", true)) {
    std::string error = last_reload_.value("error", std::string());
    error = error.substr(0, error.find('\n'));  // the first error
    line += "; last reload failed: " + error;
  }
  return line;
}

void Watcher::ReportStatus() { NotifySystemd("STATUS=" + StatusLine()); }

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
