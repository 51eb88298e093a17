// A listening socket on a libuv loop and the connections it accepts, for
// servers that take one request and give one answer per connection (the
// control socket, the metrics endpoint). It owns what both would otherwise
// write twice: accepting, reading with a bound and a timeout, writing the
// answer and then closing without losing it, closing everything on
// shutdown, and freeing memory only from libuv's close callbacks. What the
// bytes mean is the StreamSession's business.
//
// Everything here runs on the loop's thread: the loop passed to Listen. A
// server and its sessions may be closed from inside any session callback.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/status.h"

namespace workerpool {

struct StreamListener;  // stream_server.cc

// One accepted client, as its session sees it. Owned by the server: it
// lives until libuv has closed its handles, which is after Close() returns,
// so a session may use it for the rest of the callback that closed it.
class StreamConnection {
 public:
  // Writes TEXT as the one answer; later calls do nothing, nor do calls on
  // a closing connection. The client then gets timeout_ms to read it. Input
  // after the answer is read and dropped. Once the answer is out the write
  // side is shut down, and the connection closes at the client's EOF (or at
  // the timeout): closing at once, while unread input sits in our receive
  // queue, would reset the connection and lose the answer.
  virtual void Answer(std::string text) = 0;
  // As Answer, but once the answer is out ON_WRITTEN runs, and the
  // connection then stays open, with no timeout and whatever the client
  // does, until the server closes: the client can wait for the EOF as the
  // sign that the server has gone (`workerpool stop`).
  virtual void AnswerAndHold(std::string text,
                             std::function<void()> on_written) = 0;
  // Closes now; an answer still being written is lost.
  virtual void Close() = 0;
  virtual bool answered() const = 0;
  virtual bool closing() const = 0;
  // The accepted socket, for getsockopt (SO_PEERCRED); -1 if there is none.
  virtual int fd() const = 0;

 protected:
  ~StreamConnection() = default;
};

// What one connection speaks. Made by the server's SessionFactory when a
// client is accepted and destroyed with the connection, from its close
// callback: never while one of its own callbacks runs. No callback comes
// once the connection is closing, so a session may hold pointers that are
// good until its server's Close().
class StreamSession {
 public:
  virtual ~StreamSession() = default;
  // Right after the accept, before any read. The session may answer (a
  // refusal) or close here; if it does neither, the request timeout starts.
  virtual void OnAccepted(StreamConnection& connection);
  // The request's bytes, until the connection is answered. kLine: once,
  // with the first line without its '\n' (or, at the client's EOF, with the
  // bytes that came without one). kChunks: each piece as it arrives.
  virtual void OnInput(StreamConnection& connection,
                       std::string_view input) = 0;
  // The request outgrew max_request_bytes; its bytes are not passed on.
  // The session answers or closes; if it does neither, the server closes.
  virtual void OnTooLarge(StreamConnection& connection) = 0;
  // No answer timeout_ms after the accept. The session may answer; if it
  // does not, the server closes (the default).
  virtual void OnTimeout(StreamConnection& connection);
};

struct StreamServerOptions {
  // How the server is named in the log: "control socket /run/x.sock".
  std::string name;
  int backlog = SOMAXCONN;
  // kLine: a request is one line ending in '\n', at most max_request_bytes
  // without it; the rest of the connection's input is dropped. kChunks: the
  // session parses the stream itself, and at most max_request_bytes come
  // before its answer. At the client's EOF before an answer a kLine
  // session gets what came of its line, if anything; otherwise the
  // connection closes unanswered.
  enum class Framing { kLine, kChunks } framing = Framing::kLine;
  std::size_t max_request_bytes = 16 * 1024;
  // For the request after the accept, and again for the client to take
  // the answer.
  uint64_t timeout_ms = 5000;
};

class StreamServer {
 public:
  using SessionFactory = std::function<std::unique_ptr<StreamSession>()>;

  // Serves FD, a bound and listening stream socket: AF_UNIX, or TCP over
  // IPv4 or IPv6 (as from BindListenSocket). Takes FD over, closing it on
  // failure too. An error is libuv's message, for the caller to prefix
  // with what it was listening for.
  static Result<std::unique_ptr<StreamServer>> Listen(
      uv_loop_t* loop, int fd, StreamServerOptions options,
      SessionFactory make_session);

  StreamServer(const StreamServer&) = delete;
  StreamServer& operator=(const StreamServer&) = delete;
  ~StreamServer();  // Close()

  // Stops listening and closes every connection; no session callback comes
  // after this. The memory goes with the last close callback, on a later
  // turn of the loop. Safe more than once and from inside a session
  // callback.
  void Close();

  // Whether some connection's answer is still queued in this process (not
  // all taken by the socket yet): an exec now would cut it short.
  bool Writing() const;

 private:
  explicit StreamServer(StreamListener* listener) : listener_(listener) {}
  StreamListener* listener_;  // null once closed
};

}  // namespace workerpool
