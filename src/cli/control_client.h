// The operator's side of the control socket: `workerpool status|scale|
// restart|reload|stop`. Runs in the CLI process, not in the Watcher.
#pragma once

#include <string>

namespace workerpool {

struct ControlOptions {
  std::string command;      // status, scale, restart, reload, stop
  std::string socket_path;  // --socket
  std::string config_path;  // --config: take control_socket from this file
  std::string group;        // scale, restart
  std::string count_text;   // scale: N or "auto", as typed
  bool json = false;        // status --json
};

// Sends one request and prints the answer. Returns the exit code.
int RunControlCommand(const ControlOptions& options);

}  // namespace workerpool
