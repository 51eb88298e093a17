#include "os/spawn.h"

#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace workerpool {
namespace {

// Async-signal-safe report from the child after fork: write and exit 127.
[[noreturn]] void ChildFail(const char* what, const char* arg) {
  const char* reason = strerror(errno);
  const char* parts[] = {"workerpool: ", what, " ", arg, ": ", reason, "\n"};
  for (const char* part : parts) {
    ssize_t ignored = write(STDERR_FILENO, part, strlen(part));
    (void)ignored;
  }
  _exit(127);
}

std::vector<char*> CStrings(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings)
    out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

void CloseFrom(int first_fd) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, first_fd, ~0U, 0) == 0) return;
#endif
  long max_fd = sysconf(_SC_OPEN_MAX);
  for (long fd = first_fd; fd < max_fd; ++fd) close(static_cast<int>(fd));
}

// What the child needs between clone and exec, prepared by the parent.
struct ChildSetup {
  const SpawnSpec* spec;
  char* const* argv;
  char* const* envp;
  char* listen_pid;  // "LISTEN_PID=..." with room for the digits, or null
  int output_write;
  pid_t watcher_pid;
  const int* signals_to_reset;
  int signals_to_reset_count;
};

// The signals whose disposition is not SIG_DFL in this process: the child
// resets them before it unblocks signals (a handler of ours must never run
// in it, and SIG_IGN would survive exec). Read once, at the first spawn:
// resetting all 64 in every child cost a third of its time from clone to
// exec, and the Watcher installs its handlers (uv_signal_t, SIGPIPE ignored)
// before it starts any child. Signals a process like ours commonly handles
// are reset in any case.
struct SignalsToReset {
  int numbers[NSIG];
  int count = 0;
};

const SignalsToReset& SignalsWithHandlers() {
  static const SignalsToReset found = [] {
    SignalsToReset out;
    for (int sig = 1; sig < NSIG; ++sig) {
      struct sigaction current;
      if (sigaction(sig, nullptr, &current) != 0) continue;  // e.g. SIGKILL
      const bool always = sig == SIGCHLD || sig == SIGTERM || sig == SIGINT ||
                          sig == SIGHUP || sig == SIGQUIT || sig == SIGPIPE ||
                          sig == SIGUSR1 || sig == SIGUSR2 || sig == SIGALRM;
      if (always || current.sa_handler != SIG_DFL) {
        out.numbers[out.count++] = sig;
      }
    }
    return out;
  }();
  return found;
}

// Runs in the child on its own stack, sharing the Watcher's memory until
// exec (CLONE_VM | CLONE_VFORK): only system calls and writes to the
// child's own stack or to setup->listen_pid, which the parent no longer
// reads. Never returns.
int ChildMain(void* arg) {
  const ChildSetup* setup = static_cast<const ChildSetup*>(arg);
  const SpawnSpec& spec = *setup->spec;
  // Every signal is blocked (by the parent): reset the handlers before
  // unblocking, so that no handler of the Watcher's runs in the child.
  for (int i = 0; i < setup->signals_to_reset_count; ++i) {
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_handler = SIG_DFL;
    sigaction(setup->signals_to_reset[i], &action, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  setpgid(0, 0);
  if (setup->listen_pid != nullptr) {
    char digits[24];
    int count = 0;
    for (pid_t self = getpid(); self > 0; self /= 10) {
      digits[count++] = static_cast<char>('0' + self % 10);
    }
    char* out = setup->listen_pid + strlen("LISTEN_PID=");
    while (count > 0) *out++ = digits[--count];
    *out = '\0';
  }

  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull >= 0) dup2(devnull, STDIN_FILENO);
  dup2(setup->output_write, STDOUT_FILENO);
  dup2(setup->output_write, STDERR_FILENO);

  // Move passed fds out of the way first so a source may equal a target.
  const int count = static_cast<int>(spec.pass_fds.size());
  int staged[64];
  if (count > 64) {
    errno = EMFILE;
    ChildFail("pass", "fds");
  }
  for (int i = 0; i < count; ++i) {
    staged[i] = fcntl(spec.pass_fds[i], F_DUPFD_CLOEXEC, 3 + count);
  }
  for (int i = 0; i < count; ++i) dup2(staged[i], 3 + i);
  CloseFrom(3 + count);

  if (!spec.cwd.empty() && chdir(spec.cwd.c_str()) != 0) {
    ChildFail("chdir", spec.cwd.c_str());
  }
  if (spec.gid >= 0) {
    if (setgroups(0, nullptr) != 0 && errno != EPERM) {
      ChildFail("setgroups", "");
    }
    if (setgid(static_cast<gid_t>(spec.gid)) != 0) ChildFail("setgid", "");
  }
  if (spec.uid >= 0 && setuid(static_cast<uid_t>(spec.uid)) != 0) {
    ChildFail("setuid", "");
  }
  // After setuid: a credential change clears the parent-death signal.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != setup->watcher_pid) _exit(1);  // the Watcher is gone

  execvpe(setup->argv[0], setup->argv, setup->envp);
  ChildFail("exec", setup->argv[0]);
}

}  // namespace

Result<pid_t> CloneChild(const SpawnSpec& spec, int output_write,
                         pid_t watcher_pid, bool as_sibling) {
  if (spec.argv.empty()) return Status::Error("empty command");
  std::vector<char*> argv = CStrings(spec.argv);
  // Room for the pid, written by the child itself after clone.
  std::string listen_pid = "LISTEN_PID=0000000000000000000";
  std::vector<char*> envp = CStrings(spec.env);
  if (spec.set_listen_pid) envp.insert(envp.end() - 1, listen_pid.data());
  ChildSetup setup{&spec,
                   argv.data(),
                   envp.data(),
                   spec.set_listen_pid ? listen_pid.data() : nullptr,
                   output_write,
                   watcher_pid,
                   SignalsWithHandlers().numbers,
                   SignalsWithHandlers().count};
  // Why clone(CLONE_VM | CLONE_VFORK) rather than fork(): fork copies the
  // page tables of the Watcher, whose cost grows with its memory (about
  // 37 µs per MiB here) and is paid on every restart; the child here only
  // runs ChildMain until exec, as glibc's posix_spawn does. The stack is
  // static: spawns happen one at a time on the loop thread, and the parent
  // is suspended until the child has exec'd or exited. What clone still
  // copies is the descriptor table (and the child's close_range releases
  // it): O(open descriptors) per spawn, which is why the Watcher spawns
  // through the spawner (os/spawner.h), whose table is nearly empty, with
  // AS_SIBLING: CLONE_PARENT makes the Watcher the child's parent.
#if !defined(__SANITIZE_ADDRESS__)
  alignas(16) static char child_stack[64 * 1024];
#endif
  const int sibling = as_sibling ? CLONE_PARENT : 0;
  sigset_t all, saved_mask;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &saved_mask);
#if defined(__SANITIZE_ADDRESS__)
  // ASan keeps per-thread state that a child sharing our memory on another
  // stack would corrupt: sanitized builds pay for a plain fork (a fork-like
  // raw clone when the child must be our parent's).
  const pid_t pid =
      as_sibling ? static_cast<pid_t>(syscall(SYS_clone, sibling | SIGCHLD,
                                              nullptr, nullptr, nullptr, 0))
                 : fork();
  if (pid == 0) ChildMain(&setup);
#else
  const pid_t pid = clone(ChildMain, child_stack + sizeof(child_stack),
                          CLONE_VM | CLONE_VFORK | sibling | SIGCHLD, &setup);
#endif
  const int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &saved_mask, nullptr);
  if (pid < 0) {
    return Status::Error(std::string("clone: ") + strerror(clone_errno));
  }
  return pid;
}

Result<SpawnedChild> SpawnChild(const SpawnSpec& spec) {
  if (spec.argv.empty()) return Status::Error("empty command");
  if (spec.shared_output >= 0) {
    Result<pid_t> pid = CloneChild(spec, spec.shared_output, getpid(), false);
    if (!pid.ok()) return pid.status();
    return SpawnedChild{*pid, -1, -1};
  }
  int output[2];
  if (pipe2(output, O_CLOEXEC) != 0) {
    return Status::Error(std::string("pipe: ") + strerror(errno));
  }
  Result<pid_t> pid = CloneChild(spec, output[1], getpid(), false);
  if (!pid.ok() || !spec.keep_output_write) {
    close(output[1]);
    output[1] = -1;
  }
  if (!pid.ok()) {
    close(output[0]);
    return pid.status();
  }
  fcntl(output[0], F_SETFL, fcntl(output[0], F_GETFL) | O_NONBLOCK);
  return SpawnedChild{*pid, output[0], output[1]};
}

std::string SignalName(int signal_number) {
  const char* abbrev = sigabbrev_np(signal_number);
  if (abbrev == nullptr) return "signal " + std::to_string(signal_number);
  return std::string("SIG") + abbrev;
}

namespace {

FileLimits CurrentFileLimits() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return {1024, 1024};
  return {static_cast<std::uint64_t>(limit.rlim_cur),
          static_cast<std::uint64_t>(limit.rlim_max)};
}

// fs.nr_open: the most a hard RLIMIT_NOFILE may be.
std::uint64_t NrOpen() {
  std::uint64_t value = 1024 * 1024;  // the kernel's default
  if (FILE* file = std::fopen("/proc/sys/fs/nr_open", "re")) {
    unsigned long long read = 0;
    if (std::fscanf(file, "%llu", &read) == 1 && read > 0) value = read;
    std::fclose(file);
  }
  return value;
}

// Whether this process has CAP_SYS_RESOURCE (bit 24 of CapEff), which
// raising the hard limit takes: a container's root often lacks it, and
// `check` would then promise a limit the Watcher cannot get.
bool MayRaiseHardLimit() {
  bool may = false;
  if (FILE* file = std::fopen("/proc/self/status", "re")) {
    char line[256];
    while (std::fgets(line, sizeof(line), file) != nullptr) {
      unsigned long long caps = 0;
      if (std::sscanf(line, "CapEff: %llx", &caps) == 1) {
        may = (caps >> 24) & 1;
        break;
      }
    }
    std::fclose(file);
  }
  return may;
}

}  // namespace

FileLimits PlannedFileLimits(std::uint64_t children) {
  return PlanFileLimits(CurrentFileLimits(), NrOpen(), MayRaiseHardLimit(),
                        children);
}

std::uint64_t RaiseFileLimit(std::uint64_t children) {
  const FileLimits current = CurrentFileLimits();
  // Try the hard limit too whoever we are: CAP_SYS_RESOURCE decides, and
  // without it the soft limit is still raised to the hard one.
  for (bool raise_hard : {true, false}) {
    const FileLimits plan =
        PlanFileLimits(current, NrOpen(), raise_hard, children);
    if (plan.soft == current.soft && plan.hard == current.hard) break;
    struct rlimit raised;
    raised.rlim_cur = static_cast<rlim_t>(plan.soft);
    raised.rlim_max = static_cast<rlim_t>(plan.hard);
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) break;
  }
  return CurrentFileLimits().soft;
}

Result<std::int64_t> ResidentBytes(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/statm";
  FILE* file = std::fopen(path.c_str(), "re");
  if (file == nullptr) {
    return Status::Error("cannot read " + path + ": " + std::strerror(errno));
  }
  long long size_pages = 0;
  long long resident_pages = 0;
  int fields = std::fscanf(file, "%lld %lld", &size_pages, &resident_pages);
  std::fclose(file);
  if (fields != 2) return Status::Error("cannot parse " + path);
  return static_cast<std::int64_t>(resident_pages) * sysconf(_SC_PAGESIZE);
}

}  // namespace workerpool
