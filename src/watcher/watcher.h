// The Watcher: runs a pool definition in the foreground until SIGTERM/SIGINT
// or `workerpool stop`. Owns the libuv loop, every child, and the reload.
#pragma once

#include <string>

namespace workerpool {

// Loads CONFIG_PATH, starts every group and runs until stopped. Returns the
// process exit code: 0 after a graceful stop, 1 when the config is invalid at
// start, 2 on a runtime failure at start (e.g. control socket in use).
int RunWatcher(const std::string& config_path, const char* argv0);

// The Watcher of an in-place upgrade (watcher/upgrade.h): adopts the
// running pool from the state in the memfd STATE_FD instead of starting
// it. UPGRADE_ERROR is set when this is the old binary taking the pool back
// after the new one could not adopt it. Returns like RunWatcher, only when
// the pool stopped or was lost.
int RunAdoptingWatcher(const std::string& config_path, const char* argv0,
                       int state_fd, const std::string& upgrade_error);

}  // namespace workerpool
