// IPC benchmark: request/reply through a pool against a raw socketpair
// between two processes doing the same work, in the same run.
//
//   ipc_bench run --workerpool BIN [--runs R] [--latency-count N]
//                 [--latency-size B] [--throughput-size B] [--window W]
//                 [--throughput-seconds S] [--samples-dir DIR]
//                 [--pin any|same|split]
//     Starts `BIN run` on a temp pool: one reactor (this binary, re-invoked
//     as `ipc_bench reactor SOCKET`) routing to one `workerpool builtin
//     echo-job` (max_inflight W). The reactor obeys this driver over a Unix
//     stream socket. Each run measures, in an order that alternates between
//     runs, four phases:
//       raw latency     round trips of one B-byte request at a time
//       pool latency    the same through PoolClient::Send to echo-job
//       raw throughput  W requests kept in flight for S seconds
//       pool throughput the same through the pool
//     The raw pair is this process and a forked echo process on a
//     socketpair(AF_UNIX, SOCK_STREAM), both blocking, both framing every
//     message with the same 24-byte header as the pool's wire format: the
//     least two processes can do to exchange requests and replies.
//     --pin: where the two processes of each pair run. any (default): where
//     the kernel puts them. same: every process on CPU 0. split: the
//     senders (this driver, the reactor, the Watcher) on CPU 0, the echoing
//     side (the raw echo process, echo-job) on CPU 1. Waking a process on
//     the other CPU costs several times a wake-up on the same CPU here, and
//     "any" lets the two pairs land differently from run to run.
//     Prints one JSON object per phase and run on stdout; with
//     --samples-dir, also writes every latency sample (µs, one per line) of
//     the first run to DIR/{raw,pool}-latency.txt.
//
//   ipc_bench reactor SOCKET
//     The pool side (a reactor child): connects to SOCKET and answers
//     "latency SIZE COUNT" and "throughput SIZE WINDOW SECONDS" lines with a
//     JSON line of results.
//
// Exit 0 on success, 1 on bad arguments, 2 when a measurement failed.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "workerpool/client.h"
#include "workerpool/wire.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

double MicrosBetween(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double, std::micro>(end - start).count();
}

// --------------------------------------------------------------- framing --

// A request or reply frame as the pool's wire format lays it out: 24-byte
// little-endian header (payload_length, version, type, flags, id, aux,
// meta_length), then the payload.
void AppendFrame(std::string& out, workerpool::wire::FrameType type,
                 std::uint64_t id, std::string_view body) {
  char header[workerpool::wire::kHeaderSize] = {};
  const std::uint32_t length = static_cast<std::uint32_t>(body.size());
  std::memcpy(header, &length, 4);
  header[4] = static_cast<char>(workerpool::wire::kWireVersion);
  header[5] = static_cast<char>(type);
  std::memcpy(header + 8, &id, 8);
  out.append(header, sizeof(header));
  out.append(body);
}

// Splits a byte stream into frames; calls ON_FRAME(id, body) for each.
class FrameReader {
 public:
  template <typename OnFrame>
  void Feed(const char* data, size_t size, OnFrame on_frame) {
    buffer_.append(data, size);
    size_t at = 0;
    while (buffer_.size() - at >= workerpool::wire::kHeaderSize) {
      std::uint32_t length;
      std::memcpy(&length, buffer_.data() + at, 4);
      if (buffer_.size() - at < workerpool::wire::kHeaderSize + length) break;
      std::uint64_t id;
      std::memcpy(&id, buffer_.data() + at + 8, 8);
      on_frame(
          id, std::string_view(
                  buffer_.data() + at + workerpool::wire::kHeaderSize, length));
      at += workerpool::wire::kHeaderSize + length;
    }
    buffer_.erase(0, at);
  }

 private:
  std::string buffer_;
};

void WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Failure(std::string("write: ") + strerror(errno));
    done += static_cast<size_t>(n);
  }
}

// Pins PID (0: this process) to CPU; false when the machine lacks it.
bool PinToCpu(pid_t pid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(pid, sizeof(set), &set) == 0;
}

// The pid of the child of PARENT whose command line holds WORD, or -1.
pid_t FindChild(pid_t parent, const std::string& word) {
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return -1;
  pid_t found = -1;
  while (dirent* entry = readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    std::ifstream stat("/proc/" + std::string(entry->d_name) + "/stat");
    std::string line;
    std::getline(stat, line);
    const size_t paren = line.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream fields(line.substr(paren + 2));
    std::string state;
    long ppid = 0;
    fields >> state >> ppid;
    if (ppid != parent) continue;
    std::ifstream cmdline("/proc/" + std::string(entry->d_name) + "/cmdline");
    std::string args((std::istreambuf_iterator<char>(cmdline)),
                     std::istreambuf_iterator<char>());
    if (args.find(word) != std::string::npos) {
      found = static_cast<pid_t>(pid);
      break;
    }
  }
  closedir(proc);
  return found;
}

// ------------------------------------------------------------ raw pair --

// The raw server: reads whatever arrived, answers every complete request
// frame with a reply frame carrying its body, in one write per read.
[[noreturn]] void RawEchoLoop(int fd) {
  static char input[256 * 1024];
  FrameReader reader;
  std::string output;
  for (;;) {
    ssize_t n = read(fd, input, sizeof(input));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(0);
    output.clear();
    reader.Feed(input, static_cast<size_t>(n),
                [&](std::uint64_t id, std::string_view body) {
                  AppendFrame(output, workerpool::wire::FrameType::kReply, id,
                              body);
                });
    if (!output.empty()) WriteAll(fd, output);
  }
}

class RawPair {
 public:
  // ECHO_CPU >= 0: the echo process runs on that CPU only.
  explicit RawPair(int echo_cpu = -1) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      throw Failure(std::string("socketpair: ") + strerror(errno));
    }
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) throw Failure(std::string("fork: ") + strerror(errno));
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      if (echo_cpu >= 0 && !PinToCpu(0, echo_cpu)) _exit(1);
      close(fds[0]);
      RawEchoLoop(fds[1]);
    }
    close(fds[1]);
    fd_ = fds[0];
  }
  ~RawPair() {
    close(fd_);
    int status;
    waitpid(pid_, &status, 0);
  }
  RawPair(const RawPair&) = delete;
  RawPair& operator=(const RawPair&) = delete;

  std::vector<double> Latency(size_t size, int count) {
    const std::string body(size, 'x');
    std::vector<double> samples;
    samples.reserve(static_cast<size_t>(count));
    std::string request;
    for (int i = 0; i < count; ++i) {
      request.clear();
      AppendFrame(request, workerpool::wire::FrameType::kRequest,
                  static_cast<std::uint64_t>(i + 1), body);
      const auto t0 = Clock::now();
      WriteAll(fd_, request);
      int replies = 0;
      while (replies == 0) replies += ReadSome();
      samples.push_back(MicrosBetween(t0, Clock::now()));
    }
    return samples;
  }

  // Requests answered in SECONDS with WINDOW in flight; returns {count, s}.
  std::pair<long, double> Throughput(size_t size, int window, double seconds) {
    const std::string body(size, 'x');
    std::string batch;
    std::uint64_t next_id = 0;
    auto send = [&](int n) {
      batch.clear();
      for (int i = 0; i < n; ++i) {
        AppendFrame(batch, workerpool::wire::FrameType::kRequest, ++next_id,
                    body);
      }
      WriteAll(fd_, batch);
    };
    const auto t0 = Clock::now();
    const auto end = t0 + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(seconds));
    long answered = 0;
    send(window);
    long inflight = window;
    while (Clock::now() < end) {
      int got = ReadSome();
      answered += got;
      inflight -= got;
      send(got);
      inflight += got;
    }
    const double elapsed = MicrosBetween(t0, Clock::now()) / 1e6;
    while (inflight > 0) inflight -= ReadSome();  // drain, uncounted
    return {answered, elapsed};
  }

 private:
  // Blocks for at least one byte; returns the number of replies completed.
  int ReadSome() {
    static char input[256 * 1024];
    ssize_t n;
    do {
      n = read(fd_, input, sizeof(input));
    } while (n < 0 && errno == EINTR);
    if (n <= 0) throw Failure("raw echo process closed the socketpair");
    int replies = 0;
    reader_.Feed(input, static_cast<size_t>(n),
                 [&](std::uint64_t, std::string_view) { ++replies; });
    return replies;
  }

  int fd_ = -1;
  pid_t pid_ = -1;
  FrameReader reader_;
};

// ---------------------------------------------------------- pool reactor --

// Runs inside the pool as a reactor: measures what the driver asks for, on
// the PoolClient's own loop, and answers with one JSON line each.
class Reactor {
 public:
  Reactor(workerpool::PoolClient* client, int control_fd)
      : client_(client), loop_(client->loop()) {
    uv_pipe_init(loop_, &control_, 0);
    control_.data = this;
    if (uv_pipe_open(&control_, control_fd) != 0) {
      throw Failure("cannot use the driver's socket");
    }
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&control_),
        [](uv_handle_t*, size_t size, uv_buf_t* buf) {
          *buf = uv_buf_init(new char[size], static_cast<unsigned>(size));
        },
        [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
          auto* self = static_cast<Reactor*>(stream->data);
          if (nread > 0) self->OnControl(std::string_view(buf->base, nread));
          delete[] buf->base;
          if (nread < 0) self->Quit();
        });
    client_->OnStop([this] { Quit(); });
  }

 private:
  void Quit() {
    if (quitting_) return;
    quitting_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&control_), nullptr);
    client_->Stop();
  }

  void OnControl(std::string_view text) {
    input_.append(text);
    size_t newline;
    while ((newline = input_.find('\n')) != std::string::npos) {
      std::string line = input_.substr(0, newline);
      input_.erase(0, newline + 1);
      std::istringstream words(line);
      std::string verb;
      words >> verb;
      if (verb == "latency") {
        words >> size_ >> remaining_;
        body_.assign(size_, 'x');
        samples_.clear();
        samples_.reserve(static_cast<size_t>(remaining_));
        warmup_ = 200;
        SendLatencyProbe();
      } else if (verb == "throughput") {
        int window = 0;
        double seconds = 0;
        words >> size_ >> window >> seconds;
        body_.assign(size_, 'x');
        answered_ = 0;
        counting_ = false;
        throughput_end_ = Clock::now() + std::chrono::seconds(1);  // warm-up
        throughput_seconds_ = seconds;
        inflight_ = 0;
        for (int i = 0; i < window; ++i) SendThroughputProbe();
      } else if (verb == "quit") {
        Quit();
      }
    }
  }

  // A failed request ends the benchmark: the figures would be meaningless.
  bool Check(const workerpool::Reply& reply) {
    if (reply.ok) return true;
    if (reply.code == workerpool::wire::ErrorCode::kNoWorkers) return false;
    Answer("{\"error\":\"request failed: code " +
           std::to_string(static_cast<int>(reply.code)) + ": " + reply.body +
           "\"}");
    return false;
  }

  void SendLatencyProbe() {
    const auto t0 = Clock::now();
    client_->Send("echo", body_, [this, t0](workerpool::Reply reply) {
      const auto t1 = Clock::now();
      if (!Check(reply)) {
        if (reply.code == workerpool::wire::ErrorCode::kNoWorkers) Retry();
        return;
      }
      if (warmup_ > 0) {
        --warmup_;
      } else {
        samples_.push_back(MicrosBetween(t0, t1));
        if (--remaining_ == 0) {
          std::string json = "{\"samples_us\":[";
          char number[32];
          for (size_t i = 0; i < samples_.size(); ++i) {
            std::snprintf(number, sizeof(number), "%s%.2f", i ? "," : "",
                          samples_[i]);
            json += number;
          }
          Answer(json + "]}");
          return;
        }
      }
      SendLatencyProbe();
    });
  }

  // The echo job is not up yet: try again shortly.
  void Retry() {
    auto* timer = new uv_timer_t;
    uv_timer_init(loop_, timer);
    timer->data = this;
    uv_timer_start(
        timer,
        [](uv_timer_t* handle) {
          static_cast<Reactor*>(handle->data)->SendLatencyProbe();
          uv_close(reinterpret_cast<uv_handle_t*>(handle), [](uv_handle_t* h) {
            delete reinterpret_cast<uv_timer_t*>(h);
          });
        },
        50, 0);
  }

  void SendThroughputProbe() {
    ++inflight_;
    client_->Send("echo", body_, [this](workerpool::Reply reply) {
      --inflight_;
      if (!Check(reply)) return;
      // Reading the clock on every reply would cost the pool side a vDSO
      // call per request that the raw side (one per read) does not pay.
      const auto now =
          ++replies_since_clock_ % 64 == 0 ? Clock::now() : last_clock_;
      last_clock_ = now;
      if (now >= throughput_end_) {
        if (!counting_) {  // warm-up over: start counting
          counting_ = true;
          throughput_start_ = now;
          throughput_end_ =
              now + std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(throughput_seconds_));
        } else if (!finished_throughput_) {
          finished_throughput_ = true;
          const double elapsed = MicrosBetween(throughput_start_, now) / 1e6;
          Answer("{\"requests\":" + std::to_string(answered_) +
                 ",\"seconds\":" + std::to_string(elapsed) + "}");
        }
      } else if (counting_) {
        ++answered_;
      }
      if (finished_throughput_) {
        if (inflight_ == 0) finished_throughput_ = false;  // drained
        return;
      }
      SendThroughputProbe();
    });
  }

  void Answer(const std::string& line) {
    auto* request = new uv_write_t;
    auto* text = new std::string(line + "\n");
    request->data = text;
    uv_buf_t buf =
        uv_buf_init(text->data(), static_cast<unsigned>(text->size()));
    uv_write(request, reinterpret_cast<uv_stream_t*>(&control_), &buf, 1,
             [](uv_write_t* req, int) {
               delete static_cast<std::string*>(req->data);
               delete req;
             });
  }

  workerpool::PoolClient* client_;
  uv_loop_t* loop_;
  uv_pipe_t control_;
  std::string input_;
  bool quitting_ = false;
  size_t size_ = 64;
  std::string body_;
  int remaining_ = 0;
  int warmup_ = 0;
  std::vector<double> samples_;
  long answered_ = 0;
  int inflight_ = 0;
  bool counting_ = false;
  bool finished_throughput_ = false;
  double throughput_seconds_ = 0;
  Clock::time_point throughput_start_, throughput_end_, last_clock_;
  unsigned replies_since_clock_ = 0;
};

int ConnectUnix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    throw Failure("connect " + path + ": " + strerror(errno));
  }
  return fd;
}

int RunReactor(const std::string& socket_path) {
  std::string error;
  auto client = workerpool::PoolClient::FromEnvironment(nullptr, &error);
  if (!client) {
    std::fprintf(stderr, "ipc_bench reactor: %s\n", error.c_str());
    return 2;
  }
  Reactor reactor(client.get(), ConnectUnix(socket_path));
  return client->Run();
}

// ---------------------------------------------------------------- driver --

struct Options {
  std::string workerpool;
  int runs = 5;
  int latency_count = 20000;
  size_t latency_size = 64;
  size_t throughput_size = 1024;
  int window = 64;
  double throughput_seconds = 2;
  std::string samples_dir;
  std::string pin = "any";
};

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr, "ipc_bench: %s (usage atop bench/ipc_bench.cc)\n",
               why.c_str());
  std::exit(1);
}

// The pool under test, stopped (SIGTERM, then SIGKILL) when destroyed.
class Pool {
 public:
  Pool(const Options& o, const std::string& self) {
    char dir_template[] = "/tmp/wp-ipc-bench-XXXXXX";
    if (mkdtemp(dir_template) == nullptr) throw Failure("mkdtemp failed");
    dir_ = dir_template;
    control_path_ = dir_ + "/driver.sock";
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s",
                  control_path_.c_str());
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) !=
            0 ||
        listen(listen_fd_, 4) != 0) {
      throw Failure("listen " + control_path_ + ": " + strerror(errno));
    }
    const std::string yaml = dir_ + "/pool.yaml";
    std::ofstream(yaml) << "pool:\n"
                        << "  name: ipcbench" << getpid() << "\n"
                        << "  control_socket: " << dir_ << "/control.sock\n"
                        << "  stop_timeout: 5s\n"
                        << "  log: {level: warn}\n"
                        << "groups:\n"
                        << "  - name: client\n"
                        << "    type: reactor\n"
                        << "    processes: 1\n"
                        << "    command: [" << self << ", reactor, "
                        << control_path_ << "]\n"
                        << "    routes_to: [echo]\n"
                        << "  - name: echo\n"
                        << "    type: job\n"
                        << "    processes: 1\n"
                        << "    command: [" << o.workerpool
                        << ", builtin, echo-job]\n"
                        << "    max_inflight: " << o.window << "\n";
    const std::string log = dir_ + "/watcher.log";
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) throw Failure(std::string("fork: ") + strerror(errno));
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(1);
      int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(out, 1);
      dup2(out, 2);
      execl(o.workerpool.c_str(), o.workerpool.c_str(), "run", yaml.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 30000) != 1) {
      throw Failure("the reactor did not connect within 30 s (see " + log +
                    ")");
    }
    fd_ = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd_ < 0) throw Failure(std::string("accept: ") + strerror(errno));
  }

  ~Pool() {
    if (fd_ >= 0) close(fd_);
    close(listen_fd_);
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      for (int i = 0; i < 200; ++i) {
        if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
          pid_ = -1;
          break;
        }
        usleep(50000);
      }
      if (pid_ > 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
      }
    }
    std::string rm = "rm -rf '" + dir_ + "'";
    if (system(rm.c_str()) != 0)
      std::fprintf(stderr, "could not remove %s\n", dir_.c_str());
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  pid_t watcher_pid() const { return pid_; }

  // Sends one command to the reactor and returns its JSON answer line.
  std::string Ask(const std::string& command, int timeout_s) {
    WriteAll(fd_, command + "\n");
    const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    for (;;) {
      size_t newline = answer_.find('\n');
      if (newline != std::string::npos) {
        std::string line = answer_.substr(0, newline);
        answer_.erase(0, newline + 1);
        if (line.find("\"error\"") != std::string::npos) {
          throw Failure("reactor: " + line);
        }
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - Clock::now());
      if (left.count() <= 0) throw Failure("no answer to '" + command + "'");
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buffer[65536];
      ssize_t n = read(fd_, buffer, sizeof(buffer));
      if (n <= 0)
        throw Failure("the reactor closed its socket (see " + dir_ +
                      "/watcher.log)");
      answer_.append(buffer, static_cast<size_t>(n));
    }
  }

 private:
  std::string dir_;
  std::string control_path_;
  std::string answer_;
  int listen_fd_ = -1;
  int fd_ = -1;
  pid_t pid_ = -1;
};

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t rank =
      static_cast<size_t>(p / 100.0 * static_cast<double>(values.size()));
  return values[std::min(rank, values.size() - 1)];
}

// The "samples_us" array of a reactor answer.
std::vector<double> ParseSamples(const std::string& json) {
  std::vector<double> samples;
  size_t at = json.find('[');
  if (at == std::string::npos)
    throw Failure("bad answer: " + json.substr(0, 200));
  const char* p = json.c_str() + at + 1;
  while (*p != ']' && *p != '\0') {
    char* end = nullptr;
    samples.push_back(std::strtod(p, &end));
    p = end;
    if (*p == ',') ++p;
  }
  return samples;
}

double JsonNumber(const std::string& json, const std::string& key) {
  size_t at = json.find("\"" + key + "\":");
  if (at == std::string::npos) throw Failure("no " + key + " in " + json);
  return std::strtod(json.c_str() + at + key.size() + 3, nullptr);
}

void PrintLatency(int run, const char* system, const std::vector<double>& s,
                  size_t size) {
  std::printf(
      "{\"mode\":\"latency\",\"run\":%d,\"system\":\"%s\",\"size\":%zu,"
      "\"count\":%zu,\"median_us\":%.3f,\"p90_us\":%.3f,\"p99_us\":%.3f,"
      "\"mean_us\":%.3f}\n",
      run, system, size, s.size(), Median(s), Percentile(s, 90),
      Percentile(s, 99), s.empty() ? 0.0 : [&] {
        double sum = 0;
        for (double v : s) sum += v;
        return sum / static_cast<double>(s.size());
      }());
  std::fflush(stdout);
}

void PrintThroughput(int run, const char* system, long requests, double seconds,
                     size_t size, int window) {
  std::printf(
      "{\"mode\":\"throughput\",\"run\":%d,\"system\":\"%s\",\"size\":%zu,"
      "\"window\":%d,\"requests\":%ld,\"seconds\":%.4f,\"per_second\":%.1f}\n",
      run, system, size, window, requests, seconds,
      static_cast<double>(requests) / seconds);
  std::fflush(stdout);
}

void SaveSamples(const std::string& path, const std::vector<double>& samples) {
  std::ofstream out(path);
  char line[32];
  for (double v : samples) {
    std::snprintf(line, sizeof(line), "%.2f\n", v);
    out << line;
  }
}

int RunDriver(const Options& o, const std::string& self) {
  // Every process started from here on inherits CPU 0; in split mode the
  // echoing side moves itself (raw) or is moved (echo-job) to CPU 1.
  const bool split = o.pin == "split";
  if (o.pin != "any" && !PinToCpu(0, 0)) throw Failure("cannot pin to CPU 0");
  Pool pool(o, self);
  // The reactor's first answer also waits for the echo job to come up.
  pool.Ask("latency " + std::to_string(o.latency_size) + " 100", 60);
  if (split) {
    const pid_t job = FindChild(pool.watcher_pid(), "echo-job");
    if (job < 0 || !PinToCpu(job, 1)) {
      throw Failure("cannot pin echo-job to CPU 1 (two CPUs needed)");
    }
    pool.Ask("latency " + std::to_string(o.latency_size) + " 100", 60);
  }
  const int echo_cpu = split ? 1 : -1;
  for (int run = 1; run <= o.runs; ++run) {
    const bool raw_first = run % 2 == 1;  // alternate who goes first
    std::vector<double> raw_samples, pool_samples;
    for (int turn = 0; turn < 2; ++turn) {
      if ((turn == 0) == raw_first) {
        RawPair raw(echo_cpu);
        raw.Latency(o.latency_size, 200);  // warm-up
        raw_samples = raw.Latency(o.latency_size, o.latency_count);
        PrintLatency(run, "raw", raw_samples, o.latency_size);
      } else {
        pool_samples =
            ParseSamples(pool.Ask("latency " + std::to_string(o.latency_size) +
                                      " " + std::to_string(o.latency_count),
                                  120));
        PrintLatency(run, "workerpool", pool_samples, o.latency_size);
      }
    }
    if (run == 1 && !o.samples_dir.empty()) {
      SaveSamples(o.samples_dir + "/raw-latency.txt", raw_samples);
      SaveSamples(o.samples_dir + "/pool-latency.txt", pool_samples);
    }
    for (int turn = 0; turn < 2; ++turn) {
      if ((turn == 0) == raw_first) {
        RawPair raw(echo_cpu);
        raw.Throughput(o.throughput_size, o.window, 1.0);  // warm-up
        auto [requests, seconds] =
            raw.Throughput(o.throughput_size, o.window, o.throughput_seconds);
        PrintThroughput(run, "raw", requests, seconds, o.throughput_size,
                        o.window);
      } else {
        std::string answer =
            pool.Ask("throughput " + std::to_string(o.throughput_size) + " " +
                         std::to_string(o.window) + " " +
                         std::to_string(o.throughput_seconds),
                     static_cast<int>(o.throughput_seconds) + 60);
        PrintThroughput(run, "workerpool",
                        static_cast<long>(JsonNumber(answer, "requests")),
                        JsonNumber(answer, "seconds"), o.throughput_size,
                        o.window);
      }
    }
  }
  return 0;
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (i + 1 >= argc) Usage(arg + " needs a value");
    std::string value = argv[++i];
    char* end = nullptr;
    const double number = std::strtod(value.c_str(), &end);
    const bool numeric = *end == '\0' && number > 0;
    if (arg == "--workerpool") {
      o.workerpool = value;
      continue;
    }
    if (arg == "--samples-dir") {
      o.samples_dir = value;
      continue;
    }
    if (arg == "--pin") {
      if (value != "any" && value != "same" && value != "split") {
        Usage("--pin takes any, same or split, not " + value);
      }
      o.pin = value;
      continue;
    }
    if (!numeric) Usage(arg + " needs a positive number, not " + value);
    if (arg == "--runs")
      o.runs = static_cast<int>(number);
    else if (arg == "--latency-count")
      o.latency_count = static_cast<int>(number);
    else if (arg == "--latency-size")
      o.latency_size = static_cast<size_t>(number);
    else if (arg == "--throughput-size")
      o.throughput_size = static_cast<size_t>(number);
    else if (arg == "--window")
      o.window = static_cast<int>(number);
    else if (arg == "--throughput-seconds")
      o.throughput_seconds = number;
    else
      Usage("unknown option " + arg);
  }
  if (o.workerpool.empty()) Usage("--workerpool BIN is required");
  return o;
}

std::string SelfPath() {
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) throw Failure("cannot read /proc/self/exe");
  return std::string(path, static_cast<size_t>(n));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Usage("missing mode: run | reactor");
  const std::string mode = argv[1];
  signal(SIGPIPE, SIG_IGN);
  try {
    if (mode == "reactor") {
      if (argc != 3) Usage("reactor SOCKET");
      return RunReactor(argv[2]);
    }
    if (mode == "run") return RunDriver(ParseOptions(argc, argv), SelfPath());
    Usage("unknown mode " + mode);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ipc_bench %s: %s\n", mode.c_str(), e.what());
    return 2;
  }
}
