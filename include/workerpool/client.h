// The workerpool client library: what a child process uses to take part in
// its pool. A job serves requests; a reactor or service sends requests to the
// groups in its routes_to (and a service may serve reactors too).
//
// Threading: a PoolClient lives on one libuv loop (its own or the caller's)
// and every callback runs on that loop's thread. Nothing here is
// thread-safe; call it from the loop thread only.
//
// A minimal job:
//
//   int main() {
//     std::string error;
//     auto client = workerpool::PoolClient::FromEnvironment(nullptr, &error);
//     if (!client) {
//       fprintf(stderr, "%s\n", error.c_str());
//       return 2;
//     }
//     client->Serve([](const workerpool::IncomingRequest& request) {
//       return workerpool::HandlerResult::Reply(request.body());
//     });
//     return client->Run();
//   }
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "workerpool/wire.h"

namespace workerpool {

// The outcome of a request, as the sender sees it.
struct Reply {
  bool ok = false;
  wire::ErrorCode code = wire::ErrorCode::kHandlerError;  // when !ok
  std::string body;  // the answer, or the error text
  std::string meta;  // JSON object from the server, or empty
};

struct Progress {
  double fraction = 0;  // 0..1
  std::string text;
};

struct SendOptions {
  std::int32_t priority = 0;  // lower numbers are served first
  std::string meta;           // a JSON object, or empty
  std::function<void(const Progress&)> on_progress;  // optional
};

// A request being served. Answer it exactly once with Reply() or Fail();
// with the asynchronous Serve() form that may be later, from the loop.
// body() and meta() stay valid as long as the request object lives: until
// a sync handler returns, or while the async form's shared_ptr is held.
// (A sync handler reads the bytes where they arrived; an async handler gets
// its own copy, which it may keep or hand to another thread.)
class IncomingRequest {
 public:
  virtual ~IncomingRequest() = default;
  virtual std::uint64_t id() const = 0;
  virtual std::string_view body() const = 0;
  virtual std::string_view meta() const = 0;
  virtual std::int32_t priority() const = 0;
  // The sending process's group ("" when unknown).
  virtual const std::string& sender_group() const = 0;
  virtual void Reply(std::string_view body, std::string_view meta = {}) = 0;
  virtual void Fail(std::string_view message) = 0;
  // An error of the pool's kind CODE (kTimeout, kQueueFull, ...) rather
  // than a handler error, for a server that forwards requests elsewhere
  // (the RabbitMQ outbox): the sender tells them apart (an http-reactor
  // answers 504, 503, ...). Fail(message) is Fail(message, kHandlerError).
  virtual void Fail(std::string_view message, wire::ErrorCode code) = 0;
  // A progress update the sender receives before the reply.
  virtual void SendProgress(double fraction, std::string_view text) = 0;
  // True once the sender cancelled; the answer is then discarded.
  virtual bool cancelled() const = 0;
  virtual void OnCancel(std::function<void()> callback) = 0;
};

// What a synchronous handler returns.
struct HandlerResult {
  bool ok = true;
  std::string body;  // reply body, or the error message when !ok
  static HandlerResult Reply(std::string_view body) {
    return HandlerResult{true, std::string(body)};
  }
  static HandlerResult Error(std::string_view message) {
    return HandlerResult{false, std::string(message)};
  }
};

struct ClientStats {
  std::uint64_t sent = 0, replied = 0, failed = 0, refused = 0, cancelled = 0,
                timed_out = 0;                  // as a sender
  std::uint64_t served = 0, served_errors = 0;  // as a server
  // Reads of a link done by busy polling (docs/PROTOCOL.md): each one
  // brought frames that did not wait for a wake-up.
  std::uint64_t busy_poll_reads = 0;
  // Busy polls that found nothing before busy_poll_us ran out.
  std::uint64_t busy_poll_misses = 0;
  std::uint64_t queued = 0, inflight = 0;  // right now, as a sender
  // Right now, as a server: requests being handled or waiting here. The
  // Watcher drains idle processes first when a group shrinks.
  std::uint64_t serving = 0;
};

class PoolClient {
 public:
  using SyncHandler = std::function<HandlerResult(const IncomingRequest&)>;
  using AsyncHandler =
      std::function<void(std::shared_ptr<IncomingRequest> request)>;
  using ReplyCallback = std::function<void(Reply reply)>;

  // Connects to the pool through WORKERPOOL_IPC_FD. With LOOP null the
  // client creates and owns a loop. Fails with a readable message when the
  // process was not started by a workerpool Watcher.
  static std::unique_ptr<PoolClient> FromEnvironment(uv_loop_t* loop,
                                                     std::string* error);
  // Same, on an explicit pool channel fd (for tests).
  static std::unique_ptr<PoolClient> FromFd(int fd, uv_loop_t* loop,
                                            std::string* error);

  virtual ~PoolClient() = default;

  // Serve requests. A sync handler's answer is sent when it returns; at most
  // max_inflight requests are handed out at once, the rest wait in order of
  // priority, then arrival.
  virtual void Serve(SyncHandler handler) = 0;
  virtual void Serve(AsyncHandler handler) = 0;

  // Sends BODY to a process of GROUP; DONE is called exactly once on the
  // loop with the reply or a typed error. Returns the request id (for
  // Cancel). A refused route, a full queue or a group with no live process
  // calls DONE with the error, never hangs.
  virtual std::uint64_t Send(const std::string& group, std::string_view body,
                             ReplyCallback done, SendOptions options = {}) = 0;
  // Cancels a request: a queued one is dropped, a running one's server is
  // told, and killed if it does not answer within the cancel grace period.
  // DONE is called with kCancelled. No-op for an unknown or finished id.
  virtual void Cancel(std::uint64_t request_id) = 0;

  // Called once when the pool asks this process to stop taking work
  // (drain, SIGTERM) or the pool channel closes. Default: none.
  virtual void OnStop(std::function<void()> callback) = 0;

  // Holds a stop (drain, SIGTERM) open for an application that still owes
  // work to clients of its own: while held, a stopping process keeps its
  // pool channel and links, Send() keeps working and Run() does not return
  // (the OnStop callback has run). ReleaseStop() lets the stop finish once
  // nothing is in flight. Calls nest. The http-reactor holds a stop while
  // it has open connections: it answers what they already sent.
  virtual void HoldStop() = 0;
  virtual void ReleaseStop() = 0;

  // Runs the loop until the process should exit: the pool is gone, or a
  // drain finished. Returns the exit code (0). With a caller-owned loop,
  // the caller may run the loop itself instead.
  virtual int Run() = 0;
  // Stop taking work, finish what is in flight, then let Run() return.
  virtual void Stop() = 0;

  virtual ClientStats stats() const = 0;
  // Application figures (a JSON object, e.g. a RabbitMQ service's queue
  // depth and acks) sent to the Watcher with the library's own counters,
  // for `workerpool status` and metrics. Cheap: sent at most once a second.
  virtual void SetAppStats(std::string json_object) = 0;
  virtual uv_loop_t* loop() = 0;
  // This process's group, type and index, from the environment.
  virtual const std::string& group() const = 0;
  virtual int index() const = 0;
};

}  // namespace workerpool
