#include "core/slot_lifecycle.h"

namespace workerpool {
namespace {

using S = SlotState;
using Effects = std::uint32_t;
constexpr Effects kNone = kNoEffect;

// Shorthands for the effects that go together.
constexpr Effects kStopSlot = kStopPredecessor | kStopChild | kArmKillDeadline;
constexpr Effects kEvictSlot = kTerminateChild | kArmKillDeadline;
constexpr Effects kDropSlot = kCancelTimer | kStopPredecessor | kRemove;
constexpr Effects kEnded = kCancelTimer | kAskPolicy;
constexpr Effects kLeft =
    kCancelTimer | kStopPredecessor | kDetachSuccessor | kRemove;
constexpr Effects kBecameUp = kStopPredecessor | kMarkUp | kStartHealth;

struct Cell {
  S next;
  Effects effects;
};

// Rows: states in SlotState order. Columns: events in SlotEvent order:
//   Spawned, SpawnFailed, Hello, Timer, Exited, RestartNow, RestartLater,
//   GroupFailed, Retry, Replace, Stop, Evict, PoolStop,
//   SpawnedProbed, Ready, HealthFailed, Finished, Rerun
// A cell {S::kSame...} is written out as its own state: "nothing happens".
constexpr Cell kTable[kSlotStates][kSlotEvents] = {
    // kDown: no child, nothing scheduled.
    {{S::kStarting, kArmStartGrace},
     {S::kDown, kAskPolicy},
     {S::kDown, kNone},
     {S::kDown, kNone},
     {S::kDown, kNone},
     {S::kDown, kSpawn},
     {S::kBackoff, kArmBackoff},
     {S::kFailed, kNone},
     {S::kDown, kSpawn},
     {S::kDown, kNone},
     {S::kGone, kDropSlot},
     {S::kDown, kNone},
     {S::kDown, kNone},
     {S::kProbing, kStartReadyProbe | kArmStartGrace},
     {S::kDown, kNone},
     {S::kDown, kNone},
     {S::kDone, kMarkDone},
     {S::kDown, kNone}},
    // kStarting: spawned, waiting for hello or the start grace.
    {{S::kStarting, kNone},
     {S::kStarting, kNone},
     {S::kUp, kCancelTimer | kGreet | kBecameUp},
     {S::kUp, kBecameUp},
     {S::kDown, kEnded},
     {S::kStarting, kNone},
     {S::kStarting, kNone},
     {S::kStarting, kNone},
     {S::kStarting, kNone},
     {S::kReplaced, kCancelTimer},
     {S::kStopping, kStopSlot},
     {S::kEvicting, kEvictSlot},
     {S::kStopping, kCancelTimer},
     {S::kStarting, kNone},
     {S::kStarting, kNone},
     {S::kStarting, kNone},
     {S::kStarting, kNone},
     {S::kStarting, kNone}},
    // kUp: running and up; its health probe runs, if the group has one.
    {{S::kUp, kNone},
     {S::kUp, kNone},
     {S::kUp, kGreet},  // a child that spoke only after the start grace
     {S::kUp, kNone},
     {S::kDown, kStopProbes | kEnded},
     {S::kUp, kNone},
     {S::kUp, kNone},
     {S::kUp, kNone},
     {S::kUp, kNone},
     {S::kReplaced, kStopProbes},
     {S::kStopping, kStopProbes | kStopSlot},
     {S::kEvicting, kStopProbes | kEvictSlot},
     {S::kStopping, kStopProbes},
     {S::kUp, kNone},
     {S::kUp, kNone},
     {S::kEvicting, kStopProbes | kEvictSlot},  // hung: stop, restart
     {S::kUp, kNone},
     {S::kUp, kNone}},
    // kReplaced: serving until its replacement is up.
    {{S::kReplaced, kNone},
     {S::kReplaced, kNone},
     {S::kReplaced, kGreet},
     {S::kReplaced, kNone},
     {S::kGone, kLeft},
     {S::kReplaced, kNone},
     {S::kReplaced, kNone},
     {S::kReplaced, kNone},
     {S::kReplaced, kNone},
     {S::kReplaced, kNone},
     {S::kStopping, kStopSlot},
     {S::kStopping, kEvictSlot},  // it goes anyway: no restart
     {S::kStopping, kCancelTimer},
     {S::kReplaced, kNone},
     {S::kReplaced, kNone},
     {S::kReplaced, kNone},
     {S::kReplaced, kNone},
     {S::kReplaced, kNone}},
    // kStopping: told to stop; removed once it exits.
    {{S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone},  // too late to greet: it is going
     {S::kStopping, kKillChild},
     {S::kGone, kLeft},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     // The pool's own stop sequence signals and kills from here on.
     {S::kStopping, kCancelTimer},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone},
     {S::kStopping, kNone}},
    // kEvicting: told to stop for misbehaving; restarted once it exits.
    {{S::kEvicting, kNone},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone},
     {S::kEvicting, kKillChild},
     {S::kDown, kEnded},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone},  // no replacement beside a child that restarts
     {S::kStopping, kStopPredecessor},  // already told; the deadline runs
     {S::kEvicting, kNone},
     {S::kStopping, kCancelTimer},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone},
     {S::kEvicting, kNone}},
    // kBackoff: no child; the timer restarts it.
    {{S::kBackoff, kNone},
     {S::kBackoff, kNone},
     {S::kBackoff, kNone},
     {S::kDown, kSpawn},
     {S::kBackoff, kNone},
     {S::kBackoff, kNone},
     {S::kBackoff, kNone},
     {S::kFailed, kCancelTimer},
     {S::kDown, kCancelTimer | kSpawn},
     {S::kBackoff, kNone},
     {S::kGone, kDropSlot},
     {S::kBackoff, kNone},
     {S::kDown, kCancelTimer},
     {S::kBackoff, kNone},
     {S::kBackoff, kNone},
     {S::kBackoff, kNone},
     {S::kBackoff, kNone},
     {S::kBackoff, kNone}},
    // kFailed: no child; waits for a reload or `workerpool restart`.
    {{S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kDown, kSpawn},
     {S::kFailed, kNone},
     {S::kGone, kDropSlot},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone},
     {S::kFailed, kNone}},
    // kGone: removed; nothing happens any more.
    {{S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone},
     {S::kGone, kNone}},
    // kDone: a one-shot that exited 0; stays done through reloads and
    // retries of its group, runs again only when restarted.
    {{S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kGone, kDropSlot},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDone, kNone},
     {S::kDown, kSpawn}},
    // kProbing: spawned; up once its ready probe passes, a failed start
    // when the timer (the ready timeout) fires first.
    {{S::kProbing, kNone},
     {S::kProbing, kNone},
     {S::kProbing, kGreet},  // linked to its senders; up when the probe passes
     {S::kEvicting, kStopProbes | kEvictSlot},
     {S::kDown, kStopProbes | kEnded},
     {S::kProbing, kNone},
     {S::kProbing, kNone},
     {S::kProbing, kNone},
     {S::kProbing, kNone},
     {S::kReplaced, kStopProbes | kCancelTimer},
     {S::kStopping, kStopProbes | kStopSlot},
     {S::kEvicting, kStopProbes | kEvictSlot},
     {S::kStopping, kStopProbes | kCancelTimer},
     {S::kProbing, kNone},
     {S::kUp, kStopProbes | kCancelTimer | kBecameUp},
     {S::kProbing, kNone},
     {S::kProbing, kNone},
     {S::kProbing, kNone}},
};

}  // namespace

SlotTransition NextSlotState(SlotState state, SlotEvent event) {
  const auto row = static_cast<std::size_t>(state);
  const auto column = static_cast<std::size_t>(event);
  if (row >= kSlotStates || column >= kSlotEvents) {
    return {state, kNoEffect};
  }
  const Cell& cell = kTable[row][column];
  return {cell.next, cell.effects};
}

bool SlotHasChild(SlotState state) {
  switch (state) {
    case SlotState::kStarting:
    case SlotState::kUp:
    case SlotState::kReplaced:
    case SlotState::kStopping:
    case SlotState::kEvicting:
    case SlotState::kProbing:
      return true;
    default:
      return false;
  }
}

const char* SlotStateName(SlotState state) {
  switch (state) {
    case SlotState::kDown:
      return "down";
    case SlotState::kStarting:
      return "starting";
    case SlotState::kUp:
      return "up";
    case SlotState::kReplaced:
      return "replaced";
    case SlotState::kStopping:
      return "stopping";
    case SlotState::kEvicting:
      return "evicting";
    case SlotState::kBackoff:
      return "backoff";
    case SlotState::kFailed:
      return "failed";
    case SlotState::kGone:
      return "gone";
    case SlotState::kDone:
      return "done";
    case SlotState::kProbing:
      return "probing";
  }
  return "unknown";
}

const char* SlotEventName(SlotEvent event) {
  switch (event) {
    case SlotEvent::kSpawned:
      return "spawned";
    case SlotEvent::kSpawnFailed:
      return "spawn-failed";
    case SlotEvent::kHello:
      return "hello";
    case SlotEvent::kTimer:
      return "timer";
    case SlotEvent::kExited:
      return "exited";
    case SlotEvent::kRestartNow:
      return "restart-now";
    case SlotEvent::kRestartLater:
      return "restart-later";
    case SlotEvent::kGroupFailed:
      return "group-failed";
    case SlotEvent::kRetry:
      return "retry";
    case SlotEvent::kReplace:
      return "replace";
    case SlotEvent::kStop:
      return "stop";
    case SlotEvent::kEvict:
      return "evict";
    case SlotEvent::kPoolStop:
      return "pool-stop";
    case SlotEvent::kSpawnedProbed:
      return "spawned-probed";
    case SlotEvent::kReady:
      return "ready";
    case SlotEvent::kHealthFailed:
      return "health-failed";
    case SlotEvent::kFinished:
      return "finished";
    case SlotEvent::kRerun:
      return "rerun";
  }
  return "unknown";
}

}  // namespace workerpool
