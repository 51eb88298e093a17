// The pool channel: this process's end of the socketpair to the Watcher
// (the fd in WORKERPOOL_IPC_FD), which carries control frames only
// (docs/PROTOCOL.md, "Control frames"). This room owns the socket, its
// reads and writes, the heartbeat, and the JSON of every control frame:
// what arrives is parsed into the typed events of Listener (read with
// fallbacks, never with a throw: the bodies come from another process);
// what leaves is built by the Send*() calls. Which links, routes and
// requests the events concern is the client's (pool_client.h).
//
// Threading: the client's loop thread; Listener calls run on it, from the
// channel's read callback. Control frames are rare (set-up, membership,
// stats once a second), so the Listener is an interface.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "client/route.h"
#include "client/stream_writer.h"
#include "core/frame_codec.h"
#include "workerpool/client.h"

namespace workerpool::client {

// config: the limits of this process's own group.
struct ChildConfig {
  int max_inflight = 1;
  std::uint64_t max_requests = 0;  // with jitter applied; 0: never recycled
  int busy_poll_us = wire::kDefaultBusyPollUs;
  int heartbeat_ms = 0;
};

// peer_added: who is at the other end of the socket that came with it.
struct PeerInfo {
  bool we_serve = false;  // role "server": we serve requests on it
  std::string group;
  int index = -1;
  int pid = 0;
  // Links by connect: the path to connect to (no socket came with it).
  std::string path;
};

// route_opened: the limits of a group we send to.
struct RouteLimits {
  std::string group;
  int max_inflight = 1;
  int queue_limit = 1000;
  std::int64_t request_timeout_ms = 30000;
};

// One route's figures for the stats frame: its latency histogram and the
// requests queued for lack of a free peer (the Watcher's autoscaling reads
// them as the target group's backlog).
struct GroupLatency {
  const std::string* group;
  const LatencyHistogram* latency;
  std::size_t queued = 0;
};

class PoolChannel {
 public:
  class Listener {
   public:
    virtual void OnConfig(const ChildConfig& config) = 0;
    // The socket waits in the channel: take it with AcceptInto().
    virtual void OnPeerAdded(const PeerInfo& peer) = 0;
    virtual void OnRouteOpened(const RouteLimits& limits) = 0;
    virtual void OnRouteRefused(const std::string& group,
                                const std::string& error) = 0;
    virtual void OnPeerGone(int pid, const std::string& how) = 0;
    virtual void OnPeerDraining(int pid) = 0;
    virtual void OnDrain() = 0;
    // The channel closed or broke, and is closed now (see Gone()).
    virtual void OnPoolGone() = 0;
    // Every frame of one read was handled: a time to flush.
    virtual void OnPoolReadDone() = 0;
    // A frame was queued: it leaves at the next Flush().
    virtual void OnPoolOutput() = 0;

   protected:
    ~Listener() = default;
  };

  // Takes FD (a Unix socket; fds arrive on it). False with *ERROR when
  // libuv cannot use it (the pipe is then closed).
  bool Open(uv_loop_t* loop, int fd, Listener* listener, std::string* error);
  // Starts reading; frames reach the listener from the next loop turn on.
  void StartReading();
  bool open() const { return open_; }

  // Whether a peer_added's socket arrived, and its stream to accept from.
  bool has_socket();
  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&pipe_); }

  // CONNECT_LINKS: ask for links by connect (docs/PROTOCOL.md, "Links by
  // connect") instead of fds; set by WP_CONNECT_LINKS=1, to measure
  // and test that path with C++ children.
  void SendHello(bool connect_links);
  void SendRouteOpen(const std::string& group);
  void SendKillPeer(int pid, const std::string& reason);
  // Counters, latency per target group and the application's figures
  // (APP_STATS: a JSON object, or empty).
  void SendStats(const ClientStats& stats,
                 const std::vector<GroupLatency>& latency,
                 const std::string& app_stats);
  // Heartbeats every HEARTBEAT_MS / 3 (config); none for 0.
  void SetHeartbeat(int heartbeat_ms);
  // Writes what was queued.
  void Flush() {
    if (open_) writer_->Flush();
  }

  // The client finished: what is queued is written, then the channel
  // closes (the Watcher sees EOF).
  void Close();
  // The heartbeat timer, for the client to close.
  uv_handle_t* heartbeat_handle() {
    return reinterpret_cast<uv_handle_t*>(&heartbeat_timer_);
  }
  // The Watcher is gone (WHY): the channel closes, the listener is told,
  // and the process exits within 2 s even if the application keeps the
  // loop busy.
  void Gone(const char* why);

 private:
  static void OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  void OnFrame(const FrameView& frame);
  void Send(wire::FrameType type, std::string_view body);

  uv_loop_t* loop_ = nullptr;
  Listener* listener_ = nullptr;
  uv_pipe_t pipe_;
  std::unique_ptr<StreamWriter> writer_;
  FrameDecoder decoder_;
  bool open_ = false;
  uv_timer_t heartbeat_timer_;
};

}  // namespace workerpool::client
