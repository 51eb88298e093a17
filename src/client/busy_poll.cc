#include "client/busy_poll.h"

#include <algorithm>

namespace workerpool::client {

void BusyPoller::Init(uv_loop_t* loop, const bool* finished) {
  loop_ = loop;
  finished_ = finished;
  uv_idle_init(loop, &poll_again_);
}

void BusyPoller::SetBudgetUs(int busy_poll_us) {
  budget_ns_ = 1000 * static_cast<std::uint64_t>(
                          std::clamp(busy_poll_us, 0, wire::kMaxBusyPollUs));
}

void BusyPoller::Forget(Link* link) {
  if (!link->hot) return;
  std::erase(hot_, link);
  link->hot = false;
}

void BusyPoller::ForgetAll() {
  for (Link* link : hot_) link->hot = false;
  hot_.clear();
}

void BusyPoller::Missed() {
  ++misses_;
  for (Link* link : polling_) {
    if (link != nullptr) link->busy_poll.Miss();
  }
}

void BusyPoller::TurnAgain() {
  uv_idle_start(&poll_again_, [](uv_idle_t* idle) { uv_idle_stop(idle); });
}

}  // namespace workerpool::client
