#include "watcher/status_report.h"

#include <unistd.h>

#include <map>

#include "os/proc_usage.h"
#include "version.h"
#include "watcher/child_table.h"

namespace workerpool {

nlohmann::json StatusJson(const PoolFacts& pool, const ChildTable& table,
                          bool with_usage) {
  using nlohmann::json;
  const auto now = Clock::now();
  // Request latency per target group, summed over every sender's
  // histogram (stats "latency": {"<group>": {bounds_ms, counts, sum_ms}}).
  std::map<std::string, LatencyHistogram> latency;
  auto add_latency = [&latency](const Slot* slot) {
    for (const auto& [target, histogram] : slot->conversation.stats().latency) {
      LatencyHistogram& total = latency[target];
      if (total.counts.empty()) {
        total.bounds_ms = histogram.bounds_ms;
        total.counts.assign(histogram.counts.size(), 0);
      }
      if (total.bounds_ms != histogram.bounds_ms) continue;  // other version
      for (std::size_t i = 0; i < histogram.counts.size(); ++i) {
        total.counts[i] += histogram.counts[i];
      }
      total.sum_ms += histogram.sum_ms;
    }
  };
  for (const auto& group : table.groups()) group->ForEachSlot(add_latency);

  json groups = json::array();
  for (const auto& group : table.groups()) {
    json children = json::array();
    json app = json::array();
    std::map<std::string, uint64_t> requests;
    uint64_t inflight = 0, queued = 0;
    std::int64_t rss_bytes = 0, cpu_ms = 0;
    int live = 0, ready = 0;
    group->ForEachSlot([&](const Slot* slot) {
      if (!slot->has_child()) return;
      if (!slot->outgoing) {
        ++live;
        if (slot->ready) ++ready;
      }
      children.push_back(
          {{"index", slot->index},
           {"pid", slot->pid},
           {"uptime_ms",
            std::chrono::duration_cast<Duration>(now - slot->started).count()},
           {"ready", slot->ready},
           {"draining",
            slot->outgoing || (slot->state != SlotState::kUp &&
                               slot->state != SlotState::kStarting)}});
      // Read now, for this report only (the header says why).
      std::optional<ProcessUsage> usage;
      if (with_usage) usage = ReadProcessUsage(slot->pid);
      if (usage) {
        children.back()["rss_bytes"] = usage->rss_bytes;
        children.back()["cpu_ms"] = usage->cpu_ms;
        rss_bytes += usage->rss_bytes;
        cpu_ms += usage->cpu_ms;
      }
      const ChildStats& stats = slot->conversation.stats();
      if (!stats.app.empty()) {
        json entry = stats.app;
        entry["index"] = slot->index;
        entry["pid"] = slot->pid;
        app.push_back(std::move(entry));
      }
      for (const auto& [key, number] : stats.counters) {
        if (key == "inflight") {
          inflight += number;
        } else if (key == "queued") {
          queued += number;
        } else if (key != "serving") {
          requests[key] += number;
        }
      }
    });
    std::string state_detail;
    std::string state = table.StateOf(*group, &state_detail);
    groups.push_back({{"name", group->config.name},
                      {"type", GroupTypeName(group->config.type)},
                      {"desired", group->config.processes},
                      {"live", live},
                      {"ready", ready},
                      {"restarts", group->policy.restarts()},
                      {"state", state},
                      {"state_detail", state_detail},
                      {"depends_on", group->config.depends_on},
                      {"scaled_until_reload", group->scaled},
                      {"inflight", inflight},
                      {"queued", queued},
                      {"requests", requests},
                      {"recycled", group->recycled},
                      {"protocol_errors", group->protocol_errors},
                      {"app", app},
                      {"children", children}});
    if (with_usage) {
      groups.back()["rss_bytes"] = rss_bytes;
      groups.back()["cpu_ms"] = cpu_ms;
    }
    json autoscale_json = nullptr;
    if (const Group::Autoscale* autoscale = group->autoscale) {
      const AutoscaleConfig& bounds = autoscale->policy.config();
      json last = nullptr;
      if (!autoscale->policy.last_reason().empty()) {
        last = {{"reason", autoscale->policy.last_reason()},
                {"unix", autoscale->last_unix}};
      }
      autoscale_json = {
          {"min", bounds.min},
          {"max", bounds.max},
          {"up_after_ms", bounds.up_after.count()},
          {"down_after_ms", bounds.down_after.count()},
          {"target", group->config.processes},
          {"paused", group->scaled},
          {"last_decision", last},
          {"decisions", {{"up", autoscale->ups}, {"down", autoscale->downs}}}};
    }
    groups.back()["autoscale"] = std::move(autoscale_json);
    if (auto found = latency.find(group->config.name); found != latency.end()) {
      groups.back()["latency"] = {{"bounds_ms", found->second.bounds_ms},
                                  {"counts", found->second.counts},
                                  {"sum_ms", found->second.sum_ms}};
    }
  }
  json report = {{"pool", pool.name},
                 {"config", pool.config_path},
                 {"version", WORKERPOOL_VERSION},
                 {"pid", getpid()},
                 {"state", pool.state},
                 {"reload_queued", pool.reload_queued},
                 {"uptime_ms", pool.uptime.count()},
                 {"last_reload", pool.last_reload},
                 {"refused_routes", pool.refused_routes},
                 {"groups", groups}};
  if (pool.generation) report["generation"] = *pool.generation;
  if (std::optional<ProcessUsage> usage = ReadProcessUsage(0)) {
    report["watcher"] = {{"rss_bytes", usage->rss_bytes},
                         {"cpu_ms", usage->cpu_ms}};
  }
  return report;
}

std::string StatusLine(const PoolFacts& pool, const ChildTable& table) {
  size_t desired = 0;
  size_t up = 0;
  size_t groups = 0;
  std::string failed;
  for (const auto& group : table.groups()) {
    if (group->removing) continue;
    ++groups;
    desired += group->config.processes;
    for (const auto& [index, slot] : group->slots) up += slot->up() ? 1 : 0;
    if (group->failed) {
      failed += (failed.empty() ? "" : ", ") + group->config.name;
    }
  }
  std::string line = pool.name + ": " + std::to_string(up) + "/" +
                     std::to_string(desired) + " children up in " +
                     std::to_string(groups) + " groups";
  if (std::string(pool.state) == "reloading") line += "; reloading";
  if (pool.reload_queued) line += "; reload queued";
  if (!failed.empty()) line += "; failed: " + failed;
  const nlohmann::json& last = pool.last_reload;
  if (last.is_object()) {
    auto ok = last.find("ok");
    auto error = last.find("error");
    if (ok != last.end() && ok->is_boolean() && !ok->get<bool>() &&
        error != last.end() && error->is_string()) {
      std::string text = error->get<std::string>();
      line += "; last reload failed: " + text.substr(0, text.find('\n'));
    }
  }
  return line;
}

}  // namespace workerpool
