// Fuzzes the child protocol and the slot lifecycle together, without
// processes (issue 15): a small simulated pool of four groups runs fake
// children whose pool channels carry frames taken from the input, through
// FrameDecoder, ChildConversation (core/child_conversation.h) and
// NextSlotState (core/slot_lifecycle.h), doing with each decision and each
// effect what the Watcher does with it (watcher/child_table.cc executes the
// table's effects in bit order, nested; watcher/child_channels.cc the
// conversation's decisions). The input is a sequence of operations (see
// Op): a frame or raw bytes from a child, a child's exit, a timer, an
// operator's event for a slot, a reload, a new slot; spawns and the
// restart policy's verdicts take a byte each when they happen. After every
// operation the invariants are checked (CheckPool); a broken one aborts.
// Pids of children that exited are handed out again (more often than the
// kernel does), so that state kept by pid meets a new process with an old
// pid. WORKERPOOL_FUZZ_TRACE=1 prints the run (to read a crash input).
//
// What is checked:
//  - every slot is in one valid state; it has a child iff SlotHasChild();
//    a gone slot never changes again; kRemove exactly when it goes;
//  - a child changes (appears, goes) only on kSpawned and kExited; no
//    signal to a slot without a child, no spawn where one runs; the policy
//    is only asked for a slot whose child ended; an effect that feeds the
//    slot another event (mark up, ask policy, spawn) is the last of its
//    cell, as ChildTable::Apply needs;
//  - the slot's one timer means what its state says (start grace in
//    kStarting, backoff in kBackoff, kill deadline in kStopping/kEvicting),
//    and a slot that waits on it has it armed;
//  - a replaced child has a replacement that is not gone;
//  - each frame's decision is the one the contract of ChildConversation
//    gives (a model, below, run beside it): hello first, routes opened once,
//    kill_peer only for a live peer of a group the sender has an open route
//    to and the routing rules allow, never itself, once per peer process;
//  - offences: each conversation's count is the number of its offence
//    decisions, the sum over all conversations (ended ones included) is the
//    number seen, each kind is flagged for logging exactly once per
//    conversation, and an offence's detail is one line;
//  - the routes a child has open are allowed by the rules in force (a
//    reload revokes the others), and none is open and refused at once;
//  - stats kept are within the bounds of child_protocol.h;
//  - once the pool stops, nothing spawns or restarts, and every slot ends
//    down, failed or gone.
#include <algorithm>
#include <bit>
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "core/child_conversation.h"
#include "core/child_protocol.h"
#include "core/frame_codec.h"
#include "core/pool_model.h"
#include "core/routing.h"
#include "core/slot_lifecycle.h"
#include "fuzz_check.h"
#include "workerpool/wire.h"

namespace {

using workerpool::ChildConversation;
using workerpool::ChildOffence;
using workerpool::ChildStats;
using workerpool::FrameDecoder;
using workerpool::FrameView;
using workerpool::GroupType;
using workerpool::PoolConfig;
using workerpool::SlotEvent;
using workerpool::SlotState;
using workerpool::fuzz::Check;
using workerpool::wire::FrameType;

// Bounds that keep one input fast.
constexpr int kMaxOps = 3000;
constexpr std::size_t kMaxSlots = 40;
// The Watcher closes a child's channel and evicts it after 1000 offences;
// fewer here so that inputs reach it.
constexpr std::uint64_t kOffencesBeforeEviction = 64;
constexpr std::int64_t kFirstPid = 1000;
// Every group's max_requests: a child up that reports this many answered
// requests is recycled.
constexpr std::uint64_t kMaxRequests = 1000;

// The fuzz input, read from the front; 0 once it is used up (the defaults
// are chosen so that a run of zeros ends: spawns succeed, the restart policy
// says "later").
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size)
      : data_(data), size_(size) {}
  bool empty() const { return at_ == size_; }
  std::uint8_t Byte() { return at_ < size_ ? data_[at_++] : 0; }
  std::string_view Bytes(std::size_t n) {
    n = std::min(n, size_ - at_);
    std::string_view out(reinterpret_cast<const char*>(data_) + at_, n);
    at_ += n;
    return out;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

workerpool::GroupConfig Group(const char* name, GroupType type, int processes,
                              std::vector<std::string> routes_to) {
  workerpool::GroupConfig group;
  group.name = name;
  group.type = type;
  group.processes = processes;
  group.command = {"fake"};
  group.routes_to = std::move(routes_to);
  return group;
}

// Two definitions of one pool; a reload switches between them. routes_to
// names groups the type rules forbid (intake -> web, batch -> compute) and
// one that does not exist, as a config never would: CheckRequestRoute must
// refuse them at run time anyway.
const PoolConfig& Config(int variant) {
  static const std::vector<PoolConfig> configs = [] {
    PoolConfig a;
    a.name = "fuzz";
    a.groups = {
        Group("web", GroupType::kReactor, 2,
              {"compute", "intake", "batch", "web", "nowhere"}),
        Group("intake", GroupType::kService, 2, {"compute", "web"}),
        Group("compute", GroupType::kJob, 3, {}),
        Group("batch", GroupType::kJob, 1, {"compute"}),
    };
    PoolConfig b = a;
    b.groups[0].routes_to = {"intake"};
    b.groups[1].routes_to = {"compute", "batch"};
    return std::vector<PoolConfig>{a, b};
  }();
  return configs[variant];
}

enum class Timer : std::uint8_t { kNone, kStartGrace, kBackoff, kKillDeadline };

struct Slot {
  int group = 0;
  SlotState state = SlotState::kDown;
  std::int64_t pid = 0;  // the child running in it; 0: none
  Timer timer = Timer::kNone;
  int predecessor = -1;             // the replaced slot it stops once it is up
  int successor = -1;               // the slot that replaces this one
  bool outgoing = false;            // replaced: out of its group's table
  bool pool_stopped = false;        // the pool's stop sequence kills its child
  bool kill_sent = false;           // its child was sent SIGKILL
  bool quick_restart_used = false;  // restarted without delay since up
};

struct GroupState {
  bool failed = false;  // too many restarts: its slots wait for a retry
};

// A fake child process with its pool channel, as the Watcher keeps it.
struct Child {
  Child(std::int64_t child_pid, std::uint64_t child_serial, int child_slot)
      : pid(child_pid),
        serial(child_serial),
        slot(child_slot),
        conversation(child_pid) {}
  std::int64_t pid;
  std::uint64_t serial;  // one per process: pids are reused, serials not
  int slot;
  bool channel_open = true;
  bool dying = false;  // sent SIGKILL: it exits when reaped
  FrameDecoder decoder;
  ChildConversation conversation;
  // The model: what the conversation must have seen and done so far.
  bool said_hello = false;
  std::uint64_t offences = 0;
  std::bitset<workerpool::kChildOffenceKinds> logged;
  std::set<std::string> routes;
  std::set<std::uint64_t> killed;  // serials of the peers it had killed
};

// What ChildConversation must decide for one frame.
struct Expected {
  ChildConversation::Action action = ChildConversation::Action::kNone;
  std::optional<ChildOffence> offence;
  std::string group;     // kOpenRoute
  std::int64_t pid = 0;  // kKill
};

// The operations an input is made of: one byte (modulo kOps), then its
// arguments. tests/fuzz/make_seeds.py writes inputs in this form.
enum Op : std::uint8_t {
  kOpFrame,     // child, kind, kind's arguments: one frame, via its decoder
  kOpRawBytes,  // child, n, n bytes: what it writes on its channel
  kOpExit,      // child: it exits (crash, end, stop obeyed)
  kOpReap,      // child: one that was sent SIGKILL exits
  kOpTimer,     // slot: its timer fires, when one is armed
  kOpEvent,     // slot, which: stop, replace, evict, pool stop, retry
  kOpReload,    // the routes change (ApplyRoutes)
  kOpAddSlot,   // group: one more slot (scale up)
  kOpStray,     // slot, which: hello/exit/timer where none can happen
  kOps,
};

enum FrameKind : std::uint8_t {
  kFrameHello,      // variant
  kFrameHeartbeat,  // variant
  kFrameRouteOpen,  // variant (a group, or a broken body)
  kFrameKillPeer,   // target, reason
  kFrameStats,      // variant
  kFrameRaw,        // type, meta length, n, n bytes
  kFrameKinds,
};

constexpr SlotEvent kOperatorEvents[] = {
    SlotEvent::kStop, SlotEvent::kReplace, SlotEvent::kEvict,
    SlotEvent::kPoolStop, SlotEvent::kRetry};

// Frame types a decoder accepts; anything else closes the channel.
constexpr std::uint8_t kKnownTypes[] = {1,  2,  3,  4,  5,  16, 17, 18, 19,
                                        20, 21, 22, 23, 24, 25, 26, 27};

bool Has(std::uint32_t effects, workerpool::SlotEffect effect) {
  return (effects & effect) != 0;
}

bool Tracing() {
  static const bool tracing = std::getenv("WORKERPOOL_FUZZ_TRACE") != nullptr;
  return tracing;
}

template <typename... Args>
void Trace(const char* format, Args... args) {
  if (Tracing()) std::fprintf(stderr, format, args...);
}

bool OneLine(const std::string& text) {
  return text.find_first_of("\r\n") == std::string::npos;
}

void CheckStats(const ChildStats& stats) {
  Check(stats.counters.size() <= workerpool::kMaxStatsCounters);
  for (const auto& [name, value] : stats.counters) {
    Check(!name.empty() && name.size() <= 64);
  }
  Check(stats.latency.size() <= workerpool::kMaxLatencyTargets);
  for (const auto& [target, histogram] : stats.latency) {
    Check(!target.empty() && target.size() <= workerpool::kMaxNameBytes);
    Check(histogram.bounds_ms.size() <= workerpool::kMaxLatencyBuckets);
    Check(histogram.counts.size() == histogram.bounds_ms.size() + 1);
    for (std::size_t i = 1; i < histogram.bounds_ms.size(); ++i) {
      Check(histogram.bounds_ms[i - 1] < histogram.bounds_ms[i]);
    }
  }
  Check(stats.routes.size() <= workerpool::kMaxLatencyTargets);
  for (const auto& [target, load] : stats.routes) {
    Check(!target.empty() && target.size() <= workerpool::kMaxNameBytes);
  }
  Check(stats.app.is_null() || stats.app.is_object());  // null until sent
}

class Pool {
 public:
  explicit Pool(Input& input) : in_(input) {}

  void Run() {
    // Every slot of every group starts; these spawns succeed, with new
    // pids, without input.
    scripted_spawns_ = true;
    for (int group = 0; group < static_cast<int>(groups_.size()); ++group) {
      for (int i = 0; i < Config(0).groups[group].processes; ++i) {
        AddSlot(group);
      }
    }
    scripted_spawns_ = false;
    CheckPool();
    for (int op = 0; op < kMaxOps && !in_.empty(); ++op) {
      Step();
      CheckPool();
    }
    // The pool stops (ChildTable::BeginStop): nothing restarts; every child
    // exits in the end.
    stopping_ = true;
    for (int slot = 0; slot < static_cast<int>(slots_.size()); ++slot) {
      Feed(slot, SlotEvent::kPoolStop);
    }
    CheckPool();
    while (!children_.empty()) {
      Exit(children_.begin()->first);
      CheckPool();
    }
    for (const Slot& slot : slots_) {
      Check(slot.state == SlotState::kDown ||
            slot.state == SlotState::kFailed || slot.state == SlotState::kGone);
      Check(slot.timer == Timer::kNone);
    }
  }

 private:
  const std::string& GroupName(int slot) const {
    return Config(variant_).groups[slots_[slot].group].name;
  }

  void Step() {
    const int op = in_.Byte() % kOps;
    Trace("op %d\n", op);
    switch (op) {
      case kOpFrame: {
        Child* child = PickChild([](const Child& c) { return c.channel_open; });
        std::string bytes = MakeFrame(child);
        if (child != nullptr) Deliver(*child, bytes);
        break;
      }
      case kOpRawBytes: {
        Child* child = PickChild([](const Child& c) { return c.channel_open; });
        std::string_view bytes = in_.Bytes(in_.Byte());
        if (child != nullptr) Deliver(*child, bytes);
        break;
      }
      case kOpExit: {
        Child* child = PickChild([](const Child&) { return true; });
        if (child != nullptr) Exit(child->pid);
        break;
      }
      case kOpReap: {
        Child* child = PickChild([](const Child& c) { return c.dying; });
        if (child != nullptr) Exit(child->pid);
        break;
      }
      case kOpTimer: {
        const int slot = PickSlot();
        if (slots_[slot].timer == Timer::kNone) break;
        slots_[slot].timer = Timer::kNone;  // it fired: one-shot
        Feed(slot, SlotEvent::kTimer);
        break;
      }
      case kOpEvent: {
        const int slot = PickSlot();
        const SlotEvent event =
            kOperatorEvents[in_.Byte() % std::size(kOperatorEvents)];
        switch (event) {
          case SlotEvent::kReplace:
            Replace(slot);
            break;
          case SlotEvent::kEvict:
            Evict(slot);
            break;
          case SlotEvent::kRetry:
            RetryFailedGroup(slots_[slot].group);
            break;
          default:
            Feed(slot, event);
        }
        break;
      }
      case kOpReload:
        Reload();
        break;
      case kOpAddSlot: {
        const int group = in_.Byte() % groups_.size();
        if (slots_.size() < kMaxSlots) AddSlot(group);
        break;
      }
      case kOpStray:
        Stray(PickSlot(), in_.Byte() % 3);
        break;
    }
  }

  int PickSlot() { return in_.Byte() % slots_.size(); }

  template <typename Filter>
  Child* PickChild(Filter filter) {
    const std::uint8_t pick = in_.Byte();
    std::vector<Child*> candidates;
    for (auto& [pid, child] : children_) {
      if (filter(*child)) candidates.push_back(child.get());
    }
    if (candidates.empty()) return nullptr;
    return candidates[pick % candidates.size()];
  }

  // --- the lifecycle table, and its effects as the Watcher executes them
  // (watcher/child_table.cc): in the order of the bits, at once, so that an
  // effect that feeds another event runs it nested.

  // A new slot in GROUP (start, scale up): ChildTable::Resize.
  void AddSlot(int group) {
    slots_.push_back(Slot{.group = group});
    const int slot = static_cast<int>(slots_.size()) - 1;
    if (groups_[group].failed) {
      Feed(slot, SlotEvent::kGroupFailed);
    } else {
      Spawn(slot);
    }
  }

  // ChildTable::ReplaceSlot: SLOT's child moves aside (it keeps serving)
  // and a replacement starts in its index. The Watcher only replaces slots
  // of its group's table (never one already replaced).
  void Replace(int slot) {
    if (slots_.size() >= kMaxSlots || slots_[slot].outgoing) return;
    Feed(slot, SlotEvent::kReplace);
    if (slots_[slot].state != SlotState::kReplaced) return;
    slots_[slot].outgoing = true;
    slots_.push_back(Slot{.group = slots_[slot].group, .predecessor = slot});
    const int successor = static_cast<int>(slots_.size()) - 1;
    slots_[slot].successor = successor;
    Spawn(successor);
  }

  // ChildTable::Evict: its channel closes, then the table decides.
  void Evict(int slot) {
    auto child = children_.find(slots_[slot].pid);
    if (child != children_.end()) Forget(*child->second);
    Feed(slot, SlotEvent::kEvict);
  }

  // ChildTable::RetryFailedGroup (reload, `workerpool restart`).
  void RetryFailedGroup(int group) {
    if (!groups_[group].failed) return;
    groups_[group].failed = false;
    for (int slot = 0; slot < static_cast<int>(slots_.size()); ++slot) {
      if (slots_[slot].group == group && !slots_[slot].outgoing) {
        Feed(slot, SlotEvent::kRetry);
      }
    }
  }

  // ChildTable::CheckRequestCount: a child up that answered its
  // max_requests is replaced (recycled).
  void CheckRequestCount(int slot) {
    if (slots_[slot].state != SlotState::kUp || stopping_) return;
    auto child = children_.find(slots_[slot].pid);
    Check(child != children_.end());
    const ChildStats& stats = child->second->conversation.stats();
    const std::uint64_t served = stats.Counter("served");
    if (std::max(served, served + stats.Counter("served_errors")) <
        kMaxRequests) {
      return;
    }
    Replace(slot);
  }

  // An event that cannot happen in the slot's state changes nothing.
  void Stray(int slot, int which) {
    const SlotState state = slots_[slot].state;
    const bool waits_on_timer =
        state == SlotState::kStarting || state == SlotState::kBackoff ||
        state == SlotState::kStopping || state == SlotState::kEvicting;
    SlotEvent event;
    if (which < 2) {
      if (SlotHasChild(state)) return;
      event = which == 0 ? SlotEvent::kHello : SlotEvent::kExited;
    } else {
      if (waits_on_timer || slots_[slot].timer != Timer::kNone) return;
      event = SlotEvent::kTimer;
    }
    const std::uint32_t effects = Feed(slot, event);
    Check(slots_[slot].state == state);
    Check(effects == workerpool::kNoEffect);
  }

  std::uint32_t Feed(int slot, SlotEvent event) {
    const SlotState before = slots_[slot].state;
    const workerpool::SlotTransition t = NextSlotState(before, event);
    Trace("  slot %d pid %lld: %s + %s -> %s, effects 0x%x\n", slot,
          static_cast<long long>(slots_[slot].pid), SlotStateName(before),
          SlotEventName(event), SlotStateName(t.next), t.effects);
    Check(static_cast<int>(t.next) < workerpool::kSlotStates);
    Check(t.effects < (1u << workerpool::kSlotEffectBits));
    if (before == SlotState::kGone) {
      Check(t.next == SlotState::kGone && t.effects == workerpool::kNoEffect);
    }
    // A child appears only by a spawn and goes only by an exit: any other
    // change would lose track of a running process or invent one.
    const bool had = SlotHasChild(before);
    const bool has = SlotHasChild(t.next);
    if (has && !had) {
      Check(event == SlotEvent::kSpawned || event == SlotEvent::kSpawnedProbed);
    }
    if (had && !has) Check(event == SlotEvent::kExited);
    if (event == SlotEvent::kExited) Check(!has);
    Check(Has(t.effects, workerpool::kRemove) ==
          (t.next == SlotState::kGone && before != SlotState::kGone));
    if (Has(t.effects, workerpool::kAskPolicy)) {
      Check(event == SlotEvent::kExited || event == SlotEvent::kSpawnFailed);
    }
    // An effect that feeds this slot another event is the last of its cell
    // (ChildTable::Apply relies on it: no effect runs after a nested one).
    constexpr unsigned kFeedsSlot =
        workerpool::kMarkUp | workerpool::kAskPolicy | workerpool::kSpawn;
    if ((t.effects & kFeedsSlot) != 0) {
      const unsigned last = std::bit_floor(t.effects & kFeedsSlot);
      Check((t.effects & ~((last << 1) - 1)) == 0);
    }
    if (stopping_) {
      Check(!Has(t.effects, workerpool::kSpawn));
      Check(!Has(t.effects, workerpool::kAskPolicy));
    }
    if (event == SlotEvent::kPoolStop) slots_[slot].pool_stopped = true;
    slots_[slot].state = t.next;
    for (unsigned bit = 0; bit < workerpool::kSlotEffectBits; ++bit) {
      const auto effect = static_cast<workerpool::SlotEffect>(1u << bit);
      if (Has(t.effects, effect)) Execute(slot, effect);
    }
    return t.effects;
  }

  // Runs one effect. Effects that feed events (spawn, the policy, a
  // predecessor's stop, recycling) run them nested, as the Watcher does;
  // slots_ may grow under them, so no reference to a slot is held across.
  void Execute(int index, workerpool::SlotEffect effect) {
    Slot& slot = slots_[index];
    switch (effect) {
      case workerpool::kCancelTimer:
        slot.timer = Timer::kNone;
        break;
      case workerpool::kGreet:
        Check(slot.pid != 0);
        break;
      case workerpool::kStopPredecessor: {
        const int predecessor = slot.predecessor;
        if (predecessor < 0) break;
        slot.predecessor = -1;
        slots_[predecessor].successor = -1;
        Feed(predecessor, SlotEvent::kStop);
        break;
      }
      case workerpool::kMarkUp:
        Check(slot.state == SlotState::kUp && slot.pid != 0);
        slot.quick_restart_used = false;
        CheckRequestCount(index);
        break;
      case workerpool::kAskPolicy:
        Check(slot.pid == 0 && slot.state == SlotState::kDown);
        AskPolicy(index);
        break;
      case workerpool::kArmBackoff:
        Check(slot.state == SlotState::kBackoff);
        slot.timer = Timer::kBackoff;
        break;
      case workerpool::kSpawn:
        Check(slot.pid == 0 && slot.state == SlotState::kDown);
        Spawn(index);
        break;
      case workerpool::kArmStartGrace:
        Check(slot.state == SlotState::kStarting);
        slot.timer = Timer::kStartGrace;
        break;
      case workerpool::kStopChild:
      case workerpool::kTerminateChild:
        Check(slot.pid != 0);
        break;
      case workerpool::kArmKillDeadline:
        Check(slot.state == SlotState::kStopping ||
              slot.state == SlotState::kEvicting);
        slot.timer = Timer::kKillDeadline;
        break;
      case workerpool::kKillChild:
        Check(slot.pid != 0);
        children_.at(slot.pid)->dying = true;
        slot.kill_sent = true;
        break;
      case workerpool::kDetachSuccessor:
        if (slot.successor >= 0) {
          slots_[slot.successor].predecessor = -1;
          slot.successor = -1;
        }
        break;
      case workerpool::kStopProbes:
      case workerpool::kStartHealth:
      case workerpool::kMarkDone:
      case workerpool::kStartReadyProbe:
        break;  // this model's groups have no probes and no one-shots
      case workerpool::kRemove:
        Check(slot.pid == 0 && slot.timer == Timer::kNone);
        Check(slot.predecessor < 0 && slot.successor < 0);
        break;
      default:
        Check(false);  // a bit the header does not define
    }
  }

  // ChildTable::AskPolicy: the verdict comes from the input, within what
  // the restart policy can say: one restart without delay, then backoff
  // until the slot's child is up again (so a run of failing spawns ends).
  // Used-up input says "later". A failed group fails each of its slots.
  void AskPolicy(int slot) {
    GroupState& group = groups_[slots_[slot].group];
    if (group.failed) {
      Feed(slot, SlotEvent::kGroupFailed);
      return;
    }
    switch (in_.Byte() % 3) {
      case 1:
        if (!slots_[slot].quick_restart_used) {
          slots_[slot].quick_restart_used = true;
          Feed(slot, SlotEvent::kRestartNow);
          return;
        }
        [[fallthrough]];
      case 0:
        Feed(slot, SlotEvent::kRestartLater);
        return;
      default:
        group.failed = true;
        for (int other = 0; other < static_cast<int>(slots_.size()); ++other) {
          if (slots_[other].group == slots_[slot].group &&
              !slots_[other].outgoing) {
            Feed(other, SlotEvent::kGroupFailed);
          }
        }
    }
  }

  // ChildTable::Spawn. The input byte: 3 mod 4 fails the spawn; else the
  // child gets the pid of the child that exited last, or a new one when
  // bit 2 is set. Pids are reused (never while their process is alive),
  // here more often than the kernel does it, so that state kept by pid
  // meets a pid of a new process.
  void Spawn(int index) {
    Check(slots_[index].state == SlotState::kDown && slots_[index].pid == 0);
    const std::uint8_t how = scripted_spawns_ ? 4 : in_.Byte();
    if (how % 4 == 3) {
      Feed(index, SlotEvent::kSpawnFailed);
      return;
    }
    std::int64_t pid = next_pid_;
    if ((how & 4) == 0 && !free_pids_.empty()) {
      pid = free_pids_.back();
      free_pids_.pop_back();
    } else {
      ++next_pid_;
    }
    Check(children_.count(pid) == 0);
    children_[pid] = std::make_unique<Child>(pid, next_serial_++, index);
    Slot& slot = slots_[index];
    slot.pid = pid;
    slot.pool_stopped = false;
    slot.kill_sent = false;
    Feed(index, SlotEvent::kSpawned);
  }

  // ChildTable::OnChildExit (SIGCHLD): the child goes with its channel and
  // its conversation.
  void Exit(std::int64_t pid) {
    auto found = children_.find(pid);
    Check(found != children_.end());
    const int slot = found->second->slot;
    retired_offences_ += found->second->conversation.offences();
    children_.erase(found);
    free_pids_.push_back(pid);
    slots_[slot].pid = 0;
    Feed(slot, SlotEvent::kExited);
  }

  // ChildChannels::Forget: the channel closes; the conversation starts over
  // (its offences stay counted).
  void Forget(Child& child) {
    retired_offences_ += child.conversation.offences();
    child.conversation = ChildConversation(child.pid);
    child.said_hello = false;
    child.offences = 0;
    child.logged.reset();
    child.routes.clear();
    child.killed.clear();
    child.channel_open = false;
  }

  // --- the pool channel

  // Bytes as one read() returned them: the Channel feeds its decoder and
  // hands over frames until it closes; a broken stream closes it.
  void Deliver(Child& child, std::string_view bytes) {
    child.decoder.Feed(bytes);
    FrameView frame;
    while (child.channel_open && child.decoder.Next(&frame)) {
      OnFrame(child, frame);
    }
    if (child.channel_open && !child.decoder.error().ok()) {
      child.channel_open = false;
    }
  }

  ChildConversation::Peer GroupOfLiveChild(std::int64_t pid) const {
    auto found = children_.find(pid);
    if (found == children_.end()) return {};
    return {&GroupName(found->second->slot), found->second->serial};
  }

  // The contract of ChildConversation::OnFrame, written out on its own.
  Expected Expect(Child& child, FrameType type, std::string_view body) {
    using Action = ChildConversation::Action;
    auto offence = [](ChildOffence kind) { return Expected{.offence = kind}; };
    if (type == FrameType::kHello) {
      if (child.said_hello) return offence(ChildOffence::kRepeatedHello);
      child.said_hello = true;
      return Expected{.action = Action::kHello};
    }
    if (!child.said_hello) return offence(ChildOffence::kBeforeHello);
    workerpool::ChildMessage message = workerpool::ReadChildFrame(type, body);
    if (auto* offending = std::get_if<workerpool::OffendingFrame>(&message)) {
      return offence(offending->offence);
    }
    if (std::holds_alternative<workerpool::HeartbeatMessage>(message)) {
      return Expected{.action = Action::kHeartbeat};
    }
    if (auto* route = std::get_if<workerpool::RouteOpenMessage>(&message)) {
      if (child.routes.count(route->group) != 0) {
        return offence(ChildOffence::kRouteAlreadyOpen);
      }
      return Expected{.action = Action::kOpenRoute, .group = route->group};
    }
    if (auto* kill = std::get_if<workerpool::KillPeerMessage>(&message)) {
      auto target = children_.find(kill->pid);
      if (kill->pid == child.pid || target == children_.end() ||
          child.routes.count(GroupName(target->second->slot)) == 0) {
        return offence(ChildOffence::kKillRefused);
      }
      // One kill per peer process, however often it is asked for.
      if (!child.killed.insert(target->second->serial).second) return {};
      return Expected{.action = Action::kKill, .pid = kill->pid};
    }
    Check(std::holds_alternative<workerpool::StatsMessage>(message));
    return Expected{.action = Action::kStats};
  }

  void OnFrame(Child& child, const FrameView& frame) {
    using Action = ChildConversation::Action;
    const Expected expected = Expect(child, frame.header.type, frame.body);
    ChildConversation::Decision decision = child.conversation.OnFrame(
        frame.header.type, frame.body,
        [this](std::int64_t pid) { return GroupOfLiveChild(pid); });
    Trace("  pid %lld frame %d: action %d (expected %d) offence %s%s\n",
          static_cast<long long>(child.pid),
          static_cast<int>(frame.header.type),
          static_cast<int>(decision.action), static_cast<int>(expected.action),
          decision.offence ? OffenceName(decision.offence->offence) : "-",
          decision.log ? " (log)" : "");
    Check(decision.action == expected.action);
    Check(decision.offence.has_value() == expected.offence.has_value());
    if (decision.offence) {
      Check(decision.offence->offence == *expected.offence);
      Check(!decision.offence->detail.empty());
      Check(OneLine(decision.offence->detail));
      const auto kind = static_cast<std::size_t>(decision.offence->offence);
      Check(kind < workerpool::kChildOffenceKinds);
      Check(decision.log == !child.logged.test(kind));
      child.logged.set(kind);
      ++child.offences;
      ++offence_decisions_;
      Check(child.conversation.offences() == child.offences);
      // The Watcher's answer to a flood (ChildChannels::OnProtocolError):
      // no more frames, a fresh conversation, the child evicted.
      if (child.conversation.offences() >= kOffencesBeforeEviction) {
        Evict(child.slot);
      }
      return;
    }
    Check(!decision.log);
    switch (decision.action) {
      case Action::kNone:
      case Action::kHeartbeat:
        break;
      case Action::kHello:
        Check(child.conversation.said_hello());
        Feed(child.slot, SlotEvent::kHello);
        break;
      case Action::kOpenRoute:
        Check(decision.group == expected.group);
        OpenRoute(child, decision.group);
        break;
      case Action::kKill: {
        // The pid is one this sender may kill: a live peer, not itself, in
        // a group it has an open route to that the rules allow.
        Check(decision.pid == expected.pid);
        Check(decision.pid != child.pid);
        auto target = children_.find(decision.pid);
        Check(target != children_.end());
        const std::string& group = GroupName(target->second->slot);
        Check(child.conversation.routes().count(group) != 0);
        Check(workerpool::CheckRequestRoute(Config(variant_),
                                            GroupName(child.slot), group)
                  .ok());
        target->second->dying = true;
        slots_[target->second->slot].kill_sent = true;
        break;
      }
      case Action::kStats:
        CheckStats(decision.stats);
        child.conversation.KeepStats(std::move(decision.stats));
        CheckRequestCount(child.slot);
        break;
    }
  }

  // The routes a child with a channel has open are all allowed by the rules
  // in force, and none of them is also refused. They change only here and
  // in Reload().
  void CheckRoutes(const Child& child) const {
    if (!child.channel_open) return;
    for (const std::string& route : child.conversation.routes()) {
      Check(workerpool::CheckRequestRoute(Config(variant_),
                                          GroupName(child.slot), route)
                .ok());
      Check(child.conversation.refused_routes().count(route) == 0);
    }
  }

  // Watcher::OnRouteOpen: the routing rules decide.
  void OpenRoute(Child& child, const std::string& group) {
    workerpool::Status allowed = workerpool::CheckRequestRoute(
        Config(variant_), GroupName(child.slot), group);
    if (!allowed.ok()) {
      Check(!allowed.message().empty());
      const bool refused_before =
          child.conversation.refused_routes().count(group) != 0;
      Check(child.conversation.RouteRefused(group) == !refused_before);
      return;
    }
    child.conversation.RouteOpened(group);
    child.routes.insert(group);
    CheckRoutes(child);
  }

  // Watcher::ApplyRoutes: routes no longer allowed are revoked, refused ones
  // now allowed are opened.
  void Reload() {
    variant_ ^= 1;
    for (auto& [pid, entry] : children_) {
      Child& child = *entry;
      if (!child.channel_open) continue;
      const std::string& from = GroupName(child.slot);
      ChildConversation& conversation = child.conversation;
      for (const std::string& target : std::vector<std::string>(
               conversation.routes().begin(), conversation.routes().end())) {
        if (workerpool::CheckRequestRoute(Config(variant_), from, target)
                .ok()) {
          continue;
        }
        conversation.RouteRevoked(target);
        child.routes.erase(target);
      }
      for (const std::string& target :
           std::vector<std::string>(conversation.refused_routes().begin(),
                                    conversation.refused_routes().end())) {
        if (!workerpool::CheckRequestRoute(Config(variant_), from, target)
                 .ok()) {
          continue;
        }
        conversation.ForgetRefusal(target);
        OpenRoute(child, target);
      }
      CheckRoutes(child);
    }
  }

  // --- frames a child may write, from well-formed to hostile

  std::string MakeFrame(const Child* child) {
    const std::int64_t own_pid = child != nullptr ? child->pid : 0;
    std::string body;
    std::string meta;
    FrameType type = FrameType::kHello;
    switch (in_.Byte() % kFrameKinds) {
      case kFrameHello: {
        static const char* const kBodies[] = {R"({"pid":1,"protocol":1})", "",
                                              "[]", "\x01nope"};
        body = kBodies[in_.Byte() % std::size(kBodies)];
        break;
      }
      case kFrameHeartbeat: {
        static const char* const kBodies[] = {"{}", "", "x"};
        type = FrameType::kHeartbeat;
        body = kBodies[in_.Byte() % std::size(kBodies)];
        break;
      }
      case kFrameRouteOpen:
        type = FrameType::kRouteOpen;
        body = RouteOpenBody(in_.Byte());
        break;
      case kFrameKillPeer:
        type = FrameType::kKillPeer;
        body = KillPeerBody(own_pid);
        break;
      case kFrameStats:
        type = FrameType::kStats;
        body = StatsBody(in_.Byte());
        break;
      case kFrameRaw: {
        const std::uint8_t type_byte = in_.Byte();
        // Mostly types the decoder accepts; from 0xf0 up, as written.
        type = static_cast<FrameType>(
            type_byte >= 0xf0
                ? type_byte
                : kKnownTypes[type_byte % std::size(kKnownTypes)]);
        const std::size_t meta_length = in_.Byte() % 8;
        std::string_view payload = in_.Bytes(in_.Byte());
        meta = payload.substr(0, std::min(meta_length, payload.size()));
        body = payload.substr(meta.size());
        break;
      }
    }
    std::string bytes;
    workerpool::AppendFrame(bytes, type, 0, 0, meta, body);
    return bytes;
  }

  static std::string RouteOpenBody(std::uint8_t variant) {
    static const char* const kNames[] = {"web", "intake", "compute", "batch",
                                         "nowhere"};
    if (variant % 12 < 5) {
      return std::string(R"({"group":")") + kNames[variant % 12] + "\"}";
    }
    switch (variant % 12) {
      case 5:
        return R"({"group":7})";
      case 6:
        return R"({"group":""})";
      case 7:
        return R"({"group":"a\u0001b"})";
      case 8:
        return "{}";
      case 9:
        return "[1]";
      case 10:
        return R"({"group":")" + std::string(300, 'g') + "\"}";
      default:  // over the 4 KiB a route_open may take
        return R"({"group":"compute","pad":")" + std::string(5000, 'p') + "\"}";
    }
  }

  std::string KillPeerBody(std::int64_t own_pid) {
    const std::uint8_t target = in_.Byte();
    const std::uint8_t reason = in_.Byte();
    std::vector<std::int64_t> pids;
    for (const auto& [pid, child] : children_) pids.push_back(pid);
    const std::size_t pick = target % (pids.size() + 7);
    std::string pid_text;
    if (pick < pids.size()) {
      pid_text = std::to_string(pids[pick]);
    } else {
      switch (pick - pids.size()) {
        case 0:
          pid_text = std::to_string(own_pid);
          break;
        case 1:  // not alive (yet)
          pid_text = std::to_string(next_pid_);
          break;
        case 2:
          pid_text = "0";
          break;
        case 3:
          pid_text = "1";
          break;
        case 4:
          pid_text = R"("1000")";
          break;
        case 5:
          pid_text = "-1000";
          break;
        default:
          pid_text = "1099511627776";
      }
    }
    std::string body = R"({"pid":)" + pid_text;
    switch (reason % 4) {
      case 1:
        body += R"(,"reason":"timeout")";
        break;
      case 2:
        body += R"(,"reason":42)";
        break;
      case 3:
        body += R"(,"reason":")" + std::string(300, 'r') + "\"";
        break;
    }
    return body + "}";
  }

  static std::string StatsBody(std::uint8_t variant) {
    switch (variant % 17) {
      case 0:
        return R"({"served":3,"inflight":0,"sent":18446744073709551615})";
      case 1:
        return "{}";
      case 2:
        return R"({"served":-1})";
      case 3:
        return R"({"served":"x"})";
      case 4:
        return R"({"latency":{"compute":{"bounds_ms":[1,10,100],)"
               R"("counts":[1,2,3,4],"sum_ms":50}},"served":1})";
      case 5:
        return R"({"latency":{"compute":{"bounds_ms":[10,1],)"
               R"("counts":[1,2,3]}}})";
      case 6:
        return R"({"latency":{"compute":{"bounds_ms":[1],"counts":[1]}}})";
      case 7:
        return R"({"app":{"a":[1,{"b":null}],"c":"d"}})";
      case 8:  // nested deeper than the 16 levels "app" may have
        return R"({"app":)" + std::string(17, '[') + std::string(17, ']') + "}";
      case 9: {  // one counter more than a child may report
        std::string body = "{";
        for (std::size_t i = 0; i <= workerpool::kMaxStatsCounters; ++i) {
          body += (i == 0 ? "\"c" : ",\"c") + std::to_string(i) + "\":1";
        }
        return body + "}";
      }
      case 10:  // a counter name with a line break in it
        return R"({"a\nb":-1})";
      case 11:
        return R"({"app":{"x":")" +
               std::string(workerpool::kMaxStatsBytes, 'x') + "\"}}";
      case 12:
        return "{\"" + std::string(65, 'n') + "\":1}";
      case 13:
        return R"({"served":1e3})";
      case 14:  // max_requests reached: recycled
        return R"({"served":990,"served_errors":10})";
      case 15:
        return R"({"routes":{"compute":{"queued":3,"inflight":1},)"
               R"("intake":{}}})";
      default:
        return R"({"routes":{"compute":{"queued":-1}}})";
    }
  }

  // --- the invariants, after every operation

  void CheckPool() const {
    for (int index = 0; index < static_cast<int>(slots_.size()); ++index) {
      const Slot& slot = slots_[index];
      const SlotState state = slot.state;
      Check(static_cast<int>(state) < workerpool::kSlotStates);
      Check(SlotHasChild(state) == (slot.pid != 0));
      if (slot.pid != 0) {
        auto child = children_.find(slot.pid);
        Check(child != children_.end() && child->second->slot == index);
      }
      // The timer counts down to what the state says, and a state that
      // waits on it has it (or cannot hang: its child was killed, or the
      // pool's stop sequence owns it).
      switch (slot.timer) {
        case Timer::kNone:
          break;
        case Timer::kStartGrace:
          Check(state == SlotState::kStarting);
          break;
        case Timer::kBackoff:
          Check(state == SlotState::kBackoff);
          break;
        case Timer::kKillDeadline:
          Check(state == SlotState::kStopping || state == SlotState::kEvicting);
          break;
      }
      if (state == SlotState::kStarting) {
        Check(slot.timer == Timer::kStartGrace);
      }
      if (state == SlotState::kBackoff) Check(slot.timer == Timer::kBackoff);
      if (state == SlotState::kStopping || state == SlotState::kEvicting) {
        Check(slot.timer == Timer::kKillDeadline || slot.kill_sent ||
              slot.pool_stopped);
      }
      // A replaced child serves until its replacement stops it.
      if (state == SlotState::kReplaced) Check(slot.successor >= 0);
      if (slot.successor >= 0) {
        Check(state == SlotState::kReplaced || state == SlotState::kStopping);
        Check(slots_[slot.successor].predecessor == index);
        Check(slots_[slot.successor].state != SlotState::kGone);
      }
      if (slot.predecessor >= 0) {
        Check(slots_[slot.predecessor].successor == index);
      }
      if (state == SlotState::kGone) {
        Check(slot.timer == Timer::kNone);
        Check(slot.predecessor < 0 && slot.successor < 0);
      }
    }
    std::uint64_t live_offences = 0;
    for (const auto& [pid, child] : children_) {
      const ChildConversation& conversation = child->conversation;
      Check(slots_[child->slot].pid == pid);
      Check(conversation.own_pid() == pid);
      Check(conversation.said_hello() == child->said_hello);
      Check(conversation.offences() == child->offences);
      Check(conversation.routes() == child->routes);
      live_offences += conversation.offences();
    }
    Check(offence_decisions_ == retired_offences_ + live_offences);
  }

  Input& in_;
  int variant_ = 0;
  bool scripted_spawns_ = false;
  bool stopping_ = false;
  std::vector<GroupState> groups_ =
      std::vector<GroupState>(Config(0).groups.size());
  std::vector<Slot> slots_;
  std::map<std::int64_t, std::unique_ptr<Child>> children_;
  std::int64_t next_pid_ = kFirstPid;
  std::vector<std::int64_t> free_pids_;
  std::uint64_t next_serial_ = 1;
  std::uint64_t offence_decisions_ = 0;
  std::uint64_t retired_offences_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  Input input(data, size);
  Pool pool(input);
  pool.Run();
  return 0;
}
