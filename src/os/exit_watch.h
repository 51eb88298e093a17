// Exact reaping: a pidfd per child, so that a child's death is reaped by
// itself, at a cost that does not depend on how many children run.
//
// Why: SIGCHLD says that some child changed state, not which one, and
// waitpid(-1) finds it by walking the caller's whole list of children in
// the kernel (do_wait, wait_consider_task per child): with 10,000 children
// that walk was 73% of the Watcher's CPU while children were killed one by
// one and 1,000 at once (perf record -g, issue 17), the restart of one
// child cost 1.7 to 3.7 times what it cost at 10 children, and a kill storm
// cost storm x pool. A pidfd (pidfd_open, Linux 5.3; waitid(P_PIDFD), 5.4)
// becomes readable when its process has exited, and waitid(P_PIDFD) reaps
// that process only.
//
// How: every pidfd goes into one epoll instance of its own, polled by one
// uv_poll_t on the Watcher's loop: no libuv handle per child, and closing a
// pidfd removes it from that epoll. A pid cannot be reused while it is
// watched: only the Watcher reaps its children (the spawner creates them
// with CLONE_PARENT), and a child's pid stays its own until it is reaped.
//
// Not watched (Watch returns false), the caller keeps reaping the child on
// SIGCHLD: pidfd_open failed (an old kernel, EMFILE), or the caller's
// descriptor budget has no room (core/file_limit.h PidfdsAllowed).
//
// Runs on the Watcher's loop thread. Descriptors are close-on-exec: after
// an in-place upgrade the new Watcher watches its adopted children again.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <functional>
#include <unordered_map>

namespace workerpool {

class ExitWatch {
 public:
  // ON_EXIT(pid, wait status) for each watched child reaped here; called
  // once per readiness of the epoll instance, then ON_BATCH_DONE once.
  ExitWatch(uv_loop_t* loop, std::function<void(pid_t, int)> on_exit,
            std::function<void()> on_batch_done);
  ~ExitWatch();
  ExitWatch(const ExitWatch&) = delete;
  ExitWatch& operator=(const ExitWatch&) = delete;

  // Starts watching PID, a child of this process not reaped yet. False when
  // it cannot (see above; the reason is logged at debug level).
  bool Watch(pid_t pid);
  // PID was reaped elsewhere (waitpid(-1) sweeping): its pidfd is closed.
  // Nothing when it was not watched.
  void Forget(pid_t pid);
  // Reaps the watched children that have exited now, without waiting for
  // the loop to poll (SIGCHLD came: they go before slower reaping). No
  // ON_BATCH_DONE: the caller reports the change once, after its own.
  void ReapNow() { ReapReady(false); }
  bool watching(pid_t pid) const { return pidfds_.count(pid) != 0; }
  std::size_t watched() const { return pidfds_.size(); }
  // False when no epoll instance could be made (every child then reaped on
  // SIGCHLD).
  bool usable() const { return epoll_fd_ >= 0; }
  // Closes every pidfd and the poll handle (the loop is closing).
  void Close();

 private:
  static void OnReadable(uv_poll_t* handle, int status, int events);
  void ReapReady(bool report_batch);

  uv_loop_t* loop_;
  std::function<void(pid_t, int)> on_exit_;
  std::function<void()> on_batch_done_;
  int epoll_fd_ = -1;
  uv_poll_t poll_;
  bool polling_ = false;
  std::unordered_map<pid_t, int> pidfds_;  // watched children
};

// Whether the Watcher may use pidfds: not when WORKERPOOL_REAP=waitpid is
// set (benchmarks and tests compare the two ways).
bool PidfdReapingWanted();

}  // namespace workerpool
