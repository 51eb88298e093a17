#include "os/notify.h"

#include <dlfcn.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "spdlog/spdlog.h"

namespace workerpool {
namespace {

// libsystemd is loaded only when systemd is there to talk to (NOTIFY_SOCKET
// or WATCHDOG_USEC set): outside systemd the Watcher would otherwise map it
// and its five libraries for nothing, which is a ninth of its resident size.
// The functions are libsystemd's own; only their loading is deferred.
struct Libsystemd {
  decltype(&sd_notify) notify = nullptr;
  decltype(&sd_watchdog_enabled) watchdog_enabled = nullptr;
};

const Libsystemd& LoadLibsystemd() {
  static const Libsystemd loaded = [] {
    Libsystemd lib;
    if (std::getenv("NOTIFY_SOCKET") == nullptr &&
        std::getenv("WATCHDOG_USEC") == nullptr) {
      return lib;
    }
    void* handle = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      spdlog::error(
          "NOTIFY_SOCKET is set but libsystemd cannot be loaded ({}): "
          "systemd will not hear READY=1",
          dlerror());
      return lib;
    }
    lib.notify =
        reinterpret_cast<decltype(&sd_notify)>(dlsym(handle, "sd_notify"));
    lib.watchdog_enabled = reinterpret_cast<decltype(&sd_watchdog_enabled)>(
        dlsym(handle, "sd_watchdog_enabled"));
    return lib;
  }();
  return loaded;
}

}  // namespace

void NotifySystemd(const std::string& state) {
  const Libsystemd& lib = LoadLibsystemd();
  if (lib.notify == nullptr) return;
  // unset_environment=0: a reload or a second notification still works.
  lib.notify(0, state.c_str());
}

std::string MonotonicUsecField() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const std::uint64_t usec = static_cast<std::uint64_t>(now.tv_sec) * 1000000 +
                             static_cast<std::uint64_t>(now.tv_nsec) / 1000;
  return "MONOTONIC_USEC=" + std::to_string(usec);
}

std::chrono::milliseconds WatchdogInterval() {
  const Libsystemd& lib = LoadLibsystemd();
  uint64_t usec = 0;
  // unset_environment=0: children never see these (the Watcher filters its
  // environment for them), and the value is read once.
  if (lib.watchdog_enabled == nullptr || lib.watchdog_enabled(0, &usec) <= 0 ||
      usec == 0) {
    return std::chrono::milliseconds(0);
  }
  return std::chrono::milliseconds(std::max<uint64_t>(1, usec / 2000));
}

}  // namespace workerpool
