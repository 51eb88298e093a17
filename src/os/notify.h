// sd_notify(3) to systemd through libsystemd, a no-op when NOTIFY_SOCKET is
// not set. Runs on the Watcher's loop thread.
#pragma once

#include <chrono>
#include <string>

namespace workerpool {

// Sends STATE ("READY=1", "STATUS=...", several lines joined by '\n').
// NOTIFY_SOCKET stays set, so every later notification still goes out.
void NotifySystemd(const std::string& state);

// "MONOTONIC_USEC=<now>", which systemd wants beside RELOADING=1.
std::string MonotonicUsecField();

// Half of WatchdogSec when the watchdog is enabled for this process
// (WATCHDOG_USEC, and WATCHDOG_PID when set, name us), else 0.
std::chrono::milliseconds WatchdogInterval();

}  // namespace workerpool
