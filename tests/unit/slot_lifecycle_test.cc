// The slot lifecycle table, transition by transition, without processes.
#include "core/slot_lifecycle.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace workerpool {
namespace {

using E = SlotEvent;
using S = SlotState;

constexpr S kAllStates[] = {S::kDown,     S::kStarting, S::kUp,
                            S::kReplaced, S::kStopping, S::kEvicting,
                            S::kBackoff,  S::kFailed,   S::kGone};
constexpr E kAllEvents[] = {
    E::kSpawned,    E::kSpawnFailed,  E::kHello,       E::kTimer, E::kExited,
    E::kRestartNow, E::kRestartLater, E::kGroupFailed, E::kRetry, E::kReplace,
    E::kStop,       E::kEvict,        E::kPoolStop};

bool Has(std::uint16_t effects, SlotEffect effect) {
  return (effects & effect) != 0;
}

// Expects STATE + EVENT -> NEXT with exactly EFFECTS.
void Expect(S state, E event, S next, std::uint16_t effects) {
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
      }
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
    }
  }
}

TEST_CASE("slot lifecycle: start, hello, up") {
  Expect(S::kDown, E::kSpawned, S::kStarting, kArmStartGrace);
  Expect(S::kDown, E::kSpawnFailed, S::kDown, kAskPolicy);
  Expect(S::kStarting, E::kHello, S::kUp,
         kCancelTimer | kGreet | kStopPredecessor | kMarkUp);
  // A child that never says hello is up after the start grace.
  Expect(S::kStarting, E::kTimer, S::kUp, kStopPredecessor | kMarkUp);
  // ... and is greeted when it speaks later.
  Expect(S::kUp, E::kHello, S::kUp, kGreet);
  Expect(S::kUp, E::kTimer, S::kUp, kNoEffect);
}

TEST_CASE("slot lifecycle: unexpected exits go through the restart policy") {
  Expect(S::kStarting, E::kExited, S::kDown, kCancelTimer | kAskPolicy);
  Expect(S::kUp, E::kExited, S::kDown, kCancelTimer | kAskPolicy);
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
  Expect(S::kUp, E::kStop, S::kStopping, stop);
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
  Expect(S::kUp, E::kReplace, S::kReplaced, kNoEffect);
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
  Expect(S::kUp, E::kEvict, S::kEvicting, kTerminateChild | kArmKillDeadline);
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
  Expect(S::kUp, E::kPoolStop, S::kStopping, kNoEffect);
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
  for (S state : {S::kDown, S::kBackoff, S::kFailed}) {
    for (E event : {E::kHello, E::kExited}) {
      SlotTransition t = NextSlotState(state, event);
      CHECK(t.next == state);
      CHECK(t.effects == kNoEffect);
    }
  }
  for (S state :
       {S::kStarting, S::kUp, S::kReplaced, S::kStopping, S::kEvicting}) {
    for (E event :
         {E::kSpawned, E::kSpawnFailed, E::kRestartNow, E::kRestartLater}) {
      SlotTransition t = NextSlotState(state, event);
      CHECK(t.next == state);
      CHECK(t.effects == kNoEffect);
    }
  }
}

}  // namespace
}  // namespace workerpool
