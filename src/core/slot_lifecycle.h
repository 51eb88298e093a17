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
};
inline constexpr int kSlotStates = 9;

enum class SlotEvent : std::uint8_t {
  kSpawned,       // fork+exec succeeded
  kSpawnFailed,   // it did not (fd limit, no such program, ...)
  kHello,         // the child said hello on its pool channel
  kTimer,         // the slot's timer fired (its meaning follows the state)
  kExited,        // SIGCHLD: the child is gone
  kRestartNow,    // the restart policy's verdict after an exit: no delay
  kRestartLater,  // ... a backoff delay
  kGroupFailed,   // ... too many restarts: the group is failed
  kRetry,         // a failed group gets another chance (reload, restart)
  kReplace,       // a replacement starts in this index; keep serving
  kStop,          // retire the slot (scale down, group removed, replaced)
  kEvict,         // the child broke the protocol too often
  kPoolStop,      // the pool stops: no more spawns, no restarts
};
inline constexpr int kSlotEvents = 13;

// What the Watcher does, as bits, executed lowest bit first.
enum SlotEffect : std::uint16_t {
  kNoEffect = 0,
  kCancelTimer = 1 << 0,  // stop the slot's timer
  kGreet = 1 << 1,        // hello: send config, arm heartbeat, link peers
  // A replacement that is up, or that goes before it was up, stops the
  // child it was to replace (nobody else would drain that one).
  kStopPredecessor = 1 << 2,
  kMarkUp = 1 << 3,          // up: check its request count, settle the pool
  kAskPolicy = 1 << 4,       // an unexpected end: the restart policy answers
                             // kRestartNow, kRestartLater or kGroupFailed
  kArmBackoff = 1 << 5,      // timer: the policy's delay
  kSpawn = 1 << 6,           // start a child (then kSpawned/kSpawnFailed)
  kArmStartGrace = 1 << 7,   // timer: the start grace
  kStopChild = 1 << 8,       // drain when it speaks the protocol, else SIGTERM
  kTerminateChild = 1 << 9,  // SIGTERM, no drain
  kArmKillDeadline = 1 << 10,  // timer: stop_timeout, then SIGKILL
  kKillChild = 1 << 11,        // SIGKILL
  // A replaced child that went: its successor has nothing left to drain.
  kDetachSuccessor = 1 << 12,
  kRemove = 1 << 13,  // take the slot out of its group
};

struct SlotTransition {
  SlotState next;
  std::uint16_t effects;  // SlotEffect bits
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
