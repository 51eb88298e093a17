#include "client/busy_poll_backoff.h"

#include <doctest/doctest.h>

#include <vector>

namespace workerpool::client {
namespace {

// How many chances the link skips before it is polled again.
int SkippedBeforeNextPoll(BusyPollBackoff* backoff) {
  int skipped = 0;
  while (!backoff->TakeChance()) ++skipped;
  return skipped;
}

TEST_CASE("busy poll backoff: a fresh link is polled at every chance") {
  BusyPollBackoff backoff;
  CHECK(backoff.TakeChance());
  CHECK(backoff.TakeChance());
}

TEST_CASE(
    "busy poll backoff: after N misses in a row, 2^N - 1 chances are "
    "skipped, at most 63") {
  BusyPollBackoff backoff;
  std::vector<int> skipped;
  for (int miss = 0; miss < 8; ++miss) {
    backoff.Miss();
    skipped.push_back(SkippedBeforeNextPoll(&backoff));
  }
  CHECK(skipped == std::vector<int>{1, 3, 7, 15, 31, 63, 63, 63});
}

TEST_CASE("busy poll backoff: a poll that reads bytes starts the count over") {
  BusyPollBackoff backoff;
  backoff.Miss();
  backoff.Miss();
  CHECK(SkippedBeforeNextPoll(&backoff) == 3);
  backoff.Hit();
  CHECK(backoff.misses == 0);
  CHECK(backoff.TakeChance());
  backoff.Miss();
  CHECK(SkippedBeforeNextPoll(&backoff) == 1);
}

}  // namespace
}  // namespace workerpool::client
