// The arithmetic of request deadlines (docs/PROTOCOL.md: request_timeout,
// the cancel grace, kill_peer): when a request is due, the lists that keep
// requests in deadline order, the alarm that says when the one timer must
// fire, and the reasons a sender gives when it asks the pool to kill a peer.
//
// Pure: no libuv, no clock; times are a loop's clock in ms, passed in.
// Header-inline: a deadline is set and cleared for every request. Used by
// the sending side (deadlines.h, sender.h) on the client's loop thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace workerpool::client {

inline constexpr std::uint64_t kNoDeadline = UINT64_MAX;

// A job that ignores a cancel this long is killed.
inline constexpr auto kCancelGrace = std::chrono::seconds(5);

// When a request sent at NOW_MS times out; none for a timeout <= 0.
inline std::uint64_t DeadlineAfter(std::uint64_t now_ms,
                                   std::int64_t timeout_ms) {
  return timeout_ms > 0 ? now_ms + static_cast<std::uint64_t>(timeout_ms)
                        : kNoDeadline;
}

// When a server that was sent a cancel at NOW_MS is killed.
inline std::uint64_t GraceDeadline(std::uint64_t now_ms) {
  return now_ms +
         static_cast<std::uint64_t>(
             std::chrono::duration_cast<std::chrono::milliseconds>(kCancelGrace)
                 .count());
}

// Why a peer is killed (kill_peer's "reason", and the caller's error text).
inline std::string TimedOutReason(std::chrono::milliseconds timeout) {
  return "request timed out after " + std::to_string(timeout.count()) + "ms";
}
inline std::string IgnoredCancelReason() {
  return "ignored a cancel for " + std::to_string(kCancelGrace.count()) + "s";
}

// Requests in deadline order, linked through the requests themselves: one
// timeout per route (and one cancel grace) makes deadlines arrive in order,
// so inserting is O(1) at the tail and no node is allocated per request.
// T has the fields `T* prev`, `T* next`, `std::uint64_t deadline_ms` and
// `DeadlineList<T>* listed_in`; a T is on at most one list at a time.
template <typename T>
struct DeadlineList {
  T* head = nullptr;
  T* tail = nullptr;

  bool empty() const { return head == nullptr; }
  // The earliest deadline on the list, kNoDeadline when it is empty.
  std::uint64_t earliest() const {
    return head != nullptr ? head->deadline_ms : kNoDeadline;
  }

  void Insert(T* request) {
    T* after = tail;
    while (after != nullptr && after->deadline_ms > request->deadline_ms) {
      after = after->prev;  // a timeout changed by a reload
    }
    request->prev = after;
    request->next = after != nullptr ? after->next : head;
    if (request->next != nullptr) {
      request->next->prev = request;
    } else {
      tail = request;
    }
    if (after != nullptr) {
      after->next = request;
    } else {
      head = request;
    }
    request->listed_in = this;
  }

  void Remove(T* request) {
    (request->prev != nullptr ? request->prev->next : head) = request->next;
    (request->next != nullptr ? request->next->prev : tail) = request->prev;
    request->prev = request->next = nullptr;
    request->listed_in = nullptr;
  }

  // Appends to IDS the id of every request due at NOW_MS, earliest first.
  void CollectDue(std::uint64_t now_ms, std::vector<std::uint64_t>* ids) const {
    for (T* r = head; r != nullptr && r->deadline_ms <= now_ms; r = r->next) {
      ids->push_back(r->id);
    }
  }
};

// When the one deadline timer is due. Deadlines are noted as requests go
// out; the timer is restarted only for one earlier than it is due, and may
// fire early (its request finished), after which the owner recomputes the
// earliest deadline and re-arms.
class DeadlineAlarm {
 public:
  std::uint64_t due() const { return due_; }
  // True when DEADLINE_MS is earlier than the alarm is due: it is now due
  // then, and the timer must be restarted.
  bool Advance(std::uint64_t deadline_ms) {
    if (deadline_ms >= due_) return false;
    due_ = deadline_ms;
    return true;
  }
  // The timer fired or stopped: nothing is due.
  void Reset() { due_ = kNoDeadline; }
  // The timer's delay from NOW_MS to DEADLINE_MS (0 when already past).
  static std::uint64_t DelayMs(std::uint64_t deadline_ms,
                               std::uint64_t now_ms) {
    return deadline_ms > now_ms ? deadline_ms - now_ms : 0;
  }

 private:
  std::uint64_t due_ = kNoDeadline;
};

}  // namespace workerpool::client
