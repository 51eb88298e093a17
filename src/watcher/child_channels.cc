#include "watcher/child_channels.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "core/routing.h"
#include "os/uv_owner.h"
#include "watcher/channel.h"
#include "watcher/child_table.h"

namespace workerpool {
namespace {

// Refused frames a child may send before its channel is closed: enough for
// a library with a bug to keep serving while the log says what it does
// wrong, few enough that a hostile child cannot keep the Watcher busy.
constexpr std::uint64_t kMaxProtocolErrors = 1000;

nlohmann::json PeerOf(const Slot* slot) {
  return {{"group", slot->group->config.name},
          {"index", slot->index},
          {"pid", slot->pid}};
}

}  // namespace

void ChildChannels::Open(Slot* slot, int fd) {
  slot->channel = Channel::Open(
      table_->loop(), fd,
      [this](Channel* channel, const FrameView& frame) {
        OnFrame(static_cast<Slot*>(channel->owner), frame);
      },
      [](Channel* channel) {
        // The child closed its end: it is exiting; SIGCHLD follows.
        Slot* owner = static_cast<Slot*>(channel->owner);
        if (owner != nullptr && owner->channel == channel) {
          owner->channel = nullptr;
        }
      });
  if (slot->channel != nullptr) slot->channel->owner = slot;
}

void ChildChannels::OnFrame(Slot* slot, const FrameView& frame) {
  if (slot == nullptr || !slot->has_child()) return;
  ChildConversation::Decision decision = slot->conversation.OnFrame(
      frame.header.type, frame.body,
      [this](std::int64_t pid) -> ChildConversation::Peer {
        if (pid <= 0 || pid > INT_MAX) return {};
        const Slot* child = table_->FindChild(static_cast<pid_t>(pid));
        if (child == nullptr) return {};
        return {&child->group->config.name, child->serial};
      });
  if (decision.offence) {
    OnProtocolError(slot, *decision.offence, decision.log);
    return;
  }
  switch (decision.action) {
    case ChildConversation::Action::kNone:
      break;
    case ChildConversation::Action::kHello:
      table_->Apply(slot, SlotEvent::kHello);
      break;
    case ChildConversation::Action::kHeartbeat:
      if (uv_is_active(reinterpret_cast<uv_handle_t*>(&slot->heartbeat))) {
        uv_timer_again(&slot->heartbeat);
      }
      break;
    case ChildConversation::Action::kOpenRoute:
      OnRouteOpen(slot, decision.group);
      break;
    case ChildConversation::Action::kKill: {
      Slot* target = table_->FindChild(static_cast<pid_t>(decision.pid));
      if (target == nullptr) break;
      spdlog::warn("killing {}[{}] pid {}: {} (reported by {}[{}] pid {})",
                   target->group->config.name, target->index, target->pid,
                   decision.reason, slot->group->config.name, slot->index,
                   slot->pid);
      table_->Signal(target, SIGKILL);
      break;
    }
    case ChildConversation::Action::kStats:
      slot->conversation.KeepStats(std::move(decision.stats));
      table_->CheckRequestCount(slot);
      table_->LoadChanged();
      break;
  }
}

// A child broke the protocol: the frame is dropped, counted for its group and
// logged the first time this child commits that kind of offence. A child
// that keeps offending loses its channel (it sees EOF, exits, and is
// restarted with backoff); the rest of the pool never notices.
void ChildChannels::OnProtocolError(Slot* slot, const OffendingFrame& offence,
                                    bool log) {
  ++slot->group->protocol_errors;
  if (log) {
    spdlog::warn("{}[{}] pid {} broke the pool protocol ({}): {}; ignored",
                 slot->group->config.name, slot->index, slot->pid,
                 OffenceName(offence.offence), offence.detail);
  }
  if (slot->conversation.offences() >= kMaxProtocolErrors &&
      slot->channel != nullptr) {
    spdlog::error(
        "{}[{}] pid {}: {} protocol errors; closing its pool channel and "
        "stopping it",
        slot->group->config.name, slot->index, slot->pid,
        slot->conversation.offences());
    table_->Evict(slot);
  }
}

void ChildChannels::Greet(Slot* slot) {
  slot->ready = true;
  slot->group->speaks_protocol = true;
  SendConfig(slot);
  ArmHeartbeat(slot);
  if (table_->stopping()) return;
  // Every child that routes to this group gets a link to the newcomer.
  auto subscribers = subscribers_.find(slot->group->config.name);
  if (subscribers != subscribers_.end()) {
    for (Slot* sender : subscribers->second) LinkPeers(sender, slot);
  }
}

bool ChildChannels::Drain(Slot* slot) {
  if (!slot->ready || slot->channel == nullptr) return false;
  // Its senders stop sending to it and close their links once their
  // requests are answered; then it exits by itself.
  spdlog::info("draining {}[{}] pid {}", slot->group->config.name, slot->index,
               slot->pid);
  Broadcast(slot->group->config.name, wire::FrameType::kPeerDraining,
            PeerOf(slot));
  slot->channel->Send(wire::FrameType::kDrain, nlohmann::json::object());
  return true;
}

void ChildChannels::PeerGone(Slot* slot, const std::string& how) {
  nlohmann::json body = PeerOf(slot);
  body["how"] = how;
  Broadcast(slot->group->config.name, wire::FrameType::kPeerGone, body);
}

void ChildChannels::SendConfig(Slot* slot) {
  if (slot->channel == nullptr) return;
  const GroupConfig& config = slot->group->config;
  slot->channel->Send(wire::FrameType::kConfig,
                      {{"max_inflight", config.max_inflight},
                       {"heartbeat_ms", config.heartbeat_timeout.count()},
                       {"max_requests", slot->recycle_after},
                       {"busy_poll_us", config.busy_poll_us}});
}

void ChildChannels::ArmHeartbeat(Slot* slot) {
  const Duration timeout = slot->group->config.heartbeat_timeout;
  if (timeout.count() <= 0) {
    uv_timer_stop(&slot->heartbeat);
    return;
  }
  uv_timer_start(
      &slot->heartbeat,
      [](uv_timer_t* timer) {
        Slot* hung = Owner<Slot>(timer);
        if (!hung->has_child()) return;
        spdlog::error("{}[{}] pid {} is hung: no heartbeat for {}; SIGKILL",
                      hung->group->config.name, hung->index, hung->pid,
                      FormatDuration(hung->group->config.heartbeat_timeout));
        hung->table->Signal(hung, SIGKILL);
      },
      static_cast<uint64_t>(timeout.count()),
      static_cast<uint64_t>(timeout.count()));
}

void ChildChannels::SendRouteOpened(Slot* sender, const GroupConfig& config) {
  if (sender->channel == nullptr) return;
  sender->channel->Send(
      wire::FrameType::kRouteOpened,
      {{"group", config.name},
       {"max_inflight", config.max_inflight},
       {"queue_limit", config.queue_limit},
       {"request_timeout_ms", config.request_timeout.count()}});
}

void ChildChannels::OnRouteOpen(Slot* sender, const std::string& target) {
  const std::string& from = sender->group->config.name;
  Status allowed = CheckRequestRoute(table_->config(), from, target);
  if (!allowed.ok()) {
    ++refused_requests_;
    if (sender->conversation.RouteRefused(target)) {
      spdlog::warn("refused {}[{}] pid {} -> {}: {}", from, sender->index,
                   sender->pid, target, allowed.message());
    }
    if (sender->channel != nullptr) {
      sender->channel->Send(wire::FrameType::kRouteRefused,
                            {{"group", target}, {"error", allowed.message()}});
    }
    return;
  }
  Group* group = table_->FindGroup(target);
  sender->conversation.RouteOpened(target);
  subscribers_[target].insert(sender);
  const GroupConfig* config = table_->config().FindGroup(target);
  if (group != nullptr) {
    config = &group->config;
    // Replaced children serve until their replacement is up.
    group->ForEachSlot([this, sender](Slot* server) {
      if (server->ready && server->state != SlotState::kStopping &&
          server->state != SlotState::kEvicting) {
        LinkPeers(sender, server);
      }
    });
  }
  SendRouteOpened(sender, *config);
}

void ChildChannels::LinkPeers(Slot* sender, Slot* server) {
  if (sender->channel == nullptr || server->channel == nullptr) return;
  int ends[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
    spdlog::error("cannot link {}[{}] to {}[{}]: socketpair: {}",
                  sender->group->config.name, sender->index,
                  server->group->config.name, server->index, strerror(errno));
    return;
  }
  nlohmann::json to_server = PeerOf(sender);
  to_server["role"] = "server";
  server->channel->Send(wire::FrameType::kPeerAdded, to_server, ends[0]);
  nlohmann::json to_sender = PeerOf(server);
  to_sender["role"] = "sender";
  sender->channel->Send(wire::FrameType::kPeerAdded, to_sender, ends[1]);
}

void ChildChannels::Broadcast(const std::string& group, wire::FrameType type,
                              const nlohmann::json& body) {
  auto subscribers = subscribers_.find(group);
  if (subscribers == subscribers_.end()) return;
  for (Slot* sender : subscribers->second) {
    if (sender->channel != nullptr) sender->channel->Send(type, body);
  }
}

void ChildChannels::Forget(Slot* slot) {
  uv_timer_stop(&slot->heartbeat);
  if (slot->channel != nullptr) {
    slot->channel->Close();
    slot->channel = nullptr;
  }
  for (const std::string& target : slot->conversation.routes()) {
    auto subscribers = subscribers_.find(target);
    if (subscribers != subscribers_.end()) subscribers->second.erase(slot);
  }
  slot->conversation = ChildConversation(slot->pid);
  slot->ready = false;
}

// Routes are checked against the new definition: one no longer allowed is
// revoked (requests already sent finish), one refused before and allowed
// now is opened for the child that asked.
void ChildChannels::ApplyRoutes() {
  const PoolConfig& config = table_->config();
  auto visit = [this, &config](Slot* slot) {
    if (!slot->has_child() || slot->channel == nullptr) return;
    const std::string& from = slot->group->config.name;
    ChildConversation& conversation = slot->conversation;
    for (const std::string& target : std::vector<std::string>(
             conversation.routes().begin(), conversation.routes().end())) {
      Status allowed = CheckRequestRoute(config, from, target);
      if (allowed.ok()) continue;
      spdlog::info("route {}[{}] pid {} -> {} revoked: {}", from, slot->index,
                   slot->pid, target, allowed.message());
      conversation.RouteRevoked(target);
      subscribers_[target].erase(slot);
      slot->channel->Send(wire::FrameType::kRouteRefused,
                          {{"group", target}, {"error", allowed.message()}});
    }
    for (const std::string& target :
         std::vector<std::string>(conversation.refused_routes().begin(),
                                  conversation.refused_routes().end())) {
      if (!CheckRequestRoute(config, from, target).ok()) continue;
      if (table_->FindGroup(target) == nullptr) continue;
      spdlog::info("route {}[{}] pid {} -> {} allowed by the reload", from,
                   slot->index, slot->pid, target);
      conversation.ForgetRefusal(target);
      OnRouteOpen(slot, target);
    }
  };
  for (const auto& group : table_->groups()) {
    if (!group->removing) group->ForEachSlot(visit);
  }
}

// Limits reach running children without a restart: their own (kConfig)
// and their senders' view of the group (kRouteOpened again).
void ChildChannels::ApplyLimits(Group* group) {
  group->ForEachSlot([this](Slot* slot) {
    if (!slot->has_child() || !slot->ready) return;
    SendConfig(slot);
    ArmHeartbeat(slot);
  });
  auto subscribers = subscribers_.find(group->config.name);
  if (subscribers != subscribers_.end()) {
    for (Slot* sender : subscribers->second) {
      SendRouteOpened(sender, group->config);
    }
  }
}

void ChildChannels::Adopt(Slot* slot, bool heartbeat) {
  for (const std::string& target : slot->conversation.routes()) {
    subscribers_[target].insert(slot);
  }
  if (heartbeat) ArmHeartbeat(slot);
}

}  // namespace workerpool
