// HTTP -> RabbitMQ -> a consuming pool -> reply, against the same requests
// to a local job group and against Celery's apply_async(...).get() with the
// rpc:// result backend, on the same broker, in the same run.
//
// Two pools, as two hosts would run them:
//   pool A: one http-reactor routing to `outbox` (a rabbitmq-service with
//     publish: {routing_key: Q, mode: rpc}) and to `echo` (a local
//     echo-job group: the request without RabbitMQ);
//   pool B: one rabbitmq-service consuming Q into one echo-job
//     (prefetch 256, max_inflight 256).
// Celery: bench/celery_rpc.py runs a worker (prefork, 2 processes: one per
// CPU here) with a task that returns its argument, and a client of N
// threads calling apply_async((body,)).get() in a closed loop.
//
// Every system gets the same closed loop: N callers (HTTP keep-alive
// connections, or Celery threads), each waiting for its answer before the
// next request; persistent messages on durable queues on both sides (the
// defaults of both). For each N the rounds alternate outbox, local,
// Celery, so that a noisy neighbour hurts them alike; the medians and the
// ratios follow, and one JSON line per N for scripts/bench.
//
//   build-x/bench/outbox_bench --workerpool build-x/workerpool
//       --amqp-url amqp://guest:guest@127.0.0.1:5672 [--connections 16,64]
//       [--duration 5s] [--warmup 1s] [--rounds 3] [--body 64]
//       [--python /usr/bin/python3] [--celery bench/celery_rpc.py]
//       [--no-celery]
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_process.h"
#include "http_load.h"

namespace {

struct Options {
  std::string workerpool_bin;
  std::string amqp_url;
  std::vector<int> connections = {16, 64};
  uint64_t duration_ms = 5000;
  uint64_t warmup_ms = 1000;
  int rounds = 3;
  std::size_t body_size = 64;
  std::string python = "/usr/bin/python3";
  std::string celery_script;
  bool celery = true;
};

using bench_process::FreePort;
using bench_process::Start;
using bench_process::StopProcess;

// Until POST PATH answers 200 (a few quick rounds of the load).
bool WaitReady(int port, const std::string& path, const char* what) {
  for (int i = 0; i < 100; ++i) {
    http_load::Load probe;
    probe.port = port;
    probe.path = path;
    probe.connections = 1;
    probe.warmup_ms = 1;
    probe.duration_ms = 100;
    if (http_load::RunLoad(probe).ok > 0) return true;
  }
  std::fprintf(stderr, "outbox_bench: %s (POST %s on port %d) never answered\n",
               what, path.c_str(), port);
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

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0 : values[values.size() / 2];
}

void PrintRound(const char* name, int connections, int round,
                const http_load::Result& r) {
  std::printf(
      "%-7s c=%-3d round %d: %8.0f req/s  p50 %8.0fus  p90 %8.0fus  "
      "p99 %8.0fus  max %8.0fus  ok %llu  failed %llu\n",
      name, connections, round, r.requests_per_second, r.p50_us, r.p90_us,
      r.p99_us, r.max_us, static_cast<unsigned long long>(r.ok),
      static_cast<unsigned long long>(r.failed));
  std::fflush(stdout);
}

// A number after "KEY": in a one-line JSON object; 0 when absent.
double JsonNumber(const std::string& line, const char* key) {
  std::string needle = std::string("\"") + key + "\": ";
  std::size_t at = line.find(needle);
  if (at == std::string::npos) return 0;
  return std::strtod(line.c_str() + at + needle.size(), nullptr);
}

// One round of the Celery client with CALLERS threads.
http_load::Result RunCelery(const Options& options, const std::string& queue,
                            int callers, const std::string& tmp) {
  http_load::Result result;
  const std::string out = tmp + "/celery-client.out";
  int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  char warmup[32], duration[32];
  std::snprintf(warmup, sizeof(warmup), "%.3f",
                static_cast<double>(options.warmup_ms) / 1000);
  std::snprintf(duration, sizeof(duration), "%.3f",
                static_cast<double>(options.duration_ms) / 1000);
  pid_t pid = Start(
      {options.python, options.celery_script, "client", options.amqp_url, queue,
       "--callers", std::to_string(callers), "--warmup", warmup, "--duration",
       duration, "--body", std::to_string(options.body_size)},
      tmp + "/celery-client.log", fd);
  close(fd);
  int status = 0;
  waitpid(pid, &status, 0);
  FILE* file = std::fopen(out.c_str(), "r");
  char line[1024] = "";
  if (file != nullptr) {
    if (std::fgets(line, sizeof(line), file) == nullptr) line[0] = '\0';
    std::fclose(file);
  }
  std::string text = line;
  result.requests_per_second = JsonNumber(text, "requests_per_second");
  result.ok = static_cast<uint64_t>(JsonNumber(text, "ok"));
  result.failed = static_cast<uint64_t>(JsonNumber(text, "failed"));
  result.p50_us = JsonNumber(text, "p50_us");
  result.p90_us = JsonNumber(text, "p90_us");
  result.p99_us = JsonNumber(text, "p99_us");
  result.max_us = JsonNumber(text, "max_us");
  if (result.ok == 0) result.failed = std::max<uint64_t>(result.failed, 1);
  return result;
}

struct Series {
  std::vector<double> rps, p50, p99;
  uint64_t failed = 0;
  void Add(const http_load::Result& r) {
    rps.push_back(r.requests_per_second);
    p50.push_back(r.p50_us);
    p99.push_back(r.p99_us);
    failed += r.failed;
  }
};

void WriteFile(const std::string& path, const std::string& text) {
  FILE* file = std::fopen(path.c_str(), "w");
  std::fputs(text.c_str(), file);
  std::fclose(file);
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (const char* url = std::getenv("WORKERPOOL_TEST_AMQP_URL")) {
    options.amqp_url = url;
  }
  options.celery_script = std::string(__FILE__);
  options.celery_script =
      options.celery_script.substr(0, options.celery_script.rfind('/') + 1) +
      "celery_rpc.py";
  for (int i = 1; i < argc; ++i) {
    std::string name = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    bool ok = value != nullptr;
    if (name == "--no-celery") {
      options.celery = false;
      continue;
    }
    if (ok && name == "--workerpool") {
      options.workerpool_bin = value;
    } else if (ok && name == "--amqp-url") {
      options.amqp_url = value;
    } else if (ok && name == "--connections") {
      options.connections.clear();
      for (const char* p = value; *p != '\0';) {
        char* end = nullptr;
        long n = std::strtol(p, &end, 10);
        if (end == p || n < 1) {
          ok = false;
          break;
        }
        options.connections.push_back(static_cast<int>(n));
        p = *end == ',' ? end + 1 : end;
      }
    } else if (ok && name == "--duration") {
      ok = ParseDurationMs(value, &options.duration_ms);
    } else if (ok && name == "--warmup") {
      ok = ParseDurationMs(value, &options.warmup_ms);
    } else if (ok && name == "--rounds") {
      options.rounds = std::atoi(value);
    } else if (ok && name == "--body") {
      options.body_size = static_cast<std::size_t>(std::atol(value));
    } else if (ok && name == "--python") {
      options.python = value;
    } else if (ok && name == "--celery") {
      options.celery_script = value;
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr,
                   "usage: outbox_bench --workerpool PATH --amqp-url URL "
                   "[--connections 16,64] [--duration 5s] [--warmup 1s] "
                   "[--rounds N] [--body BYTES] [--python PATH] "
                   "[--celery SCRIPT] [--no-celery]\n");
      return 1;
    }
    ++i;
  }
  if (options.workerpool_bin.empty() || options.amqp_url.empty() ||
      options.rounds < 1 || options.connections.empty()) {
    std::fprintf(stderr,
                 "outbox_bench: --workerpool and --amqp-url (or "
                 "WORKERPOOL_TEST_AMQP_URL) are required\n");
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);

  char tmp_template[] = "/tmp/outbox-bench-XXXXXX";
  const std::string tmp = mkdtemp(tmp_template);
  const std::string queue = "wpbench-outbox-" + std::to_string(getpid());
  const std::string celery_queue = "wpbench-celery-" + std::to_string(getpid());
  const int port = FreePort();
  std::string body(options.body_size, 'x');
  WriteFile(
      tmp + "/a.yaml",
      "pool: {name: outboxbench-a, stop_timeout: 5s, control_socket: " + tmp +
          "/a.sock}\n"
          "groups:\n"
          "  - {name: web, type: reactor, command: [workerpool, "
          "builtin, http-reactor], listen: [\"127.0.0.1:" +
          std::to_string(port) +
          "\"], routes_to: [outbox, echo]}\n"
          "  - name: outbox\n"
          "    type: service\n"
          "    rabbitmq:\n"
          "      url: " +
          options.amqp_url +
          "\n"
          "      publish: {routing_key: " +
          queue +
          ", mode: rpc, timeout: 30s}\n"
          "  - {name: echo, type: job, command: [workerpool, builtin, "
          "echo-job], max_inflight: 256}\n");
  WriteFile(
      tmp + "/b.yaml",
      "pool: {name: outboxbench-b, stop_timeout: 5s, control_socket: " + tmp +
          "/b.sock}\n"
          "groups:\n"
          "  - name: intake\n"
          "    type: service\n"
          "    routes_to: [echo]\n"
          "    rabbitmq: {url: \"" +
          options.amqp_url + "\", queues: [" + queue +
          "], declare: true, prefetch: 256}\n"
          "  - {name: echo, type: job, command: [workerpool, builtin, "
          "echo-job], max_inflight: 256}\n");
  pid_t pool_b =
      Start({options.workerpool_bin, "run", tmp + "/b.yaml"}, tmp + "/b.log");
  pid_t pool_a =
      Start({options.workerpool_bin, "run", tmp + "/a.yaml"}, tmp + "/a.log");
  pid_t celery_worker = -1;
  if (options.celery) {
    celery_worker =
        Start({options.python, options.celery_script, "worker",
               options.amqp_url, celery_queue, "--concurrency", "2"},
              tmp + "/celery-worker.log");
  }
  auto stop_all = [&] {
    StopProcess(pool_a);
    StopProcess(pool_b);
    if (celery_worker > 0) StopProcess(celery_worker);
  };
  if (!WaitReady(port, "/jobs/echo", "pool A's local echo group") ||
      !WaitReady(port, "/jobs/outbox", "the outbox through pool B")) {
    stop_all();
    std::fprintf(stderr, "outbox_bench: logs in %s\n", tmp.c_str());
    return 2;
  }
  if (options.celery) {
    http_load::Result probe;
    for (int i = 0; i < 60 && probe.ok == 0; ++i) {
      Options quick = options;
      quick.warmup_ms = 1;
      quick.duration_ms = 500;
      probe = RunCelery(quick, celery_queue, 1, tmp);
    }
    if (probe.ok == 0) {
      std::fprintf(stderr,
                   "outbox_bench: the Celery worker never answered (logs in "
                   "%s; is python3-celery installed for %s?)\n",
                   tmp.c_str(), options.python.c_str());
      stop_all();
      return 2;
    }
  }

  std::printf(
      "# %zu-byte bodies, closed loop, %llums rounds after %llums warm-up. "
      "outbox: HTTP -> http-reactor -> outbox (rpc) -> RabbitMQ -> pool B "
      "(rabbitmq-service, prefetch 256 -> 1 echo-job) -> direct reply-to; "
      "local: HTTP -> http-reactor -> 1 echo-job of pool A; celery: "
      "apply_async().get(), rpc:// backend, 2 prefork workers, one thread "
      "per caller\n",
      options.body_size, static_cast<unsigned long long>(options.duration_ms),
      static_cast<unsigned long long>(options.warmup_ms));
  uint64_t failures = 0;
  std::vector<std::string> summary;
  for (int connections : options.connections) {
    Series outbox, local, celery;
    for (int round = 1; round <= options.rounds; ++round) {
      http_load::Load load;
      load.port = port;
      load.body = body;
      load.connections = connections;
      load.warmup_ms = options.warmup_ms;
      load.duration_ms = options.duration_ms;
      load.path = "/jobs/outbox";
      http_load::Result r = http_load::RunLoad(load);
      PrintRound("outbox", connections, round, r);
      outbox.Add(r);
      load.path = "/jobs/echo";
      r = http_load::RunLoad(load);
      PrintRound("local", connections, round, r);
      local.Add(r);
      if (options.celery) {
        r = RunCelery(options, celery_queue, connections, tmp);
        PrintRound("celery", connections, round, r);
        celery.Add(r);
      }
    }
    failures += outbox.failed + local.failed + celery.failed;
    const double orps = Median(outbox.rps), op50 = Median(outbox.p50);
    const double lrps = Median(local.rps), lp50 = Median(local.p50);
    std::printf(
        "median  c=%-3d outbox %.0f req/s p50 %.0fus p99 %.0fus | local %.0f "
        "req/s p50 %.0fus p99 %.0fus",
        connections, orps, op50, Median(outbox.p99), lrps, lp50,
        Median(local.p99));
    char line[512];
    if (options.celery) {
      const double crps = Median(celery.rps), cp50 = Median(celery.p50);
      std::printf(" | celery %.0f req/s p50 %.0fus p99 %.0fus\n", crps, cp50,
                  Median(celery.p99));
      std::printf(
          "ratio   c=%-3d outbox/celery: throughput %.1fx, p50 latency %.2fx "
          "(goal: >= 5x, <= 0.33x); outbox/local: throughput %.2fx, p50 "
          "%.2fx\n",
          connections, crps > 0 ? orps / crps : 0, cp50 > 0 ? op50 / cp50 : 0,
          lrps > 0 ? orps / lrps : 0, lp50 > 0 ? op50 / lp50 : 0);
      std::snprintf(line, sizeof(line),
                    "{\"connections\": %d, \"outbox_rps\": %.0f, "
                    "\"outbox_p50_us\": %.0f, \"local_rps\": %.0f, "
                    "\"local_p50_us\": %.0f, \"celery_rps\": %.0f, "
                    "\"celery_p50_us\": %.0f, \"throughput_vs_celery\": %.2f, "
                    "\"p50_vs_celery\": %.3f}",
                    connections, orps, op50, lrps, lp50, crps, cp50,
                    crps > 0 ? orps / crps : 0, cp50 > 0 ? op50 / cp50 : 0);
    } else {
      std::printf("\n");
      std::snprintf(line, sizeof(line),
                    "{\"connections\": %d, \"outbox_rps\": %.0f, "
                    "\"outbox_p50_us\": %.0f, \"local_rps\": %.0f, "
                    "\"local_p50_us\": %.0f}",
                    connections, orps, op50, lrps, lp50);
    }
    summary.push_back(line);
    std::fflush(stdout);
  }
  stop_all();
  for (const std::string& line : summary) std::printf("%s\n", line.c_str());
  if (failures == 0) {
    std::printf("failed responses: 0\n");
    std::string command = "rm -rf '" + tmp + "'";
    if (std::system(command.c_str()) != 0) return 0;
    return 0;
  }
  std::printf("failed responses: %llu (logs kept in %s)\n",
              static_cast<unsigned long long>(failures), tmp.c_str());
  return 2;
}
