// The child table, part three: autoscaling. The policy is pure
// (core/autoscale.h); this feeds it the group's load and resizes the group
// to the target it returns. Nothing here runs at rest: a decision is taken
// when children report a change (stats come only when counters changed), a
// child comes up or goes, or the timer the last decision asked for fires.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>

#include "os/uv_owner.h"
#include "watcher/child_table.h"

namespace workerpool {
namespace {

// Stats of many children arriving together make one decision.
constexpr uint64_t kLoadSettleMs = 100;

// What a service child holds for GROUP, from its app stats ({"target":
// GROUP, "held": N, "queues": {NAME: {"messages": N}}}): the ready messages
// of its queues, and the deliveries it holds because GROUP could not take
// them (none up: with min 0 they wait for the group to grow). The app stats
// are the child's own JSON: read without trusting it.
std::uint64_t BacklogFor(const nlohmann::json& app, const std::string& group) {
  auto target = app.find("target");
  if (target == app.end() || !target->is_string() ||
      target->get_ref<const std::string&>() != group) {
    return 0;
  }
  std::uint64_t total = 0;
  if (auto held = app.find("held");
      held != app.end() && held->is_number_unsigned()) {
    total += held->get<std::uint64_t>();
  }
  auto queues = app.find("queues");
  if (queues == app.end() || !queues->is_object()) return total;
  for (const auto& queue : *queues) {
    if (!queue.is_object()) continue;
    auto messages = queue.find("messages");
    if (messages != queue.end() && messages->is_number_unsigned()) {
      total += messages->get<std::uint64_t>();
    }
  }
  return total;
}

}  // namespace

GroupLoad ChildTable::LoadOf(const Group& group) const {
  GroupLoad load;
  load.max_inflight = std::max(1, group.config.max_inflight);
  for (const auto& [index, slot] : group.slots) {
    if (slot->up()) {
      ++load.processes;
    } else if (slot->state == SlotState::kStarting) {
      ++load.starting;
    } else {
      continue;
    }
    load.serving += slot->conversation.stats().Counter("serving");
  }
  for (const auto& [pid, slot] : children_) {
    const ChildStats& stats = slot->conversation.stats();
    if (auto route = stats.routes.find(group.config.name);
        route != stats.routes.end()) {
      load.queued += route->second.queued;
    }
    if (slot->group->config.type == GroupType::kService) {
      load.backlog_messages += BacklogFor(stats.app, group.config.name);
    }
  }
  return load;
}

void ChildTable::ConfigureAutoscale(Group* group) {
  const std::optional<AutoscaleConfig>& config = group->config.autoscale;
  if (!config) {
    DropAutoscale(group);
    return;
  }
  if (group->autoscale != nullptr) {
    group->autoscale->policy.SetConfig(*config);
  } else {
    group->autoscale = new Group::Autoscale(this, group, *config);
    uv_timer_init(loop_, &group->autoscale->timer);
    group->autoscale->timer.data = group->autoscale;
  }
  LoadChanged();
}

void ChildTable::DropAutoscale(Group* group) {
  Group::Autoscale* autoscale = group->autoscale;
  if (autoscale == nullptr) return;
  group->autoscale = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&autoscale->timer),
           [](uv_handle_t* handle) { delete Owner<Group::Autoscale>(handle); });
}

void ChildTable::LoadChanged() {
  if (stopping_ || uv_is_active(reinterpret_cast<uv_handle_t*>(&load_timer_))) {
    return;
  }
  const bool any = std::any_of(groups_.begin(), groups_.end(),
                               [](const std::unique_ptr<Group>& group) {
                                 return group->autoscale != nullptr;
                               });
  if (!any) return;
  uv_timer_start(
      &load_timer_,
      [](uv_timer_t* timer) { Owner<ChildTable>(timer)->AutoscaleAll(); },
      kLoadSettleMs, 0);
}

void ChildTable::AutoscaleAll() {
  std::vector<Group*> groups;
  for (const auto& group : groups_) {
    if (group->autoscale != nullptr) groups.push_back(group.get());
  }
  for (Group* group : groups) Autoscale(group);
}

void ChildTable::ResumeAutoscale(Group* group) {
  group->scaled = false;
  // Load seen before the pin does not count.
  if (group->autoscale != nullptr) group->autoscale->policy.Reset();
  Autoscale(group);
}

void ChildTable::Autoscale(Group* group) {
  Group::Autoscale* autoscale = group->autoscale;
  if (autoscale == nullptr) return;
  if (stopping_ || group->failed || group->removing || group->scaled) {
    uv_timer_stop(&autoscale->timer);
    return;
  }
  const int current = group->config.processes;
  AutoscaleDecision decision =
      autoscale->policy.Observe(LoadOf(*group), current, Clock::now());
  if (decision.recheck_after.count() > 0) {
    uv_timer_start(
        &autoscale->timer,
        [](uv_timer_t* timer) {
          auto* owner = Owner<Group::Autoscale>(timer);
          owner->table->Autoscale(owner->group);
        },
        static_cast<uint64_t>(decision.recheck_after.count()), 0);
  } else {
    uv_timer_stop(&autoscale->timer);
  }
  if (decision.target == current) return;
  ++(decision.target > current ? autoscale->ups : autoscale->downs);
  autoscale->last_unix = static_cast<std::int64_t>(time(nullptr));
  spdlog::info("group {}: autoscale {}", group->config.name,
               decision.reason.empty()
                   ? std::to_string(current) + " -> " +
                         std::to_string(decision.target) + " processes"
                   : decision.reason);
  group->config.processes = decision.target;
  Resize(group);
}

}  // namespace workerpool
