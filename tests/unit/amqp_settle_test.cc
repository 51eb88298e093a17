#include "children/amqp_settle.h"

#include <doctest/doctest.h>

#include <vector>

namespace workerpool {
namespace {

using Tags = std::vector<std::uint64_t>;

TEST_CASE("AmqpAckBatch: acks below the oldest open delivery go as one") {
  AmqpAckBatch acks;
  for (std::uint64_t tag = 1; tag <= 6; ++tag) acks.Delivered(tag);
  CHECK(acks.empty());
  acks.Ack(2);
  acks.Ack(1);
  acks.Ack(3);
  acks.Ack(5);  // 4 is still open: 5 must not be covered
  CHECK_FALSE(acks.empty());
  AmqpAckBatch::Frames frames = acks.Take();
  CHECK(frames.multiple == 3);
  CHECK(frames.singles == Tags{5});
  CHECK(acks.empty());
  CHECK(acks.Take().multiple == 0);
}

TEST_CASE("AmqpAckBatch: with nothing open, the highest ack covers all") {
  AmqpAckBatch acks;
  for (std::uint64_t tag = 1; tag <= 3; ++tag) acks.Delivered(tag);
  acks.Ack(3);
  acks.Ack(1);
  acks.Ack(2);
  AmqpAckBatch::Frames frames = acks.Take();
  CHECK(frames.multiple == 3);
  CHECK(frames.singles.empty());
}

TEST_CASE("AmqpAckBatch: a delivery dropped unprocessed stays open") {
  AmqpAckBatch acks;
  acks.Delivered(1);  // never acked (stopping): requeued on close
  acks.Delivered(2);
  acks.Ack(2);
  AmqpAckBatch::Frames frames = acks.Take();
  CHECK(frames.multiple == 0);
  CHECK(frames.singles == Tags{2});
}

// Acks of 1 and 3 were held when 2 was rejected (nothing else open): a
// multiple ack up to 3 would ack 2 as well, RabbitMQ would then fail the
// reject (unknown delivery tag) and close the channel, and a message meant
// for requeue or the dead-letter exchange would be gone.
TEST_CASE("AmqpAckBatch: a multiple ack never covers a delivery rejected") {
  AmqpAckBatch acks;
  for (std::uint64_t tag = 1; tag <= 3; ++tag) acks.Delivered(tag);
  acks.Ack(1);
  acks.Ack(3);
  AmqpAckBatch::Frames frames = acks.Reject(2);
  CHECK(frames.multiple == 1);
  CHECK(frames.singles == Tags{3});
  CHECK(acks.empty());
  // Settled: a later ack may cover it (RabbitMQ has forgotten it).
  acks.Delivered(4);
  acks.Ack(4);
  CHECK(acks.Take().multiple == 4);
}

TEST_CASE("AmqpAckBatch: Clear forgets the old connection's tags") {
  AmqpAckBatch acks;
  acks.Delivered(1);
  acks.Delivered(2);
  acks.Ack(2);
  acks.Clear();
  CHECK(acks.empty());
  acks.Delivered(1);
  acks.Ack(1);
  CHECK(acks.Take().multiple == 1);
}

TEST_CASE("AmqpConfirmBook: a settle completes with its last confirm") {
  AmqpConfirmBook book;
  std::uint64_t id = book.Add(7, AmqpOutcome::kRetried, "q", 2);
  book.Published(id);  // seq 1
  book.Published(0);   // seq 2: a progress message
  book.Published(id);  // seq 3
  CHECK(book.waiting() == 1);
  CHECK(book.Confirm(1, false, true).empty());
  CHECK(book.Confirm(2, false, true).empty());
  std::vector<AmqpPendingSettle> done = book.Confirm(3, false, true);
  REQUIRE(done.size() == 1);
  CHECK(done[0].tag == 7);
  CHECK(done[0].outcome == AmqpOutcome::kRetried);
  CHECK(done[0].queue == "q");
  CHECK_FALSE(done[0].nacked);
  CHECK(book.waiting() == 0);
  CHECK(book.Confirm(3, false, true).empty());  // twice: nothing
}

TEST_CASE("AmqpConfirmBook: a multiple confirm completes settles in order") {
  AmqpConfirmBook book;
  std::uint64_t a = book.Add(1, AmqpOutcome::kAcked, "q", 1);
  std::uint64_t b = book.Add(2, AmqpOutcome::kDeadLettered, "q", 1);
  std::uint64_t c = book.Add(3, AmqpOutcome::kAcked, "q", 1);
  book.Published(a);
  book.Published(b);
  book.Published(c);
  std::vector<AmqpPendingSettle> done = book.Confirm(2, true, true);
  REQUIRE(done.size() == 2);
  CHECK(done[0].tag == 1);
  CHECK(done[1].tag == 2);
  CHECK(book.waiting() == 1);
}

TEST_CASE("AmqpConfirmBook: one refused publish marks its settle nacked") {
  AmqpConfirmBook book;
  std::uint64_t id = book.Add(4, AmqpOutcome::kAcked, "q", 2);
  book.Published(id);
  book.Published(id);
  CHECK(book.Confirm(1, false, false).empty());
  std::vector<AmqpPendingSettle> done = book.Confirm(2, false, true);
  REQUIRE(done.size() == 1);
  CHECK(done[0].nacked);
}

TEST_CASE("AmqpConfirmBook: Clear starts the numbering again") {
  AmqpConfirmBook book;
  book.Published(book.Add(1, AmqpOutcome::kAcked, "q", 1));
  book.Clear();
  CHECK(book.waiting() == 0);
  std::uint64_t id = book.Add(9, AmqpOutcome::kAcked, "q", 1);
  book.Published(id);  // seq 1 again
  std::vector<AmqpPendingSettle> done = book.Confirm(1, false, true);
  REQUIRE(done.size() == 1);
  CHECK(done[0].tag == 9);
}

TEST_CASE("AmqpConfirmBook: a return marks the settles publishing there") {
  AmqpConfirmBook book;
  std::uint64_t retry = book.Add(1, AmqpOutcome::kRetried, "q", 1);
  std::uint64_t reply = book.Add(2, AmqpOutcome::kAcked, "q", 1);
  std::uint64_t dead = book.Add(3, AmqpOutcome::kDeadLettered, "q", 1);
  book.Published(retry, "q");      // seq 1: a retry copy to the queue
  book.Published(reply, "");       // seq 2: a reply (not mandatory)
  book.Published(dead, "q.dead");  // seq 3: a dead letter
  CHECK(book.Returned("q") == 1);  // only the settle publishing to "q"
  CHECK(book.Returned("q") == 0);  // marked once
  CHECK(book.Returned("elsewhere") == 0);
  std::vector<AmqpPendingSettle> done = book.Confirm(3, true, true);
  REQUIRE(done.size() == 3);
  CHECK(done[0].returned_to == "q");
  CHECK_FALSE(done[0].nacked);
  CHECK(done[1].returned_to.empty());
  CHECK(done[2].returned_to.empty());
}

TEST_CASE("AmqpConfirmBook: a return leaves confirmed publishes alone") {
  // Its confirm follows the return: publishes confirmed before it were
  // routed, and only unconfirmed ones can be the returned one.
  AmqpConfirmBook book;
  std::uint64_t first = book.Add(1, AmqpOutcome::kRetried, "q", 1);
  std::uint64_t second = book.Add(2, AmqpOutcome::kRetried, "q", 1);
  book.Published(first, "q");
  book.Published(second, "q");
  std::vector<AmqpPendingSettle> done = book.Confirm(1, false, true);
  REQUIRE(done.size() == 1);
  CHECK(done[0].returned_to.empty());
  CHECK(book.Returned("q") == 1);
  done = book.Confirm(2, false, true);
  REQUIRE(done.size() == 1);
  CHECK(done[0].tag == 2);
  CHECK(done[0].returned_to == "q");
}

}  // namespace
}  // namespace workerpool
