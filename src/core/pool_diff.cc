#include "core/pool_diff.h"

namespace workerpool {
namespace {

const char* KindName(GroupChange::Kind kind) {
  switch (kind) {
    case GroupChange::Kind::kUnchanged:
      return "unchanged";
    case GroupChange::Kind::kAdded:
      return "added";
    case GroupChange::Kind::kRemoved:
      return "removed";
    case GroupChange::Kind::kResized:
      return "resized";
    case GroupChange::Kind::kRestarted:
      return "restarted";
  }
  return "?";
}

}  // namespace

bool SpawnSettingsDiffer(const GroupConfig& a, const GroupConfig& b) {
  return a.type != b.type || a.command != b.command || a.env != b.env ||
         a.cwd != b.cwd || a.user != b.user || a.uid != b.uid ||
         a.gid != b.gid || a.listen != b.listen || a.rabbitmq != b.rabbitmq;
}

bool LimitsDiffer(const GroupConfig& a, const GroupConfig& b) {
  return a.max_inflight != b.max_inflight || a.queue_limit != b.queue_limit ||
         a.request_timeout != b.request_timeout ||
         a.heartbeat_timeout != b.heartbeat_timeout ||
         a.max_requests != b.max_requests || a.max_rss != b.max_rss ||
         a.busy_poll_us != b.busy_poll_us;
}

PoolDiff DiffPools(const PoolConfig& old_pool, const PoolConfig& new_pool) {
  PoolDiff diff;
  for (const GroupConfig& old_group : old_pool.groups) {
    const GroupConfig* new_group = new_pool.FindGroup(old_group.name);
    GroupChange change;
    change.group = old_group.name;
    change.old_processes = old_group.processes;
    if (new_group == nullptr) {
      change.kind = GroupChange::Kind::kRemoved;
    } else {
      change.new_processes = new_group->processes;
      change.limits_changed = LimitsDiffer(old_group, *new_group);
      change.routes_changed = old_group.routes_to != new_group->routes_to;
      change.autoscale_changed = old_group.autoscale != new_group->autoscale;
      if (SpawnSettingsDiffer(old_group, *new_group)) {
        change.kind = GroupChange::Kind::kRestarted;
      } else if (old_group.processes != new_group->processes &&
                 !new_group->autoscale) {
        change.kind = GroupChange::Kind::kResized;
      }
    }
    diff.changes.push_back(change);
  }
  for (const GroupConfig& new_group : new_pool.groups) {
    if (old_pool.FindGroup(new_group.name) != nullptr) continue;
    GroupChange change;
    change.kind = GroupChange::Kind::kAdded;
    change.group = new_group.name;
    change.new_processes = new_group.processes;
    diff.changes.push_back(change);
  }
  diff.pool_settings_changed =
      old_pool.stop_timeout != new_pool.stop_timeout ||
      old_pool.log != new_pool.log || old_pool.metrics != new_pool.metrics ||
      old_pool.control_socket != new_pool.control_socket ||
      old_pool.name != new_pool.name;
  return diff;
}

std::string PoolDiff::Summary() const {
  std::string out;
  for (const GroupChange& change : changes) {
    std::vector<std::string> parts;
    if (change.kind != GroupChange::Kind::kUnchanged) {
      std::string part = KindName(change.kind);
      if (change.kind == GroupChange::Kind::kResized ||
          change.kind == GroupChange::Kind::kRestarted) {
        part += " (" + std::to_string(change.old_processes) + " -> " +
                std::to_string(change.new_processes) + " processes)";
      }
      parts.push_back(part);
    }
    if (change.limits_changed) parts.push_back("limits changed");
    if (change.routes_changed) parts.push_back("routes_to changed");
    if (change.autoscale_changed) parts.push_back("autoscale changed");
    if (parts.empty()) continue;
    if (!out.empty()) out += "; ";
    out += change.group + ":";
    for (std::size_t i = 0; i < parts.size(); ++i) {
      out += (i == 0 ? " " : ", ") + parts[i];
    }
  }
  return out.empty() ? "no group changed" : out;
}

}  // namespace workerpool
