// The child table, part two: groups. Resize, rolling restart, retry of a
// failed group, removal, and recycling (max_requests, max_rss). Every change
// to a slot goes through ChildTable::Apply (child_table.cc).
#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <tuple>

#include "os/spawn.h"
#include "os/uv_owner.h"
#include "watcher/child_table.h"

namespace workerpool {
namespace {

// max_rss is checked this often, and only while some group sets it.
constexpr uint64_t kRssSampleMs = 1000;

// "123.4MB", for recycling messages.
std::string FormatMegabytes(std::int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1fMB",
                static_cast<double>(bytes) / (1024.0 * 1024.0));
  return text;
}

}  // namespace

void ChildTable::RemoveGroup(Group* group) {
  group->removing = true;
  group->rolling.clear();
  std::vector<Slot*> slots;
  group->ForEachSlot([&slots](Slot* slot) { slots.push_back(slot); });
  for (Slot* slot : slots) Apply(slot, SlotEvent::kStop);
  DeleteDrainedGroups();
}

void ChildTable::DeleteDrainedGroups() {
  std::erase_if(groups_, [this](const std::unique_ptr<Group>& group) {
    if (!group->removing || !group->slots.empty() || !group->outgoing.empty()) {
      return false;
    }
    spdlog::info("group {} removed", group->config.name);
    DropAutoscale(group.get());
    output_.ForgetGroup(group.get());
    return true;
  });
}

void ChildTable::Resize(Group* group) {
  // A waiting group starts with the processes it has then.
  if (group->waiting) return;
  const int wanted = group->config.processes;
  std::vector<Slot*> active;
  for (auto& [index, slot] : group->slots) {
    if (slot->state != SlotState::kStopping) active.push_back(slot);
  }
  if (static_cast<int>(active.size()) > wanted) {
    // Shrink, idle first: no child before a starting one, a starting one
    // before an up one, an idle one before a busy one (as its last stats
    // say), then the highest index, so indices stay dense when all are
    // alike.
    auto rank = [](const Slot* slot) {
      const ChildStats& stats = slot->conversation.stats();
      const uint64_t serving =
          stats.Counter("serving") + stats.Counter("inflight");
      return std::make_tuple(slot->has_child(), slot->up(), serving,
                             -slot->index);
    };
    std::stable_sort(
        active.begin(), active.end(),
        [&rank](const Slot* a, const Slot* b) { return rank(a) < rank(b); });
    const size_t extra = active.size() - static_cast<size_t>(wanted);
    for (size_t i = 0; i < extra; ++i) Apply(active[i], SlotEvent::kStop);
  }
  // Grow into the lowest free indices.
  int live = std::min<int>(static_cast<int>(active.size()), wanted);
  for (int index = 0; live < wanted; ++index) {
    if (group->slots.count(index) != 0) continue;
    Slot* slot = NewSlot(group, index);
    ++live;
    if (group->failed) {
      Apply(slot, SlotEvent::kGroupFailed);
    } else {
      Spawn(slot);
    }
  }
  int slots = wanted;
  if (!group->slots.empty()) {
    slots = std::max(slots, group->slots.rbegin()->first + 1);
  }
  group->policy.Resize(slots);
}

void ChildTable::RetryFailedGroup(Group* group) {
  if (!group->failed) return;
  group->failed = false;
  group->failed_reason.clear();
  group->policy.Reset();
  std::vector<Slot*> slots;
  for (auto& [index, slot] : group->slots) slots.push_back(slot);
  for (Slot* slot : slots) Apply(slot, SlotEvent::kRetry);
}

// Moves SLOT's child aside (it keeps serving) and starts its replacement in
// the same index; the old child is stopped once the new one is up
// (kStopPredecessor). False when the lifecycle does not allow it.
bool ChildTable::ReplaceSlot(Slot* slot) {
  Apply(slot, SlotEvent::kReplace);
  if (slot->state != SlotState::kReplaced) return false;
  Group* group = slot->group;
  group->slots.erase(slot->index);
  slot->outgoing = true;
  group->outgoing.push_back(slot);
  Slot* fresh = NewSlot(group, slot->index);
  fresh->replaces = slot;
  slot->replaced_by = fresh;
  Spawn(fresh);
  return true;
}

// One child at a time: the next index is replaced once the previous old
// child has exited, so the group has between processes and processes + 1
// children throughout, and never fewer than processes - 1 up.
void ChildTable::ContinueRollingRestart(Group* group) {
  if (stopping_ || group->removing || group->failed ||
      !group->outgoing.empty()) {
    return;
  }
  for (auto& [index, slot] : group->slots) {
    if (slot->replaces != nullptr) return;  // a replacement is starting
  }
  while (!group->rolling.empty()) {
    int index = group->rolling.front();
    group->rolling.erase(group->rolling.begin());
    auto found = group->slots.find(index);
    if (found == group->slots.end()) continue;
    Slot* slot = found->second;
    if (slot->state == SlotState::kStopping ||
        slot->generation == group->generation) {
      continue;
    }
    if (slot->state == SlotState::kDone) {
      // A one-shot restarted (or changed by a reload) runs again.
      spdlog::info("{}[{}] runs again", group->config.name, index);
      Apply(slot, SlotEvent::kRerun);
      continue;
    }
    if (!slot->has_child()) continue;  // its next start uses the new settings
    spdlog::info("rolling restart of {}: replacing {}[{}] pid {}",
                 group->config.name, group->config.name, index, slot->pid);
    if (ReplaceSlot(slot)) return;
  }
  ContinueRestartChain();
  observer_->OnPoolChanged();
}

void ChildTable::StartRollingRestart(Group* group) {
  ++group->generation;
  group->rolling.clear();
  for (auto& [index, slot] : group->slots) {
    if (slot->state != SlotState::kStopping) group->rolling.push_back(index);
  }
  ContinueRollingRestart(group);
}

void ChildTable::ApplyLimits(Group* group) {
  group->ForEachSlot([this](Slot* slot) {
    if (slot->has_child()) {
      slot->recycle_after =
          RecycleAfter(slot->group->config.max_requests, random_());
    }
  });
  channels_.ApplyLimits(group);
  std::vector<Slot*> slots;
  for (auto& [index, slot] : group->slots) slots.push_back(slot);
  for (Slot* slot : slots) CheckRequestCount(slot);
}

void ChildTable::ApplyHealth(Group* group) {
  for (auto& [index, slot] : group->slots) {
    if (!slot->up()) continue;
    probes_.Stop(slot);
    probes_.StartHealth(slot);
  }
}

void ChildTable::Recycle(Slot* slot, const std::string& why) {
  Group* group = slot->group;
  if (stopping_ || group->removing || !slot->up()) return;
  ++group->recycled;
  spdlog::info("recycling {}[{}] pid {}: {}", group->config.name, slot->index,
               slot->pid, why);
  ReplaceSlot(slot);
}

void ChildTable::CheckRequestCount(Slot* slot) {
  if (slot->recycle_after <= 0 || !slot->up()) return;
  const ChildStats& stats = slot->conversation.stats();
  // Saturating: a child may report anything, even numbers that overflow.
  const uint64_t served = stats.Counter("served");
  const uint64_t answered =
      std::max(served, served + stats.Counter("served_errors"));
  if (answered < static_cast<uint64_t>(slot->recycle_after)) return;
  Recycle(slot, "answered " + std::to_string(answered) +
                    " requests (max_requests " +
                    std::to_string(slot->group->config.max_requests) + ")");
}

void ChildTable::UpdateRssSampling() {
  bool wanted = false;
  for (auto& group : groups_) {
    wanted |= !group->removing && group->config.max_rss > 0;
  }
  const bool running =
      uv_is_active(reinterpret_cast<uv_handle_t*>(&rss_timer_)) != 0;
  if (wanted && !running && !stopping_) {
    uv_timer_start(
        &rss_timer_,
        [](uv_timer_t* timer) { Owner<ChildTable>(timer)->SampleRss(); },
        kRssSampleMs, kRssSampleMs);
  } else if (!wanted && running) {
    uv_timer_stop(&rss_timer_);
  }
}

void ChildTable::SampleRss() {
  std::vector<std::pair<Slot*, std::int64_t>> over;
  for (auto& group : groups_) {
    const std::int64_t limit = group->config.max_rss;
    if (limit <= 0 || group->removing) continue;
    for (auto& [index, slot] : group->slots) {
      if (!slot->up()) continue;
      Result<std::int64_t> rss = ResidentBytes(slot->pid);
      if (rss.ok() && *rss > limit) over.emplace_back(slot, *rss);
    }
  }
  for (auto& [slot, rss] : over) {
    Recycle(slot, "resident memory " + FormatMegabytes(rss) +
                      " is over max_rss " +
                      FormatMegabytes(slot->group->config.max_rss));
  }
}

// --- Start order (core/start_order.h) --------------------------------------

std::vector<GroupNode> ChildTable::Nodes() const {
  std::vector<GroupNode> nodes;
  for (const auto& group : groups_) {
    if (group->removing) continue;
    // Stops looking at the first child: called at every reap of the stop.
    bool running = !group->outgoing.empty();
    for (auto slot = group->slots.begin();
         !running && slot != group->slots.end(); ++slot) {
      running = slot->second->has_child();
    }
    nodes.push_back({group->config.name, group->config.depends_on,
                     group->config.type != GroupType::kJob, running});
  }
  return nodes;
}

bool ChildTable::GroupReady(const Group& group) const {
  if (group.waiting || group.failed || group.removing) return false;
  if (static_cast<int>(group.slots.size()) < group.config.processes) {
    return false;
  }
  for (const auto& [index, slot] : group.slots) {
    if (!slot->up() && slot->state != SlotState::kDone) return false;
  }
  return true;
}

std::string ChildTable::FailedDependency(const Group& group) const {
  return workerpool::FailedDependency(
      group.config.name, Nodes(), [this](const std::string& name) {
        const Group* dependency = FindGroup(name);
        return dependency != nullptr && dependency->failed;
      });
}

void ChildTable::StartWaitingGroups() {
  if (stopping_) return;
  auto ready = [this](const std::string& name) {
    const Group* dependency = FindGroup(name);
    return dependency != nullptr && GroupReady(*dependency);
  };
  // Starting one may make another ready at once (processes 0).
  for (bool started = true; started;) {
    started = false;
    for (std::size_t i = 0; i < groups_.size(); ++i) {
      Group* group = groups_[i].get();
      if (!group->waiting || group->removing) continue;
      GroupNode node{group->config.name, group->config.depends_on};
      if (!UnreadyDependencies(node, ready).empty()) continue;
      StartGroup(group);
      started = true;
    }
  }
}

void ChildTable::StartGroup(Group* group) {
  group->waiting = false;
  if (!group->config.depends_on.empty()) {
    spdlog::info("group {}: its dependencies are ready; starting it",
                 group->config.name);
  }
  group->policy.Resize(group->config.processes);
  for (int index = 0; index < group->config.processes; ++index) {
    if (group->slots.count(index) == 0) Spawn(NewSlot(group, index));
  }
}

void ChildTable::FailGroup(Group* group, std::string reason) {
  group->failed = true;
  group->failed_reason = std::move(reason);
  spdlog::error(
      "group {} failed: {}; not restarting it until reload or `workerpool "
      "restart {}`",
      group->config.name, group->failed_reason, group->config.name);
  for (const auto& other : groups_) {
    if (!other->waiting || other->removing) continue;
    if (FailedDependency(*other) == group->config.name) {
      spdlog::error("group {} does not start: it depends on {}, which failed",
                    other->config.name, group->config.name);
    }
  }
}

std::string ChildTable::StateOf(const Group& group, std::string* detail) const {
  int live = 0, done = 0, probing = 0;
  for (const auto& [index, slot] : group.slots) {
    if (slot->has_child()) ++live;
    if (slot->state == SlotState::kDone) ++done;
    if (slot->state == SlotState::kProbing) ++probing;
  }
  std::string state;
  if (group.removing) {
    state = "removing";
    *detail = state;
  } else if (group.failed) {
    state = "failed";
    *detail =
        group.failed_reason.empty() ? state : "failed: " + group.failed_reason;
  } else if (group.waiting) {
    state = "waiting";
    auto ready = [this](const std::string& name) {
      const Group* dependency = FindGroup(name);
      return dependency != nullptr && GroupReady(*dependency);
    };
    GroupNode node{group.config.name, group.config.depends_on};
    std::string names;
    for (const std::string& name : UnreadyDependencies(node, ready)) {
      names += (names.empty() ? "" : ", ") + name;
    }
    *detail = "waiting for " + names;
    const std::string failed = FailedDependency(group);
    if (!failed.empty()) *detail += " (" + failed + " failed)";
  } else if (done > 0 && done >= group.config.processes) {
    state = "done";
    *detail = state;
  } else if (live + done < group.config.processes || probing > 0) {
    state = "starting";
    *detail = state;
  } else {
    state = "running";
    *detail = state;
  }
  return state;
}

void ChildTable::SignalStoppableGroups() {
  if (!stopping_) return;
  std::vector<GroupNode> nodes = Nodes();
  std::vector<bool> may = MayStopNow(nodes);
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (!may[i] || !nodes[i].running) continue;
    Group* group = FindGroup(nodes[i].name);
    if (group == nullptr || group->stop_signalled) continue;
    group->stop_signalled = true;
    int children = 0;
    group->ForEachSlot([this, &children](Slot* slot) {
      if (!slot->has_child()) return;
      Signal(slot, SIGTERM);
      ++children;
    });
    spdlog::info("stopping group {}: SIGTERM to {} children", nodes[i].name,
                 children);
  }
  // A group dropped by a reload has no dependents left; it stops anyway.
  for (const auto& group : groups_) {
    if (!group->removing || group->stop_signalled) continue;
    group->stop_signalled = true;
    group->ForEachSlot([this](Slot* slot) {
      if (slot->has_child()) Signal(slot, SIGTERM);
    });
  }
}

void ChildTable::RestartWithDependents(Group* group) {
  restart_chain_ = DependentsInStartOrder(group->config.name, Nodes());
  RetryFailedGroup(group);
  StartRollingRestart(group);
  ContinueRestartChain();
}

// The next group of a --with-dependents restart starts its rolling restart
// once the one before it is ready again.
void ChildTable::ContinueRestartChain() {
  while (!restart_chain_.empty() && !stopping_) {
    bool busy = false;
    for (const auto& group : groups_) {
      if (group->removing) continue;
      if (!group->rolling.empty() || !group->outgoing.empty()) busy = true;
      if (!group->waiting && !group->failed && !GroupReady(*group)) {
        busy = true;
      }
    }
    if (busy) return;
    const std::string name = restart_chain_.front();
    restart_chain_.erase(restart_chain_.begin());
    Group* next = FindGroup(name);
    if (next == nullptr || next->waiting) continue;
    spdlog::info(
        "rolling restart of group {} (it depends on a group just "
        "restarted)",
        name);
    RetryFailedGroup(next);
    StartRollingRestart(next);
  }
}

}  // namespace workerpool
