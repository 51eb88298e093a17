// A closed-loop HTTP load generator for the benchmarks (libuv, http-parser):
// N keep-alive connections, each sending one POST and waiting for its
// answer before the next (no pipelining); answers are parsed and their
// bodies checked. Latency is from the write of a request to the end of its
// answer. Header-only so that each benchmark is one .cc (bench/CMakeLists).
//
// Used by bench/http_bench.cc and bench/outbox_bench.cc.
#pragma once

#include <arpa/inet.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <uv.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace http_load {

struct Result {
  double requests_per_second = 0;
  uint64_t ok = 0, failed = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
};

struct Load {
  int port = 0;
  std::string path = "/jobs/echo";
  std::string body = std::string(64, 'x');  // the answer must equal it
  int connections = 16;
  uint64_t warmup_ms = 1000;
  uint64_t duration_ms = 5000;
};

namespace detail {

struct Run;

struct Client {
  Run* run = nullptr;
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  http_parser parser;
  uint64_t sent_ns = 0;
  std::size_t body_bytes = 0;
  bool body_ok = true;
  bool closing = false;
};

struct Run {
  std::string request;
  std::string expected_body;
  http_parser_settings settings;
  bool measuring = false;
  bool stopping = false;
  uint64_t ok = 0, failed = 0;
  uint64_t measure_start_ns = 0, measure_end_ns = 0;
  std::vector<uint32_t> latencies_us;
  std::vector<std::unique_ptr<Client>> clients;
};

inline void Close(Client* client) {
  if (client->closing) return;
  client->closing = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&client->tcp), nullptr);
}

inline void Send(Client* client) {
  Run* run = client->run;
  if (run->stopping) {
    Close(client);
    return;
  }
  client->body_bytes = 0;
  client->body_ok = true;
  uv_buf_t buf = uv_buf_init(run->request.data(),
                             static_cast<unsigned int>(run->request.size()));
  client->sent_ns = uv_hrtime();
  if (uv_write(&client->write, reinterpret_cast<uv_stream_t*>(&client->tcp),
               &buf, 1, [](uv_write_t* write, int status) {
                 if (status < 0) Close(static_cast<Client*>(write->data));
               }) != 0) {
    ++run->failed;
    Close(client);
  }
}

inline int OnBody(http_parser* parser, const char* at, std::size_t length) {
  auto* client = static_cast<Client*>(parser->data);
  const std::string& expected = client->run->expected_body;
  if (client->body_bytes + length > expected.size() ||
      expected.compare(client->body_bytes, length, at, length) != 0) {
    client->body_ok = false;
  }
  client->body_bytes += length;
  return 0;
}

inline int OnComplete(http_parser* parser) {
  auto* client = static_cast<Client*>(parser->data);
  Run* run = client->run;
  const bool good = parser->status_code == 200 && client->body_ok &&
                    client->body_bytes == run->expected_body.size();
  if (run->measuring) {
    if (good) {
      ++run->ok;
      run->latencies_us.push_back(
          static_cast<uint32_t>((uv_hrtime() - client->sent_ns) / 1000));
    } else {
      ++run->failed;
    }
  }
  Send(client);
  return 0;
}

}  // namespace detail

// Runs LOAD to its end (warm-up, measured window, 2 s of grace for the last
// answers) and returns the measured window's figures.
inline Result RunLoad(const Load& load) {
  using detail::Client;
  uv_loop_t loop;
  uv_loop_init(&loop);
  detail::Run run;
  run.expected_body = load.body;
  run.request = "POST " + load.path +
                " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: " +
                std::to_string(load.body.size()) + "\r\n\r\n" + load.body;
  http_parser_settings_init(&run.settings);
  run.settings.on_body = detail::OnBody;
  run.settings.on_message_complete = detail::OnComplete;
  run.latencies_us.reserve(1 << 20);

  sockaddr_in address{};
  uv_ip4_addr("127.0.0.1", load.port, &address);
  for (int i = 0; i < load.connections; ++i) {
    auto client = std::make_unique<Client>();
    client->run = &run;
    uv_tcp_init(&loop, &client->tcp);
    uv_tcp_nodelay(&client->tcp, 1);
    client->tcp.data = client.get();
    client->connect.data = client.get();
    client->write.data = client.get();
    http_parser_init(&client->parser, HTTP_RESPONSE);
    client->parser.data = client.get();
    uv_tcp_connect(
        &client->connect, &client->tcp,
        reinterpret_cast<const sockaddr*>(&address),
        [](uv_connect_t* connect, int status) {
          auto* client = static_cast<Client*>(connect->data);
          if (status < 0) {
            ++client->run->failed;
            detail::Close(client);
            return;
          }
          uv_read_start(
              reinterpret_cast<uv_stream_t*>(&client->tcp),
              [](uv_handle_t*, std::size_t, uv_buf_t* buf) {
                static char buffer[64 * 1024];
                *buf = uv_buf_init(buffer, sizeof(buffer));
              },
              [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
                auto* client = static_cast<Client*>(stream->data);
                if (nread < 0) {
                  if (!client->run->stopping) ++client->run->failed;
                  detail::Close(client);
                  return;
                }
                std::size_t used = http_parser_execute(
                    &client->parser, &client->run->settings, buf->base,
                    static_cast<std::size_t>(nread));
                if (used != static_cast<std::size_t>(nread) ||
                    HTTP_PARSER_ERRNO(&client->parser) != HPE_OK) {
                  ++client->run->failed;
                  detail::Close(client);
                }
              });
          detail::Send(client);
        });
    run.clients.push_back(std::move(client));
  }

  uv_timer_t phase;
  uv_timer_init(&loop, &phase);
  phase.data = &run;
  uv_timer_start(
      &phase,
      [](uv_timer_t* timer) {
        auto* run = static_cast<detail::Run*>(timer->data);
        run->measuring = true;
        run->measure_start_ns = uv_hrtime();
        uv_close(reinterpret_cast<uv_handle_t*>(timer), nullptr);
      },
      load.warmup_ms, 0);
  uv_timer_t end;
  uv_timer_init(&loop, &end);
  end.data = &run;
  uv_timer_start(
      &end,
      [](uv_timer_t* timer) {
        auto* run = static_cast<detail::Run*>(timer->data);
        run->measuring = false;
        run->stopping = true;
        run->measure_end_ns = uv_hrtime();
        uv_timer_start(
            timer,
            [](uv_timer_t* timer) {
              auto* run = static_cast<detail::Run*>(timer->data);
              for (auto& client : run->clients) detail::Close(client.get());
              uv_close(reinterpret_cast<uv_handle_t*>(timer), nullptr);
            },
            2000, 0);
      },
      load.warmup_ms + load.duration_ms, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);

  Result result;
  result.ok = run.ok;
  result.failed = run.failed;
  const double seconds =
      static_cast<double>(run.measure_end_ns - run.measure_start_ns) / 1e9;
  result.requests_per_second =
      seconds > 0 ? static_cast<double>(run.ok) / seconds : 0;
  std::vector<uint32_t>& lat = run.latencies_us;
  if (!lat.empty()) {
    std::sort(lat.begin(), lat.end());
    auto at = [&lat](double q) {
      return static_cast<double>(lat[std::min(
          lat.size() - 1,
          static_cast<std::size_t>(q * static_cast<double>(lat.size())))]);
    };
    result.p50_us = at(0.50);
    result.p90_us = at(0.90);
    result.p99_us = at(0.99);
    result.max_us = lat.back();
  }
  return result;
}

}  // namespace http_load
