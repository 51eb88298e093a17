#include "os/notify.h"

#include <systemd/sd-daemon.h>

namespace workerpool {

void NotifySystemd(const std::string& state) {
  // unset_environment=0: a reload or a second notification still works.
  sd_notify(0, state.c_str());
}

std::chrono::milliseconds WatchdogInterval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
    return std::chrono::milliseconds(0);
  }
  return std::chrono::milliseconds(usec / 2000);
}

}  // namespace workerpool
