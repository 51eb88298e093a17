#include "core/metrics_text.h"

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "version.h"

namespace workerpool {
namespace {

using nlohmann::json;
using Labels = std::vector<std::pair<std::string, std::string>>;

// Nested app objects flatten to this depth; deeper values are dropped.
constexpr int kMaxAppDepth = 4;

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// A metric name part from an arbitrary key: [a-zA-Z0-9_], others become '_'.
std::string SanitizeName(std::string_view key) {
  std::string out;
  out.reserve(key.size());
  for (char c : key) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_';
    out += ok ? c : '_';
  }
  return out;
}

std::string FormatDouble(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // nlohmann prints the shortest text that reads back as the same double.
  return json(value).dump();
}

// The sample value of a JSON number or boolean; nullopt for anything else.
std::optional<std::string> SampleValue(const json& value) {
  if (value.is_boolean()) return value.get<bool>() ? "1" : "0";
  if (value.is_number_unsigned()) {
    return std::to_string(value.get<std::uint64_t>());
  }
  if (value.is_number_integer()) {
    return std::to_string(value.get<std::int64_t>());
  }
  if (value.is_number_float()) return FormatDouble(value.get<double>());
  return std::nullopt;
}

// Member KEY of OBJECT, or nullptr when OBJECT is not an object or lacks it.
const json* Member(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto found = object.find(key);
  return found == object.end() ? nullptr : &*found;
}

std::optional<double> NumberMember(const json& object, const char* key) {
  const json* value = Member(object, key);
  if (value == nullptr || !value->is_number()) return std::nullopt;
  return value->get<double>();
}

std::string StringMember(const json& object, const char* key) {
  const json* value = Member(object, key);
  return value != nullptr && value->is_string() ? value->get<std::string>()
                                                : std::string();
}

// Metric families in order of first use; each family's samples stay together
// (the text format requires it) and a repeated label set is dropped.
class Exposition {
 public:
  // Adds a sample NAME+SUFFIX{LABELS} VALUE to family NAME. A family keeps
  // the type and help it was first given; a sample for a family of another
  // type is dropped (an app key cannot turn a counter into a gauge).
  void Add(const std::string& name, const char* type, const std::string& help,
           const Labels& labels, const std::string& value,
           std::string_view suffix = {}) {
    auto [it, inserted] = families_.try_emplace(name);
    Family& family = it->second;
    if (inserted) {
      order_.push_back(name);
      family.type = type;
      family.help = help;
    } else if (family.type != type) {
      return;
    }
    std::string sample = name;
    sample += suffix;
    if (!labels.empty()) {
      sample += '{';
      for (std::size_t i = 0; i < labels.size(); ++i) {
        if (i > 0) sample += ',';
        sample +=
            labels[i].first + "=\"" + EscapeLabelValue(labels[i].second) + '"';
      }
      sample += '}';
    }
    if (!family.seen.insert(sample).second) return;
    family.samples.push_back(sample + ' ' + value);
  }

  // Adds a sample from a JSON number or boolean; other values are skipped.
  void AddJson(const std::string& name, const char* type,
               const std::string& help, const Labels& labels,
               const json* value) {
    if (value == nullptr) return;
    std::optional<std::string> text = SampleValue(*value);
    if (text) Add(name, type, help, labels, *text);
  }

  std::string Text() const {
    std::string out;
    for (const std::string& name : order_) {
      const Family& family = families_.at(name);
      out += "# HELP " + name + ' ' + EscapeHelp(family.help) + '\n';
      out += "# TYPE " + name + ' ' + family.type + '\n';
      for (const std::string& sample : family.samples) out += sample + '\n';
    }
    return out;
  }

 private:
  struct Family {
    std::string type;
    std::string help;
    std::vector<std::string> samples;
    std::set<std::string> seen;
  };
  std::vector<std::string> order_;
  std::map<std::string, Family> families_;
};

void AddPool(const json& status, Exposition* out) {
  Labels info = {{"version", WORKERPOOL_VERSION}};
  std::string pool = StringMember(status, "pool");
  if (!pool.empty()) info.insert(info.begin(), {"pool", pool});
  out->Add("workerpool_info", "gauge",
           "The pool this Watcher runs and the workerpool version (always 1).",
           info, "1");
  std::string state = StringMember(status, "state");
  if (!state.empty()) {
    out->Add("workerpool_state", "gauge",
             "The Watcher's state, as a label (always 1).", {{"state", state}},
             "1");
  }
  out->AddJson("workerpool_start_time_seconds", "gauge",
               "When the Watcher started, in seconds since the Unix epoch.", {},
               Member(status, "started_unix"));
  if (std::optional<double> uptime_ms = NumberMember(status, "uptime_ms")) {
    out->Add("workerpool_uptime_seconds", "gauge",
             "How long the Watcher has been running.", {},
             FormatDouble(*uptime_ms / 1000.0));
  }
  if (const json* reload = Member(status, "last_reload");
      reload != nullptr && reload->is_object()) {
    out->AddJson("workerpool_last_reload_success", "gauge",
                 "1 when the last reload applied, 0 when it failed and the "
                 "running pool was kept.",
                 {}, Member(*reload, "ok"));
    out->AddJson("workerpool_last_reload_timestamp_seconds", "gauge",
                 "When the last reload was attempted, in seconds since the "
                 "Unix epoch.",
                 {}, Member(*reload, "unix"));
  }
  out->AddJson("workerpool_refused_routes_total", "counter",
               "Routes refused by the routing rules or routes_to.", {},
               Member(status, "refused_routes"));
  // The Watcher's own process, under the names every Prometheus client
  // library uses for its process.
  if (const json* watcher = Member(status, "watcher")) {
    out->AddJson("process_resident_memory_bytes", "gauge",
                 "Resident memory of the Watcher process.", {},
                 Member(*watcher, "rss_bytes"));
    if (std::optional<double> cpu_ms = NumberMember(*watcher, "cpu_ms")) {
      out->Add("process_cpu_seconds_total", "counter",
               "User and system CPU time of the Watcher process.", {},
               FormatDouble(*cpu_ms / 1000.0));
    }
  }
}

// workerpool_service_connected from a connection state given as text.
std::optional<bool> ConnectedFromText(const std::string& state) {
  static const std::set<std::string> kUp = {"connected", "open", "up", "ready",
                                            "consuming"};
  static const std::set<std::string> kDown = {
      "disconnected", "closed",  "down",    "connecting", "reconnecting",
      "failed",       "error",   "blocked", "closing",    "not connected",
      "stopping",     "stopped", "starting"};
  if (kUp.count(state) != 0) return true;
  if (kDown.count(state) != 0) return false;
  return std::nullopt;
}

// A service child's per-queue figures, {"tasks":{"acks":3,...},...}: one
// series per queue, the queue's name a label rather than part of the
// metric name, so dashboards can sum across queues.
void AddQueues(const json& queues, const Labels& labels, Exposition* out) {
  for (auto queue = queues.begin(); queue != queues.end(); ++queue) {
    if (!queue.value().is_object()) continue;
    Labels queue_labels = labels;
    queue_labels.emplace_back("queue", queue.key());
    for (auto it = queue.value().begin(); it != queue.value().end(); ++it) {
      std::string name = SanitizeName(it.key());
      std::optional<std::string> text = SampleValue(it.value());
      if (name.empty() || !text) continue;
      out->Add("workerpool_service_queue_" + name, "gauge",
               "Per-queue figure '" + name +
                   "' reported by the group's service children.",
               queue_labels, *text);
    }
  }
}

void AddAppValues(const json& object, const std::string& prefix, int depth,
                  const Labels& labels, Exposition* out) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string& key = it.key();
    const json& value = it.value();
    if (depth == 0 && (key == "index" || key == "pid" || key == "stats")) {
      continue;  // identity of the child, not a figure
    }
    std::string name =
        prefix.empty() ? SanitizeName(key) : prefix + "_" + SanitizeName(key);
    if (name.empty()) continue;
    if (depth == 0 && key == "queues" && value.is_object()) {
      AddQueues(value, labels, out);
      continue;
    }
    if (value.is_object()) {
      if (depth + 1 < kMaxAppDepth) {
        AddAppValues(value, name, depth + 1, labels, out);
      }
      continue;
    }
    if (depth == 0 && value.is_string() &&
        (key == "connection" || key == "connection_state")) {
      std::optional<bool> up = ConnectedFromText(value.get<std::string>());
      if (up) {
        out->Add("workerpool_service_connected", "gauge",
                 "1 while the service child is connected to its broker.",
                 labels, *up ? "1" : "0");
      }
      continue;
    }
    if (depth == 0 && key == "connected" && value.is_boolean()) {
      out->Add("workerpool_service_connected", "gauge",
               "1 while the service child is connected to its broker.", labels,
               value.get<bool>() ? "1" : "0");
      continue;
    }
    std::optional<std::string> text = SampleValue(value);
    if (!text) continue;
    out->Add("workerpool_service_" + name, "gauge",
             "Service figure '" + name +
                 "' reported by the group's children (SetAppStats).",
             labels, *text);
  }
}

void AddApp(const std::string& group, const json& app, Exposition* out) {
  auto add_child = [&](const json& entry, std::string index) {
    const json* stats = &entry;
    if (const json* wrapped = Member(entry, "stats");
        wrapped != nullptr && wrapped->is_object()) {
      stats = wrapped;
    }
    if (!stats->is_object()) return;
    if (const json* own = Member(entry, "index");
        own != nullptr && own->is_number_integer()) {
      index = std::to_string(own->get<std::int64_t>());
    }
    AddAppValues(*stats, "", 0, {{"group", group}, {"index", index}}, out);
  };
  if (app.is_array()) {
    for (std::size_t i = 0; i < app.size(); ++i) {
      add_child(app[i], std::to_string(i));
    }
  } else if (app.is_object()) {  // keyed by index
    for (auto it = app.begin(); it != app.end(); ++it) {
      add_child(it.value(), it.key());
    }
  }
}

void AddLatency(const std::string& group, const json& latency,
                Exposition* out) {
  const json* bounds = Member(latency, "bounds_ms");
  const json* counts = Member(latency, "counts");
  std::optional<double> sum_ms = NumberMember(latency, "sum_ms");
  if (bounds == nullptr || counts == nullptr || !bounds->is_array() ||
      !counts->is_array() || counts->size() != bounds->size() + 1 || !sum_ms) {
    return;
  }
  double previous = -INFINITY;
  for (const json& bound : *bounds) {
    if (!bound.is_number() || !(bound.get<double>() > previous)) return;
    previous = bound.get<double>();
  }
  for (const json& count : *counts) {
    if (!count.is_number_unsigned() &&
        !(count.is_number_integer() && count.get<std::int64_t>() >= 0)) {
      return;
    }
  }
  const std::string name = "workerpool_group_request_duration_seconds";
  const std::string help =
      "Time from a sender's request to this group until its answer, summed "
      "over every sender (a sender's restart resets its share).";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < counts->size(); ++i) {
    cumulative += (*counts)[i].get<std::uint64_t>();
    std::string le = i < bounds->size()
                         ? FormatDouble((*bounds)[i].get<double>() / 1000.0)
                         : "+Inf";
    out->Add(name, "histogram", help, {{"group", group}, {"le", le}},
             std::to_string(cumulative), "_bucket");
  }
  out->Add(name, "histogram", help, {{"group", group}},
           FormatDouble(*sum_ms / 1000.0), "_sum");
  out->Add(name, "histogram", help, {{"group", group}},
           std::to_string(cumulative), "_count");
}

void AddGroup(const json& group, Exposition* out) {
  std::string name = StringMember(group, "name");
  if (name.empty()) return;
  const Labels labels = {{"group", name}};
  std::string type = StringMember(group, "type");
  if (!type.empty()) {
    out->Add("workerpool_group_info", "gauge",
             "A group of the pool and its type (always 1).",
             {{"group", name}, {"type", type}}, "1");
  }
  out->AddJson("workerpool_group_desired_processes", "gauge",
               "Processes the group should run (config, or `workerpool "
               "scale` until the next reload).",
               labels, Member(group, "desired"));
  out->AddJson("workerpool_group_live_processes", "gauge",
               "Processes of the group running now.", labels,
               Member(group, "live"));
  out->AddJson("workerpool_group_ready_processes", "gauge",
               "Processes of the group that finished starting (said hello).",
               labels, Member(group, "ready"));
  out->AddJson("workerpool_group_restarts_total", "counter",
               "Unexpected exits of the group's children that were restarted.",
               labels, Member(group, "restarts"));
  std::string state = StringMember(group, "state");
  if (!state.empty()) {
    out->Add("workerpool_group_failed", "gauge",
             "1 when the group passed its restart intensity and is no longer "
             "restarted.",
             labels, state == "failed" ? "1" : "0");
    out->Add("workerpool_group_waiting", "gauge",
             "1 while the group waits for a group in its depends_on to be "
             "ready.",
             labels, state == "waiting" ? "1" : "0");
    out->Add("workerpool_group_done", "gauge",
             "1 when every process of the group is a one-shot that exited 0 "
             "(restart.policy on-failure or never).",
             labels, state == "done" ? "1" : "0");
  }
  if (const json* scaled = Member(group, "scaled_until_reload")) {
    std::optional<std::string> text = SampleValue(*scaled);
    if (text) {
      out->Add("workerpool_group_scaled_until_reload", "gauge",
               "1 when `workerpool scale` overrides the config's processes "
               "until the next reload.",
               labels, *text == "0" ? "0" : "1");
    }
  }
  out->AddJson("workerpool_group_inflight_requests", "gauge",
               "Requests the group's children sent and await answers for.",
               labels, Member(group, "inflight"));
  out->AddJson("workerpool_group_queued_requests", "gauge",
               "Requests the group's children hold waiting for a free "
               "server.",
               labels, Member(group, "queued"));
  if (const json* requests = Member(group, "requests");
      requests != nullptr && requests->is_object()) {
    out->AddJson("workerpool_group_requests_sent_total", "counter",
                 "Requests the group's children sent.", labels,
                 Member(*requests, "sent"));
    for (const char* outcome :
         {"replied", "failed", "refused", "cancelled", "timed_out"}) {
      out->AddJson("workerpool_group_requests_total", "counter",
                   "Requests the group's children sent, by outcome.",
                   {{"group", name}, {"outcome", outcome}},
                   Member(*requests, outcome));
    }
    const std::string served_help =
        "Requests the group's children served, by outcome.";
    out->AddJson("workerpool_group_requests_served_total", "counter",
                 served_help, {{"group", name}, {"outcome", "ok"}},
                 Member(*requests, "served"));
    out->AddJson("workerpool_group_requests_served_total", "counter",
                 served_help, {{"group", name}, {"outcome", "error"}},
                 Member(*requests, "served_errors"));
  }
  out->AddJson("workerpool_group_recycled_total", "counter",
               "Children recycled after max_requests or max_rss.", labels,
               Member(group, "recycled"));
  out->AddJson("workerpool_group_protocol_errors_total", "counter",
               "Pool-channel frames from the group's children that broke "
               "the protocol and were refused.",
               labels, Member(group, "protocol_errors"));
  if (const json* autoscale = Member(group, "autoscale");
      autoscale != nullptr && autoscale->is_object()) {
    out->AddJson("workerpool_group_autoscale_target_processes", "gauge",
                 "Processes the autoscaler wants for the group.", labels,
                 Member(*autoscale, "target"));
    out->AddJson("workerpool_group_autoscale_min_processes", "gauge",
                 "The group's autoscale.min.", labels,
                 Member(*autoscale, "min"));
    out->AddJson("workerpool_group_autoscale_max_processes", "gauge",
                 "The group's autoscale.max.", labels,
                 Member(*autoscale, "max"));
    if (const json* decisions = Member(*autoscale, "decisions")) {
      for (const char* direction : {"up", "down"}) {
        out->AddJson("workerpool_group_autoscale_decisions_total", "counter",
                     "Autoscaling decisions that changed the group's target.",
                     {{"group", name}, {"direction", direction}},
                     Member(*decisions, direction));
      }
    }
  }
  out->AddJson("workerpool_group_resident_memory_bytes", "gauge",
               "Resident memory of the group's live children, summed.", labels,
               Member(group, "rss_bytes"));
  if (std::optional<double> cpu_ms = NumberMember(group, "cpu_ms")) {
    out->Add("workerpool_group_cpu_seconds_total", "counter",
             "User and system CPU time of the group's live children, summed "
             "(a child that exits takes its share with it).",
             labels, FormatDouble(*cpu_ms / 1000.0));
  }
  if (const json* latency = Member(group, "latency")) {
    AddLatency(name, *latency, out);
  }
  if (const json* app = Member(group, "app")) AddApp(name, *app, out);
}

}  // namespace

std::string MetricsText(const nlohmann::json& status) {
  Exposition out;
  AddPool(status, &out);
  if (const json* groups = Member(status, "groups");
      groups != nullptr && groups->is_array()) {
    for (const json& group : *groups) AddGroup(group, &out);
  }
  return out.Text();
}

}  // namespace workerpool
