// The Prometheus endpoint: GET /metrics on the Watcher's loop. Requests are
// parsed with http-parser; one request per connection, then close.
#include <http_parser.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <set>
#include <string_view>

#include "core/listen_address.h"
#include "os/listen_socket.h"
#include "watcher/control.h"

namespace workerpool {
namespace {

// The request line and headers of a scrape fit in far less.
constexpr std::size_t kMaxRequestBytes = 16 * 1024;
// A client gets this long to send its request, and again to read the answer.
constexpr uint64_t kTimeoutMs = 5000;

struct Listener;

struct Connection {
  Listener* listener = nullptr;
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t write_request;
  uv_shutdown_t shutdown_request;
  http_parser parser;
  std::string url;
  std::size_t received = 0;
  bool complete = false;  // a whole request was parsed
  bool answered = false;
  bool closing = false;
  std::string output;
  int open_handles = 2;
};

struct Listener {
  uv_loop_t* loop = nullptr;
  std::string address;
  ControlTarget* target = nullptr;  // null once closed
  uv_tcp_t tcp;
  http_parser_settings settings;
  std::set<Connection*> connections;
  int open_handles = 1;  // the listening socket, plus one per connection

  void Release() {
    if (--open_handles == 0) delete this;
  }
};

template <typename T>
T* Owner(void* handle) {
  return static_cast<T*>(static_cast<uv_handle_t*>(handle)->data);
}

void CloseConnection(Connection* connection) {
  if (connection->closing) return;
  connection->closing = true;
  connection->listener->connections.erase(connection);
  auto on_closed = [](uv_handle_t* handle) {
    Connection* owner = static_cast<Connection*>(handle->data);
    if (--owner->open_handles > 0) return;
    Listener* listener = owner->listener;
    delete owner;
    listener->Release();
  };
  uv_close(reinterpret_cast<uv_handle_t*>(&connection->timer), on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp), on_closed);
}

void OnTimeout(uv_timer_t* timer) { CloseConnection(Owner<Connection>(timer)); }

void Respond(Connection* connection, int code, const char* reason,
             const std::string& content_type, const std::string& body,
             bool head_only, const char* extra_headers = "") {
  if (connection->closing || connection->answered) return;
  connection->answered = true;
  connection->output = "HTTP/1.1 " + std::to_string(code) + " " + reason +
                       "\r\nContent-Type: " + content_type +
                       "\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\nConnection: close\r\n" + extra_headers + "\r\n";
  if (!head_only) connection->output += body;
  uv_timer_start(&connection->timer, OnTimeout, kTimeoutMs, 0);
  uv_buf_t buffer =
      uv_buf_init(connection->output.data(),
                  static_cast<unsigned>(connection->output.size()));
  connection->write_request.data = connection;
  auto on_written = [](uv_write_t* request, int status) {
    Connection* owner = static_cast<Connection*>(request->data);
    if (owner->closing) return;
    if (status != 0) {
      CloseConnection(owner);
      return;
    }
    // Half-close and wait for the client's EOF (or the timeout), so unread
    // input cannot turn the close into a reset that loses the answer.
    owner->shutdown_request.data = owner;
    if (uv_shutdown(&owner->shutdown_request,
                    reinterpret_cast<uv_stream_t*>(&owner->tcp),
                    [](uv_shutdown_t*, int) {}) != 0) {
      CloseConnection(owner);
    }
  };
  if (uv_write(&connection->write_request,
               reinterpret_cast<uv_stream_t*>(&connection->tcp), &buffer, 1,
               on_written) != 0) {
    CloseConnection(connection);
  }
}

void RespondText(Connection* connection, int code, const char* reason,
                 const std::string& message, const char* extra_headers = "") {
  Respond(connection, code, reason, "text/plain; charset=utf-8", message + "\n",
          connection->parser.method == HTTP_HEAD, extra_headers);
}

void Answer(Connection* connection) {
  Listener* listener = connection->listener;
  if (listener->target == nullptr) {
    CloseConnection(connection);
    return;
  }
  http_parser_url url;
  http_parser_url_init(&url);
  std::string path = "/";
  if (http_parser_parse_url(connection->url.data(), connection->url.size(), 0,
                            &url) == 0 &&
      (url.field_set & (1 << UF_PATH)) != 0) {
    path = connection->url.substr(url.field_data[UF_PATH].off,
                                  url.field_data[UF_PATH].len);
  }
  if (path != "/metrics") {
    RespondText(connection, 404, "Not Found",
                "not found: the metrics are at /metrics");
    return;
  }
  const unsigned method = connection->parser.method;
  if (method != HTTP_GET && method != HTTP_HEAD) {
    RespondText(connection, 405, "Method Not Allowed",
                "method not allowed: use GET", "Allow: GET, HEAD\r\n");
    return;
  }
  std::string body;
  try {
    body = MetricsText(listener->target->StatusJson());
  } catch (const std::exception& e) {
    // Nothing may throw through a libuv callback.
    spdlog::error("metrics endpoint: cannot render the metrics: {}", e.what());
    RespondText(connection, 500, "Internal Server Error",
                std::string("internal error: ") + e.what());
    return;
  }
  Respond(connection, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
          body, method == HTTP_HEAD);
}

void OnAlloc(uv_handle_t*, size_t, uv_buf_t* buffer) {
  // One loop thread, and each read is consumed before the next alloc.
  static char storage[16 * 1024];
  *buffer = uv_buf_init(storage, sizeof(storage));
}

void OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) {
  Connection* connection = Owner<Connection>(stream);
  if (connection->closing) return;
  if (nread < 0) {
    // EOF or error: nothing more will come. A request cut short gets no
    // answer.
    CloseConnection(connection);
    return;
  }
  if (nread == 0 || connection->answered) return;  // later input is ignored
  connection->received += static_cast<std::size_t>(nread);
  if (connection->received > kMaxRequestBytes) {
    RespondText(connection, 431, "Request Header Fields Too Large",
                "request too large");
    return;
  }
  http_parser_execute(&connection->parser, &connection->listener->settings,
                      buffer->base, static_cast<size_t>(nread));
  if (connection->complete) {
    Answer(connection);
  } else if (HTTP_PARSER_ERRNO(&connection->parser) != HPE_OK) {
    RespondText(
        connection, 400, "Bad Request",
        std::string("bad request: ") +
            http_errno_description(HTTP_PARSER_ERRNO(&connection->parser)));
  }
}

int OnUrl(http_parser* parser, const char* at, size_t length) {
  static_cast<Connection*>(parser->data)->url.append(at, length);
  return 0;
}

int OnMessageComplete(http_parser* parser) {
  static_cast<Connection*>(parser->data)->complete = true;
  http_parser_pause(parser, 1);  // one request per connection
  return 0;
}

void OnConnection(uv_stream_t* server, int status) {
  Listener* listener = Owner<Listener>(server);
  if (status < 0) {
    spdlog::warn("metrics endpoint {}: accept: {}", listener->address,
                 uv_strerror(status));
    return;
  }
  if (listener->target == nullptr) return;
  Connection* connection = new Connection;
  connection->listener = listener;
  ++listener->open_handles;
  listener->connections.insert(connection);
  uv_tcp_init(listener->loop, &connection->tcp);
  connection->tcp.data = connection;
  uv_timer_init(listener->loop, &connection->timer);
  connection->timer.data = connection;
  http_parser_init(&connection->parser, HTTP_REQUEST);
  connection->parser.data = connection;
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&connection->tcp)) !=
      0) {
    CloseConnection(connection);
    return;
  }
  uv_timer_start(&connection->timer, OnTimeout, kTimeoutMs, 0);
  uv_read_start(reinterpret_cast<uv_stream_t*>(&connection->tcp), OnAlloc,
                OnRead);
}

class MetricsServerImpl : public MetricsServer {
 public:
  explicit MetricsServerImpl(Listener* listener) : listener_(listener) {}
  ~MetricsServerImpl() override { Close(); }

  void Close() override {
    if (listener_ == nullptr) return;
    Listener* listener = listener_;
    listener_ = nullptr;
    listener->target = nullptr;
    std::set<Connection*> connections = listener->connections;
    for (Connection* connection : connections) CloseConnection(connection);
    uv_close(reinterpret_cast<uv_handle_t*>(&listener->tcp),
             [](uv_handle_t* handle) {
               static_cast<Listener*>(handle->data)->Release();
             });
  }

 private:
  Listener* listener_;
};

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    uv_loop_t* loop, const std::string& address, ControlTarget* target) {
  Result<ListenAddress> parsed = ParseListenAddress(address);
  if (!parsed.ok()) {
    return Status::Error("metrics endpoint: " + parsed.status().message());
  }
  if (parsed->kind != ListenAddress::Kind::kTcp) {
    return Status::Error("metrics endpoint '" + address +
                         "': expected HOST:PORT such as 127.0.0.1:9464");
  }
  Result<int> fd = BindListenSocket(*parsed);
  if (!fd.ok()) {
    return Status::Error("metrics endpoint: " + fd.status().message());
  }
  auto* listener = new Listener;
  listener->loop = loop;
  listener->address = address;
  listener->target = target;
  http_parser_settings_init(&listener->settings);
  listener->settings.on_url = OnUrl;
  listener->settings.on_message_complete = OnMessageComplete;
  uv_tcp_init(loop, &listener->tcp);
  listener->tcp.data = listener;
  int rc = uv_tcp_open(&listener->tcp, *fd);
  if (rc != 0) {
    close(*fd);
  } else {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener->tcp), SOMAXCONN,
                   OnConnection);
  }
  auto server = std::make_unique<MetricsServerImpl>(listener);
  if (rc != 0) {
    server->Close();
    return Status::Error("metrics endpoint: cannot listen on " + address +
                         ": " + uv_strerror(rc));
  }
  return std::unique_ptr<MetricsServer>(std::move(server));
}

}  // namespace workerpool
