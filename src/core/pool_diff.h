// What a reload changes: the difference between the running pool definition
// and a new, already validated one. Pure; the Watcher applies it.
#pragma once

#include <string>
#include <vector>

#include "core/pool_model.h"

namespace workerpool {

struct GroupChange {
  enum class Kind {
    kUnchanged,  // no child starts or stops (limits and routes may change)
    kAdded,      // start every process
    kRemoved,    // drain and stop every process
    kResized,    // processes grew or shrank; children kept (never for a
                 // group autoscaled in the new pool: its count is the
                 // autoscaler's, and processes only where it starts)
    kRestarted,  // what a child is started with changed: rolling restart
  };
  Kind kind = Kind::kUnchanged;
  std::string group;
  int old_processes = 0;
  int new_processes = 0;
  // Applied in place to running children (kUnchanged, kResized, kRestarted).
  bool limits_changed = false;  // see LimitsDiffer
  bool routes_changed = false;  // routes_to
  // groups[].autoscale added, removed, or with other bounds or delays:
  // applied in place (Autoscaler::SetConfig; the target is clamped into the
  // new bounds, no child restarted).
  bool autoscale_changed = false;
};

struct PoolDiff {
  std::vector<GroupChange> changes;    // one per group in either pool
  bool pool_settings_changed = false;  // stop_timeout, log, metrics, ...
  // "web: 2 -> 4 processes; compute: restarted (command changed); ..."
  std::string Summary() const;
};

// True when children of OLD_GROUP must be restarted to run as NEW_GROUP:
// type, command, env, cwd, user or listen differ.
bool SpawnSettingsDiffer(const GroupConfig& old_group,
                         const GroupConfig& new_group);

// True when what running children and their senders are told about a group
// differs: max_inflight, queue_limit, request_timeout, heartbeat_timeout,
// max_requests, max_rss or busy_poll_us. Applied without restarting anyone.
bool LimitsDiffer(const GroupConfig& old_group, const GroupConfig& new_group);

PoolDiff DiffPools(const PoolConfig& old_pool, const PoolConfig& new_pool);

}  // namespace workerpool
