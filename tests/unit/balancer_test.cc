#include "client/balancer.h"

#include <doctest/doctest.h>

#include <vector>

namespace workerpool::client {
namespace {

struct FakePeer : PeerLoad {
  int name = 0;
};

struct FakeRequest {
  int name = 0;
};

using TestBalancer = Balancer<FakePeer, FakeRequest>;

TEST_CASE("balancer: a new route takes one request per peer and queues 1000") {
  TestBalancer balancer;
  CHECK(balancer.max_inflight() == 1);
  CHECK(balancer.queue_limit() == 1000);
  CHECK(balancer.peers().empty());
  CHECK(balancer.Pick() == nullptr);
}

TEST_CASE("balancer: limits from route_opened are clamped") {
  TestBalancer balancer;
  balancer.SetLimits(0, -5);
  CHECK(balancer.max_inflight() == 1);
  CHECK(balancer.queue_limit() == 0);
  balancer.SetLimits(8, 20);
  CHECK(balancer.max_inflight() == 8);
  CHECK(balancer.queue_limit() == 20);
}

TEST_CASE("balancer: the least loaded peer gets the next request") {
  TestBalancer balancer;
  balancer.SetLimits(4, 10);
  FakePeer a, b, c;
  a.outstanding = 2;
  b.outstanding = 1;
  c.outstanding = 3;
  balancer.AddPeer(&a);
  balancer.AddPeer(&b);
  balancer.AddPeer(&c);
  CHECK(balancer.Pick() == &b);
  b.outstanding = 3;
  CHECK(balancer.Pick() == &a);
}

TEST_CASE("balancer: a tie goes to the peer added first") {
  TestBalancer balancer;
  balancer.SetLimits(4, 10);
  FakePeer a, b;
  balancer.AddPeer(&a);
  balancer.AddPeer(&b);
  CHECK(balancer.Pick() == &a);
  a.outstanding = 1;
  CHECK(balancer.Pick() == &b);
  b.outstanding = 1;
  CHECK(balancer.Pick() == &a);
}

TEST_CASE("balancer: no peer gets more than max_inflight") {
  TestBalancer balancer;
  balancer.SetLimits(2, 10);
  FakePeer a, b;
  balancer.AddPeer(&a);
  balancer.AddPeer(&b);
  a.outstanding = 2;
  b.outstanding = 1;
  CHECK(balancer.Pick() == &b);
  b.outstanding = 2;
  CHECK(balancer.Pick() == nullptr);
  // Cancelled requests the peer has not answered still count.
  a.outstanding = 1;
  CHECK(balancer.Pick() == &a);
}

TEST_CASE("balancer: draining, condemned and closed peers get nothing") {
  TestBalancer balancer;
  balancer.SetLimits(4, 10);
  FakePeer draining, condemned, closed, idle;
  draining.draining = true;
  condemned.condemned = true;
  closed.closed = true;
  idle.outstanding = 3;
  for (FakePeer* peer : {&draining, &condemned, &closed, &idle}) {
    balancer.AddPeer(peer);
  }
  CHECK(balancer.Pick() == &idle);
  idle.draining = true;
  CHECK(balancer.Pick() == nullptr);
}

TEST_CASE("balancer: a peer removed is gone from the choice") {
  TestBalancer balancer;
  FakePeer a, b;
  balancer.AddPeer(&a);
  balancer.AddPeer(&b);
  balancer.RemovePeer(&a);
  CHECK(balancer.peers() == std::vector<FakePeer*>{&b});
  CHECK(balancer.Pick() == &b);
  balancer.RemovePeer(&b);
  balancer.RemovePeer(&b);  // twice: no-op
  CHECK(balancer.Pick() == nullptr);
}

TEST_CASE(
    "balancer: the queue serves lower priority numbers first, then "
    "arrival order") {
  TestBalancer balancer;
  FakeRequest r1{1}, r2{2}, r3{3}, r4{4};
  balancer.Enqueue(QueueKey{5, 1}, &r1);
  balancer.Enqueue(QueueKey{0, 2}, &r2);
  balancer.Enqueue(QueueKey{5, 3}, &r3);
  balancer.Enqueue(QueueKey{-1, 4}, &r4);
  CHECK(balancer.queued() == 4);
  FakePeer peer;
  peer.outstanding = 0;
  balancer.SetLimits(100, 10);
  balancer.AddPeer(&peer);
  std::vector<int> order;
  FakePeer* to = nullptr;
  while (FakeRequest* request = balancer.Next(&to)) {
    CHECK(to == &peer);
    ++peer.outstanding;
    order.push_back(request->name);
  }
  CHECK(order == std::vector<int>{4, 2, 1, 3});
  CHECK(balancer.queue_empty());
}

TEST_CASE(
    "balancer: Next hands out queued requests only while a peer has "
    "room, to the least loaded") {
  TestBalancer balancer;
  balancer.SetLimits(1, 10);
  FakePeer a, b;
  balancer.AddPeer(&a);
  balancer.AddPeer(&b);
  FakeRequest r1{1}, r2{2}, r3{3};
  balancer.Enqueue(QueueKey{0, 1}, &r1);
  balancer.Enqueue(QueueKey{0, 2}, &r2);
  balancer.Enqueue(QueueKey{0, 3}, &r3);
  FakePeer* to = nullptr;
  CHECK(balancer.Next(&to) == &r1);
  CHECK(to == &a);
  ++a.outstanding;
  CHECK(balancer.Next(&to) == &r2);
  CHECK(to == &b);
  ++b.outstanding;
  CHECK(balancer.Next(&to) == nullptr);  // both full: r3 stays
  CHECK(balancer.queued() == 1);
  --a.outstanding;
  CHECK(balancer.Next(&to) == &r3);
  CHECK(to == &a);
  CHECK(balancer.Next(&to) == nullptr);  // empty
}

TEST_CASE("balancer: a cancelled request leaves the queue") {
  TestBalancer balancer;
  FakeRequest r1{1}, r2{2};
  balancer.Enqueue(QueueKey{0, 1}, &r1);
  balancer.Enqueue(QueueKey{0, 2}, &r2);
  balancer.Dequeue(QueueKey{0, 1});
  balancer.Dequeue(QueueKey{0, 9});  // not queued: no-op
  CHECK(balancer.queued() == 1);
  auto taken = balancer.TakeQueue();
  CHECK(balancer.queue_empty());
  REQUIRE(taken.size() == 1);
  CHECK(taken.begin()->second == &r2);
}

TEST_CASE("balancer: the queue is full at queue_limit when no peer has room") {
  TestBalancer balancer;
  balancer.SetLimits(1, 2);
  FakePeer a;
  a.outstanding = 1;
  balancer.AddPeer(&a);
  FakeRequest r1, r2;
  CHECK_FALSE(balancer.QueueFull());
  balancer.Enqueue(QueueKey{0, 1}, &r1);
  CHECK_FALSE(balancer.QueueFull());
  balancer.Enqueue(QueueKey{0, 2}, &r2);
  CHECK(balancer.QueueFull());
  // A peer with room takes the next one: not full.
  a.outstanding = 0;
  CHECK_FALSE(balancer.QueueFull());
  // Room on a draining or condemned peer does not count.
  a.draining = true;
  CHECK(balancer.QueueFull());
  a.draining = false;
  a.condemned = true;
  CHECK(balancer.QueueFull());
}

TEST_CASE("balancer: queue_limit 0 refuses whatever finds no free peer") {
  TestBalancer balancer;
  balancer.SetLimits(1, 0);
  CHECK(balancer.QueueFull());  // no peer at all
  FakePeer a;
  balancer.AddPeer(&a);
  CHECK_FALSE(balancer.QueueFull());
  a.outstanding = 1;
  CHECK(balancer.QueueFull());
}

TEST_CASE("balancer: waiting requests are stranded when no peer is live") {
  TestBalancer balancer;
  FakePeer a, b;
  balancer.AddPeer(&a);
  balancer.AddPeer(&b);
  CHECK_FALSE(balancer.Stranded());  // nothing waits
  FakeRequest r;
  balancer.Enqueue(QueueKey{0, 1}, &r);
  a.outstanding = 1;
  b.outstanding = 1;
  CHECK_FALSE(balancer.Stranded());  // busy, not gone: it will be served
  a.draining = true;
  b.condemned = true;
  CHECK(balancer.Stranded());
  b.condemned = false;
  b.closed = true;
  CHECK(balancer.Stranded());
  balancer.RemovePeer(&a);
  balancer.RemovePeer(&b);
  CHECK(balancer.Stranded());  // peers gone
}

TEST_CASE("balancer: a route with no peer yet queues, and is stranded") {
  TestBalancer balancer;
  FakeRequest r;
  balancer.Enqueue(QueueKey{0, 1}, &r);
  FakePeer* to = nullptr;
  CHECK(balancer.Next(&to) == nullptr);
  CHECK(balancer.Stranded());
  FakePeer a;
  balancer.AddPeer(&a);
  CHECK_FALSE(balancer.Stranded());
  CHECK(balancer.Next(&to) == &r);
  CHECK(to == &a);
}

}  // namespace
}  // namespace workerpool::client
