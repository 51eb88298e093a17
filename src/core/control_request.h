// One request on the control socket (docs/OPERATIONS.md), as text and as a
// value. Pure: no I/O, never throws, so the Watcher's parsing of untrusted
// bytes can be unit-tested and fuzzed on its own (tests/fuzz/
// fuzz_control_request.cc).
//
// Wire form: one JSON object on one line, e.g.
//   {"command":"status"}   {"command":"status","usage":false}
//   {"command":"scale","group":"web","processes":4}
//   {"command":"scale","group":"web","processes":"auto"}
//   {"command":"restart","group":"web"}
//   {"command":"restart","group":"db","with_dependents":true}
//   {"command":"reload"}   {"command":"stop"}
//   {"command":"upgrade"}  {"command":"upgrade","binary":"/usr/bin/workerpool"}
// Unknown members are ignored, so a newer CLI can add optional ones.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace workerpool {

// Requests larger than this are refused before parsing.
inline constexpr std::size_t kMaxControlRequestBytes = 64 * 1024;

// The largest process count `scale` accepts; the Watcher may refuse less.
inline constexpr int kMaxScaleProcesses = 100000;

// The `processes` of a scale request that hands the group back to its
// autoscaler: "processes":"auto" on the wire, `workerpool scale GROUP auto`
// on the command line. A count pins the group (autoscaling paused) until
// this request or the next reload.
inline constexpr int kScaleAuto = -1;

struct ControlRequest {
  enum class Command { kStatus, kScale, kRestart, kReload, kStop, kUpgrade };
  Command command = Command::kStatus;
  std::string group;  // kScale, kRestart: non-empty
  int processes = 0;  // kScale: 0..kMaxScaleProcesses, or kScaleAuto
  // kRestart: then every group that depends on it, in order.
  bool with_dependents = false;
  std::string binary;  // kUpgrade: absolute path; empty: the running one
  // kStatus: each child's resident memory and CPU time, read from /proc
  // (one open and read per child: most of a large pool's status). Those
  // who show no figures per process ask without (`workerpool status`).
  bool usage = true;
};

// "status", "scale", ...: the name used on the wire and on the command line.
const char* ControlCommandName(ControlRequest::Command command);

// Parses LINE (without its newline; a trailing '\r' is tolerated). Errors
// name what was wrong in one line and suggest the right form.
Result<ControlRequest> ParseControlRequest(std::string_view line);

// The wire form of REQUEST (one line, no newline). Parses back to REQUEST.
std::string FormatControlRequest(const ControlRequest& request);

// N of `workerpool scale GROUP N` as typed: a decimal integer
// 0..kMaxScaleProcesses, digits only. The error names what was typed.
Result<int> ParseProcessCount(std::string_view text);

// N of `workerpool scale GROUP N|auto` as typed: "auto" gives kScaleAuto,
// anything else is ParseProcessCount's. The error names what was typed.
Result<int> ParseScaleTarget(std::string_view text);

}  // namespace workerpool
