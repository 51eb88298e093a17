// The client library behind include/workerpool/client.h: the Client, which
// implements PoolClient and joins its rooms.
//
// Data path: the Watcher hands this process one end of a socketpair per peer
// (peer_added, fd by SCM_RIGHTS) and steps out; requests, replies, progress
// and cancels then flow directly between the two children. This process
// balances its own requests over the peers of a group (least in flight, at
// most max_inflight each, then a bounded priority queue).
//
// The rooms, each with its contract in its header:
//   pool_channel.h   the control channel to the Watcher (JSON in and out)
//   link.h           one socketpair to a peer: reads, framing, writes
//   busy_poll.h      reading hot links without blocking before the loop
//                    sleeps (busy_poll_backoff.h: how often, pure)
//   sender.h         Send/Cancel, routes, answers; with route.h and
//                    balancer.h (which peer, the queue: pure), out_request.h
//                    (requests and their reuse), deadlines.h and
//                    deadline_list.h (request_timeout, kill_peer)
//   server.h         requests served here; serve_queue.h (max_inflight,
//                    order, cancel: pure), server_request.h
// The Client owns them, the set of links and the loop turn: frames queued
// anywhere during a turn are written by one uv_prepare_t before the loop
// blocks (FlushAll), and hot links are busy-polled then. It reads every
// link's frames and hands them to the sender or the server by the link's
// role, closes links, reports stats, and stops.
//
// Threading: one libuv loop; every call, callback and room runs on its
// thread. Nothing here is thread-safe.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "client/busy_poll.h"
#include "client/link.h"
#include "client/pool_channel.h"
#include "client/sender.h"
#include "client/server.h"
#include "workerpool/client.h"

namespace workerpool::client {

class Client final : public PoolClient, private PoolChannel::Listener {
 public:
  Client(uv_loop_t* loop, bool owns_loop)
      : loop_(loop), owns_loop_(owns_loop), sender_(this), server_(this) {}
  ~Client() override;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Takes the pool channel FD, says hello. False with *ERROR when FD is
  // not usable.
  bool Open(int fd, std::string* error);

  // PoolClient.
  void Serve(SyncHandler handler) override {
    server_.Serve(std::move(handler));
  }
  void Serve(AsyncHandler handler) override {
    server_.Serve(std::move(handler));
  }
  std::uint64_t Send(const std::string& group, std::string_view body,
                     ReplyCallback done, SendOptions options) override {
    return sender_.Send(group, body, std::move(done), std::move(options));
  }
  void Cancel(std::uint64_t request_id) override { sender_.Cancel(request_id); }
  void OnStop(std::function<void()> callback) override {
    on_stop_ = std::move(callback);
  }
  int Run() override {
    uv_run(loop_, UV_RUN_DEFAULT);
    return 0;
  }
  void Stop() override;
  void HoldStop() override { ++stop_holds_; }
  void ReleaseStop() override {
    if (stop_holds_ > 0 && --stop_holds_ == 0) MaybeFinishStop();
  }
  ClientStats stats() const override;
  uv_loop_t* loop() override { return loop_; }
  void SetAppStats(std::string json_object) override {
    app_stats_ = std::move(json_object);
    CountChanged();
  }
  const std::string& group() const override { return group_; }
  int index() const override { return index_; }

  // For the rooms.
  PoolChannel& pool() { return pool_; }
  Server& server() { return server_; }
  bool pool_open() const { return pool_.open(); }
  bool stopping() const { return stopping_; }
  // Stopping and no HoldStop() left: new requests are refused.
  bool refusing_work() const { return stopping_ && stop_holds_ == 0; }
  const std::set<Link*>& links() const { return links_; }

  // Queues a frame on LINK for this loop turn's flush (or an early slice).
  // No-op on a closed link.
  void SendOnLink(Link* link, wire::FrameType type, std::uint64_t id,
                  std::uint32_t aux, std::string_view meta,
                  std::string_view body);
  // Closes LINK: what it had of ours fails, what it sent us is dropped, its
  // route dispatches to the others. No-op when closed already.
  void CloseLink(Link* link);

  // Makes sure FlushAll runs before the loop blocks.
  void ArmFlusher() {
    if (finished_ || uv_is_active(reinterpret_cast<uv_handle_t*>(&flusher_))) {
      return;
    }
    uv_prepare_start(&flusher_, &Client::OnFlusher);
  }
  // Writes what every link and the pool channel have queued, and runs the
  // deferred completions (which may queue more), until nothing is left.
  void FlushAll();

  // A counter moved: the stats reach the Watcher at the end of this loop
  // turn when none went for a second (the first sign of load after a quiet
  // spell is seen at once), else within the second.
  void CountChanged() {
    if (!pool_.open() || stats_due_ ||
        uv_is_active(reinterpret_cast<uv_handle_t*>(&stats_timer_))) {
      return;
    }
    ScheduleStats();
  }
  // Requests began to wait for a free peer (a route's queue went from empty
  // to not): the load outgrows the group it is sent to. The stats go at the
  // end of this loop turn even when a regular send is pending (at most once
  // a second), so that an autoscaler starts timing the overload now rather
  // than a second later.
  void LoadRising();
  void SendStats();

  // Once stopping, finishes when nothing is left in flight: closes every
  // handle of ours, so that Run() returns.
  void MaybeFinishStop() {
    if (!stopping_ || finished_ || stop_holds_ > 0) return;
    FinishStopIfIdle();
  }

 private:
  // PoolChannel::Listener.
  void OnConfig(const ChildConfig& config) override;
  void OnPeerAdded(const PeerInfo& peer) override;
  void OnRouteOpened(const RouteLimits& limits) override {
    sender_.OnRouteOpened(limits);
  }
  void OnRouteRefused(const std::string& group,
                      const std::string& error) override {
    sender_.OnRouteRefused(group, error);
  }
  void OnPeerGone(int pid, const std::string& how) override;
  void OnPeerDraining(int pid) override;
  void OnDrain() override { Stop(); }
  void OnPoolGone() override;
  void OnPoolReadDone() override { FlushAll(); }
  void OnPoolOutput() override { ArmFlusher(); }

  // Links.
  static void OnLinkRead(uv_stream_t* stream, ssize_t nread,
                         const uv_buf_t* buf);
  void OnLinkInput(Link* link, std::string_view bytes);
  void OnLinkFrame(Link* link, const FrameView& frame) {
    if (link->role == Link::Role::kServer) {
      server_.OnFrame(link, frame);
    } else {
      sender_.OnFrame(link, frame);
    }
  }
  void OnLinkClosed(Link* link, const std::string& why);
  // LINK's peer is gone: our requests on it fail with CODE and TEXT, and
  // the answers to its requests have nowhere to go.
  void FailLink(Link* link, wire::ErrorCode code, const std::string& text);
  std::vector<Link*> LinksTo(int pid) const;
  void MarkDirty(Link* link);

  // The loop turn.
  static void OnFlusher(uv_prepare_t* handle);
  // The prepare callback: flush, then busy-poll hot links.
  void BeforeBlocking();
  void BusyPoll();

  void ScheduleStats();
  void StartStatsTimer(uint64_t delay_ms);
  void FinishStopIfIdle();

  uv_loop_t* loop_;
  bool owns_loop_;
  std::string group_;
  int index_ = -1;
  bool connect_links_ = false;  // WP_CONNECT_LINKS=1

  PoolChannel pool_;
  Sender sender_;
  Server server_;
  BusyPoller busy_;
  std::set<Link*> links_;
  std::vector<Link*> dirty_;  // links with frames queued this loop turn
  uv_prepare_t flusher_;

  uv_timer_t stats_timer_;
  bool stats_due_ = false;  // send them in this turn's FlushAll
  // When stats last went, and when LoadRising last sent them (loop time).
  bool stats_sent_ = false;
  uint64_t stats_sent_ms_ = 0;
  bool rising_sent_ = false;
  uint64_t rising_sent_ms_ = 0;
  uv_signal_t sigterm_;
  std::string app_stats_;
  std::function<void()> on_stop_;
  bool stopping_ = false;
  bool finished_ = false;
  int stop_holds_ = 0;  // HoldStop() calls not released
};

}  // namespace workerpool::client
