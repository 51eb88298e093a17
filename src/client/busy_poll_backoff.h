// How often one link is busy-polled (docs/PROTOCOL.md, "Busy polling"): a
// peer that keeps not answering within the spin (a slow handler, a sender
// with pauses) is polled ever more rarely. After N misses in a row the
// link's next 2^N - 1 chances are skipped (at most 63); a poll that finds
// bytes starts the count over.
//
// Pure: no libuv, no clock. Header-inline. One per link, on the client's
// loop thread.
#pragma once

#include <algorithm>

namespace workerpool::client {

struct BusyPollBackoff {
  static constexpr int kMaxMisses = 6;  // 2^6 - 1 = 63 chances skipped

  int misses = 0;  // busy polls in a row that found nothing
  int skips = 0;   // chances left to skip because of them

  // Takes one chance to be busy-polled: false while chances are skipped.
  bool TakeChance() {
    if (skips > 0) {
      --skips;
      return false;
    }
    return true;
  }
  // A busy poll read bytes from the link.
  void Hit() { misses = 0; }
  // A busy poll of the link found nothing before its time ran out.
  void Miss() {
    misses = std::min(misses + 1, kMaxMisses);
    skips = (1 << misses) - 1;
  }
};

}  // namespace workerpool::client
