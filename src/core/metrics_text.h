// The Prometheus text exposition (format 0.0.4) of the Watcher's status
// document, as served by the metrics endpoint. Pure: no I/O, never throws.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace workerpool {

// Renders STATUS, a ControlTarget::StatusJson() document (see
// src/watcher/control.h), as metric families with HELP and TYPE lines. Fields
// that are missing or of the wrong type are skipped, never guessed: a
// partial document gives partial metrics. Metric names are listed in
// docs/OPERATIONS.md.
//
// Service figures: each group's "app" array holds one entry per child, the
// object the child set with PoolClient::SetAppStats (optionally wrapped as
// {"index":I,"stats":{...}}, or carrying its own "index"). Every numeric or
// boolean value becomes a gauge workerpool_service_<key>{group,index} (nested
// objects flatten to <key>_<subkey>, except "queues": {NAME:{figure:N}},
// which becomes workerpool_service_queue_<figure>{group,index,queue=NAME});
// a "connected" boolean or a
// "connection"/"connection_state" string becomes workerpool_service_connected.
//
// Latency: a group's optional "latency" object {"bounds_ms":[b1,...,bn],
// "counts":[c1,...,cn,c_inf] (per bucket, not cumulative),"sum_ms":S} becomes
// the histogram workerpool_group_request_duration_seconds.
std::string MetricsText(const nlohmann::json& status);

}  // namespace workerpool
