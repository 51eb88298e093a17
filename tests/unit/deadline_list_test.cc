#include "client/deadline_list.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

namespace workerpool::client {
namespace {

struct FakeRequest {
  std::uint64_t id = 0;
  std::uint64_t deadline_ms = kNoDeadline;
  FakeRequest* prev = nullptr;
  FakeRequest* next = nullptr;
  DeadlineList<FakeRequest>* listed_in = nullptr;
};

std::vector<std::uint64_t> Ids(const DeadlineList<FakeRequest>& list) {
  std::vector<std::uint64_t> ids;
  for (FakeRequest* r = list.head; r != nullptr; r = r->next) {
    ids.push_back(r->id);
  }
  // The backward links agree.
  std::vector<std::uint64_t> backward;
  for (FakeRequest* r = list.tail; r != nullptr; r = r->prev) {
    backward.insert(backward.begin(), r->id);
  }
  CHECK(backward == ids);
  return ids;
}

TEST_CASE(
    "deadlines: a request is due timeout ms after it was sent, never "
    "without a timeout") {
  CHECK(DeadlineAfter(1000, 250) == 1250);
  CHECK(DeadlineAfter(1000, 0) == kNoDeadline);
  CHECK(DeadlineAfter(1000, -1) == kNoDeadline);
  CHECK(GraceDeadline(1000) == 6000);
}

TEST_CASE("deadlines: the reasons given to kill_peer") {
  CHECK(TimedOutReason(std::chrono::milliseconds(1500)) ==
        "request timed out after 1500ms");
  CHECK(IgnoredCancelReason() == "ignored a cancel for 5s");
}

TEST_CASE("deadlines: requests in sending order append at the tail") {
  DeadlineList<FakeRequest> list;
  CHECK(list.empty());
  CHECK(list.earliest() == kNoDeadline);
  FakeRequest a{1, 100}, b{2, 200}, c{3, 200};
  list.Insert(&a);
  list.Insert(&b);
  list.Insert(&c);
  CHECK(Ids(list) == std::vector<std::uint64_t>{1, 2, 3});
  CHECK(list.earliest() == 100);
  CHECK(a.listed_in == &list);
}

TEST_CASE("deadlines: a shorter timeout after a reload is filed in order") {
  DeadlineList<FakeRequest> list;
  FakeRequest a{1, 100}, b{2, 300}, c{3, 200}, d{4, 50}, e{5, kNoDeadline};
  for (FakeRequest* r : {&a, &b, &e, &c, &d}) list.Insert(r);
  CHECK(Ids(list) == std::vector<std::uint64_t>{4, 1, 3, 2, 5});
  CHECK(list.earliest() == 50);
}

TEST_CASE("deadlines: removing from the head, the middle and the tail") {
  DeadlineList<FakeRequest> list;
  FakeRequest a{1, 100}, b{2, 200}, c{3, 300};
  for (FakeRequest* r : {&a, &b, &c}) list.Insert(r);
  list.Remove(&b);
  CHECK(Ids(list) == std::vector<std::uint64_t>{1, 3});
  CHECK(b.listed_in == nullptr);
  CHECK(b.prev == nullptr);
  CHECK(b.next == nullptr);
  list.Remove(&a);
  CHECK(Ids(list) == std::vector<std::uint64_t>{3});
  list.Remove(&c);
  CHECK(list.empty());
  CHECK(list.tail == nullptr);
  // Reusable afterwards.
  list.Insert(&b);
  CHECK(Ids(list) == std::vector<std::uint64_t>{2});
}

TEST_CASE("deadlines: the requests due are those at or before now") {
  DeadlineList<FakeRequest> list;
  FakeRequest a{7, 100}, b{3, 200}, c{9, 201};
  for (FakeRequest* r : {&a, &b, &c}) list.Insert(r);
  std::vector<std::uint64_t> due;
  list.CollectDue(99, &due);
  CHECK(due.empty());
  list.CollectDue(200, &due);
  CHECK(due == std::vector<std::uint64_t>{7, 3});
  // Appends.
  list.CollectDue(1000, &due);
  CHECK(due == std::vector<std::uint64_t>{7, 3, 7, 3, 9});
}

TEST_CASE("deadlines: the alarm is restarted only for an earlier deadline") {
  DeadlineAlarm alarm;
  CHECK(alarm.due() == kNoDeadline);
  CHECK(alarm.Advance(500));
  CHECK(alarm.due() == 500);
  CHECK_FALSE(alarm.Advance(500));
  CHECK_FALSE(alarm.Advance(900));
  CHECK(alarm.Advance(400));
  CHECK(alarm.due() == 400);
  CHECK_FALSE(alarm.Advance(kNoDeadline));
  alarm.Reset();
  CHECK(alarm.due() == kNoDeadline);
  CHECK(alarm.Advance(900));
}

TEST_CASE("deadlines: the timer's delay is never negative") {
  CHECK(DeadlineAlarm::DelayMs(1500, 1000) == 500);
  CHECK(DeadlineAlarm::DelayMs(1000, 1000) == 0);
  CHECK(DeadlineAlarm::DelayMs(900, 1000) == 0);
}

}  // namespace
}  // namespace workerpool::client
