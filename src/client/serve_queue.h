// A serving process's admission of the requests it receives: at most
// max_inflight (its own group's, from the pool's config frame) are handed
// to the handler at once; the rest wait, lowest priority number first,
// then in order of arrival. A waiting request may be cancelled by its
// sender, or orphaned when its sender's link closes; an orphan is never
// started.
//
// Pure: no libuv, no sockets; it counts and orders, the server (server.h)
// runs the handlers. Header-inline: every request passes through it. On
// the client's loop thread; not thread-safe.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>

#include "client/balancer.h"  // QueueKey

namespace workerpool::client {

// REQUEST has `bool detached() const`: true once its sender is gone.
template <typename Request>
class ServeQueue {
 public:
  int limit() const { return limit_; }
  // max_inflight from the config frame; at least 1.
  void SetLimit(int max_inflight) { limit_ = std::max(1, max_inflight); }

  // Requests handed to the handler and not answered yet.
  int serving() const { return serving_; }
  // Requests waiting for a turn.
  std::size_t waiting() const { return queue_.size(); }

  // True when a request that just arrived may start at once: a handler
  // slot is free and nothing waits before it.
  bool StartsNow() const { return serving_ < limit_ && queue_.empty(); }
  // A request was handed to the handler / answered after that.
  void Started() { ++serving_; }
  void Finished() { --serving_; }

  // Files a request that may not start now.
  void Enqueue(std::int32_t priority, std::shared_ptr<Request> request) {
    queue_.emplace(QueueKey{priority, ++sequence_}, std::move(request));
  }

  // The next waiting request to start while a slot is free, or nullptr.
  // Orphans met on the way are dropped.
  std::shared_ptr<Request> PopNext() {
    while (serving_ < limit_ && !queue_.empty()) {
      auto head = queue_.begin();
      std::shared_ptr<Request> request = std::move(head->second);
      queue_.erase(head);
      if (request->detached()) continue;  // its sender went away
      return request;
    }
    return nullptr;
  }

  // Drops a waiting REQUEST (cancelled before it started); false when it
  // does not wait here.
  bool Remove(const std::shared_ptr<Request>& request) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (it->second == request) {
        queue_.erase(it);
        return true;
      }
    }
    return false;
  }

  // Drops every waiting orphan (a link closed).
  void DropDetached() {
    std::erase_if(queue_,
                  [](const auto& entry) { return entry.second->detached(); });
  }

 private:
  int limit_ = 1;
  int serving_ = 0;
  std::uint64_t sequence_ = 0;
  std::map<QueueKey, std::shared_ptr<Request>> queue_;
};

}  // namespace workerpool::client
