// The control socket: how `workerpool status|scale|restart|reload|stop`
// reach a running Watcher, and the Prometheus metrics endpoint. Both run on
// the Watcher's loop and ask the Watcher through ControlTarget.
//
// Control protocol (docs/OPERATIONS.md): a Unix stream socket, mode 0600,
// peers checked with SO_PEERCRED (root or the Watcher's uid). One request per
// connection: a JSON object on one line, e.g. {"command":"scale",
// "group":"web","processes":4}; one JSON answer on one line: {"ok":true,...}
// or {"ok":false,"error":"..."}; then the Watcher closes the connection.
#pragma once

#include <uv.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/metrics_text.h"  // MetricsText
#include "core/status.h"

namespace workerpool {

// Implemented by the Watcher.
class ControlTarget {
 public:
  virtual ~ControlTarget() = default;
  // The whole pool, for `status --json` and metrics. Shape:
  // {"pool","config","pid","state","started_unix","last_reload":{"ok","error",
  //  "unix"},"refused_routes","groups":[{"name","type","desired","live",
  //  "ready","restarts","state","scaled_until_reload","inflight","queued",
  //  "requests":{"sent","replied","failed","refused","cancelled","timed_out",
  //  "served","served_errors"},"recycled","app":[...per child app stats],
  //  "children":[{"index","pid","uptime_ms","ready","draining"}]}]}
  // WITH_USAGE: also each child's "rss_bytes" and "cpu_ms" (and their sums
  // per group), read from /proc: one read per child.
  virtual nlohmann::json StatusJson(bool with_usage) = 0;
  virtual Status Scale(const std::string& group, int processes) = 0;
  virtual Status RestartGroup(const std::string& group) = 0;
  // `restart GROUP --with-dependents`: GROUP, then every group that depends
  // on it, one rolling restart after another (dependencies first).
  virtual Status RestartWithDependents(const std::string& group) {
    return RestartGroup(group);
  }
  // Parses, validates and applies the file now; an error leaves the running
  // pool untouched and names file:line:col.
  virtual Status Reload() = 0;
  virtual void Stop() = 0;
  // In-place upgrade to BINARY (empty: the one the Watcher was started
  // from): starts checking it, and hands over once the checks passed. The
  // answer's members for the client ({"upgrading":true,"from","binary",
  // "attempts"}: the attempt's outcome shows in status as attempts + 1),
  // or why it cannot start (stopping, another upgrade under way).
  virtual Result<nlohmann::json> Upgrade(const std::string& binary) {
    (void)binary;
    return Status::Error("this Watcher cannot upgrade");
  }
};

class ControlServer {
 public:
  virtual ~ControlServer() = default;
  // Binds PATH (removing a stale socket; failing when another Watcher
  // answers there), mode 0600.
  // With ADOPT_FD >= 0 (an in-place upgrade) that socket, already bound at
  // PATH by the Watcher before, is served instead.
  static Result<std::unique_ptr<ControlServer>> Start(uv_loop_t* loop,
                                                      const std::string& path,
                                                      ControlTarget* target,
                                                      int adopt_fd = -1);
  // Stops listening and removes the socket file.
  virtual void Close() = 0;
  // The listening socket (kept across exec by an in-place upgrade).
  virtual int fd() const = 0;
  // An answer is still being written (an upgrade waits for it: exec would
  // cut it short and the client would see a reset).
  virtual bool Writing() const = 0;
};

class MetricsServer {
 public:
  virtual ~MetricsServer() = default;
  // Serves GET /metrics (Prometheus text format 0.0.4) on ADDRESS
  // ("host:port").
  static Result<std::unique_ptr<MetricsServer>> Start(
      uv_loop_t* loop, const std::string& address, ControlTarget* target,
      int adopt_fd = -1);
  virtual void Close() = 0;
  virtual int fd() const = 0;
  virtual bool Writing() const = 0;
};

}  // namespace workerpool
