#include "watcher/pool_reload.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>

#include "core/file_limit.h"
#include "core/pool_diff.h"
#include "os/config_file.h"
#include "os/notify.h"
#include "os/uv_owner.h"
#include "watcher/child_table.h"
#include "watcher/listen_sockets.h"
#include "watcher/logging.h"

namespace workerpool {
namespace {

std::string WithoutTrailingNewline(std::string text) {
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

}  // namespace

PoolReload::PoolReload(uv_loop_t* loop, std::string path, ChildTable* table,
                       ListenSockets* sockets, Host* host)
    : loop_(loop),
      path_(std::move(path)),
      table_(table),
      sockets_(sockets),
      host_(host) {
  uv_timer_init(loop_, &queued_timer_);
  queued_timer_.data = this;
}

void PoolReload::Start(PoolConfig config, std::string content) {
  config_ = std::move(config);
  content_ = std::move(content);
  table_->SetConfig(&config_);
}

void PoolReload::Adopt(PoolConfig config, std::string content,
                       std::uint64_t applied, nlohmann::json last,
                       bool queued) {
  Start(std::move(config), std::move(content));
  applied_ = applied;
  last_ = std::move(last);
  queued_ = queued;
}

Status PoolReload::Request(bool running, bool starting) {
  if (running && !queued_) return Apply();
  // A reload (or the start) is still being applied: this one waits for it,
  // so two never interleave. The file is checked now, to answer at once,
  // and read again when its turn comes.
  ConfigLoad load = LoadConfigFile(path_);
  if (!load.ok()) {
    std::string text = WithoutTrailingNewline(load.ErrorText());
    for (const ConfigError& error : load.errors) {
      spdlog::error("reload refused, keeping the running pool: {}",
                    error.ToString());
    }
    last_ = {{"ok", false}, {"error", text}, {"unix", time(nullptr)}};
    host_->OnReloadRefused();
    return Status::Error(text);
  }
  if (!queued_) {
    spdlog::info("reload queued: the {} is still being applied",
                 starting ? "start" : "previous reload");
  }
  queued_ = true;
  return Status::Ok();
}

void PoolReload::RunQueued() {
  if (!queued_) return;
  // From a fresh loop turn: we may be deep inside a child's exit here.
  uv_timer_start(
      &queued_timer_,
      [](uv_timer_t* timer) {
        auto* self = Owner<PoolReload>(timer);
        if (!self->queued_ || self->table_->stopping()) return;
        self->queued_ = false;
        self->Apply();
      },
      0, 0);
}

void PoolReload::Cancel() {
  queued_ = false;
  uv_timer_stop(&queued_timer_);
}

void PoolReload::Close() {
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&queued_timer_))) {
    uv_close(reinterpret_cast<uv_handle_t*>(&queued_timer_), nullptr);
  }
}

Status PoolReload::Fail(const std::string& error, const char* log_prefix,
                        const std::vector<ConfigError>& errors) {
  if (errors.empty()) {
    spdlog::error("{}: {}", log_prefix, error);
  }
  for (const ConfigError& each : errors) {
    spdlog::error("{}: {}", log_prefix, each.ToString());
  }
  last_ = {{"ok", false}, {"error", error}, {"unix", time(nullptr)}};
  // RELOADING=1 went out: systemd waits for READY=1 to end the reload.
  host_->OnReloadDone(false);
  return Status::Error(error);
}

Status PoolReload::Apply() {
  NotifySystemd("RELOADING=1\n" + MonotonicUsecField() + "\nSTATUS=reloading " +
                path_);
  spdlog::info("reloading {}", path_);
  std::string content;
  ConfigLoad load = LoadConfigFile(path_, &content);
  if (!load.ok()) {
    return Fail(WithoutTrailingNewline(load.ErrorText()),
                "reload failed, keeping the running pool", load.errors);
  }
  PoolConfig next = std::move(*load.config);
  if (Status fits =
          table_->FitFileLimit(PoolChildren(next), next.groups.size());
      !fits.ok()) {
    return Fail(fits.message(), "reload failed, keeping the running pool", {});
  }
  if (Status bound = sockets_->Bind(next); !bound.ok()) {
    sockets_->CloseUnused(config_);  // the ones this attempt bound
    return Fail(bound.message(), "reload failed, keeping the running pool", {});
  }
  PoolDiff diff = DiffPools(config_, next);
  spdlog::info("reload: {}", diff.Summary());
  if (next.log != config_.log) SetupLogging(next.log);
  // The control socket and the metrics endpoint stay where they are until a
  // restart; stop_timeout is read when used.
  if (next.control_socket != config_.control_socket ||
      next.metrics != config_.metrics || next.name != config_.name) {
    spdlog::warn(
        "reload: pool name, control_socket and metrics take effect at the "
        "next start");
  }
  host_->OnReloadApplying();
  // The new definition is in force from here: spawns below use it.
  PoolConfig previous = std::move(config_);
  config_ = std::move(next);
  content_ = std::move(content);
  config_.name = previous.name;
  config_.control_socket = previous.control_socket;
  config_.metrics = previous.metrics;

  for (const GroupChange& change : diff.changes) {
    Group* group = table_->FindGroup(change.group);
    const GroupConfig* next_config = config_.FindGroup(change.group);
    switch (change.kind) {
      case GroupChange::Kind::kAdded:
        table_->AddGroup(*next_config);
        break;
      case GroupChange::Kind::kRemoved:
        if (group != nullptr) table_->RemoveGroup(group);
        break;
      case GroupChange::Kind::kUnchanged:
      case GroupChange::Kind::kResized:
      case GroupChange::Kind::kRestarted: {
        if (group == nullptr) break;
        // An autoscaled group keeps the size it grew to, within the new
        // bounds: the file's processes is only where it starts.
        const int running_target = group->config.processes;
        const bool was_autoscaled = group->autoscale != nullptr;
        const bool health_changed = group->config.health != next_config->health;
        group->config = *next_config;
        if (was_autoscaled && next_config->autoscale) {
          group->config.processes =
              std::clamp(running_target, next_config->autoscale->min,
                         next_config->autoscale->max);
        }
        if (group->scaled) {
          spdlog::info("group {}: the file's processes ({}) replace `scale`",
                       group->config.name, next_config->processes);
        }
        group->scaled = false;
        group->policy.SetConfig(next_config->restart);
        table_->ConfigureAutoscale(group);
        table_->RetryFailedGroup(group);  // a reload gives it a chance
        table_->Resize(group);
        if (change.kind == GroupChange::Kind::kRestarted) {
          table_->StartRollingRestart(group);
        }
        if (change.limits_changed) table_->ApplyLimits(group);
        if (health_changed) table_->ApplyHealth(group);
        break;
      }
    }
  }
  table_->channels().ApplyRoutes();
  // A waiting group whose depends_on the reload shortened may start now.
  table_->StartWaitingGroups();
  table_->UpdateRssSampling();
  ++applied_;
  last_ = {{"ok", true}, {"summary", diff.Summary()}, {"unix", time(nullptr)}};
  host_->OnReloadDone(true);
  return Status::Ok();
}

}  // namespace workerpool
