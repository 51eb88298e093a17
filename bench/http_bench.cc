// HTTP requests/s and latency through `workerpool builtin http-reactor` →
// `echo-job`, against bench/http_echo_baseline.cc (a libuv HTTP echo server
// with no routing) under the same load, in the same run.
//
// Starts both servers, then alternates timed load rounds between them
// (pool, baseline, pool, baseline, ...) so that a noisy neighbour hurts both
// alike. The load: N keep-alive connections, each sending POST /jobs/echo
// with a B-byte body and waiting for its answer before the next (closed
// loop, no pipelining). Responses are parsed with http-parser and their
// bodies checked. Prints per-round figures, the medians, and the ratios.
//
// echo-job answers as soon as a request arrives, so its group gets
// max_inflight N (one request per connection may be in flight), as an
// operator would configure a job that does not block. With the default of
// 1 the job processes take one request at a time each and the pool runs
// at the speed of one round trip through them (about 25k requests/s here
// with one job).
//
//   build-x/bench/http_bench --workerpool build-x/workerpool
//       --baseline build-x/bench/http_echo_baseline [--connections 16]
//       [--duration 5s] [--warmup 1s] [--rounds 3] [--body 64]
//       [--reactors 1] [--jobs 1] [--busy-poll-us N]
#include <arpa/inet.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_process.h"
#include "http_load.h"

namespace {

struct Options {
  std::string workerpool_bin;
  std::string baseline_bin;
  int connections = 16;
  uint64_t duration_ms = 5000;
  uint64_t warmup_ms = 1000;
  int rounds = 3;
  std::size_t body_size = 64;
  int reactors = 1;
  int jobs = 1;
  int busy_poll_us = -1;  // -1: the pool's default
};

using RoundResult = http_load::Result;

// The closed-loop load of bench/http_load.h on /jobs/echo.
RoundResult RunLoad(int port, const Options& options) {
  http_load::Load load;
  load.port = port;
  load.path = "/jobs/echo";
  load.body.assign(options.body_size, 'x');
  load.connections = options.connections;
  load.warmup_ms = options.warmup_ms;
  load.duration_ms = options.duration_ms;
  return http_load::RunLoad(load);
}

// ------------------------------------------------------------ processes

using bench_process::FreePort;
using bench_process::Start;
using bench_process::StopProcess;

// One POST with Connection: close, blocking; the status, or 0.
int PostOnce(int port, const std::string& body) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return 0;
  }
  std::string request =
      "POST /jobs/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Connection: close\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  if (write(fd, request.data(), request.size()) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return 0;
  }
  http_parser parser;
  http_parser_init(&parser, HTTP_RESPONSE);
  http_parser_settings settings;
  http_parser_settings_init(&settings);
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) {
    http_parser_execute(&parser, &settings, buffer,
                        static_cast<std::size_t>(n));
  }
  http_parser_execute(&parser, &settings, nullptr, 0);
  close(fd);
  return HTTP_PARSER_ERRNO(&parser) == HPE_OK ? parser.status_code : 0;
}

bool WaitReady(int port, const char* what) {
  for (int i = 0; i < 600; ++i) {
    if (PostOnce(port, "ready?") == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::fprintf(stderr, "http_bench: %s on port %d never answered 200\n", what,
               port);
  return false;
}

bool ParseDurationMs(const char* text, uint64_t* out) {
  char* end = nullptr;
  double value = std::strtod(text, &end);
  std::string unit = end;
  if (unit == "ms") {
    *out = static_cast<uint64_t>(value);
  } else if (unit == "s" || unit.empty()) {
    *out = static_cast<uint64_t>(value * 1000);
  } else {
    return false;
  }
  return *out > 0;
}

void PrintRound(const char* name, int round, const RoundResult& r) {
  std::printf(
      "%-9s round %d: %9.0f req/s  p50 %7.0fus  p90 %7.0fus  "
      "p99 %7.0fus  max %7.0fus  ok %llu  failed %llu\n",
      name, round, r.requests_per_second, r.p50_us, r.p90_us, r.p99_us,
      r.max_us, static_cast<unsigned long long>(r.ok),
      static_cast<unsigned long long>(r.failed));
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0 : values[values.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string name = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    bool ok = value != nullptr;
    if (ok && name == "--workerpool") {
      options.workerpool_bin = value;
    } else if (ok && name == "--baseline") {
      options.baseline_bin = value;
    } else if (ok && name == "--connections") {
      options.connections = std::atoi(value);
    } else if (ok && name == "--duration") {
      ok = ParseDurationMs(value, &options.duration_ms);
    } else if (ok && name == "--warmup") {
      ok = ParseDurationMs(value, &options.warmup_ms);
    } else if (ok && name == "--rounds") {
      options.rounds = std::atoi(value);
    } else if (ok && name == "--body") {
      options.body_size = static_cast<std::size_t>(std::atol(value));
    } else if (ok && name == "--reactors") {
      options.reactors = std::atoi(value);
    } else if (ok && name == "--jobs") {
      options.jobs = std::atoi(value);
    } else if (ok && name == "--busy-poll-us") {
      options.busy_poll_us = std::atoi(value);
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr,
                   "usage: http_bench --workerpool PATH --baseline PATH "
                   "[--connections N] [--duration 5s] [--warmup 1s] "
                   "[--rounds N] [--body BYTES] [--reactors N] [--jobs N] "
                   "[--busy-poll-us N]\n");
      return 1;
    }
    ++i;
  }
  if (options.workerpool_bin.empty() || options.baseline_bin.empty() ||
      options.connections < 1 || options.rounds < 1 || options.reactors < 1 ||
      options.jobs < 1) {
    std::fprintf(stderr,
                 "http_bench: --workerpool and --baseline are "
                 "required; counts must be positive (--help)\n");
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);

  char tmp_template[] = "/tmp/http-bench-XXXXXX";
  const std::string tmp = mkdtemp(tmp_template);
  const int pool_port = FreePort();
  const int baseline_port = FreePort();
  const std::string config = tmp + "/pool.yaml";
  const std::string busy_poll =
      options.busy_poll_us < 0
          ? ""
          : ", busy_poll_us: " + std::to_string(options.busy_poll_us);
  {
    FILE* file = std::fopen(config.c_str(), "w");
    std::fprintf(
        file,
        "pool: {name: httpbench, stop_timeout: 5s, control_socket: %s/ctl.sock,"
        " log: {level: info, format: text}}\n"
        "groups:\n"
        "  - {name: web, type: reactor, processes: %d, command: [workerpool, "
        "builtin, http-reactor], listen: [\"127.0.0.1:%d\"], routes_to: "
        "[echo]%s}\n"
        "  - {name: echo, type: job, processes: %d, command: [workerpool, "
        "builtin, echo-job], max_inflight: %d%s}\n",
        tmp.c_str(), options.reactors, pool_port, busy_poll.c_str(),
        options.jobs, options.connections, busy_poll.c_str());
    std::fclose(file);
  }
  pid_t pool =
      Start({options.workerpool_bin, "run", config}, tmp + "/pool.log");
  pid_t baseline = Start({options.baseline_bin, "--listen",
                          "127.0.0.1:" + std::to_string(baseline_port)},
                         tmp + "/baseline.log");
  if (!WaitReady(pool_port, "the pool") ||
      !WaitReady(baseline_port, "the baseline")) {
    StopProcess(pool);
    StopProcess(baseline);
    std::fprintf(stderr, "http_bench: logs in %s\n", tmp.c_str());
    return 2;
  }

  std::printf(
      "http_bench: %d keep-alive connections, %zu-byte bodies, "
      "%llums rounds after %llums warm-up; pool: %d http-reactor, %d "
      "echo-job (max_inflight %d); baseline: one libuv process\n",
      options.connections, options.body_size,
      static_cast<unsigned long long>(options.duration_ms),
      static_cast<unsigned long long>(options.warmup_ms), options.reactors,
      options.jobs, options.connections);
  std::vector<double> pool_rps, pool_p50, pool_p99, base_rps, base_p50,
      base_p99;
  uint64_t failures = 0;
  for (int round = 1; round <= options.rounds; ++round) {
    RoundResult p = RunLoad(pool_port, options);
    PrintRound("pool", round, p);
    RoundResult b = RunLoad(baseline_port, options);
    PrintRound("baseline", round, b);
    std::fflush(stdout);
    pool_rps.push_back(p.requests_per_second);
    pool_p50.push_back(p.p50_us);
    pool_p99.push_back(p.p99_us);
    base_rps.push_back(b.requests_per_second);
    base_p50.push_back(b.p50_us);
    base_p99.push_back(b.p99_us);
    failures += p.failed + b.failed;
  }
  StopProcess(pool);
  StopProcess(baseline);

  const double prps = Median(pool_rps), brps = Median(base_rps);
  std::printf("median   pool: %.0f req/s, p50 %.0fus, p99 %.0fus\n", prps,
              Median(pool_p50), Median(pool_p99));
  std::printf("median   baseline: %.0f req/s, p50 %.0fus, p99 %.0fus\n", brps,
              Median(base_p50), Median(base_p99));
  std::printf("ratio    pool/baseline: throughput %.2fx, p50 latency %.2fx\n",
              brps > 0 ? prps / brps : 0,
              Median(base_p50) > 0 ? Median(pool_p50) / Median(base_p50) : 0);
  if (failures == 0) {
    std::printf("failed responses: 0\n");
    for (const char* name : {"/pool.log", "/baseline.log", "/pool.yaml"}) {
      unlink((tmp + name).c_str());
    }
    rmdir(tmp.c_str());
    return 0;
  }
  std::printf("failed responses: %llu (logs kept in %s)\n",
              static_cast<unsigned long long>(failures), tmp.c_str());
  return 2;
}
