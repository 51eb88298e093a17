// The Prometheus endpoint: GET /metrics on the Watcher's loop. Requests are
// parsed with http-parser; one request per connection, then close.
#include <http_parser.h>
#include <spdlog/spdlog.h>

#include <string_view>

#include "core/listen_address.h"
#include "os/listen_socket.h"
#include "os/stream_server.h"
#include "watcher/control.h"

namespace workerpool {
namespace {

// The request line and headers of a scrape fit in far less.
constexpr std::size_t kMaxRequestBytes = 16 * 1024;
// A client gets this long to send its request, and again to read the answer.
constexpr uint64_t kTimeoutMs = 5000;

int OnUrl(http_parser* parser, const char* at, size_t length);
int OnMessageComplete(http_parser* parser);

const http_parser_settings& ParserSettings() {
  static const http_parser_settings settings = [] {
    http_parser_settings value;
    http_parser_settings_init(&value);
    value.on_url = OnUrl;
    value.on_message_complete = OnMessageComplete;
    return value;
  }();
  return settings;
}

// One scrape: an HTTP request parsed as it arrives, one response, close.
class MetricsSession : public StreamSession {
 public:
  explicit MetricsSession(ControlTarget* target) : target_(target) {
    http_parser_init(&parser_, HTTP_REQUEST);
    parser_.data = this;
  }

  void OnInput(StreamConnection& connection, std::string_view data) override {
    http_parser_execute(&parser_, &ParserSettings(), data.data(), data.size());
    if (complete_) {
      Answer(connection);
    } else if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK) {
      RespondText(connection, 400, "Bad Request",
                  std::string("bad request: ") +
                      http_errno_description(HTTP_PARSER_ERRNO(&parser_)));
    }
  }

  void OnTooLarge(StreamConnection& connection) override {
    RespondText(connection, 431, "Request Header Fields Too Large",
                "request too large");
  }

  // OnTimeout: the default, close without an answer.

 private:
  void Answer(StreamConnection& connection) {
    http_parser_url url;
    http_parser_url_init(&url);
    std::string path = "/";
    if (http_parser_parse_url(url_.data(), url_.size(), 0, &url) == 0 &&
        (url.field_set & (1 << UF_PATH)) != 0) {
      path =
          url_.substr(url.field_data[UF_PATH].off, url.field_data[UF_PATH].len);
    }
    if (path != "/metrics") {
      RespondText(connection, 404, "Not Found",
                  "not found: the metrics are at /metrics");
      return;
    }
    const unsigned method = parser_.method;
    if (method != HTTP_GET && method != HTTP_HEAD) {
      RespondText(connection, 405, "Method Not Allowed",
                  "method not allowed: use GET", "Allow: GET, HEAD\r\n");
      return;
    }
    std::string body;
    try {
      body = MetricsText(target_->StatusJson(/*with_usage=*/true));
    } catch (const std::exception& e) {
      // Nothing may throw through a libuv callback.
      spdlog::error("metrics endpoint: cannot render the metrics: {}",
                    e.what());
      RespondText(connection, 500, "Internal Server Error",
                  std::string("internal error: ") + e.what());
      return;
    }
    Respond(connection, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
            body, method == HTTP_HEAD);
  }

  void RespondText(StreamConnection& connection, int code, const char* reason,
                   const std::string& message, const char* extra_headers = "") {
    Respond(connection, code, reason, "text/plain; charset=utf-8",
            message + "\n", parser_.method == HTTP_HEAD, extra_headers);
  }

  static void Respond(StreamConnection& connection, int code,
                      const char* reason, const std::string& content_type,
                      const std::string& body, bool head_only,
                      const char* extra_headers = "") {
    std::string output = "HTTP/1.1 " + std::to_string(code) + " " + reason +
                         "\r\nContent-Type: " + content_type +
                         "\r\nContent-Length: " + std::to_string(body.size()) +
                         "\r\nConnection: close\r\n" + extra_headers + "\r\n";
    if (!head_only) output += body;
    connection.Answer(std::move(output));
  }

  friend int OnUrl(http_parser* parser, const char* at, size_t length);
  friend int OnMessageComplete(http_parser* parser);

  ControlTarget* target_;
  http_parser parser_;
  std::string url_;
  bool complete_ = false;  // a whole request was parsed
};

int OnUrl(http_parser* parser, const char* at, size_t length) {
  static_cast<MetricsSession*>(parser->data)->url_.append(at, length);
  return 0;
}

int OnMessageComplete(http_parser* parser) {
  static_cast<MetricsSession*>(parser->data)->complete_ = true;
  http_parser_pause(parser, 1);  // one request per connection
  return 0;
}

class MetricsServerImpl : public MetricsServer {
 public:
  MetricsServerImpl(std::unique_ptr<StreamServer> server, int fd)
      : server_(std::move(server)), fd_(fd) {}
  void Close() override { server_->Close(); }
  int fd() const override { return fd_; }
  bool Writing() const override { return server_ && server_->Writing(); }

 private:
  std::unique_ptr<StreamServer> server_;
  int fd_;
};

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    uv_loop_t* loop, const std::string& address, ControlTarget* target,
    int adopt_fd) {
  Result<ListenAddress> parsed = ParseListenAddress(address);
  if (!parsed.ok()) {
    return Status::Error("metrics endpoint: " + parsed.status().message());
  }
  if (parsed->kind != ListenAddress::Kind::kTcp) {
    return Status::Error("metrics endpoint '" + address +
                         "': expected HOST:PORT such as 127.0.0.1:9464");
  }
  Result<int> fd =
      adopt_fd >= 0 ? Result<int>(adopt_fd) : BindListenSocket(*parsed);
  if (!fd.ok()) {
    return Status::Error("metrics endpoint: " + fd.status().message());
  }
  StreamServerOptions options;
  options.name = "metrics endpoint " + address;
  options.backlog = SOMAXCONN;
  options.framing = StreamServerOptions::Framing::kChunks;
  options.max_request_bytes = kMaxRequestBytes;
  options.timeout_ms = kTimeoutMs;
  Result<std::unique_ptr<StreamServer>> listening = StreamServer::Listen(
      loop, *fd, std::move(options),
      [target] { return std::make_unique<MetricsSession>(target); });
  if (!listening.ok()) {
    return Status::Error("metrics endpoint: cannot listen on " + address +
                         ": " + listening.status().message());
  }
  return std::unique_ptr<MetricsServer>(
      std::make_unique<MetricsServerImpl>(std::move(*listening), *fd));
}

}  // namespace workerpool
