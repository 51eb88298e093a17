// The control socket's server side: runs on the Watcher's loop. See
// control.h for the protocol and docs/OPERATIONS.md for the commands.
#include <errno.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string_view>

#include "core/control_request.h"
#include "os/stream_server.h"
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

// Runs one request against the target. Sets STOP_AFTER_WRITE for `stop`.
json Dispatch(ControlTarget* target, std::string_view text,
              const std::string& peer, bool* stop_after_write) {
  Result<ControlRequest> parsed = ParseControlRequest(text);
  if (!parsed.ok()) return ErrorAnswer(parsed.status().message());
  const ControlRequest& request = *parsed;
  switch (request.command) {
    case ControlRequest::Command::kStatus:
      return json{{"ok", true}, {"status", target->StatusJson(request.usage)}};
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
      spdlog::info("control ({}): restart {}{}", peer, request.group,
                   request.with_dependents ? " --with-dependents" : "");
      Status status = request.with_dependents
                          ? target->RestartWithDependents(request.group)
                          : target->RestartGroup(request.group);
      if (!status.ok()) return ErrorAnswer(status.message());
      return json{{"ok", true}, {"group", request.group}};
    }
    case ControlRequest::Command::kReload: {
      spdlog::info("control ({}): reload", peer);
      Status status = target->Reload();
      if (!status.ok()) return ErrorAnswer(status.message());
      return json{{"ok", true}};
    }
    case ControlRequest::Command::kUpgrade: {
      spdlog::info(
          "control ({}): upgrade {}", peer,
          request.binary.empty() ? "(the running binary)" : request.binary);
      Result<json> started = target->Upgrade(request.binary);
      if (!started.ok()) return ErrorAnswer(started.status().message());
      json answer = *started;
      answer["ok"] = true;
      return answer;
    }
    case ControlRequest::Command::kStop:
      spdlog::info("control ({}): stop", peer);
      *stop_after_write = true;
      return json{{"ok", true}, {"stopping", true}};
  }
  return ErrorAnswer("unknown command");
}

// What the connections of one control socket share. Lives as long as the
// server's sessions (each holds a reference).
struct ControlContext {
  ControlTarget* target;
  std::string path;
  uid_t own_uid;
};

// One client: its credentials are checked at the accept, then it sends one
// request line and gets one answer line.
class ControlSession : public StreamSession {
 public:
  explicit ControlSession(std::shared_ptr<const ControlContext> context)
      : context_(std::move(context)) {}

  void OnAccepted(StreamConnection& connection) override {
    ucred peer{};
    socklen_t size = sizeof(peer);
    if (getsockopt(connection.fd(), SOL_SOCKET, SO_PEERCRED, &peer, &size) !=
        0) {
      spdlog::warn("control socket {}: cannot read the peer's credentials: {}",
                   context_->path, Errno(errno));
      SendAnswer(connection, ErrorAnswer("permission denied"));
      return;
    }
    peer_ =
        "uid " + std::to_string(peer.uid) + " pid " + std::to_string(peer.pid);
    if (peer.uid != 0 && peer.uid != context_->own_uid) {
      spdlog::warn(
          "control socket {}: refused {}: only root and uid {} may "
          "control the pool",
          context_->path, peer_, context_->own_uid);
      SendAnswer(connection, ErrorAnswer("permission denied"));
    }
  }

  void OnInput(StreamConnection& connection, std::string_view line) override {
    std::string text(line);
    if (!text.empty() && text.back() == '\r') text.pop_back();
    json answer;
    bool stop_after_write = false;
    try {
      answer = Dispatch(context_->target, text, peer_, &stop_after_write);
    } catch (const std::exception& e) {
      // Nothing may throw through a libuv callback; a bug here must cost
      // one answer, not the Watcher.
      spdlog::error("control ({}): internal error: {}", peer_, e.what());
      answer = ErrorAnswer(std::string("internal error: ") + e.what());
      stop_after_write = false;
    }
    if (!answer.value("ok", false)) {
      spdlog::warn("control ({}): {}", peer_,
                   answer.value("error", std::string()));
    }
    // The target may have closed the server (and this connection)
    // meanwhile; then nothing more may be asked of it.
    if (connection.closing()) return;
    if (!stop_after_write) {
      SendAnswer(connection, answer);
      return;
    }
    // The answer goes out first; the connection then stays open until the
    // Watcher closes the server, so the client can wait for the stop to
    // finish.
    ControlTarget* target = context_->target;
    connection.AnswerAndHold(Describe(answer) + "\n",
                             [target] { target->Stop(); });
  }

  void OnTooLarge(StreamConnection& connection) override {
    SendAnswer(connection, ErrorAnswer("request too long: more than " +
                                       std::to_string(kMaxRequestBytes) +
                                       " bytes without a newline"));
  }

  void OnTimeout(StreamConnection& connection) override {
    spdlog::warn("control ({}): no request within {} ms; closing", peer_,
                 kTimeoutMs);
    SendAnswer(connection, ErrorAnswer("timed out waiting for the request"));
  }

 private:
  static void SendAnswer(StreamConnection& connection, const json& answer) {
    connection.Answer(Describe(answer) + "\n");
  }

  std::shared_ptr<const ControlContext> context_;
  std::string peer_;  // "uid U pid P", for the log
};

class ControlServerImpl : public ControlServer {
 public:
  ControlServerImpl(const std::string& path, int fd) : path_(path), fd_(fd) {
    struct stat info;
    if (lstat(path.c_str(), &info) == 0) {
      device_ = info.st_dev;
      inode_ = info.st_ino;
    }
  }
  ~ControlServerImpl() override { Close(); }

  void Serve(std::unique_ptr<StreamServer> server) {
    server_ = std::move(server);
  }

  void Close() override {
    if (closed_) return;
    closed_ = true;
    // Remove the file only while it is still ours: another Watcher may
    // have replaced a socket we no longer answer on.
    struct stat info;
    if (lstat(path_.c_str(), &info) == 0 && info.st_dev == device_ &&
        info.st_ino == inode_) {
      unlink(path_.c_str());
    }
    if (server_) server_->Close();
  }

  int fd() const override { return fd_; }
  bool Writing() const override { return server_ && server_->Writing(); }

 private:
  std::string path_;
  int fd_;
  dev_t device_ = 0;
  ino_t inode_ = 0;
  std::unique_ptr<StreamServer> server_;
  bool closed_ = false;
};

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::Start(
    uv_loop_t* loop, const std::string& path, ControlTarget* target,
    int adopt_fd) {
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
  Result<int> fd = adopt_fd;
  if (adopt_fd < 0) {
    Status claimed = ClaimPath(path);
    if (!claimed.ok()) return claimed;
    fd = BindControlSocket(path);
    if (!fd.ok()) return fd.status();
  }

  auto server = std::make_unique<ControlServerImpl>(path, *fd);
  auto context = std::make_shared<const ControlContext>(
      ControlContext{target, path, geteuid()});
  StreamServerOptions options;
  options.name = "control socket " + path;
  options.backlog = kBacklog;
  options.framing = StreamServerOptions::Framing::kLine;
  options.max_request_bytes = kMaxRequestBytes;
  options.timeout_ms = kTimeoutMs;
  Result<std::unique_ptr<StreamServer>> listening = StreamServer::Listen(
      loop, *fd, std::move(options),
      [context] { return std::make_unique<ControlSession>(context); });
  if (!listening.ok()) {
    server->Close();
    return Status::Error("cannot listen on the control socket " + path + ": " +
                         listening.status().message());
  }
  server->Serve(std::move(*listening));
  return std::unique_ptr<ControlServer>(std::move(server));
}

}  // namespace workerpool
