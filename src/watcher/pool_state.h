// What the Watcher knows of its running pool: groups and their slots. Data
// only; the rooms that change it are the child table (lifecycle, spawn,
// resize, rolling restart, recycling), the child channels (what children say)
// and output capture. Everything here lives on the Watcher's loop thread.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <map>
#include <string>
#include <vector>

#include "core/autoscale.h"
#include "core/child_conversation.h"
#include "core/config.h"
#include "core/restart_policy.h"
#include "core/slot_lifecycle.h"
#include "core/units.h"

namespace workerpool {

class Channel;
class ChildTable;
struct Group;
struct OutputReader;
struct ProbeRun;

// One index of a group: a child process, or the place where one will be.
// Its lifecycle is `state` (core/slot_lifecycle.h); only the child table's
// Apply() changes it.
struct Slot {
  ChildTable* table = nullptr;
  Group* group = nullptr;
  int index = 0;
  SlotState state = SlotState::kDown;
  pid_t pid = 0;             // 0 while no child runs in the slot
  std::uint64_t serial = 0;  // which spawn of the Watcher's runs here
  TimePoint started;
  int generation = 0;  // the group's generation it was started with
  // Replaced (rolling restart, recycling): kept in Group::outgoing and
  // serving until its replacement is up, then stopped.
  bool outgoing = false;
  Slot* replaces = nullptr;     // the outgoing child this one replaces
  Slot* replaced_by = nullptr;  // for an outgoing slot
  Duration backoff{0};          // the restart policy's last delay
  // One timer; what it counts down to follows from the state.
  uv_timer_t timer;
  // The child's pool channel while it runs; ready once it said hello.
  Channel* channel = nullptr;
  bool ready = false;
  // What it said on its channel: hello, routes, stats, offences.
  ChildConversation conversation{0};
  std::int64_t recycle_after = 0;  // answered requests; 0: never
  // Started only when the group sets heartbeat_timeout.
  uv_timer_t heartbeat;
  int open_handles = 2;  // timer and heartbeat; deleted when both closed
  // The child's ends of its output pipe and pool channel, held while it
  // runs (see OutputCapture::HoldsChildEnds) so that its exit closes
  // neither: one wake-up for a death (SIGCHLD) instead of three. -1 when
  // not held.
  int output_write_end = -1;
  int channel_child_end = -1;
  OutputReader* output = nullptr;  // its output reader, until reaped
  // How its last child ended (a wait status); -1 when none has, or when
  // the spawn failed. The restart policy reads it: exit 0 is done for a
  // one-shot.
  int exit_status = -1;
  // groups[].ready: passed for the child running now (it is up once it
  // also said hello, if its group speaks the protocol).
  bool ready_probe_passed = false;
  // Its ready probe did not pass within the timeout: the child was stopped
  // as a failed start (the group's failure names that, not the SIGTERM).
  bool not_ready_in_time = false;
  // groups[].health: probes failed in a row while up.
  int health_failures = 0;
  // The probe running for this child (watcher/probes.h owns it).
  ProbeRun* probe = nullptr;

  bool up() const { return state == SlotState::kUp; }
  bool has_child() const { return SlotHasChild(state); }
};

struct Group {
  GroupConfig config;
  RestartPolicy policy;
  std::map<int, Slot*> slots;   // by index
  std::vector<Slot*> outgoing;  // replaced children still running
  bool failed = false;
  // Why it failed, for status and the log: "migrate exited with code 1",
  // "more than 10 restarts within 1m".
  std::string failed_reason;
  // Not started yet: some group in depends_on is not ready (or failed).
  bool waiting = false;
  // The stop: told to stop (its dependents are gone; core/start_order.h).
  bool stop_signalled = false;
  bool removing = false;         // dropped by a reload: drain, then delete
  bool scaled = false;           // `workerpool scale` set processes
  bool speaks_protocol = false;  // one of its children said hello
  int generation = 0;            // bumped when its children must restart
  std::uint64_t recycled = 0;
  std::uint64_t protocol_errors = 0;  // frames its children sent, refused
  std::vector<int> rolling;           // indices still to restart, in order
  // With groups[].autoscale: the policy, its recheck timer (armed only while
  // a decision is pending) and the decisions taken, for status.
  struct Autoscale {
    Autoscale(ChildTable* t, Group* g, const AutoscaleConfig& config)
        : table(t), group(g), policy(config) {}
    ChildTable* table;
    Group* group;
    Autoscaler policy;
    uv_timer_t timer;
    std::uint64_t ups = 0;
    std::uint64_t downs = 0;
    std::int64_t last_unix = 0;  // when the last decision changed the target
  };
  Autoscale* autoscale = nullptr;  // owned; freed once its timer is closed
  explicit Group(GroupConfig c)
      : config(std::move(c)), policy(config.restart, config.processes) {}

  // Every slot, the outgoing ones too.
  template <typename F>
  void ForEachSlot(F&& visit) const {
    for (const auto& [index, slot] : slots) visit(slot);
    for (Slot* slot : outgoing) visit(slot);
  }
};

}  // namespace workerpool
