// Which peer of a group takes a sender's next request, and the queue of the
// requests that wait for one (docs/PROTOCOL.md, "The life of a child", 3):
// among the peers that take requests, the one with the fewest in flight,
// at most max_inflight each; then a queue of at most queue_limit requests,
// lowest priority number first, first come first within one priority.
//
// Pure: no libuv, no sockets, no clock. It decides; the sender (sender.h)
// acts on the answers: sends the frame, fails what cannot be served. It
// neither owns nor counts: the sender keeps each peer's PeerLoad current.
// Header-inline, since Pick() runs for every request. One per route, on the
// client's loop thread like the rest of the library; not thread-safe.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

namespace workerpool::client {

// What the balancer reads of a peer. A Peer type derives from it.
struct PeerLoad {
  // Requests the peer has: in flight, and cancelled ones it has not
  // answered yet (they still take one of its max_inflight).
  int outstanding = 0;
  bool draining = false;   // the peer takes no new requests
  bool condemned = false;  // we asked the Watcher to kill the peer
  bool closed = false;     // its link is gone
  // Could take a request if it had room.
  bool live() const { return !draining && !condemned && !closed; }
};

// A waiting request's place in the queue.
struct QueueKey {
  std::int32_t priority;   // lower first
  std::uint64_t sequence;  // arrival order, unique
  bool operator<(const QueueKey& other) const {
    return priority != other.priority ? priority < other.priority
                                      : sequence < other.sequence;
  }
};

// PEER derives from PeerLoad; REQUEST is only stored.
template <typename Peer, typename Request>
class Balancer {
 public:
  using Queue = std::map<QueueKey, Request*>;

  int max_inflight() const { return max_inflight_; }
  int queue_limit() const { return queue_limit_; }
  // The group's limits from route_opened: at least one request per peer,
  // a queue limit of at least 0.
  void SetLimits(int max_inflight, int queue_limit) {
    max_inflight_ = std::max(1, max_inflight);
    queue_limit_ = std::max(0, queue_limit);
  }

  // The peers, in the order they were added (which breaks ties).
  const std::vector<Peer*>& peers() const { return peers_; }
  void AddPeer(Peer* peer) { peers_.push_back(peer); }
  void RemovePeer(Peer* peer) { std::erase(peers_, peer); }

  // The peer the next request goes to: of the live peers with fewer than
  // max_inflight outstanding, the one with the fewest (the first added on
  // a tie). nullptr when none has room.
  Peer* Pick() const {
    Peer* best = nullptr;
    for (Peer* peer : peers_) {
      if (peer->draining || peer->condemned || peer->closed) continue;
      if (peer->outstanding >= max_inflight_) continue;
      if (best == nullptr || peer->outstanding < best->outstanding) {
        best = peer;
      }
    }
    return best;
  }

  // True when a new request would be refused with "queue full": the queue
  // holds queue_limit requests and no peer that is neither draining nor
  // condemned has room. (A closed peer is one whose requests are failing
  // at this moment; it leaves peers() right after.)
  bool QueueFull() const {
    if (static_cast<int>(queue_.size()) < queue_limit_) return false;
    for (const Peer* peer : peers_) {
      if (!peer->draining && !peer->condemned &&
          peer->outstanding < max_inflight_) {
        return false;
      }
    }
    return true;
  }

  // True when requests wait and no peer could ever take them (every peer
  // is draining, condemned or gone): the sender fails them ("no workers").
  bool Stranded() const {
    if (queue_.empty()) return false;
    for (const Peer* peer : peers_) {
      if (peer->live()) return false;
    }
    return true;
  }

  bool queue_empty() const { return queue_.empty(); }
  std::size_t queued() const { return queue_.size(); }
  void Enqueue(QueueKey key, Request* request) { queue_.emplace(key, request); }
  // Drops a waiting request (cancelled); no-op when it is not queued.
  void Dequeue(QueueKey key) { queue_.erase(key); }

  // The next request to send and, in *PEER, where to: the head of the queue
  // when a peer has room (it leaves the queue), else nullptr.
  Request* Next(Peer** peer) {
    if (queue_.empty()) return nullptr;
    Peer* best = Pick();
    if (best == nullptr) return nullptr;
    auto head = queue_.begin();
    Request* request = head->second;
    queue_.erase(head);
    *peer = best;
    return request;
  }

  // Empties the queue and returns what it held, in queue order.
  Queue TakeQueue() {
    Queue taken;
    taken.swap(queue_);
    return taken;
  }

 private:
  int max_inflight_ = 1;
  int queue_limit_ = 1000;
  std::vector<Peer*> peers_;
  Queue queue_;
};

}  // namespace workerpool::client
