// The baseline of bench/http_bench.cc: the least an HTTP echo server on
// libuv can do. One process, one loop, the same parser (http-parser through
// children/http_codec.h) and response formatting as http-reactor, but no
// routing, no pool, no access log: every request is answered at once with
// its own body. What http-reactor costs on top of this is the price of
// routing a request through the pool to a job process and back.
//
//   http_echo_baseline --listen 127.0.0.1:8081
#include <uv.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "children/http_codec.h"

namespace {

using workerpool::http::FormatResponse;
using workerpool::http::Request;
using workerpool::http::RequestParser;
using workerpool::http::Response;

struct Connection {
  uv_tcp_t tcp;
  RequestParser parser{workerpool::http::ParserLimits{}};
  std::string input;
};

struct WriteRequest {
  uv_write_t request;
  std::string data;
};

void CloseConnection(Connection* connection) {
  if (uv_is_closing(reinterpret_cast<uv_handle_t*>(&connection->tcp))) return;
  uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp),
           [](uv_handle_t* handle) {
             delete static_cast<Connection*>(handle->data);
           });
}

void OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* connection = static_cast<Connection*>(stream->data);
  if (nread < 0) {
    CloseConnection(connection);
    return;
  }
  connection->input.append(buf->base, static_cast<std::size_t>(nread));
  std::string out;
  bool close_after = false;
  while (!connection->input.empty()) {
    std::size_t used = 0;
    RequestParser::Outcome result =
        connection->parser.Feed(connection->input, &used);
    connection->input.erase(0, used);
    if (result == RequestParser::Outcome::kNeedMore) break;
    if (result == RequestParser::Outcome::kError) {
      Response response;
      response.status = connection->parser.error_status();
      out += FormatResponse(response, false, false, false);
      close_after = true;
      break;
    }
    Request request = connection->parser.TakeRequest();
    Response response;
    response.content_type = "application/octet-stream";
    response.body = std::move(request.body);
    out += FormatResponse(response, request.keep_alive, request.http_minor == 0,
                          request.head);
    if (!request.keep_alive) {
      close_after = true;
      break;
    }
  }
  if (!out.empty()) {
    auto* write = new WriteRequest;
    write->data = std::move(out);
    uv_buf_t out_buf = uv_buf_init(
        write->data.data(), static_cast<unsigned int>(write->data.size()));
    if (uv_write(&write->request, stream, &out_buf, 1,
                 [](uv_write_t* request, int) {
                   delete reinterpret_cast<WriteRequest*>(request);
                 }) != 0) {
      delete write;
      close_after = true;
    }
  }
  if (close_after) CloseConnection(connection);
}

void OnConnection(uv_stream_t* listener, int status) {
  if (status < 0) return;
  auto* connection = new Connection;
  uv_tcp_init(listener->loop, &connection->tcp);
  connection->tcp.data = connection;
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&connection->tcp)) !=
      0) {
    CloseConnection(connection);
    return;
  }
  uv_tcp_nodelay(&connection->tcp, 1);
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&connection->tcp),
      [](uv_handle_t*, std::size_t, uv_buf_t* buf) {
        static char buffer[64 * 1024];
        *buf = uv_buf_init(buffer, sizeof(buffer));
      },
      OnRead);
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:8081";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--listen HOST:PORT]\n", argv[0]);
      return 1;
    }
  }
  const std::size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    std::fprintf(stderr,
                 "http_echo_baseline: --listen %s: expected "
                 "HOST:PORT\n",
                 listen.c_str());
    return 1;
  }
  const std::string host = listen.substr(0, colon);
  const int port = std::atoi(listen.c_str() + colon + 1);
  sockaddr_in address{};
  if (uv_ip4_addr(host.c_str(), port, &address) != 0) {
    std::fprintf(stderr, "http_echo_baseline: bad address %s\n",
                 listen.c_str());
    return 1;
  }
  uv_loop_t* loop = uv_default_loop();
  uv_tcp_t listener;
  uv_tcp_init(loop, &listener);
  int rc = uv_tcp_bind(&listener, reinterpret_cast<sockaddr*>(&address), 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener), SOMAXCONN,
                   OnConnection);
  }
  if (rc != 0) {
    std::fprintf(stderr, "http_echo_baseline: %s: %s\n", listen.c_str(),
                 uv_strerror(rc));
    return 2;
  }
  uv_signal_t sigterm;
  uv_signal_init(loop, &sigterm);
  uv_signal_start(
      &sigterm, [](uv_signal_t* handle, int) { uv_stop(handle->loop); },
      SIGTERM);
  std::fprintf(stderr, "http_echo_baseline: serving on %s\n", listen.c_str());
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
