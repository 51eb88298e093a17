#include "client/out_request.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "client/link.h"
#include "client/route.h"

namespace workerpool::client {
namespace {

TEST_CASE("request pool: a spent request comes back reset") {
  RequestPool pool;
  Route route;
  Link link;
  OutRequest* request = pool.Take();
  request->id = 7;
  request->route = &route;
  request->body = "body";
  request->meta = "{}";
  request->priority = -3;
  request->sequence = 9;
  request->done = [](Reply) {};
  request->on_progress = [](const Progress&) {};
  request->link = &link;
  request->deadline_ms = 55;
  request->sent_ms = 44;
  request->cancelled = true;
  pool.Give(request);
  CHECK(pool.spares() == 1);

  OutRequest* again = pool.Take();
  CHECK(again == request);  // reused, not allocated
  CHECK(pool.spares() == 0);
  CHECK(again->id == 0);
  CHECK(again->route == nullptr);
  CHECK(again->body.empty());
  CHECK(again->meta.empty());
  CHECK(again->priority == 0);
  CHECK(again->sequence == 0);
  CHECK(!again->done);
  CHECK(!again->on_progress);
  CHECK(again->link == nullptr);
  CHECK(again->listed_in == nullptr);
  CHECK(again->prev == nullptr);
  CHECK(again->next == nullptr);
  CHECK(again->deadline_ms == kNoDeadline);
  CHECK(again->sent_ms == 0);
  CHECK_FALSE(again->cancelled);
  delete again;
}

TEST_CASE("request pool: small buffers are kept, large ones freed") {
  RequestPool pool;
  OutRequest* request = pool.Take();
  request->body.assign(100, 'x');
  request->meta.assign(RequestPool::kKeptCapacity + 1, 'm');
  const size_t body_capacity = request->body.capacity();
  pool.Give(request);
  OutRequest* again = pool.Take();
  CHECK(again->body.capacity() == body_capacity);
  CHECK(again->meta.capacity() <= RequestPool::kKeptCapacity);
  delete again;
}

TEST_CASE("request pool: at most kMaxSpares are kept") {
  RequestPool pool;
  std::vector<OutRequest*> taken;
  for (size_t i = 0; i < RequestPool::kMaxSpares + 10; ++i) {
    taken.push_back(pool.Take());
  }
  for (OutRequest* request : taken) pool.Give(request);
  CHECK(pool.spares() == RequestPool::kMaxSpares);
}

TEST_CASE(
    "latency histogram: an answer counts in the first bucket whose "
    "bound it does not exceed") {
  LatencyHistogram histogram;
  histogram.Record(0);
  histogram.Record(1);
  histogram.Record(2);
  histogram.Record(3);
  histogram.Record(30000);
  histogram.Record(30001);
  CHECK(histogram.counts[0] == 2);                            // <= 1 ms
  CHECK(histogram.counts[1] == 1);                            // <= 2 ms
  CHECK(histogram.counts[2] == 1);                            // <= 5 ms
  CHECK(histogram.counts[kLatencyBoundsMs.size() - 1] == 1);  // <= 30 s
  CHECK(histogram.counts[kLatencyBoundsMs.size()] == 1);      // +Inf
  CHECK(histogram.total() == 6);
  CHECK(histogram.sum_ms == 0 + 1 + 2 + 3 + 30000 + 30001);
}

}  // namespace
}  // namespace workerpool::client
