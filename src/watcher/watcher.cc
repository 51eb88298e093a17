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
#include "watcher/watcher.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <uv.h>

#include <cstdio>
#include <memory>

#include "core/config.h"
#include "core/control_request.h"  // kScaleAuto
#include "core/file_limit.h"
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

  int Run(PoolConfig initial);

  // ControlTarget: what `workerpool status|scale|restart|reload|stop` ask.
  nlohmann::json StatusJson() override {
    return workerpool::StatusJson(Facts(), table_);
  }
  Status Scale(const std::string& group, int processes) override;
  Status RestartGroup(const std::string& group) override;
  Status Reload() override;
  void Stop() override { BeginStop("workerpool stop"); }

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

  static void OnSignal(uv_signal_t* handle, int signal_number);
  static void OnStopTimer(uv_timer_t* timer);

  uv_loop_t* loop_;
  ListenSockets listen_sockets_;
  ChildTable table_;
  PoolReload reload_;
  uv_signal_t sigchld_, sigterm_, sigint_, sighup_;
  uv_timer_t stop_timer_;
  uv_timer_t watchdog_timer_;  // runs only when systemd's watchdog is on
  uv_timer_t settle_timer_;    // armed by ScheduleSettledCheck only
  Phase phase_ = Phase::kStarting;
  bool jobs_signalled_ = false;  // stop: second phase started
  bool closed_ = false;
  std::unique_ptr<ControlServer> control_server_;
  std::unique_ptr<MetricsServer> metrics_server_;
  Clock::time_point started_at_ = Clock::now();
};

int Watcher::Run(PoolConfig initial) {
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
  reload_.Start(std::move(initial));
  if (Status control = StartControl(); !control.ok()) {
    spdlog::critical("{}", control.message());
    return 2;
  }
  StartSignals();
  for (uv_timer_t* timer : {&stop_timer_, &watchdog_timer_, &settle_timer_}) {
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

  uv_run(loop_, UV_RUN_DEFAULT);
  spdlog::info("pool {} stopped", config().name);
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
  if (metrics_server_) metrics_server_->Close();
  spdlog::info("{}: stopping {} children (SIGKILL after {})", why,
               table_.child_count(), FormatDuration(config().stop_timeout));
  NotifySystemd("STOPPING=1\nSTATUS=stopping " +
                std::to_string(table_.child_count()) + " children (" + why +
                ")");
  table_.BeginStop();
  // Intake first: reactors and services stop taking work and finish what
  // they sent; jobs follow once nobody can send them more.
  table_.SignalAll(SIGTERM, /*jobs_too=*/false);
  uv_timer_start(&stop_timer_, OnStopTimer,
                 static_cast<uint64_t>(config().stop_timeout.count()), 0);
  SignalJobsIfIntakeGone();
  FinishIfStopped();
}

void Watcher::SignalJobsIfIntakeGone() {
  if (!table_.stopping() || jobs_signalled_ || table_.IntakeRunning()) return;
  jobs_signalled_ = true;
  table_.SignalAll(SIGTERM, /*jobs_too=*/true);
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
  for (uv_signal_t* handle : {&sigchld_, &sigterm_, &sigint_, &sighup_}) {
    close_handle(handle);
  }
  for (uv_timer_t* timer : {&stop_timer_, &watchdog_timer_, &settle_timer_}) {
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
    if (!group->outgoing.empty() || !group->rolling.empty()) return false;
    for (const auto& [index, slot] : group->slots) {
      if (!slot->up()) return false;
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
  ConfigLoad load = LoadConfigFile(config_path);
  if (!load.ok()) {
    std::fputs(load.ErrorText().c_str(), stderr);
    return 1;
  }
  SetupLogging(load.config->log);
  uv_loop_t* loop = uv_default_loop();
  {
    Watcher watcher(loop, config_path, SelfExecutable(argv0));
    int code = watcher.Run(std::move(*load.config));
    if (code != 0) return code;
  }
  uv_loop_close(loop);
  return 0;
}

}  // namespace workerpool
