// The state one Watcher hands to the next when it upgrades in place
// (`workerpool upgrade`, SIGUSR2): what the new binary needs to adopt the
// running pool without restarting a child. Pure: values, and their text form
// (JSON, one document); the OS side (memfd, descriptors kept across exec)
// is in src/watcher/upgrade.h. The format is versioned and documented in
// docs/OPERATIONS.md ("Upgrading in place"): a Watcher reads every version up
// to kUpgradeStateVersion and refuses a newer one with a clear error, and the
// old binary then takes the pool back.
//
// Times are handed over as durations (ages and remaining times in
// milliseconds), never as clock readings: the steady clock of the new
// process is the same clock, but a duration needs no such promise.
//
// Contract: ParseUpgradeState never throws and accepts any bytes; anything
// that is not a complete document of a known version, with every member of
// the right type and range, is an error naming the member.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/slot_lifecycle.h"
#include "core/status.h"

namespace workerpool {

// Version 1: the first. Version 2: a slot's members may be left out when
// they hold their default (with 1000 children most do; reading the state is
// most of the hand-over, while the control socket waits), and adds the
// heartbeat's remaining time, latency histograms and route loads per slot,
// the groups' shared output sockets and the spawner. Bump it when a member
// changes meaning or a required one is added; a new optional member does
// not need it. FormatUpgradeState writes the newest; ParseUpgradeState reads
// every version from 1.
inline constexpr int kUpgradeStateVersion = 2;

// The file descriptor numbers of one child's plumbing, kept open across exec.
// -1: none.
struct UpgradeSlotFds {
  int channel = -1;        // the Watcher's end of its pool channel
  int output = -1;         // read end of its output pipe
  int output_write = -1;   // the child's end of the output pipe, when held
  int channel_child = -1;  // the child's end of the channel, when held
  bool operator==(const UpgradeSlotFds&) const = default;
};

// A sender's request latency towards one target group, as the child last
// reported it (core/child_protocol.h LatencyHistogram).
struct UpgradeLatency {
  std::vector<std::uint64_t> bounds_ms;
  std::vector<std::uint64_t> counts;
  std::uint64_t sum_ms = 0;
  bool operator==(const UpgradeLatency&) const = default;
};

// A sender's backlog towards one target group (core/child_protocol.h
// RouteLoad): what autoscale reads.
struct UpgradeRouteLoad {
  std::uint64_t queued = 0;
  std::uint64_t inflight = 0;
  bool operator==(const UpgradeRouteLoad&) const = default;
};

// One slot (core/slot_lifecycle.h) with its child.
struct UpgradeSlot {
  int index = 0;
  std::string state;  // SlotStateName(): "up", "backoff", ...
  std::int64_t pid = 0;
  std::uint64_t serial = 0;
  std::int64_t age_ms = 0;  // since the child was started
  int generation = 0;
  bool outgoing = false;
  std::uint64_t replaces_serial = 0;  // 0: replaces nobody
  std::int64_t backoff_ms = 0;
  std::int64_t timer_ms = -1;  // the slot timer's remaining time; -1: idle
  bool ready = false;          // said hello and was greeted
  bool heartbeat = false;      // its heartbeat deadline runs
  // Its remaining time (version 2); -1: not handed over (a version 1
  // state), the deadline then runs a whole period again.
  std::int64_t heartbeat_ms = -1;
  // Its hello asked for links by connect ("links": "connect"); optional in
  // the text (absent: by descriptor), so version 1 states without it read.
  bool links_connect = false;
  std::int64_t recycle_after = 0;
  // Start order and probes (optional in the text: absent, the defaults).
  int exit_status = -1;             // the last child's wait status; -1: none
  bool ready_probe_passed = false;  // groups[].ready passed for this child
  bool not_ready_in_time = false;   // stopped as a failed start
  int health_failures = 0;          // groups[].health failed in a row
  // What it said on its channel.
  std::vector<std::string> routes;
  std::vector<std::string> refused_routes;
  std::map<std::string, std::uint64_t> counters;
  // Version 2 (absent in 1: empty until the child's next stats frame).
  std::map<std::string, UpgradeLatency> latency;       // by target group
  std::map<std::string, UpgradeRouteLoad> route_load;  // by target group
  nlohmann::json app = nlohmann::json::object();
  std::uint64_t offences = 0;
  // Bytes read from its channel that do not make a whole frame yet, and the
  // start of a line of its output not ended yet.
  std::string channel_pending;
  std::string output_pending;
  UpgradeSlotFds fds;
  bool operator==(const UpgradeSlot&) const = default;
};

// A group's restart policy (core/restart_policy.h), with times as ages.
struct UpgradePolicy {
  std::vector<int> quick_deaths;             // per slot
  std::vector<std::int64_t> recent_ages_ms;  // restarts within the period
  bool failed = false;
  std::int64_t restarts = 0;
  bool operator==(const UpgradePolicy&) const = default;
};

struct UpgradeGroup {
  std::string name;
  std::string type;  // "reactor" | "job" | "service"
  // A group the file in force defines is rebuilt from it; one a reload
  // dropped (removing: its children drain) is not in that file any more,
  // so its command is handed over for status.
  std::vector<std::string> command;
  int processes = 0;  // may differ from the file: scale, autoscale
  bool scaled = false;
  bool failed = false;
  bool removing = false;
  bool speaks_protocol = false;
  // Start order (optional in the text): why it failed ("migrate exited
  // with code 1"), and whether it waits for its depends_on.
  std::string failed_reason;
  bool waiting = false;
  int generation = 0;
  std::uint64_t recycled = 0;
  std::uint64_t protocol_errors = 0;
  std::vector<int> rolling;  // indices a rolling restart still has to do
  UpgradePolicy policy;
  std::uint64_t autoscale_ups = 0;
  std::uint64_t autoscale_downs = 0;
  std::int64_t autoscale_last_unix = 0;
  // The group's shared output socket (OutputMode kSocketPerGroup, large
  // pools; version 2): the Watcher's reading end and the end every child
  // writes to. -1: its children have a pipe each. A child's line not ended
  // yet travels in its slot's output_pending.
  int output_fd = -1;
  int output_child_fd = -1;
  std::vector<UpgradeSlot> slots;  // outgoing slots too (outgoing: true)
  bool operator==(const UpgradeGroup&) const = default;
};

struct UpgradeState {
  int version = kUpgradeStateVersion;
  std::string from_version;  // the handing Watcher's WORKERPOOL_VERSION
  // The pool definition in force: its file, and the bytes it was last
  // loaded from (the file may have changed since; a reload reads it again).
  std::string config_path;
  std::string config_content;
  // What a reload does not change until a restart (pool_reload.cc).
  std::string pool_name;
  std::string control_socket;
  std::string metrics;
  std::string phase;  // "starting" | "running" | "reloading"
  std::int64_t uptime_ms = 0;
  std::int64_t started_unix = 0;
  nlohmann::json last_reload = nullptr;
  std::uint64_t reload_generation = 0;
  bool reload_queued = false;
  std::uint64_t refused_routes = 0;
  std::uint64_t spawns = 0;  // serials handed out so far
  // Upgrades so far (this one included) and how the last one went.
  std::uint64_t upgrades = 0;
  std::int64_t last_upgrade_unix = 0;
  std::string last_upgrade_error;  // empty: it succeeded
  // The steady clock (CLOCK_MONOTONIC) when the handing Watcher began to
  // write the state: the one clock reading handed over, for the log of how
  // long the hand-over took (same pid, same clock). 0: not given.
  std::int64_t handing_since_ns = 0;
  // Descriptors kept open across exec.
  int control_fd = -1;
  int metrics_fd = -1;
  int fallback_exe_fd = -1;  // the handing Watcher's own binary
  // The spawner (os/spawner.h) and the Watcher's end of its socket, kept
  // running across exec (version 2); 0 and -1: none ran.
  std::int64_t spawner_pid = 0;
  int spawner_fd = -1;
  std::map<std::string, int> listen_fds;  // by address as written
  std::vector<UpgradeGroup> groups;
  bool operator==(const UpgradeState&) const = default;
};

// The document, as JSON text.
std::string FormatUpgradeState(const UpgradeState& state);

// Parses TEXT. Errors name the member ("groups[0].slots[2].pid: expected an
// integer") or the version ("state version 7 is newer than this workerpool
// (reads up to 1)").
Result<UpgradeState> ParseUpgradeState(std::string_view text);

// Every descriptor number STATE lists, for the exec (FD_CLOEXEC cleared) and
// for the adopting side's checks.
std::vector<int> UpgradeStateFds(const UpgradeState& state);

// The inverse of SlotStateName; nullopt for any other word.
std::optional<SlotState> SlotStateFromName(std::string_view name);

}  // namespace workerpool
