// The loop room: the Watcher process itself. Owns the libuv loop's signals
// (SIGCHLD, SIGTERM, SIGINT, SIGHUP, only through uv_signal_t), the stop
// sequence, sd_notify (READY=1, RELOADING=1, STOPPING=1, STATUS=, the
// watchdog) and the control socket and metrics endpoint; it answers
// `workerpool status|scale|restart|reload|stop` by asking the other rooms:
//
//   ListenSockets  the reactors' listen sockets      (listen_sockets.h)
//   ChildTable     groups, slots, their lifecycle    (child_table.h)
//     ChildChannels  what children say               (child_channels.h)
//     OutputCapture  what children print             (output_capture.h)
//   PoolReload     the definition in force, reloads  (pool_reload.h)
//   StatusJson     what status and metrics report    (status_report.h)
//
// After start-up nothing a child, a file or a socket sends may stop it.
//
// An in-place upgrade (`workerpool upgrade`, SIGUSR2; watcher/upgrade.h)
// execs a new binary in this pid with the state of every room; the new
// Watcher starts in RunAdopted instead of Run and spawns nothing.
#include "watcher/watcher.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>

#include "core/config.h"
#include "core/control_request.h"  // kScaleAuto
#include "core/file_limit.h"
#include "core/upgrade_state.h"
#include "os/builtin_path.h"
#include "os/config_file.h"
#include "os/notify.h"
#include "os/uv_owner.h"
#include "watcher/child_table.h"
#include "watcher/control.h"
#include "watcher/listen_sockets.h"
#include "watcher/logging.h"
#include "watcher/pool_reload.h"
#include "watcher/status_report.h"
#include "watcher/upgrade.h"

namespace workerpool {
namespace {

class Watcher : public ControlTarget,
                public ChildTable::Observer,
                public PoolReload::Host {
 public:
  Watcher(uv_loop_t* loop, std::string config_path, std::string self_exe)
      : loop_(loop),
        table_(loop, std::move(self_exe), &listen_sockets_, this),
        reload_(loop, std::move(config_path), &table_, &listen_sockets_, this) {
  }

  int Run(PoolConfig initial, std::string content);

  // ControlTarget: what `workerpool status|scale|restart|reload|stop` ask.
  nlohmann::json StatusJson(bool with_usage) override {
    nlohmann::json status = workerpool::StatusJson(Facts(), table_, with_usage);
    status["version"] = WorkerpoolVersion();
    status["upgrade"] = UpgradeJson();
    return status;
  }
  Status Scale(const std::string& group, int processes) override;
  Status RestartGroup(const std::string& group) override;
  Status RestartWithDependents(const std::string& group) override;
  Status Reload() override;
  void Stop() override { BeginStop("workerpool stop"); }
  Result<nlohmann::json> Upgrade(const std::string& binary) override;

  // The new Watcher of an in-place upgrade: adopts the pool STATE (read
  // from STATE_FD) describes, under CONFIG (parsed from its bytes). An
  // error means nothing outside this process changed: the caller execs the
  // old binary back.
  // ENTERED and PARSED: when this process began to read the state and when
  // it had parsed it and the config (for the log of the hand-over's time).
  Status Adopt(PoolConfig config, const UpgradeState& state, int state_fd,
               const std::string& upgrade_error, TimePoint entered,
               TimePoint parsed);
  int Loop();

  // ChildTable::Observer.
  void OnPoolChanged() override {
    SignalJobsIfIntakeGone();
    FinishIfStopped();
    ScheduleSettledCheck();
  }
  void OnGroupFailed() override { ReportStatus(); }

  // PoolReload::Host.
  void OnReloadApplying() override { phase_ = Phase::kReloading; }
  void OnReloadDone(bool ok) override {
    if (ok) {
      CheckSettled();
    } else {
      // RELOADING=1 went out: systemd waits for READY=1 to end the reload.
      NotifySystemd("READY=1\nSTATUS=" + StatusLine(Facts(), table_));
    }
  }
  void OnReloadRefused() override { ReportStatus(); }

 private:
  // What the pool is doing, for systemd and for queueing reloads: a reload
  // (or the start) is finished once every group is up again and every child
  // it replaced or removed has exited.
  enum class Phase { kStarting, kRunning, kReloading, kStopping };

  void StartSignals();
  void StartWatchdog();
  Status StartControl();
  void BeginStop(const char* why);
  void SignalJobsIfIntakeGone();
  void FinishIfStopped();
  void CloseEverything();
  bool Settled() const;
  void CheckSettled();
  // CheckSettled soon, once for many changes: it looks at every slot, and
  // a start of n children changes the pool n times (O(n²) when checked at
  // each change; profiled at 10,000 children).
  void ScheduleSettledCheck();
  void ReportStatus() {
    NotifySystemd("STATUS=" + StatusLine(Facts(), table_));
  }
  PoolFacts Facts() const;
  const PoolConfig& config() const { return reload_.config(); }
  static void OnUpgradeTimer(uv_timer_t* timer);
  void ExecUpgrade();
  nlohmann::json UpgradeJson() const;

  static void OnSignal(uv_signal_t* handle, int signal_number);
  static void OnStopTimer(uv_timer_t* timer);

  uv_loop_t* loop_;
  ListenSockets listen_sockets_;
  ChildTable table_;
  PoolReload reload_;
  uv_signal_t sigchld_, sigterm_, sigint_, sighup_, sigusr2_;
  uv_timer_t stop_timer_;
  // An upgrade waits on it for the channels to write what they queued.
  uv_timer_t upgrade_timer_;
  int upgrade_waits_ = 0;
  std::unique_ptr<BinaryCheck> upgrade_check_;  // while it runs
  bool last_upgrade_refused_ = false;
  std::string upgrade_binary_;  // set while an upgrade is under way
  // This binary, opened at start: what the next upgrade falls back to.
  int own_exe_fd_ = OpenOwnBinary();
  std::string own_exe_path_ = OwnBinaryPath();
  // Upgrades attempted since the pool started (across execs) and the last.
  std::uint64_t upgrades_ = 0;
  std::int64_t last_upgrade_unix_ = 0;
  std::string last_upgrade_error_;
  std::string previous_version_;
  std::int64_t started_unix_ = time(nullptr);
  uv_timer_t watchdog_timer_;  // runs only when systemd's watchdog is on
  uv_timer_t settle_timer_;    // armed by ScheduleSettledCheck only
  Phase phase_ = Phase::kStarting;
  bool closed_ = false;
  std::unique_ptr<ControlServer> control_server_;
  std::unique_ptr<MetricsServer> metrics_server_;
  Clock::time_point started_at_ = Clock::now();
};

int Watcher::Run(PoolConfig initial, std::string content) {
  // Orphaned grandchildren are re-parented to us, so we reap them too.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  // A pool the descriptor limit cannot hold is an error now, not a failed
  // group after ten spawn errors.
  const std::uint64_t children = PoolChildren(initial);
  const std::uint64_t groups = initial.groups.size();
  if (Status fits = table_.FitFileLimit(children, groups); !fits.ok()) {
    spdlog::critical("pool {} cannot start: {}", initial.name, fits.message());
    return 2;
  }
  spdlog::info("{}", DescribeFileLimit(table_.file_limit(), children, groups));
  if (Status bound = listen_sockets_.Bind(initial); !bound.ok()) {
    spdlog::critical("{}", bound.message());
    return 2;
  }
  reload_.Start(std::move(initial), std::move(content));
  if (Status control = StartControl(); !control.ok()) {
    spdlog::critical("{}", control.message());
    return 2;
  }
  StartSignals();
  for (uv_timer_t* timer :
       {&stop_timer_, &watchdog_timer_, &settle_timer_, &upgrade_timer_}) {
    uv_timer_init(loop_, timer);
    timer->data = this;
  }
  StartWatchdog();

  spdlog::info("pool {} starting: {} groups from {}", config().name,
               config().groups.size(), reload_.path());
  for (const GroupConfig& group_config : config().groups) {
    table_.AddGroup(group_config);
  }
  table_.UpdateRssSampling();
  CheckSettled();  // READY=1 once every group is up
  return Loop();
}

int Watcher::Loop() {
  uv_run(loop_, UV_RUN_DEFAULT);
  spdlog::info("pool {} stopped", config().name);
  if (own_exe_fd_ >= 0) close(own_exe_fd_);
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
                      Entry{&sigint_, SIGINT}, Entry{&sighup_, SIGHUP},
                      Entry{&sigusr2_, SIGUSR2}}) {
    uv_signal_init(loop_, entry.handle);
    entry.handle->data = this;
    uv_signal_start(entry.handle, OnSignal, entry.number);
  }
  // A child or client closing its end must not kill the Watcher.
  signal(SIGPIPE, SIG_IGN);
}

void Watcher::OnSignal(uv_signal_t* handle, int signal_number) {
  auto* self = Owner<Watcher>(handle);
  switch (signal_number) {
    case SIGCHLD:
      self->table_.Reap();
      break;
    case SIGTERM:
    case SIGINT:
      self->BeginStop(signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
      break;
    case SIGHUP:
      self->Reload();
      break;
    case SIGUSR2: {
      Result<nlohmann::json> started = self->Upgrade("");
      if (!started.ok()) {
        spdlog::error("SIGUSR2: upgrade refused: {}",
                      started.status().message());
      }
      break;
    }
  }
}

Status Watcher::StartControl() {
  Result<std::unique_ptr<ControlServer>> control =
      ControlServer::Start(loop_, config().control_socket, this);
  if (!control.ok()) return control.status();
  control_server_ = std::move(*control);
  spdlog::info("control socket {}", config().control_socket);
  if (!config().metrics.empty()) {
    Result<std::unique_ptr<MetricsServer>> metrics =
        MetricsServer::Start(loop_, config().metrics, this);
    if (!metrics.ok()) return metrics.status();
    metrics_server_ = std::move(*metrics);
    spdlog::info("metrics on http://{}/metrics", config().metrics);
  }
  return Status::Ok();
}

void Watcher::BeginStop(const char* why) {
  if (table_.stopping()) {
    spdlog::warn("{} again while stopping: SIGKILL to every child", why);
    table_.SignalAll(SIGKILL, /*jobs_too=*/true);
    return;
  }
  phase_ = Phase::kStopping;
  reload_.Cancel();
  if (!upgrade_binary_.empty()) {
    spdlog::warn("{}: the upgrade to {} is cancelled", why, upgrade_binary_);
    upgrade_binary_.clear();
    uv_timer_stop(&upgrade_timer_);
  }
  if (metrics_server_) metrics_server_->Close();
  spdlog::info("{}: stopping {} children (SIGKILL after {})", why,
               table_.child_count(), FormatDuration(config().stop_timeout));
  NotifySystemd("STOPPING=1\nSTATUS=stopping " +
                std::to_string(table_.child_count()) + " children (" + why +
                ")");
  table_.BeginStop();
  // Dependents first (depends_on), and intake before jobs: reactors and
  // services stop taking work and finish what they sent; jobs follow once
  // nobody can send them more (core/start_order.h).
  table_.SignalStoppableGroups();
  uv_timer_start(&stop_timer_, OnStopTimer,
                 static_cast<uint64_t>(config().stop_timeout.count()), 0);
  SignalJobsIfIntakeGone();
  FinishIfStopped();
}

void Watcher::SignalJobsIfIntakeGone() {
  if (table_.stopping()) table_.SignalStoppableGroups();
}

void Watcher::OnStopTimer(uv_timer_t* timer) {
  auto* self = Owner<Watcher>(timer);
  spdlog::warn("{} children still running after {}: SIGKILL",
               self->table_.child_count(),
               FormatDuration(self->config().stop_timeout));
  self->table_.SignalAll(SIGKILL, /*jobs_too=*/true);
  // Output pipes held open by stray descendants must not keep us alive.
  self->FinishIfStopped();
}

void Watcher::FinishIfStopped() {
  if (!table_.stopping() || closed_ || table_.child_count() != 0) return;
  // Give output readers the chance to drain; a descendant that kept a pipe
  // open past the stop timeout does not hold the exit.
  if (!table_.output().empty() &&
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
  for (uv_signal_t* handle :
       {&sigchld_, &sigterm_, &sigint_, &sighup_, &sigusr2_}) {
    close_handle(handle);
  }
  for (uv_timer_t* timer :
       {&stop_timer_, &watchdog_timer_, &settle_timer_, &upgrade_timer_}) {
    close_handle(timer);
  }
  table_.CloseAll();
  reload_.Close();
}

bool Watcher::Settled() const {
  for (const auto& group : table_.groups()) {
    if (group->removing) return false;
    // A failed group waits for a reload or `workerpool restart`; its old
    // children, if a rolling restart left any, serve until then.
    if (group->failed) continue;
    // A group waiting on a failed dependency cannot start: the pool is
    // as ready as it can be without it (status says why).
    if (group->waiting) {
      if (table_.FailedDependency(*group).empty()) return false;
      continue;
    }
    if (!group->outgoing.empty() || !group->rolling.empty()) return false;
    for (const auto& [index, slot] : group->slots) {
      if (!slot->up() && slot->state != SlotState::kDone) return false;
    }
  }
  return true;
}

void Watcher::ScheduleSettledCheck() {
  if (phase_ != Phase::kStarting && phase_ != Phase::kReloading) return;
  if (closed_ || uv_is_active(reinterpret_cast<uv_handle_t*>(&settle_timer_))) {
    return;
  }
  // 10 ms: READY=1 comes that much later at most; a start of 10,000
  // children scans the slots a few hundred times instead of 10,000.
  uv_timer_start(
      &settle_timer_,
      [](uv_timer_t* timer) { Owner<Watcher>(timer)->CheckSettled(); }, 10, 0);
}

// Ends the start or a reload once the pool has settled: READY=1 to systemd,
// then the queued reload, if any.
void Watcher::CheckSettled() {
  if (phase_ != Phase::kStarting && phase_ != Phase::kReloading) return;
  if (!Settled()) return;
  const bool starting = phase_ == Phase::kStarting;
  phase_ = Phase::kRunning;
  // Listen sockets dropped by the reload close once their reactors are gone.
  listen_sockets_.CloseUnused(config());
  NotifySystemd("READY=1\nSTATUS=" + StatusLine(Facts(), table_));
  if (starting) {
    spdlog::info("pool {} ready: {} children", config().name,
                 table_.child_count());
  } else {
    spdlog::info("reload finished: {} children", table_.child_count());
  }
  reload_.RunQueued();
}

Status Watcher::Reload() {
  if (table_.stopping()) return Status::Error("the pool is stopping");
  return reload_.Request(phase_ == Phase::kRunning, phase_ == Phase::kStarting);
}

Status Watcher::Scale(const std::string& name, int processes) {
  if (table_.stopping()) return Status::Error("the pool is stopping");
  Group* group = table_.FindGroup(name);
  if (group == nullptr) return Status::Error("unknown group '" + name + "'");
  if (processes == kScaleAuto) {
    if (group->autoscale == nullptr) {
      return Status::Error("group " + name +
                           " has no autoscale section to go back to");
    }
    spdlog::info("scale {}: autoscaling again from {} processes", name,
                 group->config.processes);
    table_.ResumeAutoscale(group);
    ReportStatus();
    return Status::Ok();
  }
  if (processes < 0 || processes > 100000) {
    return Status::Error("processes must be 0..100000, got " +
                         std::to_string(processes));
  }
  const int before = group->config.processes;
  group->config.processes = processes;
  if (Status fits =
          table_.FitFileLimit(table_.PlannedChildren(), table_.PlannedGroups());
      !fits.ok()) {
    group->config.processes = before;
    return fits;
  }
  spdlog::info("scale {}: {} -> {} processes (until the next reload)", name,
               before, processes);
  group->scaled = true;
  table_.Resize(group);
  ReportStatus();
  return Status::Ok();
}

Status Watcher::RestartGroup(const std::string& name) {
  if (table_.stopping()) return Status::Error("the pool is stopping");
  Group* group = table_.FindGroup(name);
  if (group == nullptr) return Status::Error("unknown group '" + name + "'");
  spdlog::info("rolling restart of group {}", name);
  table_.RetryFailedGroup(group);
  table_.StartRollingRestart(group);
  return Status::Ok();
}

Status Watcher::RestartWithDependents(const std::string& name) {
  if (table_.stopping()) return Status::Error("the pool is stopping");
  Group* group = table_.FindGroup(name);
  if (group == nullptr) return Status::Error("unknown group '" + name + "'");
  spdlog::info(
      "rolling restart of group {} and of the groups that depend on it", name);
  table_.RestartWithDependents(group);
  return Status::Ok();
}

nlohmann::json Watcher::UpgradeJson() const {
  nlohmann::json out = {{"attempts", upgrades_},
                        {"in_progress", !upgrade_binary_.empty()},
                        {"last_refused", last_upgrade_refused_}};
  out["last_unix"] = last_upgrade_unix_ == 0
                         ? nlohmann::json(nullptr)
                         : nlohmann::json(last_upgrade_unix_);
  out["last_error"] = last_upgrade_error_.empty()
                          ? nlohmann::json(nullptr)
                          : nlohmann::json(last_upgrade_error_);
  out["previous_version"] = previous_version_.empty()
                                ? nlohmann::json(nullptr)
                                : nlohmann::json(previous_version_);
  return out;
}

// Starts the check of the new binary on a thread (BinaryCheck); the
// upgrade timer polls it, then hands over once every channel has written
// what it queued.
Result<nlohmann::json> Watcher::Upgrade(const std::string& binary) {
  if (table_.stopping()) return Status::Error("the pool is stopping");
  if (!upgrade_binary_.empty()) {
    return Status::Error("an upgrade to " + upgrade_binary_ + " is under way");
  }
  const std::string path = binary.empty() ? own_exe_path_ : binary;
  if (path.empty()) {
    return Status::Error(
        "cannot tell which binary this Watcher runs; "
        "give --binary PATH");
  }
  if (own_exe_fd_ < 0) {
    return Status::Error(
        "this Watcher could not open its own binary at start: there would "
        "be nothing to fall back to");
  }
  spdlog::info("upgrade: checking {}", path);
  upgrade_binary_ = path;
  upgrade_check_ = std::make_unique<BinaryCheck>(path, reload_.content());
  upgrade_waits_ = 0;
  uv_timer_start(&upgrade_timer_, OnUpgradeTimer, 2, 2);
  return nlohmann::json{{"upgrading", true},
                        {"from", WorkerpoolVersion()},
                        {"binary", path},
                        {"attempts", upgrades_}};
}

// Polls the check of the new binary, then waits for the channels to
// write what they queued (a frame in this process's buffers would not
// survive exec), then hands over.
void Watcher::OnUpgradeTimer(uv_timer_t* timer) {
  auto* self = Owner<Watcher>(timer);
  if (self->upgrade_check_) {
    if (!self->upgrade_check_->done()) return;
    Result<std::string> version = self->upgrade_check_->result();
    self->upgrade_check_.reset();
    if (!version.ok()) {
      uv_timer_stop(timer);
      ++self->upgrades_;
      self->last_upgrade_unix_ = time(nullptr);
      self->last_upgrade_error_ = "refused: " + version.status().message();
      self->last_upgrade_refused_ = true;
      self->upgrade_binary_.clear();
      spdlog::error("upgrade refused, keeping the running Watcher: {}",
                    version.status().message());
      return;
    }
    spdlog::info("upgrade: workerpool {} -> {} ({}), {} children kept",
                 WorkerpoolVersion(), *version, self->upgrade_binary_,
                 self->table_.child_count());
    NotifySystemd("RELOADING=1\n" + MonotonicUsecField() +
                  "\nSTATUS=upgrading to workerpool " + *version);
    self->upgrade_waits_ = 0;
  }
  // At most a second for the children to read what was sent to them, and
  // for control and metrics clients to take their answers (a status of a
  // large pool outgrows the socket buffer; exec would cut it short); a
  // reader that takes nothing for that long loses what is left.
  const bool answering =
      (self->control_server_ && self->control_server_->Writing()) ||
      (self->metrics_server_ && self->metrics_server_->Writing());
  if ((!self->table_.ChannelsFlushed() || answering) &&
      ++self->upgrade_waits_ < 500) {
    return;
  }
  uv_timer_stop(timer);
  self->ExecUpgrade();
}

void Watcher::ExecUpgrade() {
  const std::string binary = std::move(upgrade_binary_);
  upgrade_binary_.clear();
  if (binary.empty() || table_.stopping()) return;
  UpgradeState state;
  const TimePoint now = Clock::now();
  state.handing_since_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               now.time_since_epoch())
                               .count();
  state.from_version = WorkerpoolVersion();
  state.config_path = reload_.path();
  state.config_content = reload_.content();
  state.pool_name = config().name;
  state.control_socket = config().control_socket;
  state.metrics = config().metrics;
  state.phase = phase_ == Phase::kStarting    ? "starting"
                : phase_ == Phase::kReloading ? "reloading"
                                              : "running";
  state.uptime_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now - started_at_)
          .count();
  state.started_unix = started_unix_;
  state.last_reload = reload_.last();
  state.reload_generation = reload_.applied();
  state.reload_queued = reload_.queued();
  state.upgrades = upgrades_ + 1;
  state.last_upgrade_unix = time(nullptr);
  state.control_fd = control_server_ ? control_server_->fd() : -1;
  state.metrics_fd = metrics_server_ ? metrics_server_->fd() : -1;
  state.fallback_exe_fd = own_exe_fd_;
  state.listen_fds = listen_sockets_.fds();
  table_.SaveState(&state, now);
  const std::string text = FormatUpgradeState(state);
  Result<int> memfd = WriteStateMemfd(text);
  Status failed = memfd.status();
  if (memfd.ok()) {
    spdlog::info("upgrade: exec {} (state {} bytes)", binary, text.size());
    spdlog::default_logger()->flush();
    // Links by connect still waiting and their private directories go
    // (their sockets would not survive exec, and the directories would be
    // left behind); the next Watcher makes new ones when asked.
    table_.channels().CloseAll();
    failed = ExecAdopting(binary, -1, reload_.path(), *memfd,
                          UpgradeStateFds(state), "", /*for_fallback=*/false);
    close(*memfd);
  }
  // Still here: nothing changed.
  ++upgrades_;
  last_upgrade_refused_ = false;
  last_upgrade_unix_ = state.last_upgrade_unix;
  last_upgrade_error_ = failed.message();
  spdlog::error("upgrade failed, keeping the running Watcher: {}",
                failed.message());
  NotifySystemd("READY=1\nSTATUS=" + StatusLine(Facts(), table_));
}

Status Watcher::Adopt(PoolConfig initial, const UpgradeState& state,
                      int state_fd, const std::string& upgrade_error,
                      TimePoint entered, TimePoint parsed) {
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  const TimePoint now = Clock::now();
  listen_sockets_.Adopt(state.listen_fds);
  reload_.Adopt(std::move(initial), state.config_content,
                state.reload_generation, state.last_reload,
                state.reload_queued);
  if (state.control_fd < 0) {
    return Status::Error("the state hands over no control socket");
  }
  Result<std::unique_ptr<ControlServer>> control = ControlServer::Start(
      loop_, config().control_socket, this, state.control_fd);
  if (!control.ok()) return control.status();
  control_server_ = std::move(*control);
  if (!config().metrics.empty() && state.metrics_fd >= 0) {
    Result<std::unique_ptr<MetricsServer>> metrics =
        MetricsServer::Start(loop_, config().metrics, this, state.metrics_fd);
    if (!metrics.ok()) return metrics.status();
    metrics_server_ = std::move(*metrics);
  }
  StartSignals();
  for (uv_timer_t* timer :
       {&stop_timer_, &watchdog_timer_, &settle_timer_, &upgrade_timer_}) {
    uv_timer_init(loop_, timer);
    timer->data = this;
  }
  StartWatchdog();
  started_at_ = now - std::chrono::milliseconds(state.uptime_ms);
  started_unix_ = state.started_unix;
  phase_ = state.phase == "starting"    ? Phase::kStarting
           : state.phase == "reloading" ? Phase::kReloading
                                        : Phase::kRunning;
  if (const char* fault = getenv("WORKERPOOL_TEST_ADOPT_FAULT")) {
    // Tests only: a new binary that fails or crashes while adopting.
    if (std::string(fault) == "crash") abort();
    if (std::string(fault) == "refuse") {
      return Status::Error("refused by WORKERPOOL_TEST_ADOPT_FAULT");
    }
  }
  Status adopted = table_.AdoptState(state, now);
  if (!adopted.ok()) return adopted;
  // How the children spawned from now on write their output (a pipe each,
  // or the group's socket in a large pool), as the start decided it.
  if (Status fits =
          table_.FitFileLimit(table_.PlannedChildren(), table_.PlannedGroups());
      !fits.ok()) {
    spdlog::warn("after the upgrade: {}", fits.message());
  }

  // The pool is ours from here.
  upgrades_ = state.upgrades;
  last_upgrade_unix_ = state.last_upgrade_unix;
  last_upgrade_error_ =
      upgrade_error.empty() ? state.last_upgrade_error : upgrade_error;
  previous_version_ = state.from_version;
  DisarmAdoptionFallback();
  close(state_fd);
  if (state.fallback_exe_fd >= 0 && state.fallback_exe_fd != own_exe_fd_) {
    close(state.fallback_exe_fd);
  }
  UnblockUpgradeSignals();
  if (upgrade_error.empty()) {
    // Where the pause went (docs/OPERATIONS.md): the old Watcher writing
    // the state and exec, this one reading and parsing it with the config,
    // then adopting the pool.
    auto ms = [](Clock::duration d) {
      return std::chrono::duration<double, std::milli>(d).count();
    };
    const TimePoint adopted_at = Clock::now();
    const TimePoint handing =
        state.handing_since_ns > 0
            ? TimePoint(std::chrono::duration_cast<Clock::duration>(
                  std::chrono::nanoseconds(state.handing_since_ns)))
            : entered;
    spdlog::info(
        "upgrade done: workerpool {} adopted pool {} from workerpool {}: {} "
        "children, none restarted; hand-over {:.1f} ms (state written and "
        "exec {:.1f}, state and config read {:.1f}, adoption {:.1f})",
        WorkerpoolVersion(), config().name, state.from_version,
        table_.child_count(), ms(adopted_at - handing), ms(entered - handing),
        ms(parsed - entered), ms(adopted_at - parsed));
  } else {
    spdlog::error("upgrade failed, workerpool {} took pool {} back: {}",
                  WorkerpoolVersion(), config().name, upgrade_error);
  }
  NotifySystemd("READY=1\nSTATUS=workerpool " + WorkerpoolVersion() + ": " +
                StatusLine(Facts(), table_));
  // Children that died during the hand-over: reaped and restarted as usual.
  table_.Reap();
  CheckSettled();
  return Status::Ok();
}

PoolFacts Watcher::Facts() const {
  PoolFacts facts;
  facts.name = config().name;
  facts.config_path = reload_.path();
  switch (phase_) {
    case Phase::kStarting:
      facts.state = "starting";
      break;
    case Phase::kRunning:
      facts.state = "running";
      break;
    case Phase::kReloading:
      facts.state = "reloading";
      break;
    case Phase::kStopping:
      facts.state = "stopping";
      break;
  }
  facts.reload_queued = reload_.queued();
  facts.uptime =
      std::chrono::duration_cast<Duration>(Clock::now() - started_at_);
  facts.last_reload = reload_.last();
  facts.refused_routes = table_.channels().refused_requests();
  facts.generation = reload_.applied();
  return facts;
}

}  // namespace

int RunWatcher(const std::string& config_path, const char* argv0) {
  std::string content;
  ConfigLoad load = LoadConfigFile(config_path, &content);
  if (!load.ok()) {
    std::fputs(load.ErrorText().c_str(), stderr);
    return 1;
  }
  SetupLogging(load.config->log);
  uv_loop_t* loop = uv_default_loop();
  {
    Watcher watcher(loop, config_path, SelfExecutable(argv0));
    int code = watcher.Run(std::move(*load.config), std::move(content));
    if (code != 0) return code;
  }
  uv_loop_close(loop);
  return 0;
}

namespace {

// The new binary cannot adopt: the old one (STATE's fallback) takes the
// pool back with the same state. Returns only when that exec failed too.
int FallBack(const UpgradeState* state, int fallback_fd,
             const std::string& config_path, int state_fd,
             const std::string& error) {
  spdlog::error(
      "upgrade: cannot adopt the pool: {}; the old binary takes it "
      "back",
      error);
  spdlog::default_logger()->flush();
  std::vector<int> keep;
  if (state != nullptr) keep = UpgradeStateFds(*state);
  Status failed = ExecAdopting("", fallback_fd, config_path, state_fd, keep,
                               error, /*for_fallback=*/true);
  spdlog::critical(
      "upgrade: the old binary cannot be run either ({}): the "
      "pool is lost",
      failed.message());
  return 2;
}

}  // namespace

int RunAdoptingWatcher(const std::string& config_path, const char* argv0,
                       int state_fd, const std::string& upgrade_error) {
  const TimePoint entered = Clock::now();
  Result<std::string> text = ReadStateFd(state_fd);
  Result<UpgradeState> state = text.ok() ? ParseUpgradeState(*text)
                                         : Result<UpgradeState>(text.status());
  // Where to go back to: the state says, and a state this binary cannot
  // read still names it in its first member we can find.
  int fallback_fd = state.ok() ? state->fallback_exe_fd : -1;
  if (!state.ok() && text.ok()) {
    nlohmann::json raw = nlohmann::json::parse(*text, nullptr, false);
    if (raw.is_object()) {
      auto fds = raw.find("fds");
      if (fds != raw.end() && fds->is_object()) {
        auto exe = fds->find("fallback_exe");
        if (exe != fds->end() && exe->is_number_integer()) {
          fallback_fd = static_cast<int>(
              exe->get_ref<const nlohmann::json::number_integer_t&>());
        }
      }
    }
  }
  const std::string own_error =
      upgrade_error.empty() ? std::string() : upgrade_error;
  if (upgrade_error.empty()) {
    ArmAdoptionFallback(
        fallback_fd, config_path, state_fd,
        state.ok() ? UpgradeStateFds(*state) : std::vector<int>{});
  }
  if (!state.ok()) {
    if (!upgrade_error.empty()) {
      std::fprintf(stderr, "workerpool: cannot take the pool back: %s\n",
                   state.status().message().c_str());
      return 2;
    }
    return FallBack(nullptr, fallback_fd, config_path, state_fd,
                    state.status().message());
  }
  ConfigLoad load = ParseConfig(state->config_content, state->config_path,
                                SystemConfigEnvironment());
  if (!load.ok()) {
    if (!upgrade_error.empty()) return 2;
    return FallBack(&*state, fallback_fd, config_path, state_fd,
                    "the pool definition in force: " + load.ErrorText());
  }
  SetupLogging(load.config->log);
  const TimePoint parsed = Clock::now();
  PoolConfig config = std::move(*load.config);
  config.name = state->pool_name;
  config.control_socket = state->control_socket;
  config.metrics = state->metrics;
  uv_loop_t* loop = uv_default_loop();
  {
    Watcher watcher(loop, state->config_path, SelfExecutable(argv0));
    Status adopted = watcher.Adopt(std::move(config), *state, state_fd,
                                   upgrade_error, entered, parsed);
    if (!adopted.ok()) {
      if (!upgrade_error.empty()) {
        spdlog::critical("cannot take the pool back: {}", adopted.message());
        return 2;
      }
      return FallBack(&*state, fallback_fd, config_path, state_fd,
                      adopted.message());
    }
    int code = watcher.Loop();
    if (code != 0) return code;
  }
  uv_loop_close(loop);
  return 0;
}

}  // namespace workerpool
