#include "os/stream_server.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <set>

#include "os/uv_owner.h"

namespace workerpool {

void StreamSession::OnAccepted(StreamConnection&) {}
void StreamSession::OnTimeout(StreamConnection& connection) {
  connection.Close();
}

namespace {

// The socket handle of a listener or a connection: a pipe for AF_UNIX, a
// TCP handle otherwise. Both are streams.
union SocketHandle {
  uv_pipe_t pipe;
  uv_tcp_t tcp;
};

uv_handle_t* AsHandle(SocketHandle* socket) {
  return reinterpret_cast<uv_handle_t*>(socket);
}
uv_stream_t* AsStream(SocketHandle* socket) {
  return reinterpret_cast<uv_stream_t*>(socket);
}

class ConnectionImpl final : public StreamConnection {
 public:
  explicit ConnectionImpl(StreamListener* listener) : listener_(listener) {}

  // Initializes the handles and accepts from SERVER; false when the
  // accept failed (the connection is then closing).
  bool Accept(uv_stream_t* server);
  // Asks the session, then reads. Call once, after a successful Accept.
  void Start();

  void Answer(std::string text) override { Send(std::move(text), {}); }
  void AnswerAndHold(std::string text,
                     std::function<void()> on_written) override {
    Send(std::move(text), std::move(on_written));
  }
  void Close() override;
  bool answered() const override { return answered_; }
  bool closing() const override { return closing_; }
  // An answer is queued that the socket has not taken whole yet.
  bool writing() const { return answered_ && !written_ && !closing_; }
  int fd() const override {
    uv_os_fd_t fd = -1;
    if (uv_fileno(reinterpret_cast<const uv_handle_t*>(&socket_), &fd) != 0) {
      return -1;
    }
    return fd;
  }

 private:
  void Send(std::string text, std::function<void()> on_written);
  void OnRead(ssize_t nread, const uv_buf_t* buffer);
  void OnLine(std::string_view data);
  void OnWritten(int status);
  void OnTimer();
  void StartTimer();
  // After a session callback that had to answer or close.
  void CloseUnlessAnswered() {
    if (!closing_ && !answered_) Close();
  }

  StreamListener* listener_;
  std::unique_ptr<StreamSession> session_;
  SocketHandle socket_;
  uv_timer_t timer_;
  uv_write_t write_request_;
  uv_shutdown_t shutdown_request_;
  std::string line_;          // kLine: the request line so far
  std::size_t received_ = 0;  // kChunks: bytes before the answer
  std::string output_;
  std::function<void()> on_held_;
  bool closing_ = false;
  bool answered_ = false;
  bool request_taken_ = false;  // kLine: the line went to the session
  bool hold_ = false;           // AnswerAndHold
  bool written_ = false;        // the answer is out
  bool peer_done_ = false;      // the client's EOF (or a read error) came
  int open_handles_ = 2;        // the socket and the timer
};

}  // namespace

// The listening socket and its connections. Outlives the StreamServer
// object until every handle has closed: each connection holds a reference.
// Defined after ConnectionImpl, which it lists.
struct StreamListener {
  uv_loop_t* loop = nullptr;
  StreamServerOptions options;
  StreamServer::SessionFactory make_session;
  bool unix_socket = false;
  SocketHandle socket;
  std::set<ConnectionImpl*> connections;
  bool closed = false;
  int open_handles = 1;  // the listening socket, plus one per connection
  // One loop thread, and each read is consumed before the next alloc.
  char read_buffer[16 * 1024];

  void Release() {
    if (--open_handles == 0) delete this;
  }
};

namespace {

bool ConnectionImpl::Accept(uv_stream_t* server) {
  if (listener_->unix_socket) {
    uv_pipe_init(listener_->loop, &socket_.pipe, 0);
  } else {
    uv_tcp_init(listener_->loop, &socket_.tcp);
  }
  AsHandle(&socket_)->data = this;
  uv_timer_init(listener_->loop, &timer_);
  timer_.data = this;
  if (uv_accept(server, AsStream(&socket_)) != 0) {
    Close();
    return false;
  }
  return true;
}

void ConnectionImpl::Start() {
  session_ = listener_->make_session();
  if (session_ == nullptr) {
    Close();
    return;
  }
  session_->OnAccepted(*this);
  if (closing_) return;
  if (!answered_) StartTimer();
  // Read even after a refusal in OnAccepted: the client's EOF lets the
  // connection close before the timeout.
  uv_read_start(
      AsStream(&socket_),
      [](uv_handle_t* handle, size_t, uv_buf_t* buffer) {
        StreamListener* listener = Owner<ConnectionImpl>(handle)->listener_;
        *buffer =
            uv_buf_init(listener->read_buffer, sizeof(listener->read_buffer));
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) {
        Owner<ConnectionImpl>(stream)->OnRead(nread, buffer);
      });
}

void ConnectionImpl::Close() {
  if (closing_) return;
  closing_ = true;
  listener_->connections.erase(this);
  auto on_closed = [](uv_handle_t* handle) {
    ConnectionImpl* owner = Owner<ConnectionImpl>(handle);
    if (--owner->open_handles_ > 0) return;
    StreamListener* listener = owner->listener_;
    delete owner;
    listener->Release();
  };
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_closed);
  uv_close(AsHandle(&socket_), on_closed);
}

void ConnectionImpl::Send(std::string text, std::function<void()> on_written) {
  if (closing_ || answered_) return;
  answered_ = true;
  hold_ = static_cast<bool>(on_written);
  on_held_ = std::move(on_written);
  // Reading goes on, dropping, until the client's EOF (see OnWritten). A
  // client that does not read its answer is dropped after the timeout.
  StartTimer();
  output_ = std::move(text);
  uv_buf_t buffer =
      uv_buf_init(output_.data(), static_cast<unsigned>(output_.size()));
  write_request_.data = this;
  if (uv_write(&write_request_, AsStream(&socket_), &buffer, 1,
               [](uv_write_t* request, int status) {
                 Owner<ConnectionImpl>(request)->OnWritten(status);
               }) != 0) {
    Close();
  }
}

void ConnectionImpl::OnWritten(int status) {
  if (closing_) return;
  if (status != 0) {
    Close();
    return;
  }
  written_ = true;
  if (hold_) {
    uv_timer_stop(&timer_);
    // May close the server, and this connection with it.
    on_held_();
    return;
  }
  if (peer_done_) {
    Close();
    return;
  }
  // Half-close instead of closing (see StreamConnection::Answer); OnRead
  // closes at the client's EOF, the timer if it never comes.
  shutdown_request_.data = this;
  if (uv_shutdown(&shutdown_request_, AsStream(&socket_),
                  [](uv_shutdown_t*, int) {}) != 0) {
    Close();
  }
}

void ConnectionImpl::OnRead(ssize_t nread, const uv_buf_t* buffer) {
  if (closing_) return;
  if (answered_ || request_taken_) {
    // Input after the request is dropped; its end lets us close.
    if (nread < 0) {
      peer_done_ = true;
      uv_read_stop(AsStream(&socket_));
      if (written_ && !hold_) Close();
    }
    return;
  }
  const bool lines =
      listener_->options.framing == StreamServerOptions::Framing::kLine;
  const std::size_t limit = listener_->options.max_request_bytes;
  if (nread > 0) {
    std::string_view data(buffer->base, static_cast<std::size_t>(nread));
    if (lines) {
      OnLine(data);
      return;
    }
    received_ += data.size();
    if (received_ > limit) {
      session_->OnTooLarge(*this);
      CloseUnlessAnswered();
      return;
    }
    session_->OnInput(*this, data);
    return;
  }
  if (nread == 0) return;  // libuv's EAGAIN
  if (lines && nread == UV_EOF && !line_.empty()) {
    // A request without its final newline is still one request.
    peer_done_ = true;
    request_taken_ = true;
    std::string line = std::move(line_);
    session_->OnInput(*this, line);
    return;
  }
  // A request cut short gets no answer.
  Close();
}

void ConnectionImpl::OnLine(std::string_view data) {
  std::size_t newline = data.find('\n');
  line_.append(data.substr(0, newline));
  if (line_.size() > listener_->options.max_request_bytes) {
    session_->OnTooLarge(*this);
    CloseUnlessAnswered();
    return;
  }
  if (newline == std::string_view::npos) return;
  request_taken_ = true;
  std::string line = std::move(line_);
  session_->OnInput(*this, line);
}

void ConnectionImpl::StartTimer() {
  uv_timer_start(
      &timer_,
      [](uv_timer_t* timer) { Owner<ConnectionImpl>(timer)->OnTimer(); },
      listener_->options.timeout_ms, 0);
}

void ConnectionImpl::OnTimer() {
  if (answered_) {
    Close();
    return;
  }
  session_->OnTimeout(*this);
  CloseUnlessAnswered();
}

}  // namespace

Result<std::unique_ptr<StreamServer>> StreamServer::Listen(
    uv_loop_t* loop, int fd, StreamServerOptions options,
    SessionFactory make_session) {
  sockaddr_storage address{};
  socklen_t size = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) {
    int error = errno;
    close(fd);
    return Status::Error(uv_strerror(uv_translate_sys_error(error)));
  }
  auto* listener = new StreamListener;
  listener->loop = loop;
  listener->options = std::move(options);
  listener->make_session = std::move(make_session);
  listener->unix_socket = address.ss_family == AF_UNIX;
  int rc;
  if (listener->unix_socket) {
    uv_pipe_init(loop, &listener->socket.pipe, 0);
    rc = uv_pipe_open(&listener->socket.pipe, fd);
  } else {
    uv_tcp_init(loop, &listener->socket.tcp);
    rc = uv_tcp_open(&listener->socket.tcp, fd);
  }
  AsHandle(&listener->socket)->data = listener;
  if (rc != 0) {
    close(fd);
  } else {
    rc = uv_listen(AsStream(&listener->socket), listener->options.backlog,
                   [](uv_stream_t* server, int status) {
                     StreamListener* owner = Owner<StreamListener>(server);
                     if (status < 0) {
                       spdlog::warn("{}: accept: {}", owner->options.name,
                                    uv_strerror(status));
                       return;
                     }
                     if (owner->closed) return;
                     auto* connection = new ConnectionImpl(owner);
                     ++owner->open_handles;
                     owner->connections.insert(connection);
                     if (connection->Accept(server)) connection->Start();
                   });
  }
  std::unique_ptr<StreamServer> server(new StreamServer(listener));
  if (rc != 0) {
    server->Close();
    return Status::Error(uv_strerror(rc));
  }
  return server;
}

StreamServer::~StreamServer() { Close(); }

bool StreamServer::Writing() const {
  if (listener_ == nullptr) return false;
  for (const ConnectionImpl* connection : listener_->connections) {
    if (connection->writing()) return true;
  }
  return false;
}

void StreamServer::Close() {
  if (listener_ == nullptr) return;
  StreamListener* listener = listener_;
  listener_ = nullptr;
  listener->closed = true;
  std::set<ConnectionImpl*> connections = listener->connections;
  for (ConnectionImpl* connection : connections) connection->Close();
  uv_close(AsHandle(&listener->socket), [](uv_handle_t* handle) {
    Owner<StreamListener>(handle)->Release();
  });
}

}  // namespace workerpool
