#include "os/notify.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <algorithm>
#include <cstdint>

namespace workerpool {

void NotifySystemd(const std::string& state) {
  // unset_environment=0: a reload or a second notification still works.
  sd_notify(0, state.c_str());
}

std::string MonotonicUsecField() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const std::uint64_t usec = static_cast<std::uint64_t>(now.tv_sec) * 1000000 +
                             static_cast<std::uint64_t>(now.tv_nsec) / 1000;
  return "MONOTONIC_USEC=" + std::to_string(usec);
}

std::chrono::milliseconds WatchdogInterval() {
  uint64_t usec = 0;
  // unset_environment=0: children never see these (the Watcher filters its
  // environment for them), and the value is read once.
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
    return std::chrono::milliseconds(0);
  }
  return std::chrono::milliseconds(std::max<uint64_t>(1, usec / 2000));
}

}  // namespace workerpool
