// A request this process sent (or will send), and the pool of spent ones
// kept for reuse so that sending allocates nothing per request.
//
// Pure: no libuv, no sockets. Header-inline: every Send() takes one and
// every answer gives one back. Owned by the sender (sender.h), on the
// client's loop thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "client/deadline_list.h"
#include "workerpool/client.h"

namespace workerpool::client {

struct Link;
struct Route;

struct OutRequest {
  std::uint64_t id = 0;
  Route* route = nullptr;
  std::string body;  // kept only while queued
  std::string meta;
  std::int32_t priority = 0;
  std::uint64_t sequence = 0;  // arrival order within a priority
  PoolClient::ReplyCallback done;
  std::function<void(const Progress&)> on_progress;
  Link* link = nullptr;  // while in flight
  // In flight: on its link's list, or on the list of cancelled requests;
  // each list is ordered by deadline (loop time, ms).
  DeadlineList<OutRequest>* listed_in = nullptr;
  OutRequest* prev = nullptr;
  OutRequest* next = nullptr;
  std::uint64_t deadline_ms = kNoDeadline;
  std::uint64_t sent_ms = 0;  // loop time of Send(), for the latency histogram
  bool cancelled = false;     // answered kCancelled; waiting for the server
};

// Spent requests, reset and kept for the next Send().
class RequestPool {
 public:
  // Enough spares for a window of requests in flight; more are freed.
  static constexpr std::size_t kMaxSpares = 256;
  // A spare keeps a string's buffer up to this size; a larger one is
  // freed rather than kept by an idle spare.
  static constexpr std::size_t kKeptCapacity = 4096;

  // A request in its initial state.
  OutRequest* Take() {
    if (spares_.empty()) return new OutRequest;
    OutRequest* request = spares_.back().release();
    spares_.pop_back();
    return request;
  }

  // Takes REQUEST back (owned from now on): reset, or freed when enough
  // spares are kept.
  void Give(OutRequest* request) {
    if (spares_.size() >= kMaxSpares) {
      delete request;
      return;
    }
    // Reset field by field: small strings keep their capacity for the next
    // use.
    for (std::string* text : {&request->body, &request->meta}) {
      if (text->capacity() > kKeptCapacity) {
        std::string().swap(*text);
      } else {
        text->clear();
      }
    }
    request->id = 0;
    request->route = nullptr;
    request->priority = 0;
    request->sequence = 0;
    request->done = nullptr;
    request->on_progress = nullptr;
    request->link = nullptr;
    request->listed_in = nullptr;
    request->prev = request->next = nullptr;
    request->deadline_ms = kNoDeadline;
    request->sent_ms = 0;
    request->cancelled = false;
    spares_.emplace_back(request);
  }

  std::size_t spares() const { return spares_.size(); }

 private:
  std::vector<std::unique_ptr<OutRequest>> spares_;
};

}  // namespace workerpool::client
