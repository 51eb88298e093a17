// The child protocol room: the Watcher's side of every child's pool channel
// (docs/PROTOCOL.md, "Control frames"). It reads what children say through
// ChildConversation (core/child_conversation.h: every frame is untrusted
// input, nothing throws), links senders to the children of the groups they
// route to, forwards kills and heartbeats, keeps each child's stats, and
// tells senders when a peer joins, drains or dies.
//
// Reports upward: a hello becomes SlotEvent::kHello for the child table; a
// child that offends too often is evicted (ChildTable::Evict); stats may
// make the table recycle a child (ChildTable::CheckRequestCount). Runs on
// the Watcher's loop thread.
#pragma once

#include <sys/types.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "core/frame_codec.h"
#include "core/status.h"
#include "watcher/pool_state.h"

namespace workerpool {

class ChildTable;

class ChildChannels {
 public:
  explicit ChildChannels(ChildTable* table) : table_(table) {}

  // Opens SLOT's channel on FD (taken over), for its newly spawned child.
  void Open(Slot* slot, int fd);
  // The child said hello (SlotEffect kGreet): config, heartbeat deadline,
  // and a link from every child that routes to its group.
  void Greet(Slot* slot);
  // Asks SLOT's child to finish its work and exit, and its senders to send
  // it nothing new. False when it cannot be asked (it never said hello, or
  // its channel is gone): then it must be signalled.
  bool Drain(Slot* slot);
  // SLOT's child is gone (or lost its channel): close the channel, drop its
  // routes and what it said.
  void Forget(Slot* slot);
  // Tells every sender to GROUP that the child HOW ended.
  void PeerGone(Slot* slot, const std::string& how);

  // After a reload: routes no longer allowed are revoked, routes refused
  // before and allowed now are opened.
  void ApplyRoutes();
  // After a reload changed GROUP's limits: its children and its senders
  // hear of them without a restart.
  void ApplyLimits(Group* group);

  // Requests refused by the routing rules, for status.
  std::uint64_t refused_requests() const { return refused_requests_; }

  // The pool has stopped: links still waiting for a connection are
  // dropped and the private directory of link sockets is removed.
  void CloseAll();

  // An in-place upgrade: SLOT's child, adopted with its channel open and
  // its conversation restored, is a subscriber of its routes again, and its
  // heartbeat deadline runs again when HEARTBEAT.
  // HEARTBEAT_LEFT: the deadline's remaining time when the old Watcher
  // handed it over; negative: a whole period.
  void Adopt(Slot* slot, bool heartbeat, Duration heartbeat_left);
  void AdoptRefusedRequests(std::uint64_t count) { refused_requests_ = count; }

 private:
  struct PendingLink;
  void OnFrame(Slot* slot, const FrameView& frame);
  void OnProtocolError(Slot* slot, const OffendingFrame& offence, bool log);
  void OnRouteOpen(Slot* sender, const std::string& target);
  void SendConfig(Slot* slot);
  void SendRouteOpened(Slot* sender, const GroupConfig& config);
  // FIRST: until the first deadline when not negative (an adopted child's
  // remaining time), else a whole period.
  void ArmHeartbeat(Slot* slot, Duration first = Duration(-1));
  // Links SENDER to SERVER. True when the link waits for a child to
  // connect to its path (links by connect) and HOLD_ROUTE asks for the
  // sender's route_opened to wait for it.
  bool LinkPeers(Slot* sender, Slot* server, bool hold_route);
  bool LinkByConnect(Slot* sender, Slot* server, bool hold_route);
  bool LinkListening(Slot* sender, Slot* server);
  void OnLinkAcceptable(PendingLink* link);
  void OnLinkTimeout(PendingLink* link);
  // The pending link is done (connected, given up, or one of its children
  // gone): the listener closes, its path is removed, a held route opens.
  void FinishLink(PendingLink* link);
  Result<std::string> LinkDirectoryFor(const Slot* child);
  void Broadcast(const std::string& group, wire::FrameType type,
                 const nlohmann::json& body);

  ChildTable* table_;
  // Target group -> children that opened a route to it.
  std::map<std::string, std::set<Slot*>> subscribers_;
  std::uint64_t refused_requests_ = 0;
  // Links by connect: those waiting for their child to connect, the
  // routes whose route_opened waits for them (sender -> group -> count),
  // and the private directory of their sockets (made when first needed).
  std::set<PendingLink*> pending_links_;
  std::map<Slot*, std::map<std::string, int>> held_routes_;
  std::string link_directory_;
  std::map<uid_t, std::string> link_directories_by_uid_;
  std::uint64_t link_paths_ = 0;
};

}  // namespace workerpool
