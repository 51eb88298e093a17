// The slot lifecycle table, transition by transition, without processes.
#include "core/slot_lifecycle.h"

#include <doctest/doctest.h>

#include <bit>
#include <string>
#include <vector>

namespace workerpool {
namespace {

using E = SlotEvent;
using S = SlotState;

constexpr S kAllStates[] = {S::kDown,     S::kStarting, S::kUp,
                            S::kReplaced, S::kStopping, S::kEvicting,
                            S::kBackoff,  S::kFailed,   S::kGone,
                            S::kDone,     S::kProbing};
constexpr E kAllEvents[] = {E::kSpawned,      E::kSpawnFailed,   E::kHello,
                            E::kTimer,        E::kExited,        E::kRestartNow,
                            E::kRestartLater, E::kGroupFailed,   E::kRetry,
                            E::kReplace,      E::kStop,          E::kEvict,
                            E::kPoolStop,     E::kSpawnedProbed, E::kReady,
                            E::kHealthFailed, E::kFinished,      E::kRerun};

bool Has(std::uint32_t effects, SlotEffect effect) {
  return (effects & effect) != 0;
}

// Expects STATE + EVENT -> NEXT with exactly EFFECTS.
void Expect(S state, E event, S next, std::uint32_t effects) {
  CAPTURE(SlotStateName(state));
  CAPTURE(SlotEventName(event));
  SlotTransition t = NextSlotState(state, event);
  CHECK(std::string(SlotStateName(t.next)) == SlotStateName(next));
  CHECK(t.effects == effects);
}

// Runs EVENTS from kDown; returns the states passed through.
std::vector<S> Run(std::vector<E> events, S from = S::kDown) {
  std::vector<S> states{from};
  for (E event : events)
    states.push_back(NextSlotState(states.back(), event).next);
  return states;
}

TEST_CASE("slot lifecycle: every cell is defined and names are distinct") {
  CHECK(sizeof(kAllStates) / sizeof(kAllStates[0]) == kSlotStates);
  CHECK(sizeof(kAllEvents) / sizeof(kAllEvents[0]) == kSlotEvents);
  for (S state : kAllStates) {
    CHECK(std::string(SlotStateName(state)) != "unknown");
    for (E event : kAllEvents) {
      CHECK(std::string(SlotEventName(event)) != "unknown");
      SlotTransition t = NextSlotState(state, event);
      CHECK(std::string(SlotStateName(t.next)) != "unknown");
    }
  }
  // Out of range input is no transition, not a crash.
  SlotTransition t = NextSlotState(static_cast<S>(200), static_cast<E>(200));
  CHECK(t.effects == kNoEffect);
}

TEST_CASE("slot lifecycle: invariants over the whole table") {
  for (S state : kAllStates) {
    for (E event : kAllEvents) {
      CAPTURE(SlotStateName(state));
      CAPTURE(SlotEventName(event));
      SlotTransition t = NextSlotState(state, event);
      // Signals only reach a child that runs; spawns only where none runs.
      if (Has(t.effects, kStopChild) || Has(t.effects, kTerminateChild) ||
          Has(t.effects, kKillChild)) {
        CHECK(SlotHasChild(state));
      }
      if (Has(t.effects, kSpawn)) CHECK_FALSE(SlotHasChild(state));
      // A state that counts down on its timer is entered with the timer
      // armed (or stays, keeping it).
      if (t.next != state) {
        if (t.next == S::kBackoff) CHECK(Has(t.effects, kArmBackoff));
        if (t.next == S::kStarting) CHECK(Has(t.effects, kArmStartGrace));
        if (t.next == S::kEvicting) CHECK(Has(t.effects, kArmKillDeadline));
        if (t.next == S::kProbing) {
          CHECK(Has(t.effects, kArmStartGrace));
          CHECK(Has(t.effects, kStartReadyProbe));
        }
        // Probes run only while probing or up: leaving stops them.
        if (state == S::kProbing || state == S::kUp) {
          CHECK(Has(t.effects, kStopProbes));
        }
        // Health probes start exactly where a child becomes up.
        CHECK(Has(t.effects, kStartHealth) == (t.next == S::kUp));
        // Groups waiting on this one hear of it becoming up or done.
        if (t.next == S::kUp) CHECK(Has(t.effects, kMarkUp));
        if (t.next == S::kDone) CHECK(Has(t.effects, kMarkDone));
      } else {
        CHECK_FALSE(Has(t.effects, kStartHealth));
        CHECK_FALSE(Has(t.effects, kStopProbes));
      }
      if (Has(t.effects, kStartReadyProbe)) CHECK(t.next == S::kProbing);
      // An effect that feeds the slot another event is the last of its
      // cell: ChildTable::Apply runs no effect after a nested Apply.
      constexpr std::uint32_t kFeeds = kMarkUp | kAskPolicy | kSpawn;
      if ((t.effects & kFeeds) != 0) {
        const std::uint32_t last = std::bit_floor(t.effects & kFeeds);
        CHECK((t.effects & ~((last << 1) - 1)) == 0);
      }
      CHECK(t.effects < (1u << kSlotEffectBits));
      // A slot is removed exactly when it becomes gone.
      CHECK(Has(t.effects, kRemove) ==
            (t.next == S::kGone && state != S::kGone));
      // An exit is never taken for a live child afterwards.
      if (event == E::kExited) CHECK_FALSE(SlotHasChild(t.next));
      // Gone is final.
      if (state == S::kGone) {
        CHECK(t.next == S::kGone);
        CHECK(t.effects == kNoEffect);
      }
      // Only an unexpected end consults the restart policy.
      if (Has(t.effects, kAskPolicy)) {
        CHECK((event == E::kExited || event == E::kSpawnFailed));
      }
      // Done only by the policy's verdict, and only a rerun leaves it
      // with a child to come (or a stop removes it).
      if (t.next == S::kDone && state != S::kDone) {
        CHECK(event == E::kFinished);
      }
      if (state == S::kDone && t.next != S::kDone) {
        CHECK((event == E::kRerun || event == E::kStop));
      }
    }
  }
}

TEST_CASE("slot lifecycle: start, hello, up") {
  Expect(S::kDown, E::kSpawned, S::kStarting, kArmStartGrace);
  Expect(S::kDown, E::kSpawnFailed, S::kDown, kAskPolicy);
  Expect(S::kStarting, E::kHello, S::kUp,
         kCancelTimer | kGreet | kStopPredecessor | kMarkUp | kStartHealth);
  // A child that never says hello is up after the start grace.
  Expect(S::kStarting, E::kTimer, S::kUp,
         kStopPredecessor | kMarkUp | kStartHealth);
  // ... and is greeted when it speaks later.
  Expect(S::kUp, E::kHello, S::kUp, kGreet);
  Expect(S::kUp, E::kTimer, S::kUp, kNoEffect);
}

TEST_CASE("slot lifecycle: unexpected exits go through the restart policy") {
  Expect(S::kStarting, E::kExited, S::kDown, kCancelTimer | kAskPolicy);
  Expect(S::kUp, E::kExited, S::kDown, kStopProbes | kCancelTimer | kAskPolicy);
  Expect(S::kEvicting, E::kExited, S::kDown, kCancelTimer | kAskPolicy);
  Expect(S::kDown, E::kRestartNow, S::kDown, kSpawn);
  Expect(S::kDown, E::kRestartLater, S::kBackoff, kArmBackoff);
  Expect(S::kDown, E::kGroupFailed, S::kFailed, kNoEffect);
  Expect(S::kBackoff, E::kTimer, S::kDown, kSpawn);
  CHECK(Run({E::kSpawned, E::kHello, E::kExited, E::kRestartLater, E::kTimer,
             E::kSpawned})
            .back() == S::kStarting);
}

TEST_CASE("slot lifecycle: a failed group waits for a retry") {
  Expect(S::kBackoff, E::kGroupFailed, S::kFailed, kCancelTimer);
  Expect(S::kFailed, E::kTimer, S::kFailed, kNoEffect);
  Expect(S::kFailed, E::kRetry, S::kDown, kSpawn);
  Expect(S::kBackoff, E::kRetry, S::kDown, kCancelTimer | kSpawn);
  Expect(S::kDown, E::kRetry, S::kDown, kSpawn);
  // Running children of a failed group keep running.
  Expect(S::kUp, E::kGroupFailed, S::kUp, kNoEffect);
  Expect(S::kUp, E::kRetry, S::kUp, kNoEffect);
}

TEST_CASE("slot lifecycle: stopping a slot removes it once its child exits") {
  const std::uint16_t stop = kStopPredecessor | kStopChild | kArmKillDeadline;
  Expect(S::kStarting, E::kStop, S::kStopping, stop);
  Expect(S::kUp, E::kStop, S::kStopping, kStopProbes | stop);
  Expect(S::kReplaced, E::kStop, S::kStopping, stop);
  Expect(S::kStopping, E::kStop, S::kStopping, kNoEffect);  // once
  Expect(S::kStopping, E::kTimer, S::kStopping, kKillChild);
  Expect(S::kStopping, E::kHello, S::kStopping, kNoEffect);
  Expect(S::kStopping, E::kExited, S::kGone,
         kCancelTimer | kStopPredecessor | kDetachSuccessor | kRemove);
  // No child: the slot goes at once.
  for (S state : {S::kDown, S::kBackoff, S::kFailed}) {
    Expect(state, E::kStop, S::kGone,
           kCancelTimer | kStopPredecessor | kRemove);
  }
}

TEST_CASE("slot lifecycle: a replaced child serves until it is stopped") {
  Expect(S::kUp, E::kReplace, S::kReplaced, kStopProbes);
  Expect(S::kStarting, E::kReplace, S::kReplaced, kCancelTimer);
  Expect(S::kReplaced, E::kHello, S::kReplaced, kGreet);
  Expect(S::kReplaced, E::kReplace, S::kReplaced, kNoEffect);
  // It went before its replacement was up: removed, not restarted.
  Expect(S::kReplaced, E::kExited, S::kGone,
         kCancelTimer | kStopPredecessor | kDetachSuccessor | kRemove);
  // Nothing to replace where no child runs, or where one is being evicted.
  for (S state :
       {S::kDown, S::kBackoff, S::kFailed, S::kEvicting, S::kStopping}) {
    CHECK(NextSlotState(state, E::kReplace).next == state);
  }
}

TEST_CASE("slot lifecycle: a misbehaving child is evicted and restarted") {
  Expect(S::kUp, E::kEvict, S::kEvicting,
         kStopProbes | kTerminateChild | kArmKillDeadline);
  Expect(S::kStarting, E::kEvict, S::kEvicting,
         kTerminateChild | kArmKillDeadline);
  Expect(S::kEvicting, E::kEvict, S::kEvicting, kNoEffect);
  Expect(S::kEvicting, E::kTimer, S::kEvicting, kKillChild);
  Expect(S::kEvicting, E::kStop, S::kStopping, kStopPredecessor);
  // A replaced child that misbehaves is not restarted.
  Expect(S::kReplaced, E::kEvict, S::kStopping,
         kTerminateChild | kArmKillDeadline);
}

TEST_CASE("slot lifecycle: the pool stops") {
  Expect(S::kStarting, E::kPoolStop, S::kStopping, kCancelTimer);
  Expect(S::kUp, E::kPoolStop, S::kStopping, kStopProbes);
  Expect(S::kReplaced, E::kPoolStop, S::kStopping, kCancelTimer);
  Expect(S::kStopping, E::kPoolStop, S::kStopping, kCancelTimer);
  Expect(S::kEvicting, E::kPoolStop, S::kStopping, kCancelTimer);
  Expect(S::kBackoff, E::kPoolStop, S::kDown, kCancelTimer);
  Expect(S::kDown, E::kPoolStop, S::kDown, kNoEffect);
  Expect(S::kFailed, E::kPoolStop, S::kFailed, kNoEffect);
  // Nothing restarts after it: exits remove, timers kill.
  CHECK(Run({E::kSpawned, E::kHello, E::kPoolStop, E::kExited}).back() ==
        S::kGone);
}

TEST_CASE("slot lifecycle: events that cannot happen change nothing") {
  for (S state : {S::kDown, S::kBackoff, S::kFailed, S::kDone}) {
    for (E event : {E::kHello, E::kExited, E::kReady, E::kHealthFailed}) {
      SlotTransition t = NextSlotState(state, event);
      CHECK(t.next == state);
      CHECK(t.effects == kNoEffect);
    }
  }
  for (S state : {S::kStarting, S::kUp, S::kReplaced, S::kStopping,
                  S::kEvicting, S::kProbing}) {
    for (E event :
         {E::kSpawned, E::kSpawnFailed, E::kRestartNow, E::kRestartLater,
          E::kSpawnedProbed, E::kFinished, E::kRerun}) {
      SlotTransition t = NextSlotState(state, event);
      CHECK(t.next == state);
      CHECK(t.effects == kNoEffect);
    }
  }
}

TEST_CASE("slot lifecycle: a one-shot that exited 0 is done") {
  Expect(S::kDown, E::kFinished, S::kDone, kMarkDone);
  // Done stays done: a retry of its group, a reload, the pool's stop.
  for (E event : {E::kRetry, E::kPoolStop, E::kTimer, E::kGroupFailed,
                  E::kReplace, E::kEvict, E::kSpawned}) {
    Expect(S::kDone, event, S::kDone, kNoEffect);
  }
  // `workerpool restart` runs it again; a scale down or reload drops it.
  Expect(S::kDone, E::kRerun, S::kDown, kSpawn);
  Expect(S::kDone, E::kStop, S::kGone,
         kCancelTimer | kStopPredecessor | kRemove);
  // Rerun means nothing elsewhere.
  Expect(S::kUp, E::kRerun, S::kUp, kNoEffect);
  Expect(S::kFailed, E::kRerun, S::kFailed, kNoEffect);
  CHECK(Run({E::kSpawned, E::kTimer, E::kExited, E::kFinished}).back() ==
        S::kDone);
}

TEST_CASE("slot lifecycle: a ready probe decides when a child is up") {
  Expect(S::kDown, E::kSpawnedProbed, S::kProbing,
         kStartReadyProbe | kArmStartGrace);
  // hello greets it; only the probe makes it up.
  Expect(S::kProbing, E::kHello, S::kProbing, kGreet);
  Expect(
      S::kProbing, E::kReady, S::kUp,
      kStopProbes | kCancelTimer | kStopPredecessor | kMarkUp | kStartHealth);
  // Not ready by the timeout: a failed start, stopped and then restarted
  // as the restart policy says.
  Expect(S::kProbing, E::kTimer, S::kEvicting,
         kStopProbes | kTerminateChild | kArmKillDeadline);
  Expect(S::kProbing, E::kExited, S::kDown,
         kStopProbes | kCancelTimer | kAskPolicy);
  Expect(S::kProbing, E::kStop, S::kStopping,
         kStopProbes | kStopPredecessor | kStopChild | kArmKillDeadline);
  Expect(S::kProbing, E::kReplace, S::kReplaced, kStopProbes | kCancelTimer);
  Expect(S::kProbing, E::kEvict, S::kEvicting,
         kStopProbes | kTerminateChild | kArmKillDeadline);
  Expect(S::kProbing, E::kPoolStop, S::kStopping, kStopProbes | kCancelTimer);
  // A late probe result changes nothing.
  Expect(S::kUp, E::kReady, S::kUp, kNoEffect);
  Expect(S::kStarting, E::kReady, S::kStarting, kNoEffect);
  Expect(S::kStopping, E::kReady, S::kStopping, kNoEffect);
  CHECK(Run({E::kSpawnedProbed, E::kHello, E::kReady}).back() == S::kUp);
}

TEST_CASE("slot lifecycle: health failures evict a hung child") {
  Expect(S::kUp, E::kHealthFailed, S::kEvicting,
         kStopProbes | kTerminateChild | kArmKillDeadline);
  // Only an up child is probed for health.
  for (S state :
       {S::kStarting, S::kProbing, S::kReplaced, S::kStopping, S::kEvicting}) {
    CHECK(NextSlotState(state, E::kHealthFailed).next == state);
  }
  CHECK(Run({E::kSpawned, E::kTimer, E::kHealthFailed, E::kExited,
             E::kRestartNow, E::kSpawned})
            .back() == S::kStarting);
}

}  // namespace
}  // namespace workerpool
