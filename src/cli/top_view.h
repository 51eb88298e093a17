// What `workerpool top` shows, as pure functions of status documents (the
// answers of {"command":"status"}, docs/OPERATIONS.md): the figures of one
// refresh computed from two snapshots, and the screen laid out for a given
// terminal size. No I/O and no clock: the terminal loop (top.cc) fetches the
// snapshots, times them and draws the lines; the unit tests feed documents
// and widths.
//
// The documents come from a socket: every field is read with a type check
// (a missing or mistyped one shows as "-"), nothing here throws.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace workerpool {

// One process of a group, for the expanded view.
struct TopChild {
  std::int64_t index = 0;
  std::int64_t pid = 0;
  std::optional<std::int64_t> uptime_ms;
  std::string state;  // ready | starting | draining
  std::optional<std::int64_t> rss_bytes;
  std::optional<double> cpu_percent;  // 100: one CPU
};

// One RabbitMQ queue a service group consumes, summed over its children.
struct TopQueue {
  std::string name;
  std::optional<std::int64_t> depth;  // messages ready in the broker
  std::optional<std::int64_t> consumers;
  std::optional<double> deliveries_per_second;
  std::optional<double> acks_per_second;
  std::optional<double> dead_letters_per_second;
};

struct TopGroup {
  std::string name;
  std::string type;   // reactor | job | service
  std::string state;  // starting | running | failed | removing
  std::optional<std::int64_t> live, desired;
  bool scaled_until_reload = false;
  // {"autoscale":{"min","max"}} once groups carry it.
  std::optional<std::int64_t> autoscale_min, autoscale_max;
  std::optional<std::int64_t> restarts;
  // Requests served per second (errors included) for a group that serves;
  // requests sent per second for one that only sends (reactors, consuming
  // services). Errors: error replies it served, or for a sender the
  // requests that failed, timed out or were refused.
  std::optional<double> requests_per_second, errors_per_second;
  // Latency of the requests answered during the interval (as its senders
  // measured it); nothing when none were answered.
  std::optional<double> p50_ms, p99_ms;
  bool p50_beyond = false, p99_beyond = false;  // past the last bucket
  std::optional<std::int64_t> inflight, queued;
  std::optional<std::int64_t> rss_bytes;
  std::optional<double> cpu_percent;
  std::vector<TopChild> children;
  std::vector<TopQueue> queues;
};

struct TopFigures {
  std::string pool, version, state, config;
  std::optional<std::int64_t> pid, uptime_ms, generation;
  std::optional<bool> last_reload_ok;
  std::optional<std::int64_t> last_reload_unix;
  std::string last_reload_error;
  std::optional<std::int64_t> watcher_rss_bytes;
  std::optional<double> watcher_cpu_percent;
  std::vector<TopGroup> groups;
};

// The figures of CURRENT; rates, latencies and CPU% over the ELAPSED
// seconds since PREVIOUS (nullptr, or elapsed <= 0: none yet). Counters that
// went down (a child restarted and took its counts with it) count as 0 for
// that interval; per-child figures are matched by pid.
TopFigures ComputeTopFigures(const nlohmann::json& current,
                             const nlohmann::json* previous,
                             double elapsed_seconds);

// What the operator chose with the keys.
struct TopViewState {
  std::size_t selected = 0;         // index into TopFigures::groups
  std::set<std::string> expanded;   // group names shown with processes
  std::string message;              // shown on the last line when set
  std::int64_t interval_ms = 1000;  // shown in the header
  std::int64_t now_unix = 0;        // for "reload 4m ago"; 0: not shown
};

struct TopScreen {
  std::vector<std::string> lines;  // each at most WIDTH bytes, ASCII
  int header_line = -1;            // the column titles (drawn bold)
  int selected_line = -1;          // the selected group (drawn reversed)
};

// The screen for a WIDTH x HEIGHT terminal (HEIGHT 0: as many lines as it
// takes). Columns that do not fit are dropped, least useful first; the
// group name is shortened before anything is dropped; the selected group
// stays in view when the groups need more lines than there are.
TopScreen LayOutTop(const TopFigures& figures, const TopViewState& view,
                    int width, int height);

// "3h02m", "45s", "2d03h".
std::string FormatTopUptime(std::int64_t milliseconds);

}  // namespace workerpool
