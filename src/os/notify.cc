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
// or WATCHDOG_USEC set), and only for the call: loaded, it and its five
// libraries add about 1 MB of resident memory (relocated at load, BIND_NOW)
// to a Watcher of about 7 MB with 1000 children, which talks to systemd a
// few times per reload and once per watchdog interval. A load costs about
// 0.6 ms on this kind of machine, a few times per minute at most. The
// functions are libsystemd's own; only their loading is deferred.
class Libsystemd {
 public:
  Libsystemd() {
    if (std::getenv("NOTIFY_SOCKET") == nullptr &&
        std::getenv("WATCHDOG_USEC") == nullptr) {
      return;
    }
    handle_ = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (handle_ == nullptr) {
      static bool said = false;  // once: the watchdog would repeat it
      if (!said) {
        said = true;
        spdlog::error(
            "NOTIFY_SOCKET is set but libsystemd cannot be loaded ({}): "
            "systemd will not hear READY=1",
            dlerror());
      }
      return;
    }
    notify =
        reinterpret_cast<decltype(&sd_notify)>(dlsym(handle_, "sd_notify"));
    watchdog_enabled = reinterpret_cast<decltype(&sd_watchdog_enabled)>(
        dlsym(handle_, "sd_watchdog_enabled"));
  }
  ~Libsystemd() {
    if (handle_ != nullptr) dlclose(handle_);
  }
  Libsystemd(const Libsystemd&) = delete;
  Libsystemd& operator=(const Libsystemd&) = delete;

  decltype(&sd_notify) notify = nullptr;
  decltype(&sd_watchdog_enabled) watchdog_enabled = nullptr;

 private:
  void* handle_ = nullptr;
};

}  // namespace

void NotifySystemd(const std::string& state) {
  const Libsystemd lib;
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
  const Libsystemd lib;
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
