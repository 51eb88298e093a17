// The status report: what `workerpool status`, `workerpool top`, the
// metrics endpoint and systemd's STATUS= line say about the running pool,
// built from the child table on demand (nothing is kept or sampled for it:
// the resident size and CPU time of the Watcher and of each child are read
// from /proc/PID/stat while the report is built, one read per process, so an
// idle pool nobody asks about never wakes up for them). The JSON shape is
// the one documented in docs/OPERATIONS.md ("status --json"). Runs on the
// Watcher's loop thread.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/units.h"

namespace workerpool {

class ChildTable;

// The pool-level facts the report needs besides the table.
struct PoolFacts {
  std::string name;
  std::string config_path;
  const char* state = "running";  // starting | running | reloading | stopping
  bool reload_queued = false;
  Duration uptime{0};
  nlohmann::json last_reload;  // null, or {"ok", "summary"|"error", "unix"}
  std::uint64_t refused_routes = 0;
  // Reloads applied since the Watcher started (its configuration's
  // generation); reported as "generation" when known.
  std::optional<std::uint64_t> generation;
};

nlohmann::json StatusJson(const PoolFacts& pool, const ChildTable& table,
                          bool with_usage);

// One line for systemctl status: "demo: 6/6 children up in 2 groups;
// failed: web; last reload failed: FILE:LINE:COL: ...".
std::string StatusLine(const PoolFacts& pool, const ChildTable& table);

}  // namespace workerpool
