// Measures process supervisors from the outside, with the same tiny child
// (bench/first_byte_child.c) under every one. scripts/bench drives it.
//
//   pool_bench restart [--rounds R] [--warmup W] [--gap-ms G] [--seed S]
//                      [--timeout-ms T] [--ready-timeout-s T]
//                      SYSTEM...
//     Restart latency: SIGKILL of a random child → its replacement's first
//     datagram. Every SYSTEM runs at once and the kills are interleaved
//     (each round kills one child of each system, in a shuffled order, and
//     waits for its replacement before the next kill), so the machine's slow
//     drifts hit every system alike. A system with --kills K below R is
//     killed in K rounds spread evenly.
//
//   pool_bench idle [--seconds S] [--settle-ms M] [--ready-timeout-s T] SYSTEM
//     Idle cost: waits for the system's children, lets it settle, then
//     samples the supervisor's VmRSS, CPU time (utime+stime) and context
//     switches (voluntary + nonvoluntary, every thread) over S seconds.
//
//   pool_bench reload [--rounds R] [--quiet-ms Q] [--timeout-ms T]
//                     [--ready-timeout-s T] SYSTEM...
//     Reload: each system starts with --children N, then per round is
//     switched to --grow-config (M children) and back to --config (N), by
//     copying that file over --config and either sending SIGHUP to the
//     supervisor (--reload-signal) or running --reload CMD. Measures the
//     time from the trigger to the last change of the set of live children
//     that left exactly the target count (so it waits --quiet-ms after
//     reaching it: a system that stops everything first passes through the
//     target on its way down), and how many children of before the reload
//     are still alive after it. Systems alternate within a round.
//
//   SYSTEM is: --system NAME --socket PATH [--children N] [--kills K]
//              (--child BINARY | --start CMD [--detached --stop CMD])
//              [--pid-file FILE] [--log FILE]
//              [--config FILE --grow-config FILE --grow-to M
//               (--reload-signal | --reload CMD)]            (reload only)
//     --child BINARY ("raw"): the harness is the supervisor itself: SIGKILL,
//       waitpid, fork + exec, wait for the datagram; the 1.0 baseline.
//     --start CMD: `/bin/sh -c "exec CMD"` is the supervisor process (it gets
//       SIGTERM at the end). With --detached the command returns after
//       starting a daemon (PM2) and --stop CMD ends it. --pid-file names the
//       file holding the supervisor's pid when it is not the started process.
//     Every child announces its pid on the system's socket (argv[1]), so the
//     harness knows every child; whatever it started is stopped at the end,
//     even on failure or SIGINT/SIGTERM, and children left behind are killed.
//
// Prints one JSON object per system on stdout (one line each); diagnostics go
// to stderr. Exit 0 on success, 1 on bad arguments, 2 when a measurement
// failed.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_interrupted = 0;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct SystemOptions {
  std::string name;
  std::string socket_path;
  std::string child;  // raw: the harness spawns this itself
  std::string start;
  std::string stop;
  std::string log = "/dev/null";
  std::string pid_file;
  bool detached = false;
  int children = 20;
  int kills = -1;  // -1: one per round
  // reload mode
  std::string config;
  std::string grow_config;
  std::string reload_command;
  bool reload_signal = false;
  int grow_to = 0;
};

struct Options {
  std::string mode;
  int rounds = 50;
  int warmup = 3;
  int gap_ms = 20;
  int timeout_ms = 5000;
  int ready_timeout_s = 120;
  int settle_ms = 2000;
  int quiet_ms = 2500;
  double seconds = 10;
  unsigned seed = 1;
  std::vector<SystemOptions> systems;
};

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr, "pool_bench: %s (usage atop bench/pool_bench.cc)\n",
               why.c_str());
  std::exit(1);
}

Options ParseOptions(int argc, char** argv) {
  if (argc < 2) Usage("missing mode: restart | idle");
  Options o;
  o.mode = argv[1];
  if (o.mode != "restart" && o.mode != "idle" && o.mode != "reload") {
    Usage("unknown mode " + o.mode);
  }
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(arg + " needs a value");
      return argv[++i];
    };
    auto number = [&]() {
      std::string text = value();
      char* end = nullptr;
      long n = std::strtol(text.c_str(), &end, 10);
      if (*end != '\0' || n < 0) Usage(arg + " needs a count, not " + text);
      return static_cast<int>(n);
    };
    if (arg == "--system") {
      o.systems.emplace_back();
      o.systems.back().name = value();
      continue;
    }
    // Global options.
    if (arg == "--rounds") {
      o.rounds = number();
      continue;
    }
    if (arg == "--warmup") {
      o.warmup = number();
      continue;
    }
    if (arg == "--gap-ms") {
      o.gap_ms = number();
      continue;
    }
    if (arg == "--timeout-ms") {
      o.timeout_ms = number();
      continue;
    }
    if (arg == "--ready-timeout-s") {
      o.ready_timeout_s = number();
      continue;
    }
    if (arg == "--settle-ms") {
      o.settle_ms = number();
      continue;
    }
    if (arg == "--quiet-ms") {
      o.quiet_ms = number();
      continue;
    }
    if (arg == "--seconds") {
      o.seconds = std::stod(value());
      continue;
    }
    if (arg == "--seed") {
      o.seed = static_cast<unsigned>(number());
      continue;
    }
    // Per-system options.
    if (o.systems.empty()) Usage(arg + " before any --system");
    SystemOptions& s = o.systems.back();
    if (arg == "--socket")
      s.socket_path = value();
    else if (arg == "--child")
      s.child = value();
    else if (arg == "--start")
      s.start = value();
    else if (arg == "--stop")
      s.stop = value();
    else if (arg == "--log")
      s.log = value();
    else if (arg == "--pid-file")
      s.pid_file = value();
    else if (arg == "--detached")
      s.detached = true;
    else if (arg == "--children")
      s.children = number();
    else if (arg == "--kills")
      s.kills = number();
    else if (arg == "--config")
      s.config = value();
    else if (arg == "--grow-config")
      s.grow_config = value();
    else if (arg == "--grow-to")
      s.grow_to = number();
    else if (arg == "--reload")
      s.reload_command = value();
    else if (arg == "--reload-signal")
      s.reload_signal = true;
    else
      Usage("unknown option " + arg);
  }
  if (o.systems.empty()) Usage("no --system given");
  if (o.mode == "idle" && o.systems.size() != 1)
    Usage("idle measures one system at a time");
  for (const SystemOptions& s : o.systems) {
    const std::string where = "--system " + s.name + ": ";
    if (s.socket_path.empty()) Usage(where + "--socket is required");
    if (s.child.empty() == s.start.empty())
      Usage(where + "give exactly one of --child, --start");
    if (o.mode == "idle" && !s.child.empty())
      Usage(where + "idle needs --start");
    if (s.detached && s.stop.empty()) Usage(where + "--detached needs --stop");
    if (s.children < 1) Usage(where + "--children must be positive");
    if (o.mode == "reload") {
      if (!s.child.empty()) Usage(where + "reload needs --start");
      if (s.config.empty() || s.grow_config.empty() || s.grow_to < 1) {
        Usage(where + "reload needs --config, --grow-config and --grow-to");
      }
      if (s.reload_signal == !s.reload_command.empty()) {
        Usage(where + "give exactly one of --reload-signal, --reload");
      }
    }
  }
  return o;
}

double MicrosSince(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double, std::micro>(end - start).count();
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// ---------------------------------------------------------------- socket --

class Listener {
 public:
  explicit Listener(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw Failure(std::string("socket: ") + strerror(errno));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path))
      throw Failure("socket path too long: " + path);
    std::strcpy(addr.sun_path, path.c_str());
    unlink(path.c_str());
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      throw Failure("bind " + path + ": " + strerror(errno));
    }
    int size = 4 << 20;  // 1000 children starting at once must not be lost
    setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
  }
  ~Listener() {
    close(fd_);
    unlink(path_.c_str());
  }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // The pid in the next datagram, or -1 after TIMEOUT_MS.
  pid_t Receive(int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      if (g_interrupted) throw Failure("interrupted");
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - Clock::now());
      pollfd p{fd_, POLLIN, 0};
      int ready =
          poll(&p, 1, static_cast<int>(std::max<long>(0, left.count())));
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) throw Failure(std::string("poll: ") + strerror(errno));
      if (ready == 0) return -1;
      pid_t pid = ReadOne();
      if (pid > 0) return pid;
    }
  }

  // Datagrams already waiting (there should be none between kills).
  int Drain() {
    int count = 0;
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 0) <= 0) return count;
      if (ReadOne() > 0) ++count;
    }
  }

 private:
  pid_t ReadOne() {
    char text[32];
    ssize_t n = recv(fd_, text, sizeof(text) - 1, 0);
    if (n <= 0) return -1;
    text[n] = '\0';
    return static_cast<pid_t>(std::atol(text));
  }

  std::string path_;
  int fd_ = -1;
};

// ------------------------------------------------------------- processes --

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

// True when PID's command line mentions NEEDLE (our children carry their
// socket path in argv[1]): guards against killing a recycled pid.
bool CommandMentions(pid_t pid, const std::string& needle) {
  return ReadFile("/proc/" + std::to_string(pid) + "/cmdline").find(needle) !=
         std::string::npos;
}

// Reaps PID if it is our child; true once it is gone.
bool WaitGone(pid_t pid, int timeout_ms, bool our_child) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Clock::now() < deadline) {
    if (our_child) {
      pid_t got = waitpid(pid, nullptr, WNOHANG);
      if (got == pid || (got < 0 && errno == ECHILD)) return true;
    } else if (!Alive(pid)) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// A supervisor or helper command: own process group (a ^C on the terminal
// reaches the harness only), output to LOG, DEATH_SIGNAL if we die first.
pid_t ForkExec(const std::vector<std::string>& args, const std::string& log,
               int death_signal) {
  std::vector<char*> argv;
  for (const std::string& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int out = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out < 0) throw Failure("open " + log + ": " + strerror(errno));
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) throw Failure(std::string("fork: ") + strerror(errno));
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);  // an ignored signal would survive exec
    setpgid(0, 0);
    if (death_signal != 0) {
      prctl(PR_SET_PDEATHSIG, death_signal);
      if (getppid() != parent) _exit(1);
    }
    int in = open("/dev/null", O_RDONLY);
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out);
  return pid;
}

int RunShell(const std::string& command, const std::string& log) {
  pid_t pid = ForkExec({"/bin/sh", "-c", command}, log, 0);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// One system under test: its socket, its supervisor, its children.
// Stop() is idempotent and runs from the destructor, so a failure anywhere
// still cleans up.
class System {
 public:
  explicit System(SystemOptions o)
      : o_(std::move(o)), listener_(o_.socket_path) {}
  ~System() { Stop(); }

  const SystemOptions& options() const { return o_; }
  const std::string& name() const { return o_.name; }
  bool raw() const { return !o_.child.empty(); }
  double ready_us() const { return ready_us_; }
  int unexpected() const { return unexpected_; }
  std::vector<double>& samples() { return samples_; }

  void Start() {
    started_at_ = Clock::now();
    started_ = true;
    if (raw()) {
      for (int i = 0; i < o_.children; ++i) pids_.push_back(SpawnRaw());
    } else if (o_.detached) {
      int code = RunShell(o_.start, o_.log);
      if (code != 0) {
        throw Failure(name() + ": start command exited with " +
                      std::to_string(code) + " (see " + o_.log + ")");
      }
    } else {
      // SIGTERM if the harness dies: supervisord and PM2 stop their children
      // on SIGTERM; workerpool's children die with the Watcher anyway.
      pid_ = ForkExec({"/bin/sh", "-c", "exec " + o_.start}, o_.log, SIGTERM);
    }
  }

  // Waits until every child has announced itself.
  void AwaitChildren(int timeout_s) {
    std::set<pid_t> announced;
    const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    while (static_cast<int>(announced.size()) < o_.children) {
      if (Clock::now() > deadline) {
        throw Failure(name() + ": only " + std::to_string(announced.size()) +
                      " of " + std::to_string(o_.children) +
                      " children announced themselves within " +
                      std::to_string(timeout_s) + " s (see " + o_.log + ")");
      }
      CheckRunning();
      pid_t pid = listener_.Receive(200);
      if (pid > 0 && announced.insert(pid).second) {
        seen_.insert(pid);
        if (!raw()) pids_.push_back(pid);
      }
    }
    ready_us_ = MicrosSince(started_at_, Clock::now());
  }

  // Kills one random child; returns kill → replacement's datagram in µs.
  double KillOne(std::mt19937& random, int timeout_ms) {
    unexpected_ += listener_.Drain();
    CheckRunning();
    size_t victim =
        std::uniform_int_distribution<size_t>(0, pids_.size() - 1)(random);
    const pid_t old_pid = pids_[victim];
    const auto t0 = Clock::now();
    if (kill(old_pid, SIGKILL) != 0) {
      throw Failure(name() + ": kill " + std::to_string(old_pid) + ": " +
                    strerror(errno));
    }
    pid_t expected = 0;
    if (raw()) {
      waitpid(old_pid, nullptr, 0);
      expected = SpawnRaw();
      pids_[victim] = expected;
    }
    pid_t got;
    for (;;) {
      got = listener_.Receive(timeout_ms);
      if (got < 0) {
        throw Failure(name() + ": no replacement for pid " +
                      std::to_string(old_pid) + " within " +
                      std::to_string(timeout_ms) + " ms (see " + o_.log + ")");
      }
      if (raw() ? got == expected : seen_.count(got) == 0) break;
      ++unexpected_;  // a child announcing itself twice: should not happen
    }
    const auto t1 = Clock::now();
    seen_.insert(got);
    pids_[victim] = got;
    return MicrosSince(t0, t1);
  }

  // The supervisor's pid: from --pid-file when given, else the started one.
  pid_t MainPid() const {
    if (!o_.pid_file.empty()) {
      pid_t pid = static_cast<pid_t>(std::atol(ReadFile(o_.pid_file).c_str()));
      if (pid <= 0) throw Failure(name() + ": no pid in " + o_.pid_file);
      return pid;
    }
    if (pid_ <= 0)
      throw Failure(name() + ": no supervisor pid (give --pid-file)");
    return pid_;
  }

  void CheckRunning() {
    if (pid_ <= 0) return;
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      throw Failure(name() + ": the supervisor exited early (see " + o_.log +
                    ")");
    }
  }

  int DrainUnexpected() { return unexpected_ += listener_.Drain(); }

  struct ReloadResult {
    double us = 0;  // trigger -> the last change that left TARGET children
    int kept = 0;   // children of before the reload still alive after it
    int before = 0;
    int after = 0;
  };

  // Puts CONFIG in place of the system's config file, triggers a reload
  // and waits until the set of live children has held TARGET members for
  // QUIET_MS.
  ReloadResult Reload(const std::string& config, int target, int quiet_ms,
                      int timeout_ms) {
    unexpected_ += listener_.Drain();
    CheckRunning();
    std::set<pid_t> live;
    for (pid_t pid : pids_) {
      if (Alive(pid)) live.insert(pid);
    }
    const std::set<pid_t> before = live;
    {
      std::ifstream in(config, std::ios::binary);
      std::ofstream out(o_.config + ".new", std::ios::binary | std::ios::trunc);
      out << in.rdbuf();
    }
    // rename: the supervisor never reads a half-written file.
    if (rename((o_.config + ".new").c_str(), o_.config.c_str()) != 0) {
      throw Failure(name() + ": cannot replace " + o_.config);
    }
    const auto t0 = Clock::now();
    pid_t helper = -1;
    if (o_.reload_signal) {
      kill(MainPid(), SIGHUP);
    } else {
      helper = ForkExec({"/bin/sh", "-c", o_.reload_command}, o_.log, 0);
    }
    auto last_change = t0;
    const auto deadline = t0 + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      const auto now = Clock::now();
      if (static_cast<int>(live.size()) == target &&
          now - last_change >= std::chrono::milliseconds(quiet_ms) &&
          (helper < 0 || waitpid(helper, nullptr, WNOHANG) == helper)) {
        break;
      }
      if (now > deadline) {
        throw Failure(name() + ": " + std::to_string(live.size()) +
                      " children instead of " + std::to_string(target) + " " +
                      std::to_string(timeout_ms) + " ms after a reload (see " +
                      o_.log + ")");
      }
      CheckRunning();
      pid_t pid = listener_.Receive(1);
      bool changed = false;
      if (pid > 0 && seen_.insert(pid).second) {
        live.insert(pid);
        changed = true;
      }
      for (auto it = live.begin(); it != live.end();) {
        if (Alive(*it)) {
          ++it;
        } else {
          it = live.erase(it);
          changed = true;
        }
      }
      if (changed) last_change = Clock::now();
    }
    if (helper > 0) waitpid(helper, nullptr, 0);
    ReloadResult result;
    result.us = MicrosSince(t0, last_change);
    result.before = static_cast<int>(before.size());
    result.after = static_cast<int>(live.size());
    for (pid_t pid : live) result.kept += before.count(pid);
    pids_.assign(live.begin(), live.end());
    return result;
  }

  void Stop() {
    if (!started_) return;
    started_ = false;
    if (raw()) {
      for (pid_t pid : pids_) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
      pids_.clear();
      return;
    }
    if (o_.detached) {
      RunShell(o_.stop, o_.log);
    } else if (pid_ > 0) {
      kill(pid_, SIGTERM);
      if (!WaitGone(pid_, 120000, true)) {
        std::fprintf(stderr,
                     "pool_bench: %s ignored SIGTERM for 120 s: SIGKILL\n",
                     name().c_str());
        kill(-pid_, SIGKILL);
        kill(pid_, SIGKILL);
        WaitGone(pid_, 5000, true);
      }
      pid_ = -1;
    }
    // Children left behind (a supervisor that died, or slow to stop its own).
    int leftovers = 0;
    for (int attempt = 0; attempt < 50; ++attempt) {
      leftovers = 0;
      for (pid_t pid : seen_) {
        if (Alive(pid) && CommandMentions(pid, o_.socket_path)) ++leftovers;
      }
      if (leftovers == 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (pid_t pid : seen_) {
      if (Alive(pid) && CommandMentions(pid, o_.socket_path))
        kill(pid, SIGKILL);
    }
    std::fprintf(stderr,
                 "pool_bench: %s left %d children running 5 s after its stop; "
                 "killed them\n",
                 name().c_str(), leftovers);
  }

 private:
  // As little as a supervisor can do: fork, exec (stdio inherited).
  pid_t SpawnRaw() {
    char* argv[] = {const_cast<char*>(o_.child.c_str()),
                    const_cast<char*>(o_.socket_path.c_str()), nullptr};
    pid_t pid = fork();
    if (pid < 0) throw Failure(std::string("fork: ") + strerror(errno));
    if (pid == 0) {
      execv(argv[0], argv);
      _exit(127);
    }
    return pid;
  }

  SystemOptions o_;
  Listener listener_;
  pid_t pid_ = -1;
  bool started_ = false;
  Clock::time_point started_at_;
  double ready_us_ = 0;
  int unexpected_ = 0;
  std::vector<pid_t> pids_;  // live children, by slot
  std::set<pid_t> seen_;     // every child ever announced
  std::vector<double> samples_;
};

// ---------------------------------------------------------------- restart --

int RunRestart(const Options& o) {
  std::vector<std::unique_ptr<System>> systems;
  for (const SystemOptions& s : o.systems)
    systems.push_back(std::make_unique<System>(s));
  for (auto& system : systems) system->Start();
  for (auto& system : systems) system->AwaitChildren(o.ready_timeout_s);
  // Let every supervisor finish starting up (logs, PM2's dump) first.
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  for (auto& system : systems) system->DrainUnexpected();

  std::mt19937 random(o.seed);
  std::vector<System*> order;
  const int rounds = o.warmup + o.rounds;
  for (int round = 0; round < rounds; ++round) {
    order.clear();
    for (auto& system : systems) {
      const int kills = system->options().kills;
      bool due;
      if (round < o.warmup) {
        due = kills != 0 && round == 0;  // one warm-up kill even for the slow
      } else if (kills < 0 || kills >= o.rounds) {
        due = true;
      } else {  // K kills spread evenly over the measured rounds
        const long r = round - o.warmup;
        due = (r + 1) * kills / o.rounds > r * kills / o.rounds;
      }
      if (due) order.push_back(system.get());
    }
    std::shuffle(order.begin(), order.end(), random);
    for (System* system : order) {
      std::this_thread::sleep_for(std::chrono::milliseconds(o.gap_ms));
      const double us = system->KillOne(random, o.timeout_ms);
      if (round >= o.warmup) system->samples().push_back(us);
    }
  }
  for (auto& system : systems) system->DrainUnexpected();
  for (auto& system : systems) system->Stop();
  for (auto& system : systems) {
    std::printf(
        "{\"mode\":\"restart\",\"system\":%s,\"children\":%d,\"ready_us\":%.1f,"
        "\"unexpected\":%d,\"samples_us\":[",
        JsonString(system->name()).c_str(), system->options().children,
        system->ready_us(), system->unexpected());
    const auto& samples = system->samples();
    for (size_t i = 0; i < samples.size(); ++i)
      std::printf("%s%.1f", i ? "," : "", samples[i]);
    std::printf("]}\n");
  }
  return 0;
}

// ----------------------------------------------------------------- reload --

int RunReload(const Options& o) {
  for (const SystemOptions& s : o.systems) {  // kept aside for the shrinks
    std::ifstream in(s.config, std::ios::binary);
    if (!in) throw Failure(s.name + ": cannot read " + s.config);
    std::ofstream out(s.config + ".orig", std::ios::binary | std::ios::trunc);
    out << in.rdbuf();
  }
  std::vector<std::unique_ptr<System>> systems;
  for (const SystemOptions& s : o.systems)
    systems.push_back(std::make_unique<System>(s));
  for (auto& system : systems) system->Start();
  for (auto& system : systems) system->AwaitChildren(o.ready_timeout_s);
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  std::mt19937 random(o.seed);
  struct Step {
    std::string direction;
    System::ReloadResult result;
  };
  std::vector<std::vector<Step>> steps(systems.size());
  std::vector<size_t> order(systems.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (int round = 0; round < o.rounds; ++round) {
    std::shuffle(order.begin(), order.end(), random);
    for (const bool grow : {true, false}) {
      for (size_t i : order) {
        System& system = *systems[i];
        const SystemOptions& so = system.options();
        const std::string config = grow ? so.grow_config : so.config + ".orig";
        const int target = grow ? so.grow_to : so.children;
        steps[i].push_back({grow ? "grow" : "shrink",
                            system.Reload(config, target, o.quiet_ms,
                                          o.timeout_ms + o.quiet_ms)});
        std::fprintf(
            stderr, "pool_bench reload: %s %s: %.0f ms, %d of %d kept\n",
            system.name().c_str(), grow ? "grow" : "shrink",
            steps[i].back().result.us / 1000, steps[i].back().result.kept,
            steps[i].back().result.before);
      }
    }
  }
  for (auto& system : systems) system->Stop();
  for (size_t i = 0; i < systems.size(); ++i) {
    std::printf(
        "{\"mode\":\"reload\",\"system\":%s,\"from\":%d,\"to\":%d,\"steps\":[",
        JsonString(systems[i]->name()).c_str(), systems[i]->options().children,
        systems[i]->options().grow_to);
    for (size_t k = 0; k < steps[i].size(); ++k) {
      const Step& step = steps[i][k];
      std::printf(
          "%s{\"direction\":\"%s\",\"us\":%.1f,\"kept\":%d,\"before\":%d,"
          "\"after\":%d}",
          k ? "," : "", step.direction.c_str(), step.result.us,
          step.result.kept, step.result.before, step.result.after);
    }
    std::printf("]}\n");
  }
  return 0;
}

// ------------------------------------------------------------------- idle --

struct ProcSample {
  long rss_kb = 0;
  long long cpu_ticks = 0;  // utime + stime of the whole process
  long long voluntary = 0;  // context switches summed over every thread
  long long nonvoluntary = 0;
  int threads = 0;
  int fds = 0;
};

long StatusField(const std::string& status, const std::string& key) {
  size_t at = status.find("\n" + key + ":");
  if (at == std::string::npos) return 0;
  return std::atol(status.c_str() + at + key.size() + 2);
}

ProcSample Sample(pid_t pid) {
  const std::string base = "/proc/" + std::to_string(pid);
  ProcSample s;
  std::string status = "\n" + ReadFile(base + "/status");
  if (status.size() < 2) throw Failure("cannot read " + base + "/status");
  s.rss_kb = StatusField(status, "VmRSS");
  std::string stat = ReadFile(base + "/stat");
  // The fields after the command name, which is in parentheses.
  std::istringstream rest(stat.substr(stat.rfind(')') + 2));
  std::vector<std::string> fields;
  for (std::string f; rest >> f;) fields.push_back(f);
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  if (fields.size() < 13) throw Failure("cannot parse " + base + "/stat");
  s.cpu_ticks = std::atoll(fields[11].c_str()) + std::atoll(fields[12].c_str());
  if (DIR* dir = opendir((base + "/task").c_str())) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      std::string task =
          "\n" + ReadFile(base + "/task/" + entry->d_name + "/status");
      s.voluntary += StatusField(task, "voluntary_ctxt_switches");
      s.nonvoluntary += StatusField(task, "nonvoluntary_ctxt_switches");
      ++s.threads;
    }
    closedir(dir);
  }
  if (DIR* dir = opendir((base + "/fd").c_str())) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') ++s.fds;
    }
    closedir(dir);
  }
  return s;
}

int RunIdle(const Options& o) {
  System system(o.systems.front());
  system.Start();
  system.AwaitChildren(o.ready_timeout_s);
  std::this_thread::sleep_for(std::chrono::milliseconds(o.settle_ms));
  system.CheckRunning();
  const pid_t pid = system.MainPid();
  const ProcSample before = Sample(pid);
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(o.seconds));
  while (Clock::now() < end) {  // sleep, but stay responsive to ^C
    if (g_interrupted) throw Failure("interrupted");
    std::this_thread::sleep_for(std::min<Clock::duration>(
        end - Clock::now(), std::chrono::milliseconds(100)));
  }
  const ProcSample after = Sample(pid);
  const double elapsed_s = MicrosSince(t0, Clock::now()) / 1e6;
  system.CheckRunning();
  const int unexpected = system.DrainUnexpected();
  const auto stop_start = Clock::now();
  system.Stop();
  const double stop_us = MicrosSince(stop_start, Clock::now());
  std::printf(
      "{\"mode\":\"idle\",\"system\":%s,\"children\":%d,\"ready_us\":%.1f,"
      "\"stop_us\":%.1f,"
      "\"pid\":%d,\"seconds\":%.3f,\"rss_kb\":%ld,\"rss_kb_after\":%ld,"
      "\"threads\":%d,"
      "\"fds\":%d,\"cpu_ticks\":%lld,\"clk_tck\":%ld,\"voluntary\":%lld,"
      "\"nonvoluntary\":%lld,\"unexpected\":%d}\n",
      JsonString(system.name()).c_str(), system.options().children,
      system.ready_us(), stop_us, pid, elapsed_s, before.rss_kb, after.rss_kb,
      after.threads, after.fds, after.cpu_ticks - before.cpu_ticks,
      sysconf(_SC_CLK_TCK), after.voluntary - before.voluntary,
      after.nonvoluntary - before.nonvoluntary, unexpected);
  return 0;
}

void OnInterrupt(int) { g_interrupted = 1; }

}  // namespace

int main(int argc, char** argv) {
  Options o = ParseOptions(argc, argv);
  struct sigaction action {};
  action.sa_handler = OnInterrupt;  // no SA_RESTART: poll returns EINTR
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGHUP, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
  try {
    if (o.mode == "restart") return RunRestart(o);
    if (o.mode == "reload") return RunReload(o);
    return RunIdle(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pool_bench %s: %s\n", o.mode.c_str(), e.what());
    return 2;
  }
}
