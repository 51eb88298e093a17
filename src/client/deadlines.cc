#include "client/deadlines.h"

#include <algorithm>

namespace workerpool::client {

void Deadlines::Init(uv_loop_t* loop, void* owner, uv_timer_cb on_due) {
  loop_ = loop;
  on_due_ = on_due;
  uv_timer_init(loop, &timer_);
  timer_.data = owner;
}

void Deadlines::Cancelled(OutRequest* request) {
  Forget(request);
  request->deadline_ms = GraceDeadline(uv_now(loop_));
  cancelled_.Insert(request);
  Note(request->deadline_ms);
}

void Deadlines::Start(std::uint64_t deadline_ms) {
  uv_timer_start(&timer_, on_due_,
                 DeadlineAlarm::DelayMs(deadline_ms, uv_now(loop_)), 0);
}

void Deadlines::CollectDue(std::uint64_t now_ms, const std::set<Link*>& links,
                           std::vector<std::uint64_t>* ids) const {
  cancelled_.CollectDue(now_ms, ids);
  for (Link* link : links) link->inflight.CollectDue(now_ms, ids);
  std::sort(ids->begin(), ids->end());
}

void Deadlines::Rearm(const std::set<Link*>& links) {
  std::uint64_t earliest = cancelled_.earliest();
  for (Link* link : links) {
    earliest = std::min(earliest, link->inflight.earliest());
  }
  alarm_.Reset();
  if (earliest == kNoDeadline) {
    uv_timer_stop(&timer_);
    return;
  }
  Note(earliest);
}

}  // namespace workerpool::client
