// The spawner: a small process that creates the Watcher's children for it.
//
// Why: clone() copies the caller's descriptor table, and the child's
// close_range() releases the copy, so a spawn from the Watcher costs
// O(its open descriptors), two or four per child: starting n children cost
// O(n²) and every restart in a large pool paid for the whole pool (issue
// 17). The spawner holds three descriptors (its socket, stderr, the
// request's fds), receives each child's descriptors over SCM_RIGHTS and
// creates the child with clone(CLONE_VM | CLONE_VFORK | CLONE_PARENT): the
// Watcher is the child's parent, so reaping (SIGCHLD, waitpid),
// PR_SET_PDEATHSIG and the subreaper stay as they are.
//
// Measured (bench/scale_bench.py, 2 loaded cores): 9,872 children started
// in 148.9 s spawned directly (halves 23.1 s + 125.8 s), in 13.1 s through
// the spawner (7.1 s + 5.9 s), as fast as a bare posix_spawn loop that
// keeps no descriptors.
//
// Rejected: posix_spawn and vfork copy the table the same way;
// CLONE_FILES shares it instead, and the child's close_range would then
// close the Watcher's descriptors; a spawning thread shares the table too.
//
// Fail-safe: a spawner that is missing, dead, silent for 5 s or
// cannot take a request is replaced by spawning directly (SpawnChild); a
// dead one is started again at a later spawn, at most once a second.
//
// Both sides run single-threaded: the Watcher's on its loop thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

#include "core/status.h"
#include "os/spawn.h"

namespace workerpool {

// The Watcher's side.
class Spawner {
 public:
  // EXECUTABLE: workerpool-spawner; "" spawns directly, always.
  explicit Spawner(std::string executable)
      : executable_(std::move(executable)) {}
  ~Spawner() { Stop(); }
  Spawner(const Spawner&) = delete;
  Spawner& operator=(const Spawner&) = delete;

  // Like SpawnChild(SPEC), through the spawner when it runs (it is started
  // first if needed), else directly. The first call must come after the
  // caller's signal handlers are installed (as for SpawnChild).
  Result<SpawnedChild> Spawn(const SpawnSpec& spec);
  // The caller reaped PID with wait STATUS: true when that was the spawner
  // (then a later Spawn starts another).
  bool Reaped(pid_t pid, int status);
  // Closes the spawner's socket: it exits (spawns go direct until the next
  // Spawn starts one again).
  void Stop();
  // The spawner's pid, 0 when none runs.
  pid_t pid() const { return pid_; }
  // The Watcher's end of its socket, -1 when none runs.
  int socket() const { return socket_; }
  // An in-place upgrade: the new Watcher takes over the spawner PID the old
  // one ran, on SOCKET (socket() before exec, kept open across it).
  void Adopt(int socket, pid_t pid);
  // Children spawned directly since start (the spawner was missing or
  // failed): for the log, status and tests.
  std::uint64_t direct_spawns() const { return direct_spawns_; }

 private:
  bool Start();
  // Sends one request and reads the answer. kRetryDirect: the spawner
  // failed (it is dropped); spawn directly.
  Result<SpawnedChild> Request(const SpawnSpec& spec, bool* retry_direct);
  void Drop(const char* why);

  std::string executable_;
  int socket_ = -1;
  pid_t pid_ = 0;
  std::chrono::steady_clock::time_point last_start_{};
  bool started_once_ = false;
  std::uint64_t direct_spawns_ = 0;
};

// The workerpool-spawner beside SELF_EXE (os/builtin_path.h), or "" when it
// is missing or WORKERPOOL_SPAWN=direct is set (benchmarks compare the two;
// a missing one is logged).
std::string SpawnerExecutable(const std::string& self_exe);

// The spawner's side: serves requests on SOCKET until EOF. Returns the
// exit code.
int RunSpawner(int socket);

namespace spawner_wire {

// A request is one SOCK_SEQPACKET message: this header, then the strings
// cwd, argv[0..argc), env[0..envc), each NUL-terminated; its SCM_RIGHTS
// carry the output pipe's write end, then the fds of SpawnSpec::pass_fds.
struct Request {
  std::uint32_t magic;
  std::uint32_t flags;  // kSetListenPid
  std::int64_t uid;
  std::int64_t gid;
  std::uint32_t argc;
  std::uint32_t envc;
  std::uint32_t fd_count;
  std::uint32_t reserved;
};
inline constexpr std::uint32_t kMagic = 0x57505350;  // "WPSP"
inline constexpr std::uint32_t kSetListenPid = 1;
inline constexpr std::size_t kMaxFds = 64;
// The answer: the child's pid, or -1 and the error.
struct Reply {
  std::int32_t pid;
  std::int32_t reserved;
  char error[120];
};

}  // namespace spawner_wire

}  // namespace workerpool
