// sd_notify(3) to systemd, a no-op when NOTIFY_SOCKET is not set.
#pragma once

#include <chrono>
#include <string>

namespace workerpool {

void NotifySystemd(const std::string& state);
// Half of WatchdogSec when the watchdog is enabled for this process, else 0.
std::chrono::milliseconds WatchdogInterval();

}  // namespace workerpool
