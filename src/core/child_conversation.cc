#include "core/child_conversation.h"

#include <type_traits>

namespace workerpool {

ChildConversation::Decision ChildConversation::Refuse(OffendingFrame offence) {
  Decision decision;
  const auto kind = static_cast<std::size_t>(offence.offence);
  decision.log = !logged_.test(kind);
  logged_.set(kind);
  ++offences_;
  decision.offence = std::move(offence);
  return decision;
}

const ChildStats& ChildConversation::stats() const {
  static const ChildStats kNone;
  return stats_ != nullptr ? *stats_ : kNone;
}

void ChildConversation::KeepStats(ChildStats stats) {
  if (stats_ == nullptr) {
    stats_ = std::make_unique<ChildStats>(std::move(stats));
  } else {
    *stats_ = std::move(stats);
  }
}

ChildConversation::Decision ChildConversation::OnFrame(
    wire::FrameType type, std::string_view body,
    const ChildGroupLookup& group_of) {
  if (type == wire::FrameType::kHello) {
    if (said_hello_) {
      return Refuse({ChildOffence::kRepeatedHello, "hello after hello"});
    }
    // A hello with a bad "links" is refused and the child stays unready: a
    // child that cannot receive fds would be sent some.
    ChildMessage hello = ReadChildFrame(type, body);
    if (auto* offending = std::get_if<OffendingFrame>(&hello)) {
      return Refuse(std::move(*offending));
    }
    said_hello_ = true;
    links_ = std::get<HelloMessage>(hello).links;
    return Decision{.action = Action::kHello};
  }
  // The client libraries say hello first; anything before it comes from a
  // child that does not follow the protocol, and routes or kills asked by it
  // would reach children it has no links to.
  if (!said_hello_) {
    return Refuse({ChildOffence::kBeforeHello,
                   "a frame of type " + std::to_string(static_cast<int>(type)) +
                       " before hello"});
  }
  ChildMessage message = ReadChildFrame(type, body);
  if (auto* offending = std::get_if<OffendingFrame>(&message)) {
    return Refuse(std::move(*offending));
  }
  if (std::holds_alternative<HeartbeatMessage>(message)) {
    return Decision{.action = Action::kHeartbeat};
  }
  if (auto* route = std::get_if<RouteOpenMessage>(&message)) {
    // Opening links costs the Watcher a socketpair per serving child and
    // sends one end to each of them: a repeat must not do it again.
    if (routes_.count(route->group) != 0) {
      return Refuse({ChildOffence::kRouteAlreadyOpen,
                     "route_open for " + route->group + ", already open"});
    }
    return Decision{.action = Action::kOpenRoute,
                    .group = std::move(route->group)};
  }
  if (auto* kill = std::get_if<KillPeerMessage>(&message)) {
    const Peer peer = kill->pid == own_pid_ ? Peer{} : group_of(kill->pid);
    if (peer.group == nullptr || routes_.count(*peer.group) == 0) {
      return Refuse({ChildOffence::kKillRefused,
                     "kill_peer for pid " + std::to_string(kill->pid) +
                         ", which it does not send to"});
    }
    // A flood of requests for one peer is one kill (and one log line).
    // Peers that are gone leave the set first, so it stays as small as the
    // peers being killed.
    std::erase_if(killed_, [&group_of](const auto& entry) {
      return group_of(entry.second).serial != entry.first;
    });
    if (!killed_.emplace(peer.serial, kill->pid).second) return Decision{};
    return Decision{.action = Action::kKill,
                    .pid = kill->pid,
                    .reason = std::move(kill->reason)};
  }
  auto& stats = std::get<StatsMessage>(message);
  return Decision{.action = Action::kStats, .stats = std::move(stats.stats)};
}

void ChildConversation::RouteOpened(const std::string& group) {
  refused_.erase(group);
  routes_.insert(group);
}

bool ChildConversation::RouteRefused(const std::string& group) {
  // Bounded: a child asking for endless names is refused each time, but the
  // Watcher remembers (and logs) only the first ones.
  if (refused_.size() >= kMaxRefusedRoutes) return false;
  return refused_.insert(group).second;
}

void ChildConversation::RouteRevoked(const std::string& group) {
  routes_.erase(group);
  refused_.insert(group);
}

}  // namespace workerpool
