// The control socket's server side: runs on the Watcher's loop. See
// control.h for the protocol and docs/OPERATIONS.md for the commands.
#include <errno.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string_view>

#include "core/control_request.h"
#include "watcher/control.h"

namespace workerpool {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxRequestBytes = kMaxControlRequestBytes;
// A client gets this long to send its request, and again to read the answer.
constexpr uint64_t kTimeoutMs = 5000;
constexpr int kBacklog = 64;

std::string Errno(int error) { return std::strerror(error); }

// Creates DIR and its missing parents with mode 0755.
Status MakeDirectories(const std::string& dir) {
  if (dir.empty()) return Status::Ok();
  struct stat info;
  if (stat(dir.c_str(), &info) == 0) {
    if (S_ISDIR(info.st_mode)) return Status::Ok();
    return Status::Error("cannot create the control socket in " + dir +
                         ": not a directory");
  }
  std::size_t slash = dir.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    Status parent = MakeDirectories(dir.substr(0, slash));
    if (!parent.ok()) return parent;
  }
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::Error("cannot create the control socket's directory " + dir +
                         ": " + Errno(errno));
  }
  return Status::Ok();
}

sockaddr_un SocketAddress(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  return address;
}

// An existing file at PATH: a socket nobody answers on is removed; a live
// one means another Watcher owns the path.
Status ClaimPath(const std::string& path) {
  struct stat info;
  if (lstat(path.c_str(), &info) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::Error("cannot check the control socket " + path + ": " +
                         Errno(errno));
  }
  if (!S_ISSOCK(info.st_mode)) {
    return Status::Error("the control socket path " + path +
                         " exists and is not a socket; remove it or set "
                         "pool.control_socket");
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Error("cannot create a socket: " + Errno(errno));
  sockaddr_un address = SocketAddress(path);
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  int error = rc == 0 ? 0 : errno;
  close(fd);
  if (rc == 0 || error == EAGAIN || error == EINPROGRESS) {
    return Status::Error("another workerpool is running at " + path +
                         " (its control socket answers); stop it first or "
                         "set another pool.control_socket");
  }
  if (error == ECONNREFUSED || error == ENOENT) {
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return Status::Error("cannot remove the stale control socket " + path +
                           ": " + Errno(errno));
    }
    spdlog::info("removed the stale control socket {}", path);
    return Status::Ok();
  }
  return Status::Error("cannot check the control socket " + path + ": " +
                       Errno(error));
}

// Binds and listens on PATH with mode 0600 from the start (umask), so no
// other user can connect between bind and chmod.
Result<int> BindControlSocket(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Error("cannot create a socket: " + Errno(errno));
  sockaddr_un address = SocketAddress(path);
  mode_t old_mask = umask(0177);
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  int error = errno;
  umask(old_mask);
  if (rc != 0) {
    close(fd);
    if (error == EADDRINUSE) {
      return Status::Error("another workerpool is running at " + path);
    }
    return Status::Error("cannot bind the control socket " + path + ": " +
                         Errno(error));
  }
  if (chmod(path.c_str(), 0600) != 0 || listen(fd, kBacklog) != 0) {
    error = errno;
    close(fd);
    unlink(path.c_str());
    return Status::Error("cannot listen on the control socket " + path + ": " +
                         Errno(error));
  }
  return fd;
}

json ErrorAnswer(const std::string& message) {
  return json{{"ok", false}, {"error", message}};
}

std::string Describe(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

struct Listener;

// One accepted client: reads one request line, writes one answer line.
struct Connection {
  Listener* listener = nullptr;
  uv_pipe_t pipe;
  uv_timer_t timer;
  uv_write_t write_request;
  uv_shutdown_t shutdown_request;
  std::string input;
  std::string output;
  std::string peer;  // "uid U pid P", for the log
  bool closing = false;
  bool answered = false;
  bool written = false;    // the answer is out
  bool peer_done = false;  // the client's EOF (or a read error) came
  bool stop_after_write = false;
  int open_handles = 2;
};

// The listening socket and its connections. Outlives the ControlServer
// object until every handle has closed.
struct Listener {
  uv_loop_t* loop = nullptr;
  std::string path;
  ControlTarget* target = nullptr;  // null once closed
  uv_pipe_t pipe;
  uid_t own_uid = 0;
  dev_t device = 0;
  ino_t inode = 0;
  std::set<Connection*> connections;
  int open_handles = 1;  // the pipe, plus one per connection

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
  uv_close(reinterpret_cast<uv_handle_t*>(&connection->pipe), on_closed);
}

void OnTimeout(uv_timer_t* timer);

void OnWritten(uv_write_t* request, int status) {
  Connection* connection = static_cast<Connection*>(request->data);
  if (connection->closing) return;
  if (status != 0) {
    CloseConnection(connection);
    return;
  }
  connection->written = true;
  if (connection->stop_after_write && connection->listener->target != nullptr) {
    uv_timer_stop(&connection->timer);
    // The answer is out; the connection stays open until the Watcher
    // closes the server, so the client can wait for the stop to finish.
    connection->listener->target->Stop();
    return;
  }
  if (connection->peer_done) {
    CloseConnection(connection);
    return;
  }
  // Closing now while the client's unread bytes sit in our receive queue
  // would reset the connection and lose the answer (a request over the
  // size limit does that). Half-close instead; OnRead closes at the
  // client's EOF, the timer if it never comes.
  connection->shutdown_request.data = connection;
  if (uv_shutdown(&connection->shutdown_request,
                  reinterpret_cast<uv_stream_t*>(&connection->pipe),
                  [](uv_shutdown_t*, int) {}) != 0) {
    CloseConnection(connection);
  }
}

void SendAnswer(Connection* connection, const json& answer) {
  if (connection->closing || connection->answered) return;
  connection->answered = true;
  // Reading goes on, discarding, until the client's EOF (see OnWritten).
  // A client that does not read its answer is dropped after the timeout.
  uv_timer_start(&connection->timer, OnTimeout, kTimeoutMs, 0);
  connection->output = Describe(answer) + "\n";
  uv_buf_t buffer =
      uv_buf_init(connection->output.data(),
                  static_cast<unsigned>(connection->output.size()));
  connection->write_request.data = connection;
  int rc = uv_write(&connection->write_request,
                    reinterpret_cast<uv_stream_t*>(&connection->pipe), &buffer,
                    1, OnWritten);
  if (rc != 0) CloseConnection(connection);
}

// Runs one request against the target. Sets STOP_AFTER_WRITE for `stop`.
json Dispatch(ControlTarget* target, std::string_view text,
              const std::string& peer, bool* stop_after_write) {
  Result<ControlRequest> parsed = ParseControlRequest(text);
  if (!parsed.ok()) return ErrorAnswer(parsed.status().message());
  const ControlRequest& request = *parsed;
  switch (request.command) {
    case ControlRequest::Command::kStatus:
      return json{{"ok", true}, {"status", target->StatusJson()}};
    case ControlRequest::Command::kScale: {
      spdlog::info("control ({}): scale {} to {}", peer, request.group,
                   request.processes);
      Status status = target->Scale(request.group, request.processes);
      if (!status.ok()) return ErrorAnswer(status.message());
      return json{{"ok", true},
                  {"group", request.group},
                  {"processes", request.processes},
                  {"until_reload", true}};
    }
    case ControlRequest::Command::kRestart: {
      spdlog::info("control ({}): restart {}", peer, request.group);
      Status status = target->RestartGroup(request.group);
      if (!status.ok()) return ErrorAnswer(status.message());
      return json{{"ok", true}, {"group", request.group}};
    }
    case ControlRequest::Command::kReload: {
      spdlog::info("control ({}): reload", peer);
      Status status = target->Reload();
      if (!status.ok()) return ErrorAnswer(status.message());
      return json{{"ok", true}};
    }
    case ControlRequest::Command::kStop:
      spdlog::info("control ({}): stop", peer);
      *stop_after_write = true;
      return json{{"ok", true}, {"stopping", true}};
  }
  return ErrorAnswer("unknown command");
}

void HandleRequest(Connection* connection, std::string text) {
  if (!text.empty() && text.back() == '\r') text.pop_back();
  Listener* listener = connection->listener;
  if (listener->target == nullptr) return;
  json answer;
  bool stop_after_write = false;
  try {
    answer =
        Dispatch(listener->target, text, connection->peer, &stop_after_write);
  } catch (const std::exception& e) {
    // Nothing may throw through a libuv callback; a bug here must cost one
    // answer, not the Watcher.
    spdlog::error("control ({}): internal error: {}", connection->peer,
                  e.what());
    answer = ErrorAnswer(std::string("internal error: ") + e.what());
    stop_after_write = false;
  }
  if (!answer.value("ok", false)) {
    spdlog::warn("control ({}): {}", connection->peer,
                 answer.value("error", std::string()));
  }
  // The target may have closed the server (and this connection) meanwhile.
  if (connection->closing) return;
  connection->stop_after_write = stop_after_write;
  SendAnswer(connection, answer);
}

void OnAlloc(uv_handle_t*, size_t, uv_buf_t* buffer) {
  // One loop thread, and each read is consumed before the next alloc.
  static char storage[16 * 1024];
  *buffer = uv_buf_init(storage, sizeof(storage));
}

void OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) {
  Connection* connection = Owner<Connection>(stream);
  if (connection->closing) return;
  if (connection->answered) {
    // Input after the request is ignored; its end lets us close.
    if (nread < 0) {
      connection->peer_done = true;
      uv_read_stop(stream);
      if (connection->written && !connection->stop_after_write) {
        CloseConnection(connection);
      }
    }
    return;
  }
  if (nread > 0) {
    std::string_view data(buffer->base, static_cast<std::size_t>(nread));
    std::size_t newline = data.find('\n');
    connection->input.append(data.substr(0, newline));
    if (connection->input.size() > kMaxRequestBytes) {
      SendAnswer(connection, ErrorAnswer("request too long: more than " +
                                         std::to_string(kMaxRequestBytes) +
                                         " bytes without a newline"));
      return;
    }
    if (newline != std::string_view::npos) {
      HandleRequest(connection, std::move(connection->input));
    }
    return;
  }
  if (nread == 0) return;
  if (nread == UV_EOF && !connection->input.empty()) {
    // A request without its final newline is still one request.
    connection->peer_done = true;
    HandleRequest(connection, std::move(connection->input));
    return;
  }
  CloseConnection(connection);
}

void OnTimeout(uv_timer_t* timer) {
  Connection* connection = Owner<Connection>(timer);
  if (connection->answered) {
    CloseConnection(connection);
    return;
  }
  spdlog::warn("control ({}): no request within {} ms; closing",
               connection->peer, kTimeoutMs);
  SendAnswer(connection, ErrorAnswer("timed out waiting for the request"));
}

void OnConnection(uv_stream_t* server, int status) {
  Listener* listener = Owner<Listener>(server);
  if (status < 0) {
    spdlog::warn("control socket {}: accept: {}", listener->path,
                 uv_strerror(status));
    return;
  }
  if (listener->target == nullptr) return;
  Connection* connection = new Connection;
  connection->listener = listener;
  ++listener->open_handles;
  listener->connections.insert(connection);
  uv_pipe_init(listener->loop, &connection->pipe, 0);
  connection->pipe.data = connection;
  uv_timer_init(listener->loop, &connection->timer);
  connection->timer.data = connection;
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&connection->pipe)) !=
      0) {
    CloseConnection(connection);
    return;
  }
  uv_os_fd_t fd = -1;
  ucred peer{};
  socklen_t size = sizeof(peer);
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&connection->pipe), &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &size) != 0) {
    spdlog::warn("control socket {}: cannot read the peer's credentials: {}",
                 listener->path, Errno(errno));
    SendAnswer(connection, ErrorAnswer("permission denied"));
    return;
  }
  connection->peer =
      "uid " + std::to_string(peer.uid) + " pid " + std::to_string(peer.pid);
  if (peer.uid != 0 && peer.uid != listener->own_uid) {
    spdlog::warn(
        "control socket {}: refused {}: only root and uid {} may "
        "control the pool",
        listener->path, connection->peer, listener->own_uid);
    SendAnswer(connection, ErrorAnswer("permission denied"));
    // Read (and discard) to see the client's EOF and close early.
    uv_read_start(reinterpret_cast<uv_stream_t*>(&connection->pipe), OnAlloc,
                  OnRead);
    return;
  }
  uv_timer_start(&connection->timer, OnTimeout, kTimeoutMs, 0);
  uv_read_start(reinterpret_cast<uv_stream_t*>(&connection->pipe), OnAlloc,
                OnRead);
}

class ControlServerImpl : public ControlServer {
 public:
  explicit ControlServerImpl(Listener* listener) : listener_(listener) {}
  ~ControlServerImpl() override { Close(); }

  void Close() override {
    if (listener_ == nullptr) return;
    Listener* listener = listener_;
    listener_ = nullptr;
    listener->target = nullptr;
    // Remove the file only while it is still ours: another Watcher may
    // have replaced a socket we no longer answer on.
    struct stat info;
    if (lstat(listener->path.c_str(), &info) == 0 &&
        info.st_dev == listener->device && info.st_ino == listener->inode) {
      unlink(listener->path.c_str());
    }
    std::set<Connection*> connections = listener->connections;
    for (Connection* connection : connections) CloseConnection(connection);
    uv_close(reinterpret_cast<uv_handle_t*>(&listener->pipe),
             [](uv_handle_t* handle) {
               static_cast<Listener*>(handle->data)->Release();
             });
  }

 private:
  Listener* listener_;
};

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::Start(
    uv_loop_t* loop, const std::string& path, ControlTarget* target) {
  if (path.empty()) return Status::Error("the control socket path is empty");
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Status::Error("the control socket path " + path + " is too long (" +
                         std::to_string(path.size()) + " bytes; at most " +
                         std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                         ")");
  }
  std::size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    Status made = MakeDirectories(path.substr(0, slash));
    if (!made.ok()) return made;
  }
  Status claimed = ClaimPath(path);
  if (!claimed.ok()) return claimed;
  Result<int> fd = BindControlSocket(path);
  if (!fd.ok()) return fd.status();

  auto* listener = new Listener;
  listener->loop = loop;
  listener->path = path;
  listener->target = target;
  listener->own_uid = geteuid();
  struct stat info;
  if (lstat(path.c_str(), &info) == 0) {
    listener->device = info.st_dev;
    listener->inode = info.st_ino;
  }
  uv_pipe_init(loop, &listener->pipe, 0);
  listener->pipe.data = listener;
  int rc = uv_pipe_open(&listener->pipe, *fd);
  if (rc != 0) {
    close(*fd);
  } else {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener->pipe), kBacklog,
                   OnConnection);
  }
  auto server = std::make_unique<ControlServerImpl>(listener);
  if (rc != 0) {
    server->Close();
    return Status::Error("cannot listen on the control socket " + path + ": " +
                         uv_strerror(rc));
  }
  return std::unique_ptr<ControlServer>(std::move(server));
}

}  // namespace workerpool
