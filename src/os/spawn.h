// clone+exec of one child: the only place a child is created, by the
// Watcher itself (SpawnChild, the fallback) or by the spawner for it
// (CloneChild, os/spawner.h). Runs in the Watcher's loop thread, or the
// spawner's only one (PR_SET_PDEATHSIG follows the parent thread).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/file_limit.h"
#include "core/status.h"

namespace workerpool {

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH
  std::vector<std::string> env;   // the child's whole environment, "K=V"
  std::string cwd;                // empty: inherit
  std::int64_t uid = -1;          // -1: keep
  std::int64_t gid = -1;
  // Parent fds handed to the child as fds 3, 4, ... in this order (IPC
  // socket, listen sockets). Every other fd of the parent is closed.
  std::vector<int> pass_fds;
  // Adds LISTEN_PID=<the child's pid> to its environment (sd_listen_fds
  // checks it), which only the child knows.
  bool set_listen_pid = false;
  // Returns the write end of the output pipe too (SpawnedChild::
  // output_write_fd) instead of closing it: a parent that holds it gets no
  // EOF when the child exits, so the child's death wakes it once (SIGCHLD),
  // not twice.
  bool keep_output_write = false;
  // When >= 0: the child's stdout and stderr are this fd (a group's output
  // socket, watcher/output_capture.h; not taken over) and no pipe is made:
  // SpawnedChild::output_fd and output_write_fd are -1. Must be blocking:
  // the child shares its file description.
  int shared_output = -1;
};

struct SpawnedChild {
  pid_t pid = -1;
  // Read end of the pipe that is the child's stdout and stderr (one pipe:
  // fewer fds per child, and the two streams stay in order). Owned by the
  // caller; close-on-exec, non-blocking.
  int output_fd = -1;
  // With SpawnSpec::keep_output_write: the pipe's write end (close-on-exec,
  // owned by the caller); otherwise -1.
  int output_write_fd = -1;
};

// Forks and execs. The child gets its own process group, stdin from
// /dev/null, PR_SET_PDEATHSIG(SIGKILL), default signal dispositions and an
// empty signal mask. Dispositions are read at the first call: install every
// handler (and SIG_IGN) before spawning the first child. A failing
// chdir/setuid/exec in the child is reported on its output pipe and it exits
// 127; the parent learns of it as an exit.
Result<SpawnedChild> SpawnChild(const SpawnSpec& spec);

// SpawnChild's clone and exec without the pipe: the child's stdout and
// stderr become OUTPUT_WRITE, and it exits at once unless its parent is
// WATCHER_PID. AS_SIBLING: clone(CLONE_PARENT), the child is our parent's
// (the spawner, os/spawner.h, creates the Watcher's children so). Returns
// the child's pid.
Result<pid_t> CloneChild(const SpawnSpec& spec, int output_write,
                         pid_t watcher_pid, bool as_sibling);

// "SIGKILL" for 9; "signal 77" when unknown.
std::string SignalName(int signal_number);

// Raises RLIMIT_NOFILE for a pool of CHILDREN children as PlanFileLimits
// (core/file_limit.h) says: the soft limit to the hard one, and the hard one
// too when this process may (root; bounded by fs.nr_open). Returns the soft
// limit in force afterwards.
std::uint64_t RaiseFileLimit(std::uint64_t children = 0);

// What RaiseFileLimit(CHILDREN) would set in this process, without setting
// it (`workerpool check`).
FileLimits PlannedFileLimits(std::uint64_t children);

// Resident memory of PID in bytes, from /proc/PID/statm (for max_rss).
Result<std::int64_t> ResidentBytes(pid_t pid);

}  // namespace workerpool
