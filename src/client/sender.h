// The sending side of a process: Send() and Cancel() of the public API,
// the routes to the groups it sends to (route.h: each with its balancer
// and queue), the requests in flight and their deadlines (deadlines.h),
// and the answers that come back on the links where we send (role
// "sender"). Every request is answered exactly once, on the loop: by its
// server, or by this side (docs/PROTOCOL.md, error codes 2-5 and 7-10).
//
// It acts through the client (pool_client.h): frames go out with
// SendOnLink, route_open and kill_peer on the pool channel; it tells the
// client when counters moved and when a request completed (the client may
// be stopping), and asks it to close a draining link that has nothing left.
//
// Threading: the client's loop thread; reply callbacks run on it.
#pragma once

#include <uv.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "client/deadlines.h"
#include "client/link.h"
#include "client/out_request.h"
#include "client/pool_channel.h"
#include "client/route.h"
#include "core/frame_codec.h"
#include "core/id_map.h"
#include "workerpool/client.h"

namespace workerpool::client {

class Client;

class Sender {
 public:
  explicit Sender(Client* client) : client_(client) {}
  ~Sender() { DeleteRequests(); }
  Sender(const Sender&) = delete;
  Sender& operator=(const Sender&) = delete;

  void Init(uv_loop_t* loop);
  // Frees every request not answered yet, without answering it (the client
  // is being destroyed).
  void DeleteRequests();
  uv_handle_t* deadline_timer() { return deadlines_.timer_handle(); }

  // PoolClient::Send and Cancel.
  std::uint64_t Send(const std::string& group, std::string_view body,
                     PoolClient::ReplyCallback&& done, SendOptions&& options);
  void Cancel(std::uint64_t request_id);

  // The route to GROUP, opened (route_open) on first use.
  Route* RouteTo(const std::string& group);
  // Sends queued requests of ROUTE while its peers have room; fails them
  // when no peer is left that could take them.
  void Dispatch(Route* route);
  // A frame on LINK, where we send: an answer or progress.
  void OnFrame(Link* link, const FrameView& frame);
  // LINK's peer is gone: what it had of ours fails with CODE and TEXT.
  void FailLinkRequests(Link* link, wire::ErrorCode code,
                        const std::string& text);

  // Pool channel events.
  void OnRouteOpened(const RouteLimits& limits);
  void OnRouteRefused(const std::string& group, const std::string& error);
  // The pool is gone: queued requests fail with kShuttingDown.
  void OnPoolGone();

  // Answers decided inside a caller's stack (Send, Cancel) are deferred to
  // the loop turn's flush: runs them, and whatever they add.
  void RunCompletions() {
    while (!completions_.empty()) {
      auto batch = std::move(completions_);
      completions_.clear();
      for (auto& [id, reply] : batch) Complete(id, std::move(reply));
    }
  }

  // No request waits for an answer.
  bool idle() const { return requests_.empty(); }
  void FillStats(ClientStats* stats) const;
  std::vector<GroupLatency> Latencies() const;

 private:
  // Both take the request by id: a request object is reused once complete,
  // so a stale pointer could name a newer request.
  void Complete(std::uint64_t id, Reply reply);
  void CompleteLater(std::uint64_t id, Reply reply);
  void FailRoute(Route* route, wire::ErrorCode code, const std::string& text);
  void SendRequest(Link* link, OutRequest* request, std::string_view body);
  // The deadline timer fired: requests past their deadline fail with
  // kTimeout, and their servers are killed (kill_peer).
  void OnDeadlines();

  Client* client_;
  uv_loop_t* loop_ = nullptr;
  std::map<std::string, std::unique_ptr<Route>> routes_;
  // Requests sent or queued, by id; owned here.
  IdMap<OutRequest> requests_;
  RequestPool spare_requests_;
  Deadlines deadlines_;
  std::vector<std::pair<std::uint64_t, Reply>> completions_;
  std::uint64_t next_id_ = 0;
  std::uint64_t next_sequence_ = 0;
  // Counters of ClientStats, as a sender.
  std::uint64_t sent_ = 0, replied_ = 0, failed_ = 0, refused_ = 0,
                cancelled_ = 0, timed_out_ = 0;
};

}  // namespace workerpool::client
