#include "watcher/child_channels.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "core/routing.h"
#include "os/link_socket.h"
#include "os/uv_owner.h"
#include "watcher/channel.h"
#include "watcher/child_table.h"

namespace workerpool {
namespace {

// Refused frames a child may send before its channel is closed: enough for
// a library with a bug to keep serving while the log says what it does
// wrong, few enough that a hostile child cannot keep the Watcher busy.
constexpr std::uint64_t kMaxProtocolErrors = 1000;

// Links by connect: how long a child has to connect to the path it was
// given (it is running and said hello: a connect takes microseconds), and
// how many connections from other processes one path refuses before it is
// given up.
constexpr uint64_t kLinkConnectTimeoutMs = 5000;
constexpr int kMaxRefusedConnections = 8;

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
    for (Slot* sender : subscribers->second) {
      LinkPeers(sender, slot, /*hold_route=*/false);
    }
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

void ChildChannels::ArmHeartbeat(Slot* slot, Duration first) {
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
      static_cast<uint64_t>(first.count() >= 0
                                ? std::min(first.count(), timeout.count())
                                : timeout.count()),
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
  int waiting = 0;
  if (group != nullptr) {
    config = &group->config;
    // Replaced children serve until their replacement is up.
    group->ForEachSlot([this, sender, &waiting](Slot* server) {
      if (server->ready && server->state != SlotState::kStopping &&
          server->state != SlotState::kEvicting) {
        if (LinkPeers(sender, server, /*hold_route=*/true)) ++waiting;
      }
    });
  }
  // A sender takes route_opened to mean "your links are here": while a
  // server still has to connect for its link, the sender waits for it
  // (or for its timeout) rather than failing requests with "no workers".
  if (waiting > 0) {
    held_routes_[sender][target] += waiting;
    return;
  }
  SendRouteOpened(sender, *config);
}

bool ChildChannels::LinkPeers(Slot* sender, Slot* server, bool hold_route) {
  if (sender->channel == nullptr || server->channel == nullptr) return false;
  if (sender->conversation.links() == LinkMode::kConnect ||
      server->conversation.links() == LinkMode::kConnect) {
    return LinkByConnect(sender, server, hold_route);
  }
  int ends[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
    spdlog::error("cannot link {}[{}] to {}[{}]: socketpair: {}",
                  sender->group->config.name, sender->index,
                  server->group->config.name, server->index, strerror(errno));
    return false;
  }
  nlohmann::json to_server = PeerOf(sender);
  to_server["role"] = "server";
  server->channel->Send(wire::FrameType::kPeerAdded, to_server, ends[0]);
  nlohmann::json to_sender = PeerOf(server);
  to_sender["role"] = "sender";
  sender->channel->Send(wire::FrameType::kPeerAdded, to_sender, ends[1]);
  return false;
}

// A link by connect: the Watcher listens on a fresh path, tells the child
// that asked for connect links to connect there, and gives the connection
// it accepts (after checking the peer's pid) to the other child by
// SCM_RIGHTS. The bytes then flow between the two children directly, as on
// a socketpair; the Watcher only made the connection.
struct ChildChannels::PendingLink {
  ChildChannels* owner = nullptr;
  Slot* connecting = nullptr;      // the child that connects (links: connect)
  Slot* other = nullptr;           // the child that receives the accepted fd
  bool connecting_serves = false;  // connecting is the link's server
  bool holds_route = false;        // other (a sender) waits for route_opened
  std::string route;               // the group whose route_opened waits
  std::string path;
  int listen_fd = -1;
  int refused = 0;
  bool logged_foreign = false;
  std::uint64_t started_ns = 0;
  uv_poll_t poll;
  uv_timer_t timer;
  int open_handles = 2;
};

// Link sockets live in one directory only the Watcher's user can enter
// (mode 0700), beside the control socket: in $RUNTIME_DIRECTORY under
// systemd, which removes it with the service even after a crash. A child that
// runs as another user (groups[].user, the Watcher being root) gets a
// subdirectory of its own, owned by it; the top directory then lets others pass
// through (0711) but not list it.
Result<std::string> ChildChannels::LinkDirectoryFor(const Slot* child) {
  if (link_directory_.empty()) {
    const std::string& control = table_->config().control_socket;
    const std::size_t slash = control.rfind('/');
    Result<std::string> made = MakePrivateDirectory(
        slash == std::string::npos ? std::string() : control.substr(0, slash),
        table_->config().name.substr(0, 16) + ".links-");
    if (!made.ok()) return made.status();
    link_directory_ = *made;
  }
  const std::int64_t uid = child->group->config.uid;
  if (uid < 0 || static_cast<uid_t>(uid) == geteuid()) return link_directory_;
  auto found = link_directories_by_uid_.find(static_cast<uid_t>(uid));
  if (found != link_directories_by_uid_.end()) return found->second;
  std::string directory = link_directory_ + "/u" + std::to_string(uid);
  if (mkdir(directory.c_str(), 0700) != 0 ||
      chown(directory.c_str(), static_cast<uid_t>(uid),
            static_cast<gid_t>(-1)) != 0 ||
      chmod(link_directory_.c_str(), 0711) != 0) {
    return Status::Error("cannot make " + directory + " for uid " +
                         std::to_string(uid) + ": " + strerror(errno));
  }
  link_directories_by_uid_.emplace(static_cast<uid_t>(uid), directory);
  return directory;
}

bool ChildChannels::LinkByConnect(Slot* sender, Slot* server, bool hold_route) {
  const bool sender_connects =
      sender->conversation.links() == LinkMode::kConnect;
  const bool server_connects =
      server->conversation.links() == LinkMode::kConnect;
  if (sender_connects && server_connects) {
    return LinkListening(sender, server);
  }
  Slot* connecting = sender_connects ? sender : server;
  Slot* other = sender_connects ? server : sender;
  auto fail = [&](const std::string& why) {
    spdlog::error("cannot link {}[{}] to {}[{}]: {}",
                  sender->group->config.name, sender->index,
                  server->group->config.name, server->index, why);
    return false;
  };
  Result<std::string> directory = LinkDirectoryFor(connecting);
  if (!directory.ok()) return fail(directory.status().message());
  const std::string path =
      *directory + "/" + std::to_string(++link_paths_) + ".sock";
  Result<int> listening = ListenOnPath(path);
  if (!listening.ok()) return fail(listening.status().message());
  const std::int64_t uid = connecting->group->config.uid;
  if (uid >= 0 && static_cast<uid_t>(uid) != geteuid() &&
      chown(path.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(-1)) !=
          0) {
    ::close(*listening);
    unlink(path.c_str());
    return fail("chown " + path + ": " + strerror(errno));
  }

  auto* link = new PendingLink;
  link->owner = this;
  link->connecting = connecting;
  link->other = other;
  link->connecting_serves = server_connects;
  // Only a sender that takes fds waits for route_opened: one that connects
  // has its link (a path) at once, and writes to it as soon as it connects.
  link->holds_route = hold_route && server_connects;
  link->route = server->group->config.name;
  link->path = path;
  link->listen_fd = *listening;
  link->started_ns = uv_hrtime();
  uv_poll_init(table_->loop(), &link->poll, link->listen_fd);
  link->poll.data = link;
  uv_poll_start(&link->poll, UV_READABLE, [](uv_poll_t* poll, int, int) {
    auto* pending = static_cast<PendingLink*>(poll->data);
    pending->owner->OnLinkAcceptable(pending);
  });
  uv_timer_init(table_->loop(), &link->timer);
  link->timer.data = link;
  uv_timer_start(
      &link->timer,
      [](uv_timer_t* timer) {
        auto* pending = static_cast<PendingLink*>(timer->data);
        pending->owner->OnLinkTimeout(pending);
      },
      kLinkConnectTimeoutMs, 0);
  pending_links_.insert(link);

  nlohmann::json to_connecting = PeerOf(other);
  to_connecting["role"] = server_connects ? "server" : "sender";
  to_connecting["path"] = path;
  connecting->channel->Send(wire::FrameType::kPeerAdded, to_connecting);
  return link->holds_route;
}

// Both children connect: neither can receive an fd, and the Watcher does
// not copy bytes between two connections. So the server listens on a fresh
// path (in the private directory, where only this user can bind) and the
// sender connects to it; the Watcher, which cannot see that connection,
// gives both a random token that the sender writes first and the server
// checks. The token travels only on the two pool channels.
bool ChildChannels::LinkListening(Slot* sender, Slot* server) {
  if (sender->group->config.uid != server->group->config.uid) {
    spdlog::error(
        "cannot link {}[{}] to {}[{}]: both take links by connect and they "
        "run as different users",
        sender->group->config.name, sender->index, server->group->config.name,
        server->index);
    return false;
  }
  Result<std::string> directory = LinkDirectoryFor(server);
  if (!directory.ok()) {
    spdlog::error("cannot link {}[{}] to {}[{}]: {}",
                  sender->group->config.name, sender->index,
                  server->group->config.name, server->index,
                  directory.status().message());
    return false;
  }
  unsigned char random[16];
  if (uv_random(nullptr, nullptr, random, sizeof(random), 0, nullptr) != 0) {
    spdlog::error("cannot link {}[{}] to {}[{}]: no random token",
                  sender->group->config.name, sender->index,
                  server->group->config.name, server->index);
    return false;
  }
  static const char kHex[] = "0123456789abcdef";
  std::string token;
  for (unsigned char byte : random) {
    token += kHex[byte >> 4];
    token += kHex[byte & 15];
  }
  const std::string path =
      *directory + "/" + std::to_string(++link_paths_) + ".sock";
  nlohmann::json to_server = PeerOf(sender);
  to_server["role"] = "server";
  to_server["listen"] = path;
  to_server["token"] = token;
  server->channel->Send(wire::FrameType::kPeerAdded, to_server);
  nlohmann::json to_sender = PeerOf(server);
  to_sender["role"] = "sender";
  to_sender["path"] = path;
  to_sender["token"] = token;
  sender->channel->Send(wire::FrameType::kPeerAdded, to_sender);
  return false;
}

void ChildChannels::OnLinkAcceptable(PendingLink* link) {
  while (pending_links_.count(link) != 0) {
    bool none_pending = false;
    Result<AcceptedPeer> accepted = AcceptPeer(link->listen_fd, &none_pending);
    if (!accepted.ok()) {
      if (!none_pending) {
        spdlog::warn("link socket {}: {}", link->path,
                     accepted.status().message());
      }
      return;
    }
    Slot* connecting = link->connecting;
    if (accepted->pid != connecting->pid) {
      // Not the child the path was given to: closed, and counted against
      // the child that did it (when it is one of ours).
      ::close(accepted->fd);
      ++link->refused;
      Slot* culprit = table_->FindChild(accepted->pid);
      if (culprit != nullptr && culprit->has_child()) {
        ChildConversation::Decision decision = culprit->conversation.Offend(
            {ChildOffence::kLinkRefused,
             "connected to the link path of " + connecting->group->config.name +
                 "[" + std::to_string(connecting->index) + "] pid " +
                 std::to_string(connecting->pid)});
        OnProtocolError(culprit, *decision.offence, decision.log);
      } else if (!link->logged_foreign) {
        link->logged_foreign = true;
        spdlog::warn(
            "refused a connection to link path {} from pid {} uid {}: it was "
            "for {}[{}] pid {}",
            link->path, accepted->pid, accepted->uid,
            connecting->group->config.name, connecting->index, connecting->pid);
      }
      if (link->refused >= kMaxRefusedConnections) {
        spdlog::warn("link path {}: {} wrong connections; link dropped",
                     link->path, link->refused);
        FinishLink(link);
      }
      continue;
    }
    Slot* other = link->other;
    nlohmann::json to_other = PeerOf(connecting);
    to_other["role"] = link->connecting_serves ? "sender" : "server";
    spdlog::debug("{}[{}] pid {} connected its link in {} us",
                  connecting->group->config.name, connecting->index,
                  connecting->pid, (uv_hrtime() - link->started_ns) / 1000);
    if (other->channel != nullptr) {
      other->channel->Send(wire::FrameType::kPeerAdded, to_other, accepted->fd);
    } else {
      ::close(accepted->fd);
    }
    FinishLink(link);
  }
}

void ChildChannels::OnLinkTimeout(PendingLink* link) {
  Slot* connecting = link->connecting;
  if (connecting->has_child()) {
    ChildConversation::Decision decision = connecting->conversation.Offend(
        {ChildOffence::kLinkTimeout,
         "did not connect to its link path to " +
             link->other->group->config.name + "[" +
             std::to_string(link->other->index) + "] within " +
             std::to_string(kLinkConnectTimeoutMs) + " ms; link dropped"});
    OnProtocolError(connecting, *decision.offence, decision.log);
  }
  if (pending_links_.count(link) != 0) FinishLink(link);
}

void ChildChannels::FinishLink(PendingLink* link) {
  if (pending_links_.erase(link) == 0) return;
  uv_poll_stop(&link->poll);
  ::close(link->listen_fd);
  unlink(link->path.c_str());
  if (link->holds_route) {
    Slot* sender = link->other;
    auto held = held_routes_.find(sender);
    if (held != held_routes_.end()) {
      auto count = held->second.find(link->route);
      if (count != held->second.end() && --count->second <= 0) {
        held->second.erase(count);
        if (held->second.empty()) held_routes_.erase(held);
        const Group* group = table_->FindGroup(link->route);
        const GroupConfig* config =
            group != nullptr ? &group->config
                             : table_->config().FindGroup(link->route);
        if (config != nullptr &&
            sender->conversation.routes().count(link->route) != 0) {
          SendRouteOpened(sender, *config);
        }
      }
    }
  }
  auto on_closed = [](uv_handle_t* handle) {
    auto* pending = static_cast<PendingLink*>(handle->data);
    if (--pending->open_handles == 0) delete pending;
  };
  uv_close(reinterpret_cast<uv_handle_t*>(&link->poll), on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&link->timer), on_closed);
}

void ChildChannels::CloseAll() {
  held_routes_.clear();
  for (PendingLink* link : std::vector<PendingLink*>(pending_links_.begin(),
                                                     pending_links_.end())) {
    FinishLink(link);
  }
  for (const auto& [uid, directory] : link_directories_by_uid_) {
    RemovePrivateDirectory(directory);
  }
  link_directories_by_uid_.clear();
  RemovePrivateDirectory(link_directory_);
  link_directory_.clear();
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
  // Links waiting for this child (to connect, or to be given the
  // connection) are dropped; a sender's route waits for them no longer.
  held_routes_.erase(slot);
  for (PendingLink* link : std::vector<PendingLink*>(pending_links_.begin(),
                                                     pending_links_.end())) {
    if (link->connecting == slot || link->other == slot) FinishLink(link);
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

void ChildChannels::Adopt(Slot* slot, bool heartbeat, Duration heartbeat_left) {
  for (const std::string& target : slot->conversation.routes()) {
    subscribers_[target].insert(slot);
  }
  if (heartbeat) ArmHeartbeat(slot, heartbeat_left);
}

}  // namespace workerpool
