#include "watcher/upgrade.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "core/upgrade_state.h"
#include "version.h"

extern char** environ;

namespace workerpool {
namespace {

// How long each check of a new binary may take.
constexpr int kCheckTimeoutMs = 10000;
constexpr const char* kFaultVariable = "WORKERPOOL_TEST_ADOPT_FAULT";
constexpr const char* kVersionVariable = "WORKERPOOL_TEST_VERSION";
// The old Watcher's $WORKERPOOL_TEST_VERSION, for the fallback: a test's new
// "build" is a wrapper that sets its own, and the old build taking the pool
// back must report its version again.
constexpr const char* kOldVersionVariable = "WORKERPOOL_TEST_OLD_VERSION";

std::string Errno(int error) { return std::strerror(error); }

struct Run {
  int status = 0;
  std::string output;  // stdout and stderr
};

// What a check child needs between clone and exec, prepared before.
struct CheckChild {
  char* const* argv;
  int output_write;
};

// The check's intermediate process, after clone: it forks the checked
// binary and waits for it. Why two processes: the Watcher reaps every child
// that exits with SIGCHLD (waitpid(-1) in its loop), which would take the
// check's exit status; the intermediate, cloned with no exit signal and
// never exec'd (exec gives a process SIGCHLD back), is invisible to that
// wait, and only the __WCLONE wait of RunCapture reaps it. Only system
// calls here (raw fork: no atfork handlers, whose locks another thread of
// the Watcher may have held at the clone).
int CheckChildMain(void* arg) {
  const CheckChild* child = static_cast<const CheckChild*>(arg);
  const pid_t checked =
      static_cast<pid_t>(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
  if (checked == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // the intermediate killed: go too
    for (int sig = 1; sig < NSIG; ++sig) {
      struct sigaction action;
      std::memset(&action, 0, sizeof(action));
      action.sa_handler = SIG_DFL;
      sigaction(sig, &action, nullptr);  // fails harmlessly for KILL, STOP
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    dup2(child->output_write, STDOUT_FILENO);
    dup2(child->output_write, STDERR_FILENO);
    execve(child->argv[0], child->argv, environ);
    const char* message = "cannot run it\n";
    ssize_t ignored = write(STDERR_FILENO, message, std::strlen(message));
    (void)ignored;
    _exit(127);
  }
  if (checked < 0) _exit(126);
  close(child->output_write);
  int status = 0;
  while (waitpid(checked, &status, 0) < 0) {
    if (errno != EINTR) _exit(126);
  }
  if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
  _exit(WEXITSTATUS(status));
}

// Runs ARGV with stdout and stderr captured, default signal dispositions
// and an empty mask; kills it after kCheckTimeoutMs. Runs on a helper
// thread while the Watcher's loop goes on, so the child is cloned with no
// exit signal: the Watcher's reaping (waitpid(-1) on SIGCHLD) does not see
// it, and only the __WCLONE wait here reaps it.
Result<Run> RunCapture(const std::vector<std::string>& argv) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    return Status::Error("pipe: " + Errno(errno));
  }
  std::vector<char*> args;
  for (const std::string& arg : argv) {
    args.push_back(const_cast<char*>(arg.c_str()));
  }
  args.push_back(nullptr);
  CheckChild setup{args.data(), out[1]};
  // Without CLONE_VM the child works on a copy of this memory, stack
  // included, as after fork.
  std::vector<char> stack(64 * 1024);
  sigset_t all, saved;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &saved);
  const pid_t pid =
      clone(CheckChildMain, stack.data() + stack.size(), 0, &setup);
  const int clone_error = errno;
  pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  close(out[1]);
  if (pid < 0) {
    close(out[0]);
    return Status::Error("cannot run it: clone: " + Errno(clone_error));
  }
  Run run;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(kCheckTimeoutMs);
  bool timed_out = false;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd readable{out[0], POLLIN, 0};
    const int ready = poll(&readable, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    char chunk[4096];
    const ssize_t got = read(out[0], chunk, sizeof(chunk));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (run.output.size() < 64 * 1024) run.output.append(chunk, got);
  }
  close(out[0]);
  if (timed_out) kill(pid, SIGKILL);
  for (;;) {
    if (waitpid(pid, &run.status, __WCLONE) >= 0) break;
    if (errno != EINTR) {
      return Status::Error("cannot wait for it: " + Errno(errno));
    }
  }
  if (timed_out) {
    return Status::Error("it did not finish within " +
                         std::to_string(kCheckTimeoutMs / 1000) + " s");
  }
  return run;
}

std::string Trimmed(std::string text) {
  while (!text.empty() &&
         (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  if (text.size() > 400) text = text.substr(0, 400) + "...";
  for (char& c : text) {
    if (c == '\n') c = ' ';
  }
  return text;
}

std::string HowItEnded(const Run& run) {
  // The intermediate (CheckChildMain) passes a signal on as 128 + it.
  if (WIFEXITED(run.status) && WEXITSTATUS(run.status) > 128) {
    return "was killed by signal " +
           std::to_string(WEXITSTATUS(run.status) - 128);
  }
  if (WIFEXITED(run.status)) {
    return "exited with code " + std::to_string(WEXITSTATUS(run.status));
  }
  if (WIFSIGNALED(run.status)) {
    return "was killed by signal " + std::to_string(WTERMSIG(run.status));
  }
  return "ended with wait status " + std::to_string(run.status);
}

bool Succeeded(const Run& run) {
  return WIFEXITED(run.status) && WEXITSTATUS(run.status) == 0;
}

// What an exec needs, built before it: argv and envp as C arrays.
struct ExecArgs {
  std::vector<std::string> strings;
  std::vector<std::string> env_strings;
  std::vector<char*> argv;
  std::vector<char*> envp;
};

void BuildExecArgs(ExecArgs* out, const std::string& argv0,
                   const std::string& config_path, int state_fd,
                   const std::string& error, bool for_fallback) {
  out->strings = {argv0, "run", config_path, "--adopt",
                  std::to_string(state_fd)};
  if (!error.empty()) {
    out->strings.push_back("--upgrade-error");
    out->strings.push_back(error);
  }
  out->env_strings.clear();
  const std::string fault = std::string(kFaultVariable) + "=";
  const std::string version = std::string(kVersionVariable) + "=";
  const std::string old_version = std::string(kOldVersionVariable) + "=";
  std::string restored_version;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    if (text.starts_with(old_version)) {
      if (for_fallback) {
        restored_version = text.substr(old_version.size());
      }
      continue;
    }
    if (for_fallback &&
        (text.starts_with(fault) || text.starts_with(version))) {
      continue;
    }
    out->env_strings.emplace_back(text);
  }
  if (for_fallback && !restored_version.empty()) {
    out->env_strings.push_back(version + restored_version);
  }
  if (!for_fallback) {
    const char* mine = std::getenv(kVersionVariable);
    out->env_strings.push_back(old_version + (mine != nullptr ? mine : ""));
  }
  out->argv.clear();
  for (std::string& s : out->strings) out->argv.push_back(s.data());
  out->argv.push_back(nullptr);
  out->envp.clear();
  for (std::string& s : out->env_strings) out->envp.push_back(s.data());
  out->envp.push_back(nullptr);
}

sigset_t UpgradeSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR2, SIGCHLD}) {
    sigaddset(&set, sig);
  }
  return set;
}

int ExecFd(int fd, char* const* argv, char* const* envp) {
#ifdef SYS_execveat
  return static_cast<int>(
      syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH));
#else
  return fexecve(fd, argv, envp);
#endif
}

// The crash fallback, prepared while nothing has failed yet: a signal
// handler may only make system calls and write to memory it owns.
struct CrashFallback {
  int exe_fd = -1;
  ExecArgs args;
  std::vector<int> keep;
  std::size_t error_index = 0;  // args.strings[error_index]: the reason
  std::size_t digits_at = 0;    // where its signal number goes
};
CrashFallback* crash_fallback = nullptr;
constexpr int kCrashSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

void OnCrash(int signal_number) {
  CrashFallback* fallback = crash_fallback;
  if (fallback == nullptr) {
    signal(signal_number, SIG_DFL);
    raise(signal_number);
    return;
  }
  char* reason = fallback->args.strings[fallback->error_index].data();
  char* digits = reason + fallback->digits_at;
  digits[0] = static_cast<char>('0' + (signal_number / 10) % 10);
  digits[1] = static_cast<char>('0' + signal_number % 10);
  for (int fd : fallback->keep) fcntl(fd, F_SETFD, 0);
  sigset_t block = UpgradeSignals();
  sigprocmask(SIG_BLOCK, &block, nullptr);
  ExecFd(fallback->exe_fd, fallback->args.argv.data(),
         fallback->args.envp.data());
  // The old binary is gone too: nothing is left to do but to die.
  signal(signal_number, SIG_DFL);
  raise(signal_number);
}

}  // namespace

std::string WorkerpoolVersion() {
  const char* test_version = std::getenv("WORKERPOOL_TEST_VERSION");
  if (test_version != nullptr && *test_version != '\0') return test_version;
  return WORKERPOOL_VERSION;
}

int OpenOwnBinary() { return open("/proc/self/exe", O_RDONLY | O_CLOEXEC); }

std::string OwnBinaryPath() {
  char buffer[4096];
  const ssize_t size = readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (size <= 0) return {};
  return std::string(buffer, static_cast<std::size_t>(size));
}

Result<std::string> CheckNewBinary(const std::string& binary,
                                   const std::string& config_content) {
  if (binary.empty() || binary[0] != '/') {
    return Status::Error("the new binary must be an absolute path, got '" +
                         binary + "'");
  }
  if (access(binary.c_str(), X_OK) != 0) {
    return Status::Error("the new binary " + binary +
                         " cannot be executed: " + Errno(errno));
  }
  Result<Run> version = RunCapture({binary, "--version"});
  if (!version.ok()) {
    return Status::Error(binary + " --version: " + version.status().message());
  }
  if (!Succeeded(*version)) {
    return Status::Error(binary + " --version " + HowItEnded(*version) + ": " +
                         Trimmed(version->output));
  }
  std::string answer = Trimmed(version->output);
  const std::string prefix = "workerpool ";
  if (!answer.starts_with(prefix)) {
    return Status::Error(binary + " --version answered '" + answer +
                         "', not 'workerpool VERSION'");
  }
  Result<Run> state_version = RunCapture({binary, "--upgrade-state-version"});
  if (!state_version.ok()) {
    return Status::Error(binary + " --upgrade-state-version: " +
                         state_version.status().message());
  }
  const std::string reads = Trimmed(state_version->output);
  if (!Succeeded(*state_version) || reads.empty() ||
      std::atoi(reads.c_str()) < 1) {
    return Status::Error(binary +
                         " cannot adopt a running pool (--upgrade-state-"
                         "version " +
                         HowItEnded(*state_version) + ": " + reads + ")");
  }

  // `check` reads the bytes in force, not the file as it may be now.
  int config_fd =
      static_cast<int>(syscall(SYS_memfd_create, "workerpool-config", 0));
  if (config_fd < 0) return Status::Error("memfd_create: " + Errno(errno));
  const char* data = config_content.data();
  std::size_t left = config_content.size();
  while (left > 0) {
    const ssize_t wrote = write(config_fd, data, left);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) {
      const int error = errno;
      close(config_fd);
      return Status::Error("cannot write the config for check: " +
                           Errno(error));
    }
    data += wrote;
    left -= static_cast<std::size_t>(wrote);
  }
  Result<Run> check = RunCapture(
      {binary, "check", "/proc/self/fd/" + std::to_string(config_fd)});
  close(config_fd);
  if (!check.ok()) {
    return Status::Error(binary + " check: " + check.status().message());
  }
  if (!Succeeded(*check)) {
    return Status::Error(binary +
                         " check refuses the pool definition in force (" +
                         HowItEnded(*check) + "): " + Trimmed(check->output));
  }
  return answer.substr(prefix.size());
}

BinaryCheck::BinaryCheck(std::string binary, std::string config_content)
    : thread_([this, binary = std::move(binary),
               content = std::move(config_content)] {
        result_ = CheckNewBinary(binary, content);
        done_.store(true, std::memory_order_release);
      }) {}

BinaryCheck::~BinaryCheck() {
  if (thread_.joinable()) thread_.join();
}

Result<int> WriteStateMemfd(const std::string& text) {
  int fd = static_cast<int>(
      syscall(SYS_memfd_create, "workerpool-upgrade-state", MFD_ALLOW_SEALING));
  if (fd < 0) return Status::Error("memfd_create: " + Errno(errno));
  const char* data = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    const ssize_t wrote = write(fd, data, left);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) {
      const int error = errno;
      close(fd);
      return Status::Error("cannot write the upgrade state: " + Errno(error));
    }
    data += wrote;
    left -= static_cast<std::size_t>(wrote);
  }
  if (fcntl(fd, F_ADD_SEALS,
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    const int error = errno;
    close(fd);
    return Status::Error("cannot seal the upgrade state: " + Errno(error));
  }
  return fd;
}

Result<std::string> ReadStateFd(int fd) {
  std::string text;
  // Sized at once: the state of 1000 children is a few hundred KiB, and
  // growing the string chunk by chunk costs copies while the pool waits.
  struct stat info;
  if (fstat(fd, &info) == 0 && info.st_size > 0 &&
      info.st_size <= (256 << 20)) {
    text.reserve(static_cast<std::size_t>(info.st_size));
  }
  char chunk[64 * 1024];
  off_t offset = 0;
  for (;;) {
    const ssize_t got = pread(fd, chunk, sizeof(chunk), offset);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      return Status::Error("cannot read the upgrade state from descriptor " +
                           std::to_string(fd) + ": " + Errno(errno));
    }
    if (got == 0) break;
    text.append(chunk, static_cast<std::size_t>(got));
    offset += got;
    if (text.size() > (256u << 20)) {
      return Status::Error("the upgrade state is larger than 256 MiB");
    }
  }
  return text;
}

Status ExecAdopting(const std::string& binary, int exe_fd,
                    const std::string& config_path, int state_fd,
                    const std::vector<int>& keep, const std::string& error,
                    bool for_fallback) {
  ExecArgs args;
  BuildExecArgs(&args, binary.empty() ? std::string("workerpool") : binary,
                config_path, state_fd, error, for_fallback);
  std::vector<std::pair<int, int>> flags;
  std::vector<int> all = keep;
  all.push_back(state_fd);
  for (int fd : all) {
    const int old = fcntl(fd, F_GETFD);
    if (old < 0) continue;
    flags.emplace_back(fd, old);
    fcntl(fd, F_SETFD, old & ~FD_CLOEXEC);
  }
  sigset_t block = UpgradeSignals();
  sigset_t saved;
  sigprocmask(SIG_BLOCK, &block, &saved);
  if (binary.empty()) {
    ExecFd(exe_fd, args.argv.data(), args.envp.data());
  } else {
    execve(binary.c_str(), args.argv.data(), args.envp.data());
  }
  const int exec_error = errno;
  sigprocmask(SIG_SETMASK, &saved, nullptr);
  for (auto [fd, old] : flags) fcntl(fd, F_SETFD, old);
  return Status::Error(
      "cannot exec " +
      (binary.empty() ? std::string("the old binary") : binary) + ": " +
      Errno(exec_error));
}

void ArmAdoptionFallback(int fallback_exe_fd, const std::string& config_path,
                         int state_fd, const std::vector<int>& keep) {
  if (fallback_exe_fd < 0) return;
  auto* fallback = new CrashFallback;
  fallback->exe_fd = fallback_exe_fd;
  fallback->keep = keep;
  fallback->keep.push_back(state_fd);
  const std::string reason =
      "the new Watcher crashed while adopting the pool (signal ";
  BuildExecArgs(&fallback->args, "workerpool", config_path, state_fd,
                reason + "00)", /*for_fallback=*/true);
  fallback->error_index = fallback->args.strings.size() - 1;
  fallback->digits_at = reason.size();
  crash_fallback = fallback;
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = OnCrash;
  action.sa_flags = SA_NODEFER | SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  for (int sig : kCrashSignals) sigaction(sig, &action, nullptr);
}

void DisarmAdoptionFallback() {
  if (crash_fallback == nullptr) return;
  for (int sig : kCrashSignals) signal(sig, SIG_DFL);
  delete crash_fallback;
  crash_fallback = nullptr;
}

void UnblockUpgradeSignals() {
  sigset_t set = UpgradeSignals();
  for (int sig : kCrashSignals) sigaddset(&set, sig);
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
}

}  // namespace workerpool
