// The deadlines of the requests this process sent (docs/PROTOCOL.md):
// request_timeout for a request in flight, the cancel grace for a running
// one the caller cancelled. Each link keeps its requests in deadline order
// (Link::inflight), the cancelled ones are on one list here, and a single
// uv timer fires at the earliest deadline. What happens to a request past
// its deadline (it fails with kTimeout, the pool is asked to kill_peer its
// server) is the sender's (sender.h): it supplies the timer's callback and
// asks CollectDue() which requests are due.
//
// Threading: the client's loop thread.
#pragma once

#include <uv.h>

#include <cstdint>
#include <set>
#include <vector>

#include "client/deadline_list.h"
#include "client/link.h"
#include "client/out_request.h"

namespace workerpool::client {

class Deadlines {
 public:
  // ON_DUE runs on the loop with the timer's data set to OWNER.
  void Init(uv_loop_t* loop, void* owner, uv_timer_cb on_due);
  // The timer, for the client to close.
  uv_handle_t* timer_handle() {
    return reinterpret_cast<uv_handle_t*>(&timer_);
  }

  // REQUEST was just sent on LINK: it is due TIMEOUT_MS from now (never
  // for a timeout <= 0).
  void Sent(OutRequest* request, Link* link, std::int64_t timeout_ms) {
    // Loop time, not the clock: no clock read per request.
    request->deadline_ms = DeadlineAfter(uv_now(loop_), timeout_ms);
    link->inflight.Insert(request);
    Note(request->deadline_ms);
  }
  // REQUEST, running, was cancelled: its server has kCancelGrace to answer.
  void Cancelled(OutRequest* request);
  // REQUEST completed: off its list.
  static void Forget(OutRequest* request) {
    if (request->listed_in != nullptr) request->listed_in->Remove(request);
  }

  // The running requests the caller cancelled, in deadline order.
  const DeadlineList<OutRequest>& cancelled() const { return cancelled_; }

  // Appends to IDS, sorted, the requests due at NOW_MS: cancelled ones and
  // those in flight on LINKS.
  void CollectDue(std::uint64_t now_ms, const std::set<Link*>& links,
                  std::vector<std::uint64_t>* ids) const;
  // Arms the timer for the earliest deadline left (on LINKS and the
  // cancelled list), or stops it.
  void Rearm(const std::set<Link*>& links);

 private:
  // The timer fires at DEADLINE_MS at the latest.
  void Note(std::uint64_t deadline_ms) {
    // The timer may fire early (its request finished): the owner re-arms.
    if (!alarm_.Advance(deadline_ms)) return;
    Start(deadline_ms);
  }
  void Start(std::uint64_t deadline_ms);

  uv_loop_t* loop_ = nullptr;
  uv_timer_t timer_;
  uv_timer_cb on_due_ = nullptr;
  DeadlineAlarm alarm_;
  DeadlineList<OutRequest> cancelled_;
};

}  // namespace workerpool::client
