// The life of one slot of a group (one index: a child process, or the place
// where one will be) as a table of states x events, in the manner of
// s6-supervise: every cell says the next state and what the Watcher must
// do. Pure: no processes, no timers, no clock. The Watcher's child table
// (watcher/child_table) maps what happens (a spawn, a hello, SIGCHLD, a
// timer, a reload, an operator's command) to an Event, asks Next(), stores
// the new state and executes the effects in the order listed.
//
// Each slot has one timer; what it counts down to follows from the state
// (start grace in kStarting, backoff in kBackoff, the kill deadline in
// kStopping and kEvicting), so a timer event needs no more context.
//
//   kDown      no child, nothing scheduled: about to spawn, or the pool stops
//   kStarting  spawned, not up yet: waits for hello or the start grace
//   kUp        running and up (said hello, or ran through the start grace)
//   kReplaced  running and serving, while its replacement starts in the same
//              index (rolling restart, recycling); stopped once that is up
//   kStopping  told to stop (drain, or SIGTERM); removed once it exits
//   kEvicting  told to stop for misbehaving; restarted once it exits
//   kBackoff   no child; restarts when the backoff timer fires
//   kFailed    no child; its group hit the restart limit, waits for a reload
//              or `workerpool restart`
//   kGone      removed from its group (terminal)
//   kDone      no child; a one-shot (restart.policy on-failure or never)
//              that exited 0: done for good, counts as ready for the
//              groups that depend on it
//   kProbing   spawned in a group with a `ready` probe: up once the probe
//              passes; its timer is the ready timeout (hello greets it)
//
// While up, a group's `health` probe runs; its failures in a row end in
// kHealthFailed, which evicts the child as hung.
#pragma once

#include <array>
#include <cstdint>

namespace workerpool {

enum class SlotState : std::uint8_t {
  kDown,
  kStarting,
  kUp,
  kReplaced,
  kStopping,
  kEvicting,
  kBackoff,
  kFailed,
  kGone,
  kDone,
  kProbing,
};
inline constexpr int kSlotStates = 11;

enum class SlotEvent : std::uint8_t {
  kSpawned,        // fork+exec succeeded
  kSpawnFailed,    // it did not (fd limit, no such program, ...)
  kHello,          // the child said hello on its pool channel
  kTimer,          // the slot's timer fired (its meaning follows the state)
  kExited,         // SIGCHLD: the child is gone
  kRestartNow,     // the restart policy's verdict after an exit: no delay
  kRestartLater,   // ... a backoff delay
  kGroupFailed,    // ... too many restarts: the group is failed
  kRetry,          // a failed group gets another chance (reload, restart)
  kReplace,        // a replacement starts in this index; keep serving
  kStop,           // retire the slot (scale down, group removed, replaced)
  kEvict,          // the child broke the protocol too often
  kPoolStop,       // the pool stops: no more spawns, no restarts
  kSpawnedProbed,  // fork+exec succeeded in a group with a ready probe
  kReady,          // its ready probe passed (and it said hello if it speaks)
  kHealthFailed,   // its health probe failed `failures` times in a row
  kFinished,       // the restart policy's verdict: exit 0, done for good
  kRerun,          // a done one-shot runs again (`workerpool restart`)
};
inline constexpr int kSlotEvents = 18;

// What the Watcher does, as bits, executed lowest bit first. An effect that
// feeds the same slot another event (kMarkUp's recycling, kAskPolicy,
// kSpawn) is the highest bit of its cell, so no effect runs after a nested
// Apply; kStopProbes is the lowest, so a probe stopped is never one of the
// next child's.
enum SlotEffect : std::uint32_t {
  kNoEffect = 0,
  kStopProbes = 1 << 0,   // no probe of this child runs any more
  kCancelTimer = 1 << 1,  // stop the slot's timer
  kGreet = 1 << 2,        // hello: send config, arm heartbeat, link peers
  // A replacement that is up, or that goes before it was up, stops the
  // child it was to replace (nobody else would drain that one).
  kStopPredecessor = 1 << 3,
  kStartHealth = 1 << 4,  // up: the group's health probe, if it has one
  kMarkUp = 1 << 5,       // up: check its request count, settle the pool
  // A one-shot is done: groups waiting for its group may start.
  kMarkDone = 1 << 6,
  kAskPolicy = 1 << 7,         // an unexpected end: the restart policy
                               // answers kRestartNow, kRestartLater,
                               // kGroupFailed or kFinished
  kArmBackoff = 1 << 8,        // timer: the policy's delay
  kSpawn = 1 << 9,             // start a child (then kSpawned,
                               // kSpawnedProbed or kSpawnFailed)
  kArmStartGrace = 1 << 10,    // timer: the start grace (the ready timeout
                               // in a group with a ready probe)
  kStartReadyProbe = 1 << 11,  // probe until ready (the timer bounds it)
  kStopChild = 1 << 12,        // drain when it speaks the protocol, else
                               // SIGTERM
  kTerminateChild = 1 << 13,   // SIGTERM, no drain
  kArmKillDeadline = 1 << 14,  // timer: stop_timeout, then SIGKILL
  kKillChild = 1 << 15,        // SIGKILL
  // A replaced child that went: its successor has nothing left to drain.
  kDetachSuccessor = 1 << 16,
  kRemove = 1 << 17,  // take the slot out of its group
};
inline constexpr int kSlotEffectBits = 18;

struct SlotTransition {
  SlotState next;
  std::uint32_t effects;  // SlotEffect bits
};

// The table. Total: every state x event has a cell; events that cannot
// happen in a state (a hello with no child) leave it as it is, no effect.
SlotTransition NextSlotState(SlotState state, SlotEvent event);

// True when a child process runs in the slot in STATE.
bool SlotHasChild(SlotState state);

// "starting", "up", ...: for logs, status and tests.
const char* SlotStateName(SlotState state);
const char* SlotEventName(SlotEvent event);

}  // namespace workerpool
