// RabbitMQ consumption end to end: `workerpool run` (rabbitmq-service ->
// echo-job -> ack) against a raw librabbitmq-c consumer (manual ack, one
// basic.ack per message) on the same broker, the same queue and the same
// prefetch, in the same run.
//
//   amqp_bench WORKERPOOL_BIN AMQP_URL [MESSAGES]   (default 20000)
//   amqp_bench --workerpool PATH [--quick] [--messages N]
//       (scripts/bench's form; the URL from WORKERPOOL_TEST_AMQP_URL;
//        --quick: 5000 messages)
//   options for A/B work: --workerpool given again adds another build whose
//   service cases run right after the first one's against the same raw
//   figure (lines then name the build by its index); --prefetch 1,10 and
//   --services 1 restrict the cases.
//
// Each case prefills a durable queue with MESSAGES persistent 100-byte
// messages, starts its consumer and measures the steady state: the time the
// queue's ready count takes to fall from 90% to 10% of MESSAGES (read with
// passive queue.declare every 2 ms). Start-up (spawning the pool, logging
// in) and the tail are thus left out for both sides alike; with a prefetch
// window the ready count falls exactly as fast as acks come back.
//
// Cases per prefetch (1, 10, 100, 1000): raw, one service process, two
// service processes (one pool, `processes: 2`). Two echo-job processes with
// max_inflight 32 serve the pool. One line per case: msgs/s and the ratio to
// raw at that prefetch, followed by the same as a JSON object (for
// scripts/bench's plot).
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/amqp_url.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "amqp_bench: %s\n", what.c_str());
  std::exit(2);
}

amqp_bytes_t Bytes(const std::string& text) {
  return amqp_bytes_t{text.size(), const_cast<char*>(text.data())};
}

void Check(amqp_connection_state_t conn, const char* what) {
  amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn);
  if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
    Die(std::string(what) + " failed (reply type " +
        std::to_string(reply.reply_type) + ")");
  }
}

amqp_connection_state_t Connect(const workerpool::AmqpUrl& url) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t* socket = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(socket, url.host.c_str(), url.port) != AMQP_STATUS_OK) {
    Die("cannot connect to " + url.Describe());
  }
  amqp_rpc_reply_t login =
      amqp_login(conn, url.vhost.c_str(), 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
                 url.user.c_str(), url.password.c_str());
  if (login.reply_type != AMQP_RESPONSE_NORMAL) {
    Die("login to " + url.Describe() + " failed");
  }
  amqp_channel_open(conn, 1);
  Check(conn, "channel.open");
  return conn;
}

void Close(amqp_connection_state_t conn) {
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
}

// Ready messages in QUEUE (passive declare).
long Depth(amqp_connection_state_t conn, const std::string& queue) {
  amqp_queue_declare_ok_t* ok =
      amqp_queue_declare(conn, 1, Bytes(queue), 1, 0, 0, 0, amqp_empty_table);
  if (ok == nullptr) Die("passive declare of " + queue + " failed");
  return static_cast<long>(ok->message_count);
}

void Recreate(amqp_connection_state_t conn, const std::string& queue) {
  amqp_queue_delete(conn, 1, Bytes(queue), 0, 0);
  Check(conn, "queue.delete");
  amqp_queue_declare(conn, 1, Bytes(queue), 0, 1, 0, 0, amqp_empty_table);
  Check(conn, "queue.declare");
}

// Publishes COUNT persistent 100-byte messages with publisher confirms.
void Prefill(const workerpool::AmqpUrl& url, const std::string& queue,
             long count) {
  amqp_connection_state_t conn = Connect(url);
  Recreate(conn, queue);
  amqp_confirm_select(conn, 1);
  Check(conn, "confirm.select");
  const std::string body(100, 'x');
  amqp_basic_properties_t properties;
  std::memset(&properties, 0, sizeof(properties));
  properties._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
  properties.delivery_mode = 2;
  constexpr long kBatch = 1000;
  uint64_t published = 0, confirmed = 0;
  for (long done = 0; done < count;) {
    long batch = std::min(kBatch, count - done);
    for (long i = 0; i < batch; ++i) {
      if (amqp_basic_publish(conn, 1, amqp_empty_bytes, Bytes(queue), 0, 0,
                             &properties, Bytes(body)) != AMQP_STATUS_OK) {
        Die("publish failed");
      }
      ++published;
    }
    done += batch;
    while (confirmed < published) {
      amqp_frame_t frame;
      if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) {
        Die("waiting for confirms failed");
      }
      if (frame.frame_type == AMQP_FRAME_METHOD &&
          frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
        auto* ack =
            static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
        // Out-of-order singles are rare with one queue; a multiple ack
        // covers them.
        confirmed = std::max<uint64_t>(confirmed, ack->delivery_tag);
      } else if (frame.frame_type == AMQP_FRAME_METHOD &&
                 frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
        Die("the broker refused a publish (nack)");
      }
    }
  }
  Close(conn);
}

// Polls the ready count until it falls from 90% to 10% of COUNT; returns
// msgs/s over that stretch. RUNNING() false aborts (the consumer died).
template <typename Alive>
double MeasureDrain(const workerpool::AmqpUrl& url, const std::string& queue,
                    long count, Alive running) {
  amqp_connection_state_t conn = Connect(url);
  const long high = count * 9 / 10, low = count / 10;
  Clock::time_point start{}, end{};
  bool started = false;
  auto give_up = Clock::now() + std::chrono::minutes(5);
  for (;;) {
    long depth = Depth(conn, queue);
    auto now = Clock::now();
    if (!started && depth <= high) {
      start = now;
      started = true;
    }
    if (started && depth <= low) {
      end = now;
      break;
    }
    if (!running() || now > give_up) {
      Close(conn);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  Close(conn);
  double seconds = std::chrono::duration<double>(end - start).count();
  return static_cast<double>(high - low) / seconds;
}

double RawCase(const workerpool::AmqpUrl& url, const std::string& queue,
               long count, int prefetch) {
  Prefill(url, queue, count);
  std::atomic<bool> running{true};
  std::thread consumer([&] {
    amqp_connection_state_t conn = Connect(url);
    amqp_basic_qos(conn, 1, 0, static_cast<uint16_t>(prefetch), 0);
    Check(conn, "basic.qos");
    amqp_basic_consume(conn, 1, Bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    Check(conn, "basic.consume");
    for (long acked = 0; acked < count; ++acked) {
      amqp_maybe_release_buffers(conn);
      amqp_envelope_t envelope;
      amqp_rpc_reply_t reply =
          amqp_consume_message(conn, &envelope, nullptr, 0);
      if (reply.reply_type != AMQP_RESPONSE_NORMAL) Die("consume failed");
      amqp_basic_ack(conn, 1, envelope.delivery_tag, 0);
      amqp_destroy_envelope(&envelope);
    }
    Close(conn);
    running = false;
  });
  double rate = MeasureDrain(url, queue, count, [&] { return true; });
  consumer.join();
  return rate;
}

double ServiceCase(const std::string& workerpool_bin,
                   const std::string& url_text, const workerpool::AmqpUrl& url,
                   const std::string& queue, long count, int prefetch,
                   int services, const std::filesystem::path& dir) {
  Prefill(url, queue, count);
  std::filesystem::path config = dir / "pool.yaml";
  {
    std::ofstream out(config);
    out << "pool: {name: amqp-bench-" << getpid()
        << ", stop_timeout: 20s, control_socket: "
        << (dir / "ctl.sock").string() << ", log: {level: warn}}\n"
        << "groups:\n"
        << "  - name: intake\n"
        << "    type: service\n"
        << "    processes: " << services << "\n"
        << "    routes_to: [echo]\n"
        << "    rabbitmq: {url: \"" << url_text << "\", queues: [" << queue
        << "], declare: true, prefetch: " << prefetch << ", max_retries: 0}\n"
        << "  - name: echo\n"
        << "    type: job\n"
        << "    processes: 2\n"
        << "    max_inflight: 32\n"
        << "    queue_limit: 100000\n"
        << "    command: [workerpool, builtin, echo-job]\n";
  }
  std::string log = (dir / "pool.log").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::string config_text = config.string();
  std::vector<char*> argv = {const_cast<char*>(workerpool_bin.c_str()),
                             const_cast<char*>("run"),
                             const_cast<char*>(config_text.c_str()), nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, workerpool_bin.c_str(), &actions, nullptr, argv.data(),
                  environ) != 0) {
    Die("cannot start " + workerpool_bin);
  }
  posix_spawn_file_actions_destroy(&actions);
  double rate = MeasureDrain(url, queue, count, [pid] {
    int status = 0;
    return waitpid(pid, &status, WNOHANG) == 0;
  });
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  if (rate < 0) Die("the pool exited or stalled; see " + log);
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  // Positional WORKERPOOL_BIN AMQP_URL [MESSAGES], or the scripts/bench
  // form --workerpool PATH [--quick] with the URL in
  // WORKERPOOL_TEST_AMQP_URL.
  std::vector<std::string> positional;
  std::vector<std::string> workerpool_bins;
  std::string url_text;
  long count = 20000;
  std::vector<int> prefetches = {1, 10, 100, 1000};
  std::vector<int> service_counts = {1, 2};
  auto int_list = [](const std::string& text) {
    std::vector<int> values;
    std::size_t start = 0;
    while (start <= text.size()) {
      std::size_t comma = text.find(',', start);
      if (comma == std::string::npos) comma = text.size();
      int value = std::atoi(text.substr(start, comma - start).c_str());
      if (value <= 0) Die("bad list '" + text + "'");
      values.push_back(value);
      start = comma + 1;
    }
    return values;
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--workerpool" && i + 1 < argc) {
      workerpool_bins.push_back(argv[++i]);
    } else if (arg == "--prefetch" && i + 1 < argc) {
      prefetches = int_list(argv[++i]);
    } else if (arg == "--services" && i + 1 < argc) {
      service_counts = int_list(argv[++i]);
    } else if (arg == "--quick") {
      count = 5000;
    } else if (arg == "--messages" && i + 1 < argc) {
      count = std::atol(argv[++i]);
    } else if (arg.starts_with("-")) {
      std::fprintf(stderr,
                   "usage: amqp_bench WORKERPOOL_BIN AMQP_URL [MESSAGES]\n"
                   "       amqp_bench --workerpool PATH [--quick] "
                   "[--messages N] [--prefetch LIST] [--services LIST]\n"
                   "       (URL from WORKERPOOL_TEST_AMQP_URL; --workerpool "
                   "again: A/B builds)\n");
      return 1;
    } else {
      positional.push_back(arg);
    }
  }
  if (!positional.empty())
    workerpool_bins.insert(workerpool_bins.begin(), positional[0]);
  if (positional.size() > 1) url_text = positional[1];
  if (positional.size() > 2) count = std::atol(positional[2].c_str());
  if (url_text.empty() && std::getenv("WORKERPOOL_TEST_AMQP_URL") != nullptr) {
    url_text = std::getenv("WORKERPOOL_TEST_AMQP_URL");
  }
  if (workerpool_bins.empty() || url_text.empty()) {
    Die("needs the workerpool binary and an AMQP URL (see --help)");
  }
  for (std::string& bin : workerpool_bins) {
    bin = std::filesystem::absolute(bin).string();
  }
  if (count < 100) Die("MESSAGES must be at least 100");
  auto url = workerpool::ParseAmqpUrl(url_text);
  if (!url.ok()) Die(url.status().message());
  char dir_template[] = "/tmp/amqp-bench-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) Die("mkdtemp failed");
  std::filesystem::path dir = dir_template;
  std::string queue = "amqp-bench-" + std::to_string(getpid());

  std::printf(
      "# %ld persistent 100-byte messages per case; msgs/s between "
      "90%% and 10%% left in the queue\n",
      count);
  for (int prefetch : prefetches) {
    double raw = RawCase(*url, queue, count, prefetch);
    std::printf("prefetch %4d  raw librabbitmq consumer   %8.0f msgs/s\n",
                prefetch, raw);
    std::printf(
        "{\"system\": \"raw librabbitmq\", \"prefetch\": %d, "
        "\"per_second\": %.0f}\n",
        prefetch, raw);
    std::fflush(stdout);
    for (int services : service_counts) {
      for (std::size_t b = 0; b < workerpool_bins.size(); ++b) {
        double rate = ServiceCase(workerpool_bins[b], url_text, *url, queue,
                                  count, prefetch, services, dir);
        std::string build =
            workerpool_bins.size() == 1 ? "" : " [" + std::to_string(b) + "]";
        std::printf(
            "prefetch %4d  workerpool, %d service%s%s %8.0f msgs/s  %.2fx "
            "raw\n",
            prefetch, services, services == 1 ? " " : "s", build.c_str(), rate,
            rate / raw);
        std::printf(
            "{\"system\": \"workerpool %d service%s%s\", \"prefetch\": %d, "
            "\"per_second\": %.0f, \"ratio_to_raw\": %.2f}\n",
            services, services == 1 ? "" : "s", build.c_str(), prefetch, rate,
            rate / raw);
        std::fflush(stdout);
      }
    }
  }
  amqp_connection_state_t conn = Connect(*url);
  amqp_queue_delete(conn, 1, Bytes(queue), 0, 0);
  Close(conn);
  std::filesystem::remove_all(dir);
  return 0;
}
