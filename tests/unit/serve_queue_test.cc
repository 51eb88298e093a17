#include "client/serve_queue.h"

#include <doctest/doctest.h>

#include <memory>
#include <vector>

namespace workerpool::client {
namespace {

struct FakeRequest {
  int name = 0;
  bool gone = false;
  bool detached() const { return gone; }
};

std::shared_ptr<FakeRequest> Make(int name) {
  auto request = std::make_shared<FakeRequest>();
  request->name = name;
  return request;
}

TEST_CASE("serve queue: one request at a time until config says more") {
  ServeQueue<FakeRequest> queue;
  CHECK(queue.limit() == 1);
  CHECK(queue.StartsNow());
  queue.Started();
  CHECK(queue.serving() == 1);
  CHECK_FALSE(queue.StartsNow());
  queue.SetLimit(2);
  CHECK(queue.StartsNow());
  queue.Finished();
  CHECK(queue.serving() == 0);
}

TEST_CASE("serve queue: max_inflight below 1 means 1") {
  ServeQueue<FakeRequest> queue;
  queue.SetLimit(0);
  CHECK(queue.limit() == 1);
  queue.SetLimit(-3);
  CHECK(queue.limit() == 1);
}

TEST_CASE(
    "serve queue: a request that arrives behind waiting ones waits "
    "too") {
  ServeQueue<FakeRequest> queue;
  queue.SetLimit(2);
  queue.Started();
  queue.Started();
  queue.Enqueue(0, Make(1));
  queue.Finished();  // a slot is free, but one waits: first come first
  CHECK_FALSE(queue.StartsNow());
  CHECK(queue.PopNext()->name == 1);
  CHECK(queue.StartsNow());
}

TEST_CASE(
    "serve queue: waiting requests start by priority, then arrival, "
    "as slots free") {
  ServeQueue<FakeRequest> queue;
  queue.Started();
  queue.Enqueue(3, Make(1));
  queue.Enqueue(0, Make(2));
  queue.Enqueue(3, Make(3));
  queue.Enqueue(-2, Make(4));
  CHECK(queue.waiting() == 4);
  CHECK(queue.PopNext() == nullptr);  // no free slot
  std::vector<int> order;
  for (;;) {
    queue.Finished();
    std::shared_ptr<FakeRequest> next = queue.PopNext();
    if (next == nullptr) break;
    queue.Started();
    order.push_back(next->name);
  }
  CHECK(order == std::vector<int>{4, 2, 1, 3});
  CHECK(queue.waiting() == 0);
}

TEST_CASE("serve queue: a request whose sender went away never starts") {
  ServeQueue<FakeRequest> queue;
  queue.Started();
  auto a = Make(1), b = Make(2);
  queue.Enqueue(0, a);
  queue.Enqueue(0, b);
  a->gone = true;
  queue.Finished();
  CHECK(queue.PopNext() == b);
  CHECK(queue.waiting() == 0);
}

TEST_CASE("serve queue: dropping the orphans of a closed link") {
  ServeQueue<FakeRequest> queue;
  queue.Started();
  auto a = Make(1), b = Make(2), c = Make(3);
  for (const auto& r : {a, b, c}) queue.Enqueue(0, r);
  a->gone = true;
  c->gone = true;
  queue.DropDetached();
  CHECK(queue.waiting() == 1);
  queue.Finished();
  CHECK(queue.PopNext() == b);
}

TEST_CASE("serve queue: a cancel before the start removes the request") {
  ServeQueue<FakeRequest> queue;
  queue.Started();
  auto a = Make(1), b = Make(2);
  queue.Enqueue(0, a);
  queue.Enqueue(0, b);
  CHECK(queue.Remove(a));
  CHECK_FALSE(queue.Remove(a));
  CHECK_FALSE(queue.Remove(Make(9)));
  CHECK(queue.waiting() == 1);
  queue.Finished();
  CHECK(queue.PopNext() == b);
}

}  // namespace
}  // namespace workerpool::client
