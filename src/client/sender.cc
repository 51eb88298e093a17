#include "client/sender.h"

#include "client/pool_client.h"

namespace workerpool::client {

using wire::ErrorCode;
using wire::FrameType;

void Sender::Init(uv_loop_t* loop) {
  loop_ = loop;
  deadlines_.Init(loop, this, [](uv_timer_t* timer) {
    static_cast<Sender*>(timer->data)->OnDeadlines();
  });
}

void Sender::DeleteRequests() {
  requests_.ForEach([](uint64_t, OutRequest* request) { delete request; });
  requests_ = IdMap<OutRequest>();
}

Route* Sender::RouteTo(const std::string& group) {
  auto& route = routes_[group];
  if (!route) {
    route = std::make_unique<Route>();
    route->group = group;
    client_->pool().SendRouteOpen(group);
  }
  return route.get();
}

uint64_t Sender::Send(const std::string& group, std::string_view body,
                      PoolClient::ReplyCallback&& done, SendOptions&& options) {
  OutRequest* request = spare_requests_.Take();
  // Dispatch() below may complete (and recycle) the request at once.
  const uint64_t id = request->id = ++next_id_;
  request->done = std::move(done);
  request->on_progress = std::move(options.on_progress);
  request->priority = options.priority;
  request->sequence = ++next_sequence_;
  request->sent_ms = uv_now(loop_);
  requests_.Insert(request->id, request);
  ++sent_;
  client_->CountChanged();

  if (!FrameFits(options.meta, body)) {
    CompleteLater(id, Reply{false, ErrorCode::kTooLarge,
                            "request of " + std::to_string(body.size()) +
                                " bytes is over the frame limit of " +
                                std::to_string(wire::kMaxPayload),
                            ""});
    return id;
  }
  if (client_->refusing_work() || !client_->pool_open()) {
    CompleteLater(id, Reply{false, ErrorCode::kShuttingDown,
                            "this process is stopping", ""});
    return id;
  }
  Route* route = RouteTo(group);
  request->route = route;
  if (route->state == Route::State::kRefused) {
    CompleteLater(id, Reply{false, ErrorCode::kRefused, route->refusal, ""});
    return id;
  }
  if (route->state == Route::State::kOpen && route->balancer.QueueFull()) {
    CompleteLater(id,
                  Reply{false, ErrorCode::kQueueFull,
                        "queue of group " + group + " is full (" +
                            std::to_string(route->balancer.queue_limit()) + ")",
                        ""});
    return id;
  }
  request->meta = std::move(options.meta);
  if (route->state == Route::State::kOpen && route->balancer.queue_empty()) {
    // A peer with room takes the frame straight from the caller's bytes;
    // only a queued request needs its own copy.
    if (Link* peer = route->balancer.Pick()) {
      SendRequest(peer, request, body);
      return id;
    }
  }
  request->body.assign(body);
  route->balancer.Enqueue(QueueKey{request->priority, request->sequence},
                          request);
  if (route->state == Route::State::kOpen) Dispatch(route);
  if (route->balancer.queued() == 1) client_->LoadRising();
  return id;
}

void Sender::SendRequest(Link* link, OutRequest* request,
                         std::string_view body) {
  request->link = link;
  ++link->outstanding;
  deadlines_.Sent(request, link, link->route->request_timeout.count());
  client_->SendOnLink(link, FrameType::kRequest, request->id,
                      static_cast<uint32_t>(request->priority), request->meta,
                      body);
}

void Sender::Dispatch(Route* route) {
  if (route->state != Route::State::kOpen) return;
  Link* peer = nullptr;
  while (OutRequest* request = route->balancer.Next(&peer)) {
    SendRequest(peer, request, request->body);
    std::string().swap(request->body);
  }
  if (route->balancer.Stranded()) {
    FailRoute(route, ErrorCode::kNoWorkers,
              "group " + route->group + " has no live process");
  }
}

void Sender::FailRoute(Route* route, ErrorCode code, const std::string& text) {
  std::vector<uint64_t> failed;
  for (auto& [key, request] : route->balancer.TakeQueue()) {
    failed.push_back(request->id);
  }
  for (uint64_t id : failed) Complete(id, Reply{false, code, text, ""});
}

void Sender::CompleteLater(uint64_t id, Reply reply) {
  completions_.emplace_back(id, std::move(reply));
  client_->ArmFlusher();
}

void Sender::Complete(uint64_t id, Reply reply) {
  OutRequest* request = requests_.Erase(id);
  if (request == nullptr) return;
  // Reused only after the caller's callback returned: nothing (Cancel of
  // this id, a Send) can reach it through requests_ meanwhile.
  struct Recycle {
    RequestPool* pool;
    OutRequest* request;
    ~Recycle() { pool->Give(request); }
  } recycle{&spare_requests_, request};
  Deadlines::Forget(request);
  if (request->link != nullptr) --request->link->outstanding;
  if (request->cancelled) {
    // Already answered kCancelled; a stop may have waited for this one.
    client_->MaybeFinishStop();
    return;
  }
  if (request->route != nullptr) {
    request->route->latency.Record(uv_now(loop_) - request->sent_ms);
  }
  if (reply.ok) {
    ++replied_;
  } else if (reply.code == ErrorCode::kRefused) {
    ++refused_;
  } else if (reply.code == ErrorCode::kTimeout) {
    ++timed_out_;
  } else if (reply.code == ErrorCode::kCancelled) {
    ++cancelled_;
  } else {
    ++failed_;
  }
  client_->CountChanged();
  if (request->done) request->done(std::move(reply));
  client_->MaybeFinishStop();
}

void Sender::Cancel(uint64_t request_id) {
  OutRequest* request = requests_.Find(request_id);
  if (request == nullptr) return;
  if (request->cancelled) return;
  if (request->link == nullptr) {
    // Still queued (or about to fail): drop it.
    if (request->route != nullptr) {
      request->route->balancer.Dequeue(
          QueueKey{request->priority, request->sequence});
    }
    CompleteLater(request_id, Reply{false, ErrorCode::kCancelled,
                                    "cancelled while queued", ""});
    return;
  }
  // Running: tell the server, answer the caller now, and give the server a
  // grace period before it is killed.
  Link* link = request->link;
  client_->SendOnLink(link, FrameType::kCancel, request->id, 0, {}, {});
  ++cancelled_;
  client_->CountChanged();
  PoolClient::ReplyCallback done = std::move(request->done);
  request->cancelled = true;
  deadlines_.Cancelled(request);
  if (done) done(Reply{false, ErrorCode::kCancelled, "cancelled", ""});
}

void Sender::OnFrame(Link* link, const FrameView& frame) {
  const uint64_t id = frame.header.id;
  if (frame.header.type == FrameType::kRequest) {
    // The peer only serves us; a request from it breaks the routing rules.
    ++refused_;
    client_->SendOnLink(link, FrameType::kError, id,
                        static_cast<uint32_t>(ErrorCode::kRefused), {},
                        "refused: " + link->peer_group +
                            " may not send requests to " + client_->group());
    return;
  }
  OutRequest* request = requests_.Find(id);
  // Gone or elsewhere: a late answer to a timeout.
  if (request == nullptr || request->link != link) return;
  if (frame.header.type == FrameType::kProgress) {
    if (request->on_progress && !request->cancelled) {
      request->on_progress(
          Progress{static_cast<double>(frame.header.aux) / wire::kProgressScale,
                   std::string(frame.body)});
    }
    return;
  }
  if (frame.header.type != FrameType::kReply &&
      frame.header.type != FrameType::kError) {
    return;
  }
  Reply reply;
  reply.ok = frame.header.type == FrameType::kReply;
  reply.code = reply.ok ? ErrorCode::kHandlerError
                        : static_cast<ErrorCode>(frame.header.aux);
  reply.body.assign(frame.body);
  reply.meta.assign(frame.meta);
  Route* route = request->route;
  Complete(id, std::move(reply));
  if (link->draining && link->outstanding == 0) client_->CloseLink(link);
  Dispatch(route);
}

void Sender::FailLinkRequests(Link* link, ErrorCode code,
                              const std::string& text) {
  std::vector<uint64_t> failed;
  for (OutRequest* r = link->inflight.head; r != nullptr; r = r->next) {
    failed.push_back(r->id);
  }
  for (OutRequest* r = deadlines_.cancelled().head; r != nullptr; r = r->next) {
    if (r->link == link) failed.push_back(r->id);
  }
  for (uint64_t id : failed) Complete(id, Reply{false, code, text, ""});
}

void Sender::OnDeadlines() {
  const uint64_t now = uv_now(loop_);
  // Collected first: completing runs callbacks that may close links.
  std::vector<uint64_t> expired;
  deadlines_.CollectDue(now, client_->links(), &expired);
  for (uint64_t id : expired) {
    OutRequest* request = requests_.Find(id);
    if (request == nullptr) continue;
    Link* link = request->link;
    if (link == nullptr || request->deadline_ms > now) continue;
    std::string reason = request->cancelled
                             ? IgnoredCancelReason()
                             : TimedOutReason(request->route->request_timeout);
    link->condemned = true;
    client_->pool().SendKillPeer(link->peer_pid, reason);
    Complete(
        id,
        Reply{false, ErrorCode::kTimeout,
              "timeout: " + reason + "; " + link->Describe() + " killed", ""});
    if (link->route != nullptr) Dispatch(link->route);
  }
  deadlines_.Rearm(client_->links());
  client_->FlushAll();
}

void Sender::OnRouteOpened(const RouteLimits& limits) {
  auto found = routes_.find(limits.group);
  if (found == routes_.end()) return;
  Route* route = found->second.get();
  route->state = Route::State::kOpen;
  route->balancer.SetLimits(limits.max_inflight, limits.queue_limit);
  route->request_timeout = std::chrono::milliseconds(limits.request_timeout_ms);
  Dispatch(route);
}

void Sender::OnRouteRefused(const std::string& group,
                            const std::string& error) {
  auto found = routes_.find(group);
  if (found == routes_.end()) return;
  Route* route = found->second.get();
  route->state = Route::State::kRefused;
  route->refusal = error;
  FailRoute(route, ErrorCode::kRefused, route->refusal);
  // A route revoked by a reload: requests already sent finish, then its
  // links close; nothing new goes out on them.
  std::vector<Link*> peers = route->balancer.peers();
  for (Link* link : peers) {
    link->draining = true;
    if (link->outstanding == 0) client_->CloseLink(link);
  }
}

void Sender::OnPoolGone() {
  for (auto& [name, route] : routes_) {
    FailRoute(route.get(), ErrorCode::kShuttingDown, "the pool is gone");
  }
}

void Sender::FillStats(ClientStats* stats) const {
  stats->sent = sent_;
  stats->replied = replied_;
  stats->failed = failed_;
  stats->refused = refused_;
  stats->cancelled = cancelled_;
  stats->timed_out = timed_out_;
  stats->inflight = 0;
  stats->queued = 0;
  requests_.ForEach([stats](uint64_t, const OutRequest* request) {
    if (request->link != nullptr) {
      ++stats->inflight;
    } else if (!request->cancelled) {
      ++stats->queued;
    }
  });
}

std::vector<GroupLatency> Sender::Latencies() const {
  std::vector<GroupLatency> latencies;
  for (const auto& [name, route] : routes_) {
    latencies.push_back(
        GroupLatency{&name, &route->latency, route->balancer.queued()});
  }
  return latencies;
}

}  // namespace workerpool::client
