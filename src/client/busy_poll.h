// Busy polling of links (docs/PROTOCOL.md, "Busy polling"). Before the loop
// blocks, a process whose peer on another CPU just sent it frames reads
// that link without blocking for up to busy_poll_us (as SO_BUSY_POLL does
// for network sockets): waking a sleeping process on another CPU costs more
// than the frames it carries (on two vCPUs, ipc_bench's raw pair spends
// most of its time there). A link that stays quiet that long goes back to
// the loop's blocking poll.
//
// The client marks a link hot when bytes arrive on it and calls Poll() from
// its uv_prepare_t, after flushing. Threading: the client's loop thread.
#pragma once

#include <sched.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "client/link.h"
#include "workerpool/wire.h"

namespace workerpool::client {

class BusyPoller {
 public:
  // FINISHED is the client's flag: once set, nothing is polled any more.
  void Init(uv_loop_t* loop, const bool* finished);
  // The idle handle of TurnAgain(), for the client to close.
  uv_handle_t* idle_handle() {
    return reinterpret_cast<uv_handle_t*>(&poll_again_);
  }

  // The group's busy_poll_us (config frame), clamped to 0..kMaxBusyPollUs;
  // 0: never.
  void SetBudgetUs(int busy_poll_us);

  // LINK brought bytes. True when it just became hot: the caller makes
  // sure its prepare callback runs before the loop blocks.
  bool MarkHot(Link* link) {
    if (link->hot || budget_ns_ == 0) return false;
    link->hot = true;
    hot_.push_back(link);
    return true;
  }
  bool has_hot() const { return !hot_.empty(); }
  // LINK is closing: not polled again.
  void Forget(Link* link);
  // The client finished: nothing is polled again.
  void ForgetAll();

  enum class Outcome {
    kDelivered,  // a read brought bytes (handed to ON_BYTES)
    kMissed,     // nothing came before busy_poll_us ran out
    kIdle,       // no hot link was worth polling
  };
  // Reads the hot links worth it without blocking, round after round, until
  // a round delivers or busy_poll_us passed; ON_BYTES(link, bytes) gets
  // each read that brought bytes (several links may deliver in one round)
  // and must take every frame out of them. A link at EOF or in error is
  // left to libuv's read, which reports it.
  template <typename OnBytes>
  Outcome Poll(OnBytes on_bytes);

  // After a poll that delivered: the loop polls its other handles (the
  // application's sockets and timers, the pool channel) without blocking
  // and comes back to the next busy poll, which the links that delivered
  // (hot again) are in.
  void TurnAgain();

  std::uint64_t reads() const { return reads_; }
  std::uint64_t misses() const { return misses_; }

 private:
  // Per hot link and poll: header-inline.
  bool WorthPolling(Link* link);
  // Counts a poll that found nothing, and backs off its links.
  void Missed();

  uv_loop_t* loop_ = nullptr;
  const bool* finished_ = nullptr;
  std::uint64_t budget_ns_ = wire::kDefaultBusyPollUs * 1000;
  std::vector<Link*> hot_;      // links with hot set
  std::vector<Link*> polling_;  // Poll's list, kept for its capacity
  uv_idle_t poll_again_;
  // Reads done by busy polling that brought frames; polls that found none.
  std::uint64_t reads_ = 0;
  std::uint64_t misses_ = 0;
};

inline bool BusyPoller::WorthPolling(Link* link) {
  // A draining sender link waits for the Watcher's word, not for bytes.
  if (link->closed || link->draining || *finished_ || budget_ns_ == 0) {
    return false;
  }
  // A peer on this CPU cannot answer while we spin; one whose CPU we do
  // not know might be.
  if (link->placement->Check(uv_now(loop_)) !=
      PeerPlacement::Where::kOtherCpu) {
    return false;
  }
  // A sender waits for replies; a server for the next request of a sender
  // that just sent some.
  if (link->role == Link::Role::kSender && link->outstanding == 0) {
    return false;
  }
  return link->busy_poll.TakeChance();
}

template <typename OnBytes>
BusyPoller::Outcome BusyPoller::Poll(OnBytes on_bytes) {
  polling_.swap(hot_);
  for (Link* link : polling_) link->hot = false;
  std::erase_if(polling_, [this](Link* link) { return !WorthPolling(link); });
  const std::uint64_t start = uv_hrtime();
  bool got = false;
  std::size_t live = polling_.size();
  while (!got && live > 0 && uv_hrtime() - start < budget_ns_) {
    for (Link*& link : polling_) {
      // A handler may have stopped the client or closed a link meanwhile.
      if (link == nullptr || link->closed || *finished_) continue;
      std::string_view bytes;
      const Link::Read read = link->TryRead(&bytes);
      if (read == Link::Read::kNothing) continue;
      if (read == Link::Read::kEnd) {
        link = nullptr;
        --live;
        continue;
      }
      ++reads_;
      link->busy_poll.Hit();
      on_bytes(link, bytes);
      got = true;
    }
    // Polite spinning: a process waiting for this CPU gets it (with the
    // HTTP front end, the pool and a load generator on two CPUs, spinning
    // without yielding cost a tenth of the requests/s); alone, the call
    // returns at once.
    if (!got) sched_yield();
  }
  Outcome outcome = got ? Outcome::kDelivered : Outcome::kIdle;
  if (!got && !*finished_ && !polling_.empty()) {
    Missed();
    outcome = Outcome::kMissed;
  }
  polling_.clear();
  return outcome;
}

}  // namespace workerpool::client
