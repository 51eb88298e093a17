#include "os/exit_watch.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "os/uv_owner.h"

namespace workerpool {
namespace {

// Readiness handled per turn of the loop; more stay ready (level
// triggered) for the next turn, so a storm cannot hold the loop here.
constexpr int kEventsPerTurn = 256;

int OpenPidfd(pid_t pid) {
  // glibc 2.36 has pidfd_open() only in <sys/pidfd.h>, which older ones
  // lack: the syscall works with both. Always close-on-exec.
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
}

// The wait status waitpid() would have given, from waitid()'s siginfo: the
// rest of the table reads WIFEXITED, WTERMSIG and WCOREDUMP from it.
int WaitStatusOf(const siginfo_t& info) {
  switch (info.si_code) {
    case CLD_EXITED:
      return (info.si_status & 0xff) << 8;
    case CLD_DUMPED:
      return (info.si_status & 0x7f) | 0x80;
    default:  // CLD_KILLED
      return info.si_status & 0x7f;
  }
}

}  // namespace

bool PidfdReapingWanted() {
  const char* reap = std::getenv("WORKERPOOL_REAP");
  return reap == nullptr || std::string_view(reap) != "waitpid";
}

ExitWatch::ExitWatch(uv_loop_t* loop, std::function<void(pid_t, int)> on_exit,
                     std::function<void()> on_batch_done)
    : loop_(loop),
      on_exit_(std::move(on_exit)),
      on_batch_done_(std::move(on_batch_done)) {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) {
    spdlog::warn("epoll_create1: {}; children are reaped on SIGCHLD only",
                 strerror(errno));
    return;
  }
  uv_poll_init(loop_, &poll_, epoll_fd_);
  poll_.data = this;
}

// Like the table's timers, the handle is closed by Close (CloseAll), not
// here: the loop may be gone by now. The descriptors are closed either way.
ExitWatch::~ExitWatch() {
  for (auto& [pid, fd] : pidfds_) close(fd);
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

bool ExitWatch::Watch(pid_t pid) {
  if (epoll_fd_ < 0 || pid <= 0) return false;
  const int fd = OpenPidfd(pid);
  if (fd < 0) {
    spdlog::debug("pidfd_open({}): {}; reaped on SIGCHLD", pid,
                  strerror(errno));
    return false;
  }
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = static_cast<std::uint64_t>(pid);
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) {
    spdlog::debug("epoll_ctl(pidfd of {}): {}; reaped on SIGCHLD", pid,
                  strerror(errno));
    close(fd);
    return false;
  }
  pidfds_[pid] = fd;
  if (!polling_) {
    uv_poll_start(&poll_, UV_READABLE, OnReadable);
    polling_ = true;
  }
  return true;
}

void ExitWatch::Forget(pid_t pid) {
  auto found = pidfds_.find(pid);
  if (found == pidfds_.end()) return;
  close(found->second);  // leaves the epoll instance with it
  pidfds_.erase(found);
  if (pidfds_.empty() && polling_) {
    // Not needed until the next Watch: keeps the loop free to end.
    uv_poll_stop(&poll_);
    polling_ = false;
  }
}

void ExitWatch::OnReadable(uv_poll_t* handle, int status, int /*events*/) {
  if (status < 0) return;
  Owner<ExitWatch>(handle)->ReapReady(true);
}

void ExitWatch::ReapReady(bool report_batch) {
  if (pidfds_.empty()) return;
  epoll_event events[kEventsPerTurn];
  const int count = epoll_wait(epoll_fd_, events, kEventsPerTurn, 0);
  bool reaped_any = false;
  for (int i = 0; i < count; ++i) {
    const auto pid = static_cast<pid_t>(events[i].data.u64);
    auto found = pidfds_.find(pid);
    if (found == pidfds_.end()) continue;  // forgotten in this batch
    siginfo_t info{};
    if (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(found->second),
               &info, WEXITED | WNOHANG) != 0) {
      // ECHILD: reaped already by a waitpid(-1) whose caller has not
      // called Forget yet; it reports that death itself.
      if (errno == ECHILD) Forget(pid);
      continue;
    }
    if (info.si_pid == 0) continue;  // not exited after all
    Forget(pid);
    on_exit_(pid, WaitStatusOf(info));
    reaped_any = true;
  }
  if (reaped_any && report_batch) on_batch_done_();
}

void ExitWatch::Close() {
  for (auto& [pid, fd] : pidfds_) close(fd);
  pidfds_.clear();
  if (epoll_fd_ < 0) return;
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&poll_))) {
    uv_close(reinterpret_cast<uv_handle_t*>(&poll_), nullptr);
  }
  close(epoll_fd_);
  epoll_fd_ = -1;
  polling_ = false;
}

}  // namespace workerpool
