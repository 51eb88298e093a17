// The reload room: SIGHUP or `workerpool reload`. Reads and checks the file
// and binds its new listen sockets before it changes anything (a bad file
// leaves the running pool untouched, as nginx does), diffs the new pool
// against the running one (core/pool_diff.h) and applies only the
// difference: groups added, removed (drained), resized, restarted in a
// rolling way, or given new limits in place. One reload at a time: a reload
// that arrives while the start or another reload is still being applied is
// checked at once and queued. Owns the definition in force. Runs on the
// Watcher's loop thread.
#pragma once

#include <uv.h>

#include <nlohmann/json.hpp>
#include <string>

#include "core/config.h"
#include "core/status.h"

namespace workerpool {

class ChildTable;
class ListenSockets;

class PoolReload {
 public:
  class Host {
   public:
    virtual ~Host() = default;
    // The new definition passed its checks and is being applied.
    virtual void OnReloadApplying() = 0;
    // Applied (the pool settles from here), or failed without a change
    // after it began (systemd heard RELOADING=1).
    virtual void OnReloadDone(bool ok) = 0;
    // A reload asked while another is applied was refused: the file is bad.
    virtual void OnReloadRefused() = 0;
  };

  PoolReload(uv_loop_t* loop, std::string path, ChildTable* table,
             ListenSockets* sockets, Host* host);

  // The definition the pool starts with, and the bytes it was read from.
  void Start(PoolConfig config, std::string content = {});
  const PoolConfig& config() const { return config_; }
  // The bytes of the file the definition in force was read from (an
  // in-place upgrade hands them over: the file may have changed since).
  const std::string& content() const { return content_; }
  // The next Watcher of an in-place upgrade takes the reload room over:
  // the definition in force, its bytes, the reloads applied, the last
  // outcome and whether one is queued.
  void Adopt(PoolConfig config, std::string content, std::uint64_t applied,
             nlohmann::json last, bool queued);
  const std::string& path() const { return path_; }

  // Reloads now when the pool is RUNNING (settled) and nothing waits;
  // otherwise checks the file at once and queues the reload (STARTING: the
  // start is what is still being applied, for the log).
  Status Request(bool running, bool starting);
  // The pool settled: a queued reload starts, from a fresh loop turn.
  void RunQueued();
  bool queued() const { return queued_; }
  // The pool stops: nothing queued runs.
  void Cancel();
  void Close();
  // null before the first reload; {"ok", "summary"|"error", "unix"}.
  const nlohmann::json& last() const { return last_; }
  // Reloads applied since the start (the pool's generation, for `top`).
  std::uint64_t applied() const { return applied_; }

 private:
  Status Apply();
  Status Fail(const std::string& error, const char* log_prefix,
              const std::vector<ConfigError>& errors);

  uv_loop_t* loop_;
  std::string path_;
  ChildTable* table_;
  ListenSockets* sockets_;
  Host* host_;
  PoolConfig config_;
  std::string content_;
  bool queued_ = false;
  uv_timer_t queued_timer_;  // starts a queued reload from a clean stack
  nlohmann::json last_ = nullptr;
  std::uint64_t applied_ = 0;
};

}  // namespace workerpool
