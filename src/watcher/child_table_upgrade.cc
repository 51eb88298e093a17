// The child table, part three: an in-place upgrade (watcher/upgrade.h).
// The old Watcher writes every group and slot into the state it hands
// over; the new one rebuilds them from it, with the children's channels and
// output pipes on the descriptors that stayed open across exec, and without
// spawning or signalling anything: the children never notice.
#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "watcher/channel.h"
#include "watcher/child_table.h"

namespace workerpool {
namespace {

std::int64_t Millis(Clock::duration duration) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(duration)
      .count();
}

bool IsOpen(int fd) { return fd >= 0 && fcntl(fd, F_GETFD) != -1; }

int PipeFd(const uv_pipe_t& pipe) {
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<const uv_handle_t*>(&pipe), &fd) != 0) {
    return -1;
  }
  return fd;
}

UpgradeSlot SaveSlot(const Slot& slot, TimePoint now) {
  UpgradeSlot out;
  out.index = slot.index;
  out.state = SlotStateName(slot.state);
  out.pid = slot.pid;
  out.serial = slot.serial;
  out.age_ms = slot.has_child()
                   ? std::max<std::int64_t>(0, Millis(now - slot.started))
                   : 0;
  out.generation = slot.generation;
  out.outgoing = slot.outgoing;
  out.replaces_serial = slot.replaces != nullptr ? slot.replaces->serial : 0;
  out.backoff_ms = slot.backoff.count();
  out.timer_ms =
      uv_is_active(reinterpret_cast<const uv_handle_t*>(&slot.timer))
          ? static_cast<std::int64_t>(uv_timer_get_due_in(&slot.timer))
          : -1;
  out.ready = slot.ready;
  out.heartbeat =
      uv_is_active(reinterpret_cast<const uv_handle_t*>(&slot.heartbeat));
  if (out.heartbeat) {
    out.heartbeat_ms =
        static_cast<std::int64_t>(uv_timer_get_due_in(&slot.heartbeat));
  }
  out.recycle_after = slot.recycle_after;
  out.exit_status = slot.exit_status;
  out.ready_probe_passed = slot.ready_probe_passed;
  out.not_ready_in_time = slot.not_ready_in_time;
  out.health_failures = slot.health_failures;
  out.links_connect = slot.conversation.links() == LinkMode::kConnect;
  const ChildConversation& conversation = slot.conversation;
  out.routes.assign(conversation.routes().begin(), conversation.routes().end());
  out.refused_routes.assign(conversation.refused_routes().begin(),
                            conversation.refused_routes().end());
  for (const auto& [name, value] : conversation.stats().counters) {
    out.counters[name] = value;
  }
  for (const auto& [target, histogram] : conversation.stats().latency) {
    out.latency[target] = {histogram.bounds_ms, histogram.counts,
                           histogram.sum_ms};
  }
  for (const auto& [target, load] : conversation.stats().routes) {
    out.route_load[target] = {load.queued, load.inflight};
  }
  // Null until the child reports application stats.
  if (conversation.stats().app.is_object()) {
    out.app = conversation.stats().app;
  }
  out.offences = conversation.offences();
  if (slot.channel != nullptr && !slot.channel->closed()) {
    out.fds.channel = slot.channel->fd();
    out.channel_pending = slot.channel->Pending();
  }
  if (slot.output != nullptr) {
    out.fds.output = PipeFd(slot.output->pipe);
    out.output_pending = slot.output->splitter.partial();
  }
  out.fds.output_write = slot.output_write_end;
  out.fds.channel_child = slot.channel_child_end;
  return out;
}

}  // namespace

void ChildTable::SaveState(UpgradeState* state, TimePoint now) const {
  state->spawns = spawns_;
  // The spawner goes on serving the next Watcher (its socket is kept).
  if (spawner_.socket() >= 0 && spawner_.pid() > 0) {
    state->spawner_pid = spawner_.pid();
    state->spawner_fd = spawner_.socket();
  }
  state->refused_routes = channels_.refused_requests();
  for (const auto& group : groups_) {
    UpgradeGroup out;
    out.name = group->config.name;
    out.type = GroupTypeName(group->config.type);
    out.command = group->config.command;
    out.processes = group->config.processes;
    out.scaled = group->scaled;
    out.failed = group->failed;
    out.failed_reason = group->failed_reason;
    out.waiting = group->waiting;
    out.removing = group->removing;
    out.speaks_protocol = group->speaks_protocol;
    out.generation = group->generation;
    out.recycled = group->recycled;
    out.protocol_errors = group->protocol_errors;
    out.rolling = group->rolling;
    out.policy.quick_deaths = group->policy.quick_deaths();
    for (TimePoint restart : group->policy.recent()) {
      out.policy.recent_ages_ms.push_back(
          std::max<std::int64_t>(0, Millis(now - restart)));
    }
    out.policy.failed = group->policy.failed();
    out.policy.restarts = group->policy.restarts();
    if (group->autoscale != nullptr) {
      out.autoscale_ups = group->autoscale->ups;
      out.autoscale_downs = group->autoscale->downs;
      out.autoscale_last_unix = group->autoscale->last_unix;
    }
    std::tie(out.output_fd, out.output_child_fd) =
        output_.SharedFds(group.get());
    group->ForEachSlot([this, &out, now](const Slot* slot) {
      out.slots.push_back(SaveSlot(*slot, now));
      if (slot->output == nullptr && slot->has_child()) {
        out.slots.back().output_pending = output_.SharedPartial(slot);
      }
    });
    state->groups.push_back(std::move(out));
  }
}

bool ChildTable::ChannelsFlushed() const {
  for (const auto& [pid, slot] : children_) {
    if (slot->channel != nullptr && !slot->channel->closed() &&
        !slot->channel->flushed()) {
      return false;
    }
  }
  return true;
}

Status ChildTable::AdoptState(const UpgradeState& state, TimePoint now) {
  // Checked first, so that an error leaves nothing half-built.
  if (state.spawner_fd >= 0 && !IsOpen(state.spawner_fd)) {
    return Status::Error("the spawner's descriptor " +
                         std::to_string(state.spawner_fd) + " is not open");
  }
  std::set<std::string> names;
  for (const UpgradeGroup& group : state.groups) {
    const std::string where = "group " + group.name;
    for (int fd : {group.output_fd, group.output_child_fd}) {
      if (fd >= 0 && !IsOpen(fd)) {
        return Status::Error(where + ": output socket descriptor " +
                             std::to_string(fd) + " is not open");
      }
    }
    if (!group.removing) {
      const GroupConfig* config = config_->FindGroup(group.name);
      if (config == nullptr) {
        return Status::Error(where +
                             " is not in the pool definition handed over");
      }
      if (GroupTypeName(config->type) != group.type) {
        return Status::Error(where + " changed type");
      }
      if (!names.insert(group.name).second) {
        return Status::Error(where + " is listed twice");
      }
    }
    for (const UpgradeSlot& slot : group.slots) {
      const std::string at = where + "[" + std::to_string(slot.index) + "]";
      std::optional<SlotState> slot_state = SlotStateFromName(slot.state);
      if (!slot_state || *slot_state == SlotState::kGone) {
        return Status::Error(at + ": unknown slot state '" + slot.state + "'");
      }
      if (SlotHasChild(*slot_state) && slot.pid <= 0) {
        return Status::Error(at + ": a running child without a pid");
      }
      for (int fd : {slot.fds.channel, slot.fds.output, slot.fds.output_write,
                     slot.fds.channel_child}) {
        if (fd >= 0 && !IsOpen(fd)) {
          return Status::Error(at + ": descriptor " + std::to_string(fd) +
                               " is not open");
        }
      }
    }
  }

  spawns_ = state.spawns;
  channels_.AdoptRefusedRequests(state.refused_routes);
  if (state.spawner_fd >= 0 && state.spawner_pid > 0) {
    fcntl(state.spawner_fd, F_SETFD, FD_CLOEXEC);
    spawner_.Adopt(state.spawner_fd, static_cast<pid_t>(state.spawner_pid));
  }
  for (const UpgradeGroup& saved : state.groups) {
    GroupConfig config;
    if (const GroupConfig* defined = config_->FindGroup(saved.name);
        defined != nullptr && !saved.removing) {
      config = *defined;
    } else {
      // Dropped by a reload: only what draining and status need.
      config.name = saved.name;
      config.type = GroupTypeFromName(saved.type).value_or(GroupType::kJob);
      config.command = saved.command;
    }
    config.processes = saved.processes;
    groups_.push_back(std::make_unique<Group>(config));
    Group* group = groups_.back().get();
    group->scaled = saved.scaled;
    group->failed = saved.failed;
    group->failed_reason = saved.failed_reason;
    group->waiting = saved.waiting;
    group->removing = saved.removing;
    group->speaks_protocol = saved.speaks_protocol;
    group->generation = saved.generation;
    group->recycled = saved.recycled;
    group->protocol_errors = saved.protocol_errors;
    group->rolling = saved.rolling;
    std::deque<TimePoint> recent;
    for (std::int64_t age : saved.policy.recent_ages_ms) {
      recent.push_back(now - std::chrono::milliseconds(age));
    }
    std::sort(recent.begin(), recent.end());
    group->policy.Restore(saved.policy.quick_deaths, std::move(recent),
                          saved.policy.failed,
                          static_cast<long>(saved.policy.restarts));
    if (!group->removing) {
      ConfigureAutoscale(group);
      if (group->autoscale != nullptr) {
        group->autoscale->ups = saved.autoscale_ups;
        group->autoscale->downs = saved.autoscale_downs;
        group->autoscale->last_unix = saved.autoscale_last_unix;
      }
    }

    if (saved.output_fd >= 0 && saved.output_child_fd >= 0) {
      output_.AdoptShared(group, saved.output_fd, saved.output_child_fd);
    }
    const bool shared = saved.output_fd >= 0;

    std::map<std::uint64_t, Slot*> by_serial;
    std::vector<std::pair<Slot*, std::uint64_t>> replacing;
    for (const UpgradeSlot& saved_slot : saved.slots) {
      // An outgoing slot shares its index with its replacement.
      Slot* kept = nullptr;
      if (auto found = group->slots.find(saved_slot.index);
          found != group->slots.end()) {
        kept = found->second;
      }
      Slot* slot = NewSlot(group, saved_slot.index);
      if (saved_slot.outgoing) {
        if (kept != nullptr) {
          group->slots[saved_slot.index] = kept;
        } else {
          group->slots.erase(saved_slot.index);
        }
        slot->outgoing = true;
        group->outgoing.push_back(slot);
      }
      slot->state = *SlotStateFromName(saved_slot.state);
      slot->pid = static_cast<pid_t>(saved_slot.pid);
      slot->serial = saved_slot.serial;
      slot->started = now - std::chrono::milliseconds(saved_slot.age_ms);
      slot->generation = saved_slot.generation;
      slot->backoff = Duration(saved_slot.backoff_ms);
      slot->ready = saved_slot.ready;
      slot->recycle_after = saved_slot.recycle_after;
      slot->exit_status = saved_slot.exit_status;
      slot->ready_probe_passed = saved_slot.ready_probe_passed;
      slot->not_ready_in_time = saved_slot.not_ready_in_time;
      slot->health_failures = saved_slot.health_failures;
      ChildStats stats;
      for (const auto& [name, value] : saved_slot.counters) {
        stats.counters[name] = value;
      }
      for (const auto& [target, histogram] : saved_slot.latency) {
        stats.latency[target] = {histogram.bounds_ms, histogram.counts,
                                 histogram.sum_ms};
      }
      for (const auto& [target, load] : saved_slot.route_load) {
        stats.routes[target] = {load.queued, load.inflight};
      }
      stats.app = saved_slot.app;
      slot->conversation = ChildConversation(slot->pid);
      slot->conversation.Restore(
          saved_slot.ready,
          saved_slot.links_connect ? LinkMode::kConnect : LinkMode::kPassed,
          {saved_slot.routes.begin(), saved_slot.routes.end()},
          {saved_slot.refused_routes.begin(), saved_slot.refused_routes.end()},
          std::move(stats), saved_slot.offences);
      if (slot->has_child()) children_[slot->pid] = slot;
      if (saved_slot.fds.channel >= 0) {
        channels_.Open(slot, saved_slot.fds.channel);
        if (slot->channel != nullptr) {
          slot->channel->Preload(saved_slot.channel_pending);
        }
      }
      if (saved_slot.fds.output >= 0) {
        output_.Start(saved_slot.fds.output, slot);
        if (slot->output != nullptr) {
          slot->output->Feed(saved_slot.output_pending);
        }
      } else if (shared && slot->has_child()) {
        // Writes to its group's socket: named after it again.
        output_.StartShared(slot);
        output_.FeedShared(slot, saved_slot.output_pending);
      }
      slot->output_write_end = saved_slot.fds.output_write;
      slot->channel_child_end = saved_slot.fds.channel_child;
      if (saved_slot.timer_ms >= 0) {
        ArmTimer(slot, Duration(saved_slot.timer_ms));
      }
      channels_.Adopt(slot, saved_slot.heartbeat,
                      Duration(saved_slot.heartbeat_ms));
      if (slot->serial != 0) by_serial[slot->serial] = slot;
      if (saved_slot.replaces_serial != 0) {
        replacing.emplace_back(slot, saved_slot.replaces_serial);
      }
    }
    for (auto [slot, serial] : replacing) {
      auto found = by_serial.find(serial);
      if (found == by_serial.end()) continue;
      slot->replaces = found->second;
      found->second->replaced_by = slot;
    }
  }
  WatchAdoptedChildren();  // pidfds are close-on-exec (child_table.h)
  // Probes are this process's timers and sockets: they start again (a
  // ready probe from its first attempt, health at its next `every`).
  for (const auto& group : groups_) {
    group->ForEachSlot([this](Slot* slot) {
      if (slot->state == SlotState::kProbing && slot->group->config.ready) {
        probes_.StartReady(slot);
      } else if (slot->up()) {
        probes_.StartHealth(slot);
      }
    });
  }
  // A slot caught between two steps (no child, nothing scheduled) is
  // started now, as its own step would have done.
  for (const auto& group : groups_) {
    std::vector<Slot*> down;
    group->ForEachSlot([&down](Slot* slot) {
      if (slot->state == SlotState::kDown) down.push_back(slot);
    });
    for (Slot* slot : down) Apply(slot, SlotEvent::kRestartNow);
  }
  UpdateRssSampling();
  LoadChanged();
  return Status::Ok();
}

}  // namespace workerpool
