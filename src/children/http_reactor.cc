// `workerpool builtin http-reactor`: HTTP/1.1 on libuv, requests parsed by
// http-parser (children/http_codec.h), `POST /jobs/<group>` turned into pool
// requests through the client library.
//
// One process, one loop thread. Every connection answers its requests in
// the order they came (pipelining) whatever order the pool replies in, reads
// at most --max-pipeline requests ahead of its answers, and is bounded in
// time: a request must arrive whole within --read-timeout, an idle
// keep-alive connection lasts --idle-timeout, a client that does not read
// its answers is dropped after --write-timeout. A connection that must end
// after an answer (an error, "Connection: close") is shut down for writing
// and then drained for a moment ("lingering close", as nginx does), so the
// client reads the answer instead of a reset.
//
// Draining (the pool's drain, SIGTERM): the listeners close at once (the
// Watcher keeps the listening sockets, so new connections wait for the
// other reactors), and every connection finishes what its client sent:
// requests already read, pipelined ones included, are answered, and the
// answer after which nothing more was received carries "Connection: close",
// so that a keep-alive client reconnects to another reactor instead of
// meeting a close it cannot tell from a crash. A connection idle when the
// drain starts waits for its next request the same way; one still idle
// after --drain-timeout is closed (the one moment a client can race the
// close, as with any idle timeout). The PoolClient's stop is held
// (HoldStop) until the last connection ends, so requests can still be sent.
#include "children/http_reactor.h"

#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <charconv>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "children/http_codec.h"
#include "core/listen_address.h"
#include "core/status.h"
#include "core/units.h"
#include "os/listen_socket.h"
#include "workerpool/client.h"

namespace workerpool {
namespace {

// One line for the log on stderr. stdout and stderr are the same pipe to
// the Watcher, and stdout holds buffered access lines (see main): they are
// flushed first, so that this line is not glued into the middle of one.
[[gnu::format(printf, 1, 2)]] void Complain(const char* format, ...) {
  std::fflush(stdout);
  va_list arguments;
  va_start(arguments, format);
  std::vfprintf(stderr, format, arguments);
  va_end(arguments);
}

struct Options {
  std::vector<std::string> listen;  // used when no socket is inherited
  std::size_t max_body = 1024 * 1024;
  uint64_t read_timeout_ms = 10000;
  uint64_t idle_timeout_ms = 15000;
  uint64_t write_timeout_ms = 30000;
  std::size_t max_pipeline = 16;
  uint64_t drain_timeout_ms = 5000;
  bool help = false;  // --help: print the usage, serve nothing
};

// After the last answer, how long a connection is drained before closing.
constexpr uint64_t kLingerMs = 2000;
// A connection whose unsent answers pass this stops reading requests.
constexpr std::size_t kMaxWriteBacklog = 1024 * 1024;
// Distinct group names sent to the pool, so that random names from clients
// cannot grow the client library's and the Watcher's route tables.
constexpr std::size_t kMaxGroupNames = 256;
// Access lines reach the Watcher's log at most this late (or sooner, when
// 64 KiB of them are waiting), as with nginx's `access_log ... flush=`.
constexpr uint64_t kAccessFlushMs = 100;

// The timer that flushes buffered access lines; set while the loop runs.
uv_timer_t* g_access_flush = nullptr;

void ScheduleAccessFlush() {
  if (g_access_flush == nullptr ||
      uv_is_active(reinterpret_cast<uv_handle_t*>(g_access_flush))) {
    return;
  }
  uv_timer_start(
      g_access_flush, [](uv_timer_t*) { std::fflush(stdout); }, kAccessFlushMs,
      0);
}

constexpr const char kUsage[] =
    "usage: workerpool builtin http-reactor [--listen HOST:PORT]... "
    "[--max-body BYTES] [--read-timeout DURATION] [--idle-timeout DURATION] "
    "[--write-timeout DURATION] [--max-pipeline N] [--drain-timeout DURATION]";

Result<Options> ParseOptions(const std::vector<std::string>& args) {
  Options options;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i];
    std::string value;
    bool has_value = false;
    if (auto equals = name.find('=');
        name.starts_with("--") && equals != std::string::npos) {
      value = name.substr(equals + 1);
      name.resize(equals);
      has_value = true;
    }
    if (name == "--help" || name == "-h") {
      options.help = true;
      return options;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return Status::Error("http-reactor: " + name + " needs a value\n" +
                             kUsage);
      }
      value = args[++i];
    }
    auto duration = [&](uint64_t* out) {
      Result<Duration> parsed = ParseDuration(value);
      if (!parsed.ok() || parsed->count() <= 0) {
        return Status::Error(
            "http-reactor: " + name + " " + value +
            ": expected a positive duration such as 500ms or 10s");
      }
      *out = static_cast<uint64_t>(parsed->count());
      return Status::Ok();
    };
    auto count = [&](std::size_t* out, std::size_t low) {
      std::size_t parsed = 0;
      auto [end, code] =
          std::from_chars(value.data(), value.data() + value.size(), parsed);
      if (code == std::errc() && end == value.data() + value.size() &&
          !value.empty() && parsed >= low) {
        *out = parsed;
        return Status::Ok();
      }
      Result<std::int64_t> size = ParseSize(value);
      if (size.ok() && *size >= static_cast<std::int64_t>(low)) {
        *out = static_cast<std::size_t>(*size);
        return Status::Ok();
      }
      return Status::Error(
          "http-reactor: " + name + " " + value + ": expected a number" +
          (low > 0 ? " of at least " + std::to_string(low) : ""));
    };
    Status status;
    if (name == "--listen") {
      options.listen.push_back(value);
    } else if (name == "--max-body") {
      status = count(&options.max_body, 0);
    } else if (name == "--read-timeout") {
      status = duration(&options.read_timeout_ms);
    } else if (name == "--idle-timeout") {
      status = duration(&options.idle_timeout_ms);
    } else if (name == "--write-timeout") {
      status = duration(&options.write_timeout_ms);
    } else if (name == "--drain-timeout") {
      status = duration(&options.drain_timeout_ms);
    } else if (name == "--max-pipeline") {
      status = count(&options.max_pipeline, 1);
    } else {
      status = Status::Error("http-reactor: unknown option '" + name + "'\n" +
                             kUsage);
    }
    if (!status.ok()) return status;
  }
  return options;
}

// Printable, bounded text for the access log.
std::string LogSafe(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 256)) {
    auto byte = static_cast<unsigned char>(c);
    out.push_back(byte < 0x21 || byte > 0x7e || c == '"' ? '?' : c);
  }
  if (text.size() > 256) out += "...";
  return out.empty() ? "-" : out;
}

union StreamHandle {
  uv_handle_t handle;
  uv_stream_t stream;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
};

class Server;
class Connection;

// One request on a connection, from parse to answer.
struct Exchange {
  Connection* connection = nullptr;  // null once the connection is gone
  std::string method = "-";
  std::string path = "-";
  bool head = false;
  bool http10 = false;
  bool keep_alive = true;
  uint64_t started_ns = 0;
  bool ready = false;
  http::Response response;
  // The pool request while it is out (Send's id), for the cancel when the
  // client goes away; 0 once answered.
  std::uint64_t request_id = 0;
  // Answered as server-sent events (Accept: text/event-stream): the head
  // and progress events go out as they come once this exchange is the
  // connection's first; SSE_FINAL is the reply or error event.
  bool sse = false;
  bool sse_started = false;
  std::string sse_pending;  // chunks not written yet
  std::string sse_final;
};

// Progress events waiting for a connection (an exchange behind others in
// its pipeline, a client that does not read) are dropped beyond this:
// progress is advice, the reply is what matters.
constexpr std::size_t kMaxPendingEvents = 64 * 1024;
// Lines logged about jobs' bad reply meta, at most (a job's bug would
// otherwise write one line per request).
constexpr int kMaxBadMetaLogged = 10;

class Server {
 public:
  Server(PoolClient* client, Options options)
      : client_(client), options_(std::move(options)) {}

  // Serves the listening socket FD (inherited or bound for --listen).
  Status Listen(int fd);
  void Stop();
  void Track(Connection* connection) { connections_.insert(connection); }
  // Once stopping, the last connection forgotten lets the stop finish.
  void Forget(Connection* connection);
  // Logs (the first few of) the bad reply metas jobs send.
  void LogBadMeta(const std::string& group, const std::string& error) {
    if (bad_meta_logged_ >= kMaxBadMetaLogged) return;
    ++bad_meta_logged_;
    Complain("http-reactor: bad reply meta from group %s: %s%s\n",
             group.c_str(), error.c_str(),
             bad_meta_logged_ == kMaxBadMetaLogged
                 ? " (further ones are not logged)"
                 : "");
  }
  // How the connections of a drain ended, for the line logged at its end.
  void CountDrainedClose() { ++drained_with_close_; }
  void CountDrainedIdle() { ++drained_idle_; }
  // False when GROUP would be one name too many (see kMaxGroupNames).
  bool AdmitGroup(const std::string& group) {
    if (groups_.count(group) != 0) return true;
    if (groups_.size() >= kMaxGroupNames) return false;
    groups_.insert(group);
    return true;
  }

  PoolClient* client() const { return client_; }
  uv_loop_t* loop() const { return client_->loop(); }
  const Options& options() const { return options_; }
  bool stopping() const { return stopping_; }

 private:
  static void OnConnection(uv_stream_t* listener, int status);

  PoolClient* client_;
  Options options_;
  std::vector<StreamHandle*> listeners_;
  std::set<Connection*> connections_;
  std::set<std::string> groups_;
  bool stopping_ = false;
  bool holding_stop_ = false;  // HoldStop() until the connections are gone
  bool accept_error_logged_ = false;
  int bad_meta_logged_ = 0;
  uint64_t stop_started_ms_ = 0;
  std::size_t drained_connections_ = 0;  // open when the drain began
  std::size_t drained_with_close_ = 0;   // ended by "Connection: close"
  std::size_t drained_idle_ = 0;         // closed idle at --drain-timeout
};

class Connection {
 public:
  // Accepts one connection from LISTENER and starts reading from it.
  static void Accept(Server* server, uv_stream_t* listener);
  // The pool asks this process to stop: answer what the client sent, the
  // last answer with "Connection: close"; an idle connection waits for one
  // more request until --drain-timeout.
  void Drain();

 private:
  enum class State {
    kOpen,        // reading requests
    kLastAnswer,  // no more requests: answer those in the pipeline, then end
    kLingering,   // answers sent and write side shut: draining input
    kClosed,
  };

  struct WriteRequest {
    uv_write_t request;
    Connection* connection;
    std::string data;
  };

  uv_stream_t* stream() { return &handle_.stream; }
  uint64_t now() const { return uv_now(server_->loop()); }

  void OnRead(ssize_t nread, const uv_buf_t* buf);
  void ProcessInput();
  void StartExchange(http::Request request, uint64_t started_ns);
  void Answer(const std::shared_ptr<Exchange>& exchange,
              http::Response response);
  void AnswerError(const std::shared_ptr<Exchange>& exchange, int status,
                   std::string_view text, int code = 0);
  void OnReply(const std::shared_ptr<Exchange>& exchange,
               const std::string& group, Reply reply);
  void OnProgress(const std::shared_ptr<Exchange>& exchange,
                  const Progress& progress);
  // An answer that ends the connection, after those already in the pipeline.
  void EndWith(int status, std::string_view text);
  // Draining: true when nothing the client sent is left unanswered after
  // the answers ready now (bytes waiting in the socket are read first), so
  // the last of them may close the connection.
  bool DrainCanCloseNow();
  // Draining and --drain-timeout passed: end the connection now.
  void OnDrainDeadline();
  void Flush();
  void Write(std::string data);
  void OnWritten(int status);
  void StartLinger();
  void UpdateReading();
  void ArmTimer();
  void OnTimer();
  void Close();
  void LogAccess(const Exchange& exchange, int status, std::size_t bytes);

  Connection(Server* server)
      : server_(server),
        parser_(http::ParserLimits{server->options().max_body}) {}

  Server* server_;
  StreamHandle handle_;
  uv_timer_t timer_;
  uv_shutdown_t shutdown_;
  int open_handles_ = 0;
  State state_ = State::kOpen;
  http::RequestParser parser_;
  std::string input_;  // received, not yet parsed (the pipeline is full)
  std::deque<std::shared_ptr<Exchange>> pipeline_;
  std::string remote_ = "-";
  bool reading_ = false;
  bool processing_ = false;  // inside ProcessInput (no re-entry)
  bool served_one_ = false;
  bool draining_ = false;
  bool peer_eof_ = false;  // read EOF behind libuv's back (DrainCanCloseNow)
  uint64_t drain_deadline_ = 0;      // ms; while draining
  uint64_t request_started_ns_ = 0;  // of the request being received
  uint64_t idle_since_ = 0;          // ms, loop time
  uint64_t request_deadline_ = 0;    // ms; 0: no request being received
  uint64_t write_deadline_ = 0;      // ms; while writes are pending
  uint64_t linger_deadline_ = 0;     // ms; while lingering
  std::size_t writes_pending_ = 0;
};

// ---------------------------------------------------------------- server

Status Server::Listen(int fd) {
  if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, /*listening=*/1) <= 0) {
    return Status::Error("http-reactor: fd " + std::to_string(fd) +
                         " is not a listening stream socket");
  }
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return Status::Error("http-reactor: getsockname on fd " +
                         std::to_string(fd) + ": " + std::strerror(errno));
  }
  auto* listener = new StreamHandle;
  int rc;
  const bool is_unix = address.ss_family == AF_UNIX;
  if (is_unix) {
    uv_pipe_init(loop(), &listener->pipe, 0);
    rc = uv_pipe_open(&listener->pipe, fd);
  } else {
    uv_tcp_init(loop(), &listener->tcp);
    rc = uv_tcp_open(&listener->tcp, fd);
  }
  listener->handle.data = this;
  if (rc == 0) rc = uv_listen(&listener->stream, SOMAXCONN, OnConnection);
  if (rc != 0) {
    uv_close(&listener->handle,
             [](uv_handle_t* h) { delete reinterpret_cast<StreamHandle*>(h); });
    return Status::Error("http-reactor: cannot listen on fd " +
                         std::to_string(fd) + ": " + uv_strerror(rc));
  }
  listeners_.push_back(listener);
  return Status::Ok();
}

void Server::OnConnection(uv_stream_t* listener, int status) {
  auto* self = static_cast<Server*>(listener->data);
  if (status < 0) {
    // EMFILE and the like: keep serving who we have; say it once.
    if (!self->accept_error_logged_) {
      Complain("http-reactor: accept: %s\n", uv_strerror(status));
      self->accept_error_logged_ = true;
    }
    return;
  }
  Connection::Accept(self, listener);
}

void Server::Stop() {
  if (stopping_) return;
  stopping_ = true;
  stop_started_ms_ = uv_now(loop());
  // The Watcher keeps the listening sockets: connections not accepted here
  // wait in the backlog for the next reactor.
  for (StreamHandle* listener : listeners_) {
    uv_close(&listener->handle,
             [](uv_handle_t* h) { delete reinterpret_cast<StreamHandle*>(h); });
  }
  listeners_.clear();
  Complain(
      "http-reactor: draining: no longer accepting, %zu connections "
      "open\n",
      connections_.size());
  if (connections_.empty()) return;
  drained_connections_ = connections_.size();
  holding_stop_ = true;
  client_->HoldStop();
  std::vector<Connection*> open(connections_.begin(), connections_.end());
  for (Connection* connection : open) connection->Drain();
}

void Server::Forget(Connection* connection) {
  connections_.erase(connection);
  if (!holding_stop_ || !connections_.empty()) return;
  holding_stop_ = false;
  std::fprintf(
      stderr,
      "http-reactor: drained %zu connections in %llums: %zu ended "
      "with Connection: close, %zu idle ones closed at the drain "
      "timeout\n",
      drained_connections_,
      static_cast<unsigned long long>(uv_now(loop()) - stop_started_ms_),
      drained_with_close_, drained_idle_);
  client_->ReleaseStop();
}

// ---------------------------------------------------------------- connection

void Connection::Accept(Server* server, uv_stream_t* listener) {
  auto* self = new Connection(server);
  const bool tcp = listener->type == UV_TCP;
  if (tcp) {
    uv_tcp_init(server->loop(), &self->handle_.tcp);
  } else {
    uv_pipe_init(server->loop(), &self->handle_.pipe, 0);
  }
  self->handle_.handle.data = self;
  uv_timer_init(server->loop(), &self->timer_);
  self->timer_.data = self;
  self->open_handles_ = 2;
  server->Track(self);
  if (uv_accept(listener, self->stream()) != 0) {
    self->Close();
    return;
  }
  if (tcp) {
    uv_tcp_nodelay(&self->handle_.tcp, 1);
    sockaddr_storage peer{};
    int length = sizeof(peer);
    if (uv_tcp_getpeername(&self->handle_.tcp,
                           reinterpret_cast<sockaddr*>(&peer), &length) == 0) {
      char host[INET6_ADDRSTRLEN + 2] = "";
      int port = 0;
      if (peer.ss_family == AF_INET) {
        auto* v4 = reinterpret_cast<sockaddr_in*>(&peer);
        uv_ip4_name(v4, host, sizeof(host));
        port = ntohs(v4->sin_port);
        self->remote_ = std::string(host) + ":" + std::to_string(port);
      } else if (peer.ss_family == AF_INET6) {
        auto* v6 = reinterpret_cast<sockaddr_in6*>(&peer);
        uv_ip6_name(v6, host, sizeof(host));
        port = ntohs(v6->sin6_port);
        self->remote_ = "[" + std::string(host) + "]:" + std::to_string(port);
      }
    }
  } else {
    self->remote_ = "unix";
  }
  self->idle_since_ = self->now();
  self->UpdateReading();
  self->ArmTimer();
}

void Connection::Drain() {
  if (state_ != State::kOpen || draining_) return;
  // Closing an idle keep-alive connection now would race its client's next
  // request (it may be on the wire already): that request would meet a
  // close or a reset and be lost. Wait for it instead and answer it with
  // "Connection: close"; a request being received, or read ahead, is
  // answered the same way.
  draining_ = true;
  drain_deadline_ = now() + server_->options().drain_timeout_ms;
  Flush();
}

bool Connection::DrainCanCloseNow() {
  if (!pipeline_.empty() || !input_.empty() || parser_.in_request()) {
    return false;
  }
  // Bytes the client sent that the loop has not read yet are requests we
  // owe an answer: take them now (on a local connection, a request the
  // client wrote before our answer left is always there by now).
  int fd = -1;
  if (uv_fileno(&handle_.handle, &fd) != 0) return true;
  char buffer[16 * 1024];
  while (!peer_eof_ && input_.size() < 256 * 1024) {
    ssize_t got = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (got > 0) {
      input_.append(buffer, static_cast<std::size_t>(got));
    } else {
      // 0: EOF, which libuv reads again; EAGAIN: nothing waiting; an error
      // libuv sees on its next read.
      peer_eof_ = got == 0;
      break;
    }
  }
  return input_.empty();
}

void Connection::OnDrainDeadline() {
  if (parser_.in_request()) {
    // A client slower than the drain: it gets an answer, not a reset.
    request_deadline_ = 0;
    input_.clear();
    EndWith(503, "the server is stopping: request not received within " +
                     std::to_string(server_->options().drain_timeout_ms) +
                     "ms (--drain-timeout)");
    return;
  }
  if (pipeline_.empty() && writes_pending_ == 0) {
    server_->CountDrainedIdle();
    Close();
    return;
  }
  // Answers still owed: send them, the last with "Connection: close", and
  // read nothing more.
  state_ = State::kLastAnswer;
  input_.clear();
  Flush();
}

void Connection::OnRead(ssize_t nread, const uv_buf_t* buf) {
  if (state_ == State::kClosed || nread == 0) return;
  if (nread < 0) {
    reading_ = false;  // libuv stops reading at EOF and errors
    // The client went away (an EOF is taken as that, as nginx does: a
    // client that only shut down its sending side looks the same): the
    // requests it has not had answers to are cancelled (Close), so their
    // jobs stop working for nobody.
    Close();
    return;
  }
  if (state_ != State::kOpen) return;  // lingering: discard
  input_.append(buf->base, static_cast<std::size_t>(nread));
  ProcessInput();
}

void Connection::ProcessInput() {
  if (processing_ || state_ == State::kClosed) return;
  processing_ = true;
  const uint64_t chunk_started_ns = uv_hrtime();
  const std::size_t max_pipeline = server_->options().max_pipeline;
  while (state_ == State::kOpen && !input_.empty() &&
         pipeline_.size() < max_pipeline) {
    const bool continuing = parser_.in_request();
    std::size_t used = 0;
    http::RequestParser::Outcome result = parser_.Feed(input_, &used);
    input_.erase(0, used);
    if (parser_.TakeContinueWanted() && pipeline_.empty()) {
      Write("HTTP/1.1 100 Continue\r\n\r\n");
    }
    if (result == http::RequestParser::Outcome::kNeedMore) break;
    request_deadline_ = 0;
    if (result == http::RequestParser::Outcome::kError) {
      input_.clear();
      EndWith(parser_.error_status(), parser_.error_text());
      break;
    }
    StartExchange(parser_.TakeRequest(),
                  continuing ? request_started_ns_ : chunk_started_ns);
  }
  processing_ = false;
  if (state_ == State::kOpen) {
    if (!parser_.in_request()) {
      request_deadline_ = 0;
    } else if (request_deadline_ == 0) {
      request_deadline_ = now() + server_->options().read_timeout_ms;
      request_started_ns_ = chunk_started_ns;
    }
  }
  UpdateReading();
  ArmTimer();
}

void Connection::StartExchange(http::Request request, uint64_t started_ns) {
  auto exchange = std::make_shared<Exchange>();
  exchange->connection = this;
  exchange->method = request.method;
  exchange->path = request.target;
  exchange->head = request.head;
  exchange->http10 = request.http_major == 1 && request.http_minor == 0;
  exchange->keep_alive = request.keep_alive;
  exchange->started_ns = started_ns;
  pipeline_.push_back(exchange);
  served_one_ = true;
  if (!exchange->keep_alive) {
    state_ = State::kLastAnswer;  // parse nothing after this one
    input_.clear();
  }

  http::Route route = http::RouteRequest(request);
  switch (route.kind) {
    case http::Route::Kind::kHealth: {
      if (server_->stopping()) {
        AnswerError(exchange, 503, "stopping");
        return;
      }
      http::Response response;
      response.body = "ok\n";
      Answer(exchange, std::move(response));
      return;
    }
    case http::Route::Kind::kNotFound:
      AnswerError(exchange, 404, "no such resource: " + request.path);
      return;
    case http::Route::Kind::kMethodNotAllowed: {
      http::Response response;
      response.status = 405;
      response.content_type = "application/json";
      response.body = http::ErrorJson("method " + request.method +
                                      " is not allowed on " + request.path);
      response.headers.emplace_back("Allow", route.allow);
      Answer(exchange, std::move(response));
      return;
    }
    case http::Route::Kind::kJob:
      break;
  }
  SendOptions options;
  Result<std::int32_t> priority =
      http::ParsePriority(request, options.priority);
  if (!priority.ok()) {
    AnswerError(exchange, 400, priority.status().message());
    return;
  }
  options.priority = *priority;
  if (!server_->AdmitGroup(route.group)) {
    AnswerError(exchange, 404,
                "no such group: " + route.group + " (too many names tried)",
                static_cast<int>(wire::ErrorCode::kRefused));
    return;
  }
  options.meta = http::RequestMeta(request, remote_);
  // Server-sent events need a chunked body: HTTP/1.1 only. Others get the
  // plain answer, and progress is not asked for.
  if (http::WantsEventStream(request) && !exchange->http10) {
    exchange->sse = true;
    options.on_progress = [exchange](const Progress& progress) {
      if (Connection* connection = exchange->connection) {
        connection->OnProgress(exchange, progress);
      }
    };
  }
  exchange->request_id = server_->client()->Send(
      route.group, request.body,
      [exchange, group = route.group](Reply reply) {
        exchange->request_id = 0;
        if (Connection* connection = exchange->connection) {
          connection->OnReply(exchange, group, std::move(reply));
        }
      },
      std::move(options));
}

void Connection::OnProgress(const std::shared_ptr<Exchange>& exchange,
                            const Progress& progress) {
  if (exchange->ready || exchange->sse_pending.size() > kMaxPendingEvents) {
    return;
  }
  exchange->sse_pending +=
      http::Chunk(http::ProgressEvent(progress.fraction, progress.text));
  if (!pipeline_.empty() && pipeline_.front() == exchange) Flush();
}

void Connection::OnReply(const std::shared_ptr<Exchange>& exchange,
                         const std::string& group, Reply reply) {
  http::Response response;
  int code = 0;       // the pool's error code, for an error event
  std::string error;  // its text
  if (reply.ok) {
    Result<http::ReplyHead> head = http::ParseReplyMeta(reply.meta);
    if (head.ok()) {
      response.status = head->status;
      response.content_type = head->content_type.empty()
                                  ? "application/octet-stream"
                                  : std::move(head->content_type);
      response.headers = std::move(head->headers);
      response.body = std::move(reply.body);
      if (!head->message_id.empty()) {
        response.headers.emplace_back("X-Message-Id",
                                      std::move(head->message_id));
      }
    } else {
      // The job answered, but not with something HTTP can carry: say so
      // (the job's bug), rather than guess.
      server_->LogBadMeta(group, head.status().message());
      code = static_cast<int>(wire::ErrorCode::kProtocol);
      error =
          "bad reply meta from group " + group + ": " + head.status().message();
      response.status = 502;
      response.content_type = "application/json";
      response.body = http::ErrorJson(error, code);
    }
  } else {
    code = static_cast<int>(reply.code);
    response.status = http::StatusForError(reply.code);
    response.content_type = "application/json";
    response.body = http::ErrorJson(reply.body, code);
    if (reply.code == wire::ErrorCode::kQueueFull) {
      response.headers.emplace_back("Retry-After", "1");
    }
    error = std::move(reply.body);
  }
  if (exchange->sse) {
    exchange->sse_final =
        code == 0 ? http::ReplyEvent(response.status, response.content_type,
                                     response.body)
                  : http::ErrorEvent(response.status, error, code);
  }
  Answer(exchange, std::move(response));
}

void Connection::Answer(const std::shared_ptr<Exchange>& exchange,
                        http::Response response) {
  if (exchange->connection != this || exchange->ready) return;
  exchange->response = std::move(response);
  exchange->ready = true;
  Flush();
}

void Connection::AnswerError(const std::shared_ptr<Exchange>& exchange,
                             int status, std::string_view text, int code) {
  http::Response response;
  response.status = status;
  response.content_type = "application/json";
  response.body = http::ErrorJson(text, code);
  Answer(exchange, std::move(response));
}

void Connection::EndWith(int status, std::string_view text) {
  auto exchange = std::make_shared<Exchange>();
  exchange->connection = this;
  exchange->keep_alive = false;
  exchange->started_ns = uv_hrtime();
  pipeline_.push_back(exchange);
  state_ = State::kLastAnswer;
  input_.clear();
  AnswerError(exchange, status, text);
}

void Connection::Flush() {
  if (state_ == State::kClosed || state_ == State::kLingering) return;
  std::string out;
  while (!pipeline_.empty()) {
    Exchange& front = *pipeline_.front();
    if (front.sse && (front.ready || !front.sse_pending.empty())) {
      if (!front.sse_started) {
        out += http::EventStreamHead(front.keep_alive);
        front.sse_started = true;
      }
      out += front.sse_pending;
      front.sse_pending.clear();
    }
    if (!front.ready) break;
    std::shared_ptr<Exchange> exchange = std::move(pipeline_.front());
    pipeline_.pop_front();
    bool last =
        !exchange->keep_alive || (state_ != State::kOpen && pipeline_.empty());
    if (exchange->sse) {
      // Its head is out, saying whether the connection stays: a drain
      // closes it on the next answer.
      out += http::Chunk(exchange->sse_final);
      out += http::Chunk("");
    } else {
      if (!last && draining_ && state_ == State::kOpen && pipeline_.empty() &&
          DrainCanCloseNow()) {
        // Nothing more was sent: this answer is the connection's last.
        last = true;
        state_ = State::kLastAnswer;
        server_->CountDrainedClose();
      }
      out += http::FormatResponse(exchange->response, !last, exchange->http10,
                                  exchange->head);
    }
    LogAccess(*exchange, exchange->response.status,
              exchange->head ? 0 : exchange->response.body.size());
    exchange->connection = nullptr;
    exchange->response = http::Response{};
  }
  if (!out.empty()) Write(std::move(out));
  if (state_ == State::kClosed) return;
  if (state_ == State::kLastAnswer && pipeline_.empty()) {
    StartLinger();
    return;
  }
  if (state_ == State::kOpen && pipeline_.empty()) idle_since_ = now();
  if (!processing_ && state_ == State::kOpen && !input_.empty()) {
    ProcessInput();  // requests read ahead while the pipeline was full
    return;
  }
  UpdateReading();
  ArmTimer();
}

void Connection::Write(std::string data) {
  auto* write = new WriteRequest;
  write->data = std::move(data);
  write->request.data = write;
  write->connection = this;
  uv_buf_t buf = uv_buf_init(write->data.data(),
                             static_cast<unsigned int>(write->data.size()));
  int rc = uv_write(&write->request, stream(), &buf, 1,
                    [](uv_write_t* request, int status) {
                      auto* write = static_cast<WriteRequest*>(request->data);
                      Connection* self = write->connection;
                      delete write;
                      self->OnWritten(status);
                    });
  if (rc != 0) {
    delete write;
    Close();
    return;
  }
  if (writes_pending_++ == 0) {
    write_deadline_ = now() + server_->options().write_timeout_ms;
  }
}

void Connection::OnWritten(int status) {
  --writes_pending_;
  if (state_ == State::kClosed) return;
  if (status < 0) {
    Close();
    return;
  }
  // Progress: the client reads; give it a new deadline for the rest.
  write_deadline_ =
      writes_pending_ > 0 ? now() + server_->options().write_timeout_ms : 0;
  if (!processing_ && state_ == State::kOpen && !input_.empty()) {
    ProcessInput();
    return;
  }
  UpdateReading();
  ArmTimer();
}

void Connection::StartLinger() {
  state_ = State::kLingering;
  input_.clear();
  shutdown_.data = this;
  int rc =
      uv_shutdown(&shutdown_, stream(), [](uv_shutdown_t* request, int status) {
        auto* self = static_cast<Connection*>(request->data);
        if (self->state_ != State::kClosed && status < 0) self->Close();
      });
  if (rc != 0) {
    Close();
    return;
  }
  linger_deadline_ = now() + kLingerMs;
  UpdateReading();
  ArmTimer();
}

void Connection::UpdateReading() {
  if (state_ == State::kClosed) return;
  bool want = false;
  if (state_ == State::kLingering) {
    want = true;
  } else if (state_ == State::kOpen) {
    want = input_.empty() &&
           pipeline_.size() < server_->options().max_pipeline &&
           uv_stream_get_write_queue_size(stream()) < kMaxWriteBacklog;
  }
  if (want && !reading_) {
    int rc = uv_read_start(
        stream(),
        [](uv_handle_t*, std::size_t, uv_buf_t* buf) {
          static char buffer[64 * 1024];
          *buf = uv_buf_init(buffer, sizeof(buffer));
        },
        [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
          static_cast<Connection*>(stream->data)->OnRead(nread, buf);
        });
    if (rc == 0) {
      reading_ = true;
    } else {
      Close();
    }
  } else if (!want && reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
}

void Connection::ArmTimer() {
  if (state_ == State::kClosed) return;
  const Options& options = server_->options();
  uint64_t deadline = UINT64_MAX;
  auto consider = [&deadline](uint64_t at) {
    if (at != 0) deadline = std::min(deadline, at);
  };
  if (state_ == State::kLingering) consider(linger_deadline_);
  if (writes_pending_ > 0) consider(write_deadline_);
  if (state_ == State::kOpen) {
    if (draining_) consider(drain_deadline_);
    if (request_deadline_ != 0) {
      consider(request_deadline_);
    } else if (pipeline_.empty() && writes_pending_ == 0) {
      consider(idle_since_ + (served_one_ ? options.idle_timeout_ms
                                          : options.read_timeout_ms));
    }
  }
  if (deadline == UINT64_MAX) {
    uv_timer_stop(&timer_);
    return;
  }
  const uint64_t current = now();
  uv_timer_start(
      &timer_,
      [](uv_timer_t* timer) {
        static_cast<Connection*>(timer->data)->OnTimer();
      },
      deadline > current ? deadline - current : 0, 0);
}

void Connection::OnTimer() {
  if (state_ == State::kClosed) return;
  const Options& options = server_->options();
  const uint64_t current = now();
  if (state_ == State::kLingering && current >= linger_deadline_) {
    Close();
    return;
  }
  if (writes_pending_ > 0 && current >= write_deadline_) {
    Complain(
        "http-reactor: %s does not read its answers; closed after "
        "%llums\n",
        remote_.c_str(),
        static_cast<unsigned long long>(options.write_timeout_ms));
    Close();
    return;
  }
  if (state_ == State::kOpen && draining_ && current >= drain_deadline_) {
    OnDrainDeadline();
    return;
  }
  if (state_ == State::kOpen) {
    if (request_deadline_ != 0 && current >= request_deadline_) {
      request_deadline_ = 0;
      EndWith(408, "request not received within " +
                       std::to_string(options.read_timeout_ms) + "ms");
      return;
    }
    if (request_deadline_ == 0 && pipeline_.empty() && writes_pending_ == 0 &&
        current >= idle_since_ + (served_one_ ? options.idle_timeout_ms
                                              : options.read_timeout_ms)) {
      Close();
      return;
    }
  }
  ArmTimer();
}

void Connection::Close() {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  std::vector<std::uint64_t> unanswered;
  for (const std::shared_ptr<Exchange>& exchange : pipeline_) {
    exchange->connection = nullptr;
    if (exchange->request_id != 0) unanswered.push_back(exchange->request_id);
    LogAccess(*exchange, 499, 0);  // nginx's "client closed request"
  }
  pipeline_.clear();
  input_.clear();
  // Nobody is left to answer: the jobs are told (their cancel), and stop.
  for (std::uint64_t id : unanswered) server_->client()->Cancel(id);
  auto on_closed = [](uv_handle_t* handle) {
    auto* self = static_cast<Connection*>(handle->data);
    if (--self->open_handles_ == 0) {
      self->server_->Forget(self);
      delete self;
    }
  };
  uv_close(&handle_.handle, on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_closed);
}

void Connection::LogAccess(const Exchange& exchange, int status,
                           std::size_t bytes) {
  const uint64_t elapsed_us =
      exchange.started_ns == 0 ? 0 : (uv_hrtime() - exchange.started_ns) / 1000;
  std::printf("%s %s %d %zu %lluus %s\n", LogSafe(exchange.method).c_str(),
              LogSafe(exchange.path).c_str(), status, bytes,
              static_cast<unsigned long long>(elapsed_us), remote_.c_str());
  ScheduleAccessFlush();
}

}  // namespace

int RunHttpReactor(const std::vector<std::string>& args) {
  Result<Options> parsed = ParseOptions(args);
  if (!parsed.ok()) {
    Complain("%s\n", parsed.status().message().c_str());
    return 1;
  }
  if (parsed->help) {
    std::fprintf(stdout, "%s\n", kUsage);
    return 0;
  }
  const Options& options = *parsed;
  // Access lines are buffered (ScheduleAccessFlush): one write, and one
  // wake-up of the Watcher that logs them, for up to kAccessFlushMs of
  // requests instead of one per request. The Watcher splits lines itself,
  // so a line cut by a full buffer is fine, as long as nothing else is
  // written between its two halves: stderr goes through Complain().
  std::setvbuf(stdout, nullptr, _IOFBF, 64 * 1024);

  std::vector<int> fds;
  std::vector<std::string> names;
  char** fd_names = nullptr;
  int inherited = sd_listen_fds_with_names(/*unset_environment=*/1, &fd_names);
  if (inherited < 0) {
    Complain("http-reactor: bad LISTEN_FDS: %s\n", std::strerror(-inherited));
    return 2;
  }
  for (int i = 0; i < inherited; ++i) {
    fds.push_back(SD_LISTEN_FDS_START + i);
    names.push_back(fd_names != nullptr && fd_names[i] != nullptr
                        ? fd_names[i]
                        : "fd " + std::to_string(SD_LISTEN_FDS_START + i));
  }
  if (fd_names != nullptr) {
    for (char** name = fd_names; *name != nullptr; ++name) free(*name);
    free(fd_names);
  }
  if (inherited == 0) {
    for (const std::string& text : options.listen) {
      Result<ListenAddress> address = ParseListenAddress(text);
      if (!address.ok()) {
        Complain("http-reactor: --listen %s: %s\n", text.c_str(),
                 address.status().message().c_str());
        return 1;
      }
      Result<int> fd = BindListenSocket(*address);
      if (!fd.ok()) {
        Complain("http-reactor: %s\n", fd.status().message().c_str());
        return 2;
      }
      fds.push_back(*fd);
      names.push_back(text);
    }
  }
  if (fds.empty()) {
    Complain(
        "http-reactor: no socket to listen on: give its reactor group "
        "a `listen:` list (the Watcher passes LISTEN_FDS), or pass "
        "--listen HOST:PORT\n");
    return 1;
  }

  std::string error;  // the client library's convention
  std::unique_ptr<PoolClient> client =
      PoolClient::FromEnvironment(nullptr, &error);
  if (!client) {
    Complain("%s\n", error.c_str());
    return 2;
  }
  Server server(client.get(), options);
  for (int fd : fds) {
    if (Status listening = server.Listen(fd); !listening.ok()) {
      Complain("%s\n", listening.message().c_str());
      return 2;
    }
  }
  client->OnStop([&server] { server.Stop(); });
  std::string joined;
  for (const std::string& name : names) {
    joined += (joined.empty() ? "" : ", ") + name;
  }
  Complain("http-reactor: serving HTTP on %s\n", joined.c_str());
  uv_timer_t access_flush;
  uv_timer_init(client->loop(), &access_flush);
  // Pending access lines do not keep the loop (the process) alive: they are
  // flushed after Run() returns.
  uv_unref(reinterpret_cast<uv_handle_t*>(&access_flush));
  g_access_flush = &access_flush;
  int status = client->Run();
  g_access_flush = nullptr;
  std::fflush(stdout);
  uv_close(reinterpret_cast<uv_handle_t*>(&access_flush), nullptr);
  uv_run(client->loop(), UV_RUN_NOWAIT);
  return status;
}

}  // namespace workerpool
