// The operator's side of the control socket: `workerpool status|scale|
// restart|reload|stop`. Runs in the CLI process, not in the Watcher.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/control_request.h"

namespace workerpool {

struct ControlOptions {
  std::string command;           // status, scale, restart, reload, stop, top
  std::string socket_path;       // --socket
  std::string config_path;       // --config: take control_socket from this file
  std::string group;             // scale, restart
  std::string count_text;        // scale: N or "auto", as typed
  bool json = false;             // status --json
  bool with_dependents = false;  // restart --with-dependents
  std::string binary;             // upgrade --binary
};

// Sends one request and prints the answer. Returns the exit code.
int RunControlCommand(const ControlOptions& options);

// For commands that talk to the pool more than once (`top`): what went
// wrong, as the one-line message every command prints and its exit code.
struct ControlError {
  int exit_code = 0;
  std::string message;
};

// The control socket OPTIONS name: --socket, else --config's
// pool.control_socket, else the one live pool in the default places.
// False with ERROR when there is none (exit code 2) or several (1).
bool FindControlSocket(const ControlOptions& options, std::string* path,
                       ControlError* error);

// One request to the pool at PATH (blocking; bounded by the answer
// timeout). True with the parsed answer, {"ok":true,...} or {"ok":false,
// "error":...}; false with ERROR when there was no usable answer (no pool
// there, no answer, not a JSON object with "ok").
bool ExchangeControl(const std::string& path, const ControlRequest& request,
                     nlohmann::json* answer, ControlError* error);

}  // namespace workerpool
