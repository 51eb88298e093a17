#include "cli/top_view.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <utility>

namespace workerpool {
namespace {

using nlohmann::json;

// --- reading the document without trusting it -------------------------------

const json* Member(const json* object, const char* key) {
  if (object == nullptr || !object->is_object()) return nullptr;
  auto found = object->find(key);
  return found == object->end() ? nullptr : &*found;
}

std::optional<double> Number(const json* object, const char* key) {
  const json* value = Member(object, key);
  if (value == nullptr || !value->is_number()) return std::nullopt;
  double number = value->get<double>();
  if (!std::isfinite(number)) return std::nullopt;
  return number;
}

std::optional<std::int64_t> Int(const json* object, const char* key) {
  const json* value = Member(object, key);
  if (value == nullptr) return std::nullopt;
  if (value->is_number_unsigned()) {
    std::uint64_t number = value->get<std::uint64_t>();
    return number > static_cast<std::uint64_t>(INT64_MAX)
               ? INT64_MAX
               : static_cast<std::int64_t>(number);
  }
  if (value->is_number_integer()) return value->get<std::int64_t>();
  if (value->is_number_float()) {
    double number = value->get<double>();
    if (!std::isfinite(number) || std::fabs(number) > 9e18) return std::nullopt;
    return static_cast<std::int64_t>(std::llround(number));
  }
  return std::nullopt;
}

std::optional<bool> Bool(const json* object, const char* key) {
  const json* value = Member(object, key);
  if (value == nullptr || !value->is_boolean()) return std::nullopt;
  return value->get<bool>();
}

// Printable ASCII only: the text goes to a terminal.
std::string Printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    unsigned char byte = static_cast<unsigned char>(c);
    out += byte >= 0x20 && byte < 0x7f ? c : '?';
  }
  return out;
}

std::string Text(const json* object, const char* key) {
  const json* value = Member(object, key);
  if (value == nullptr || !value->is_string()) return std::string();
  return Printable(value->get_ref<const std::string&>());
}

// The array member KEY, or an empty one.
const json& Array(const json* object, const char* key) {
  static const json kEmpty = json::array();
  const json* value = Member(object, key);
  return value != nullptr && value->is_array() ? *value : kEmpty;
}

// --- rates --------------------------------------------------------------

// Per second over ELAPSED; a counter that went down counts as 0.
std::optional<double> Rate(std::optional<double> now,
                           std::optional<double> before, double elapsed) {
  if (!now || elapsed <= 0) return std::nullopt;
  if (!before) before = 0;  // not reported before: none yet
  return std::max(0.0, *now - *before) / elapsed;
}

std::optional<double> Sum(std::initializer_list<std::optional<double>> parts) {
  double total = 0;
  bool any = false;
  for (const auto& part : parts) {
    if (part) {
      total += *part;
      any = true;
    }
  }
  return any ? std::optional<double>(total) : std::nullopt;
}

const json* FindByName(const json* groups, const std::string& name) {
  if (groups == nullptr || !groups->is_array()) return nullptr;
  for (const json& group : *groups) {
    if (Text(&group, "name") == name) return &group;
  }
  return nullptr;
}

// Children of GROUP (status "children", or "app" entries) keyed by pid.
std::map<std::int64_t, const json*> ByPid(const json& entries) {
  std::map<std::int64_t, const json*> found;
  for (const json& entry : entries) {
    if (std::optional<std::int64_t> pid = Int(&entry, "pid")) {
      found.emplace(*pid, &entry);
    }
  }
  return found;
}

// --- latency ------------------------------------------------------------

struct Histogram {
  std::vector<double> bounds_ms;
  std::vector<double> counts;  // one per bound, then the overflow bucket
};

std::optional<Histogram> ReadHistogram(const json* group) {
  const json* latency = Member(group, "latency");
  const json& bounds = Array(latency, "bounds_ms");
  const json& counts = Array(latency, "counts");
  if (bounds.empty() || counts.size() != bounds.size() + 1) return std::nullopt;
  Histogram histogram;
  for (const json& bound : bounds) {
    if (!bound.is_number()) return std::nullopt;
    double value = bound.get<double>();
    if (!histogram.bounds_ms.empty() && !(value > histogram.bounds_ms.back())) {
      return std::nullopt;
    }
    histogram.bounds_ms.push_back(value);
  }
  for (const json& count : counts) {
    if (!count.is_number() || count.get<double>() < 0) return std::nullopt;
    histogram.counts.push_back(count.get<double>());
  }
  return histogram;
}

// Like Prometheus's histogram_quantile: linear within the bucket holding
// the rank; in the overflow bucket, the last bound (and BEYOND is set).
std::optional<double> Quantile(double q, const Histogram& histogram,
                               bool* beyond) {
  double total = 0;
  for (double count : histogram.counts) total += count;
  if (total <= 0) return std::nullopt;
  const double rank = q * total;
  double cumulative = 0;
  for (std::size_t i = 0; i < histogram.counts.size(); ++i) {
    const double before = cumulative;
    cumulative += histogram.counts[i];
    if (histogram.counts[i] <= 0 || cumulative < rank) continue;
    if (i == histogram.bounds_ms.size()) {
      *beyond = true;
      return histogram.bounds_ms.back();
    }
    const double lower = i == 0 ? 0 : histogram.bounds_ms[i - 1];
    const double upper = histogram.bounds_ms[i];
    return lower + (upper - lower) * (rank - before) / histogram.counts[i];
  }
  *beyond = true;
  return histogram.bounds_ms.back();
}

void ComputeLatency(const json& group, const json* previous, TopGroup* out) {
  std::optional<Histogram> now = ReadHistogram(&group);
  if (!now || previous == nullptr) return;
  // No histogram before: nothing had been answered yet.
  std::optional<Histogram> before = ReadHistogram(previous);
  if (before && before->bounds_ms == now->bounds_ms) {
    for (std::size_t i = 0; i < now->counts.size(); ++i) {
      now->counts[i] = std::max(0.0, now->counts[i] - before->counts[i]);
    }
  } else if (before) {
    return;  // the buckets changed (another Watcher version): no interval
  }
  out->p50_ms = Quantile(0.5, *now, &out->p50_beyond);
  out->p99_ms = Quantile(0.99, *now, &out->p99_beyond);
}

// --- one group ----------------------------------------------------------

void ComputeRequests(const json& group, const json* previous, double elapsed,
                     TopGroup* out) {
  const json* now = Member(&group, "requests");
  // A group whose children had not reported yet had served nothing.
  static const json kNothing = json::object();
  const json* before = Member(previous, "requests");
  if (before == nullptr || !before->is_object()) before = &kNothing;
  auto served = [](const json* requests) {
    return Sum({Number(requests, "served"), Number(requests, "served_errors")});
  };
  auto sender_errors = [](const json* requests) {
    return Sum({Number(requests, "failed"), Number(requests, "timed_out"),
                Number(requests, "refused")});
  };
  const bool serves = out->type == "job" || served(now).value_or(0) > 0 ||
                      served(before).value_or(0) > 0;
  if (previous == nullptr) return;
  if (serves) {
    out->requests_per_second = Rate(served(now), served(before), elapsed);
    out->errors_per_second = Rate(Number(now, "served_errors"),
                                  Number(before, "served_errors"), elapsed);
  } else {
    out->requests_per_second =
        Rate(Number(now, "sent"), Number(before, "sent"), elapsed);
    out->errors_per_second =
        Rate(sender_errors(now), sender_errors(before), elapsed);
  }
}

void ComputeChildren(const json& group, const json* previous, double elapsed,
                     TopGroup* out) {
  std::map<std::int64_t, const json*> before =
      ByPid(Array(previous, "children"));
  double cpu_total = 0;
  bool cpu_known = false;
  for (const json& child : Array(&group, "children")) {
    if (!child.is_object()) continue;
    TopChild row;
    row.index = Int(&child, "index").value_or(-1);
    row.pid = Int(&child, "pid").value_or(0);
    row.uptime_ms = Int(&child, "uptime_ms");
    row.rss_bytes = Int(&child, "rss_bytes");
    const bool draining = Bool(&child, "draining").value_or(false);
    const bool ready = Bool(&child, "ready").value_or(false);
    row.state = draining ? "draining" : ready ? "ready" : "starting";
    std::optional<double> cpu_ms = Number(&child, "cpu_ms");
    if (previous != nullptr && elapsed > 0 && cpu_ms) {
      auto found = before.find(row.pid);
      if (found != before.end()) {
        std::optional<double> rate =
            Rate(cpu_ms, Number(found->second, "cpu_ms"), elapsed);
        if (rate) row.cpu_percent = *rate / 10.0;  // ms per s -> percent
      } else if (row.uptime_ms && *row.uptime_ms > 0 &&
                 *row.uptime_ms <= elapsed * 1000) {
        // Started during the interval: all its CPU time is in it.
        row.cpu_percent = *cpu_ms * 100.0 / static_cast<double>(*row.uptime_ms);
      }
    }
    if (row.cpu_percent) {
      cpu_total += *row.cpu_percent;
      cpu_known = true;
    }
    out->children.push_back(std::move(row));
  }
  if (cpu_known) out->cpu_percent = cpu_total;
}

// A service's queues, from each child's "app" figures (the RabbitMQ
// service reports {"queues":{NAME:{"messages","consumers","deliveries",
// "acks","dead_letters",...}}}).
void ComputeQueues(const json& group, const json* previous, double elapsed,
                   TopGroup* out) {
  std::map<std::int64_t, const json*> before = ByPid(Array(previous, "app"));
  std::map<std::string, std::size_t> position;
  for (const json& entry : Array(&group, "app")) {
    const json* stats = &entry;
    if (const json* wrapped = Member(&entry, "stats");
        wrapped != nullptr && wrapped->is_object()) {
      stats = wrapped;
    }
    const json* queues = Member(stats, "queues");
    if (queues == nullptr || !queues->is_object()) continue;
    const json* earlier_queues = nullptr;
    if (std::optional<std::int64_t> pid = Int(&entry, "pid")) {
      auto found = before.find(*pid);
      if (found != before.end()) {
        const json* earlier = found->second;
        if (const json* wrapped = Member(earlier, "stats");
            wrapped != nullptr && wrapped->is_object()) {
          earlier = wrapped;
        }
        earlier_queues = Member(earlier, "queues");
      }
    }
    for (auto it = queues->begin(); it != queues->end(); ++it) {
      if (!it.value().is_object()) continue;
      auto [slot, inserted] = position.emplace(it.key(), out->queues.size());
      if (inserted) {
        out->queues.push_back(TopQueue{});
        out->queues.back().name = Printable(it.key());
      }
      TopQueue& queue = out->queues[slot->second];
      const json* figures = &it.value();
      // Every child polls the same queue: the depth is one number.
      for (auto [key, field] : {std::pair{"messages", &TopQueue::depth},
                                std::pair{"consumers", &TopQueue::consumers}}) {
        if (std::optional<std::int64_t> value = Int(figures, key)) {
          queue.*field = std::max(value.value(), (queue.*field).value_or(0));
        }
      }
      if (previous == nullptr || elapsed <= 0) continue;
      const json* earlier = Member(earlier_queues, it.key().c_str());
      for (auto [key, field] :
           {std::pair{"deliveries", &TopQueue::deliveries_per_second},
            std::pair{"acks", &TopQueue::acks_per_second},
            std::pair{"dead_letters", &TopQueue::dead_letters_per_second}}) {
        // A child with no earlier figures adds 0 (it is new, or had not
        // reported yet).
        std::optional<double> rate =
            earlier != nullptr
                ? Rate(Number(figures, key), Number(earlier, key), elapsed)
                : std::optional<double>(0.0);
        if (rate) queue.*field = (queue.*field).value_or(0) + *rate;
      }
    }
  }
}

TopGroup ComputeGroup(const json& group, const json* previous, double elapsed) {
  TopGroup out;
  out.name = Text(&group, "name");
  out.type = Text(&group, "type");
  out.state = Text(&group, "state");
  out.live = Int(&group, "live");
  out.desired = Int(&group, "desired");
  out.scaled_until_reload = Bool(&group, "scaled_until_reload").value_or(false);
  const json* autoscale = Member(&group, "autoscale");
  out.autoscale_min = Int(autoscale, "min");
  out.autoscale_max = Int(autoscale, "max");
  out.restarts = Int(&group, "restarts");
  out.inflight = Int(&group, "inflight");
  out.queued = Int(&group, "queued");
  out.rss_bytes = Int(&group, "rss_bytes");
  if (elapsed <= 0) previous = nullptr;
  ComputeRequests(group, previous, elapsed, &out);
  ComputeLatency(group, previous, &out);
  ComputeChildren(group, previous, elapsed, &out);
  ComputeQueues(group, previous, elapsed, &out);
  return out;
}

// --- formatting ---------------------------------------------------------

std::string Printf(const char* format, double value) {
  char text[64];
  std::snprintf(text, sizeof(text), format, value);
  return text;
}

std::string FormatRate(std::optional<double> rate) {
  if (!rate) return "-";
  double r = *rate;
  if (r < 0.005) return "0";
  if (r < 10) return Printf("%.2f", r);
  if (r < 100) return Printf("%.1f", r);
  if (r < 10000) return Printf("%.0f", r);
  if (r < 1e6) return Printf("%.1fk", r / 1e3);
  return Printf("%.1fM", r / 1e6);
}

std::string FormatLatency(std::optional<double> ms, bool beyond) {
  if (!ms) return "-";
  double m = *ms;
  std::string text;
  if (m < 1) {
    text = Printf("%.0fus", m * 1000);
  } else if (m < 10) {
    text = Printf("%.1fms", m);
  } else if (m < 1000) {
    text = Printf("%.0fms", m);
  } else if (m < 10000) {
    text = Printf("%.1fs", m / 1000);
  } else {
    text = Printf("%.0fs", m / 1000);
  }
  return beyond ? ">" + text : text;
}

std::string FormatBytes(std::optional<std::int64_t> bytes) {
  if (!bytes || *bytes < 0) return "-";
  double b = static_cast<double>(*bytes);
  constexpr double kKiB = 1024, kMiB = kKiB * 1024, kGiB = kMiB * 1024;
  if (b < kMiB) return Printf("%.0fK", b / kKiB);
  if (b < 10 * kMiB) return Printf("%.1fM", b / kMiB);
  if (b < kGiB) return Printf("%.0fM", b / kMiB);
  if (b < 10 * kGiB) return Printf("%.1fG", b / kGiB);
  return Printf("%.0fG", b / kGiB);
}

std::string FormatPercent(std::optional<double> percent) {
  if (!percent) return "-";
  return *percent < 99.95 ? Printf("%.1f", *percent) : Printf("%.0f", *percent);
}

std::string FormatInt(std::optional<std::int64_t> value) {
  return value ? std::to_string(*value) : "-";
}

std::string FormatAgo(std::int64_t seconds) {
  return FormatTopUptime(std::max<std::int64_t>(0, seconds) * 1000) + " ago";
}

const char* ShortType(const std::string& type) {
  if (type == "reactor") return "react";
  if (type == "service") return "svc";
  return nullptr;
}

// TEXT cut to WIDTH bytes.
std::string Cut(std::string text, std::size_t width) {
  if (text.size() > width) text.resize(width);
  return text;
}

// --- the group table ----------------------------------------------------

struct Column {
  const char* title;
  bool left;      // aligned left (text) or right (numbers)
  int drop_rank;  // dropped in this order when the table is too wide
  std::size_t min_width;
  std::vector<std::string> cells;
  std::size_t width = 0;
  bool shown = true;
};

std::string LiveText(const TopGroup& group) {
  std::string text = FormatInt(group.live) + "/" + FormatInt(group.desired);
  if (group.scaled_until_reload) text += "*";
  if (group.autoscale_min && group.autoscale_max) {
    text += " " + std::to_string(*group.autoscale_min) + "-" +
            std::to_string(*group.autoscale_max);
  }
  return text;
}

std::string Pad(const std::string& text, std::size_t width, bool left) {
  if (text.size() >= width) return text;
  std::string padding(width - text.size(), ' ');
  return left ? text + padding : padding + text;
}

// The processes of an expanded group: a title line, then one per child.
constexpr const char* kChildTitle =
    "      IDX PID      UPTIME    STATE       RSS  CPU%";

std::string ChildLine(const TopChild& child) {
  char text[160];
  std::snprintf(
      text, sizeof(text), "      %3lld %-8lld %-9s %-8s %6s %5s",
      static_cast<long long>(child.index), static_cast<long long>(child.pid),
      child.uptime_ms ? FormatTopUptime(*child.uptime_ms).c_str() : "-",
      child.state.c_str(), FormatBytes(child.rss_bytes).c_str(),
      FormatPercent(child.cpu_percent).c_str());
  return text;
}

std::string QueueLine(const TopQueue& queue) {
  return "     queue " + queue.name + ": depth " + FormatInt(queue.depth) +
         ", " + FormatRate(queue.deliveries_per_second) + " msgs/s, " +
         FormatRate(queue.acks_per_second) + " acks/s, " +
         FormatRate(queue.dead_letters_per_second) + " dead/s, " +
         FormatInt(queue.consumers) + " consumers";
}

struct Table {
  std::string header;
  std::vector<std::string> rows;  // one per group
};

Table GroupTable(const TopFigures& figures, const TopViewState& view,
                 int width) {
  std::vector<Column> columns = {
      {"GROUP", true, 100, 5, {}}, {"TYPE", true, 5, 4, {}},
      {"LIVE", false, 12, 4, {}},  {"STATE", true, 11, 7, {}},
      {"RST", false, 4, 3, {}},    {"REQ/s", false, 10, 5, {}},
      {"ERR/s", false, 6, 5, {}},  {"P50", false, 1, 5, {}},
      {"P99", false, 9, 5, {}},    {"INFL", false, 3, 4, {}},
      {"QUEUE", false, 2, 5, {}},  {"RSS", false, 7, 4, {}},
      {"CPU%", false, 8, 5, {}},
  };
  enum { kGroup, kType };
  std::vector<std::string> full_types;
  for (std::size_t i = 0; i < figures.groups.size(); ++i) {
    const TopGroup& g = figures.groups[i];
    std::vector<std::string> cells = {
        (i == view.selected ? ">" : " ") + g.name,
        g.type,
        LiveText(g),
        g.state.empty() ? "-" : g.state,
        FormatInt(g.restarts),
        FormatRate(g.requests_per_second),
        FormatRate(g.errors_per_second),
        FormatLatency(g.p50_ms, g.p50_beyond),
        FormatLatency(g.p99_ms, g.p99_beyond),
        FormatInt(g.inflight),
        FormatInt(g.queued),
        FormatBytes(g.rss_bytes),
        FormatPercent(g.cpu_percent),
    };
    for (std::size_t c = 0; c < columns.size(); ++c) {
      columns[c].cells.push_back(std::move(cells[c]));
    }
  }
  columns[kGroup].title = " GROUP";
  auto natural = [](Column& column) {
    column.width = std::max(column.min_width, std::string(column.title).size());
    for (const std::string& cell : column.cells) {
      column.width = std::max(column.width, cell.size());
    }
  };
  for (Column& column : columns) natural(column);
  auto total = [&columns] {
    std::size_t sum = 0, shown = 0;
    for (const Column& column : columns) {
      if (!column.shown) continue;
      sum += column.width;
      ++shown;
    }
    return sum + (shown > 0 ? shown - 1 : 0);
  };
  const std::size_t limit = static_cast<std::size_t>(std::max(width, 1));
  // Too wide: short type names first, then a shorter group name (down to
  // 8, marker included), then whole columns, least useful first.
  if (total() > limit) {
    for (std::string& cell : columns[kType].cells) {
      if (const char* short_name = ShortType(cell)) cell = short_name;
    }
    natural(columns[kType]);
  }
  if (total() > limit) {
    const std::size_t excess = total() - limit;
    const std::size_t floor = 8;
    Column& group = columns[kGroup];
    if (group.width > floor) {
      group.width -= std::min(excess, group.width - floor);
    }
  }
  while (total() > limit) {
    Column* drop = nullptr;
    for (Column& column : columns) {
      if (column.shown && column.drop_rank < 100 &&
          (drop == nullptr || column.drop_rank < drop->drop_rank)) {
        drop = &column;
      }
    }
    if (drop == nullptr) break;
    drop->shown = false;
  }
  auto line = [&columns, limit](auto cell_of) {
    std::string text;
    bool first = true;
    for (std::size_t c = 0; c < columns.size(); ++c) {
      const Column& column = columns[c];
      if (!column.shown) continue;
      std::string cell = cell_of(c);
      if (cell.size() > column.width) {
        cell = column.width > 1 ? cell.substr(0, column.width - 1) + "~"
                                : cell.substr(0, column.width);
      }
      if (!first) text += ' ';
      first = false;
      text += Pad(cell, column.width, column.left);
    }
    while (!text.empty() && text.back() == ' ') text.pop_back();
    return Cut(text, limit);
  };
  Table table;
  table.header =
      line([&columns](std::size_t c) { return std::string(columns[c].title); });
  for (std::size_t i = 0; i < figures.groups.size(); ++i) {
    table.rows.push_back(
        line([&columns, i](std::size_t c) { return columns[c].cells[i]; }));
  }
  return table;
}

std::string PoolLine(const TopFigures& figures) {
  std::string text = "pool " + (figures.pool.empty() ? "-" : figures.pool);
  if (!figures.state.empty()) text += "  " + figures.state;
  if (figures.uptime_ms) text += "  up " + FormatTopUptime(*figures.uptime_ms);
  if (figures.generation)
    text += "  gen " + std::to_string(*figures.generation);
  if (!figures.version.empty()) text += "  workerpool " + figures.version;
  if (figures.pid) text += "  pid " + std::to_string(*figures.pid);
  return text;
}

std::string FactsLine(const TopFigures& figures, const TopViewState& view) {
  std::string text;
  if (!figures.last_reload_ok) {
    text = "no reload yet";
  } else {
    text = *figures.last_reload_ok ? "reload ok" : "reload FAILED";
    if (figures.last_reload_unix && view.now_unix > 0) {
      text += " " + FormatAgo(view.now_unix - *figures.last_reload_unix);
    }
  }
  text += "  watcher " + FormatBytes(figures.watcher_rss_bytes) + " " +
          FormatPercent(figures.watcher_cpu_percent) + "%";
  std::int64_t live = 0, desired = 0;
  for (const TopGroup& group : figures.groups) {
    live += group.live.value_or(0);
    desired += group.desired.value_or(0);
  }
  text += "  " + std::to_string(live) + "/" + std::to_string(desired) +
          " children in " + std::to_string(figures.groups.size()) +
          (figures.groups.size() == 1 ? " group" : " groups");
  text += "  every " + FormatTopUptime(view.interval_ms);
  if (figures.last_reload_ok && !*figures.last_reload_ok &&
      !figures.last_reload_error.empty()) {
    text += "  " + figures.last_reload_error;
  }
  return text;
}

}  // namespace

std::string FormatTopUptime(std::int64_t milliseconds) {
  if (milliseconds < 0) return "-";
  if (milliseconds < 10000 && milliseconds % 1000 != 0) {
    return Printf("%.1fs", static_cast<double>(milliseconds) / 1000);
  }
  const std::int64_t seconds = milliseconds / 1000;
  const long long days = seconds / 86400, hours = seconds / 3600 % 24,
                  minutes = seconds / 60 % 60, secs = seconds % 60;
  char text[64];
  if (days > 0) {
    std::snprintf(text, sizeof(text), "%lldd%02lldh", days, hours);
  } else if (hours > 0) {
    std::snprintf(text, sizeof(text), "%lldh%02lldm", hours, minutes);
  } else if (minutes > 0) {
    std::snprintf(text, sizeof(text), "%lldm%02llds", minutes, secs);
  } else {
    std::snprintf(text, sizeof(text), "%llds", secs);
  }
  return text;
}

TopFigures ComputeTopFigures(const json& current, const json* previous,
                             double elapsed_seconds) {
  TopFigures figures;
  const json* now = &current;
  if (elapsed_seconds <= 0) previous = nullptr;
  figures.pool = Text(now, "pool");
  figures.version = Text(now, "version");
  figures.state = Text(now, "state");
  figures.config = Text(now, "config");
  figures.pid = Int(now, "pid");
  figures.uptime_ms = Int(now, "uptime_ms");
  figures.generation = Int(now, "generation");
  const json* reload = Member(now, "last_reload");
  figures.last_reload_ok = Bool(reload, "ok");
  figures.last_reload_unix = Int(reload, "unix");
  if (const json* error = Member(reload, "error");
      error != nullptr && error->is_string()) {
    const std::string& text = error->get_ref<const std::string&>();
    figures.last_reload_error = Printable(text.substr(0, text.find('\n')));
  }
  const json* watcher = Member(now, "watcher");
  figures.watcher_rss_bytes = Int(watcher, "rss_bytes");
  // Another Watcher (an upgrade) starts its CPU time from zero.
  if (previous != nullptr && Int(previous, "pid") == figures.pid) {
    std::optional<double> rate =
        Rate(Number(watcher, "cpu_ms"),
             Number(Member(previous, "watcher"), "cpu_ms"), elapsed_seconds);
    if (rate) figures.watcher_cpu_percent = *rate / 10.0;
  }
  const json* earlier_groups = Member(previous, "groups");
  for (const json& group : Array(now, "groups")) {
    if (!group.is_object()) continue;
    const json* earlier = FindByName(earlier_groups, Text(&group, "name"));
    figures.groups.push_back(ComputeGroup(group, earlier, elapsed_seconds));
  }
  return figures;
}

TopScreen LayOutTop(const TopFigures& figures, const TopViewState& view,
                    int width, int height) {
  const std::size_t limit = static_cast<std::size_t>(std::max(width, 1));
  TopScreen screen;
  screen.lines.push_back(Cut(PoolLine(figures), limit));
  screen.lines.push_back(Cut(FactsLine(figures, view), limit));
  screen.lines.push_back("");
  Table table = GroupTable(figures, view, width);
  screen.header_line = static_cast<int>(screen.lines.size());
  screen.lines.push_back(table.header);

  // The body: each group, its queues, and its processes when expanded.
  std::vector<std::string> body;
  int selected_body_line = -1;
  std::size_t selected_block = 1;
  for (std::size_t i = 0; i < figures.groups.size(); ++i) {
    const TopGroup& group = figures.groups[i];
    const std::size_t start = body.size();
    if (i == view.selected) selected_body_line = static_cast<int>(start);
    body.push_back(table.rows[i]);
    for (const TopQueue& queue : group.queues) {
      body.push_back(Cut(QueueLine(queue), limit));
    }
    if (view.expanded.count(group.name) != 0) {
      body.push_back(group.children.empty() ? Cut("      (no processes)", limit)
                                            : Cut(kChildTitle, limit));
      for (const TopChild& child : group.children) {
        body.push_back(Cut(ChildLine(child), limit));
      }
    }
    if (i == view.selected) selected_block = body.size() - start;
  }
  if (figures.groups.empty()) body.push_back(Cut(" (no groups)", limit));

  std::string footer = view.message;
  if (height <= 0) {
    for (std::string& line : body) screen.lines.push_back(std::move(line));
    if (selected_body_line >= 0) {
      screen.selected_line = screen.header_line + 1 + selected_body_line;
    }
    if (!footer.empty()) screen.lines.push_back(Cut(footer, limit));
    return screen;
  }
  if (footer.empty()) {
    footer = "q quit  up/down select  Enter expand  a expand all";
  }
  // Lines left for the body between the header and the footer.
  const int room =
      std::max(1, height - static_cast<int>(screen.lines.size()) - 1);
  std::size_t first = 0;
  if (selected_body_line >= 0 && body.size() > static_cast<std::size_t>(room)) {
    // Keep the selected group, and as much of its block as fits, in view.
    const std::size_t wanted = std::min<std::size_t>(selected_block, room);
    const std::size_t end =
        static_cast<std::size_t>(selected_body_line) + wanted;
    if (end > static_cast<std::size_t>(room)) first = end - room;
    first = std::min(first, body.size() - room);
  }
  for (std::size_t i = first;
       i < body.size() && i < first + static_cast<std::size_t>(room); ++i) {
    if (static_cast<int>(i) == selected_body_line) {
      screen.selected_line = static_cast<int>(screen.lines.size());
    }
    screen.lines.push_back(std::move(body[i]));
  }
  while (static_cast<int>(screen.lines.size()) < height - 1) {
    screen.lines.push_back("");
  }
  screen.lines.push_back(Cut(footer, limit));
  if (static_cast<int>(screen.lines.size()) > height) {
    screen.lines.resize(static_cast<std::size_t>(height));
    if (screen.selected_line >= height) screen.selected_line = -1;
    if (screen.header_line >= height) screen.header_line = -1;
  }
  return screen;
}

}  // namespace workerpool
