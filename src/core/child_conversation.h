// One child's pool channel as the Watcher keeps it: what the child has said
// (hello, its routes, its last stats) and what the Watcher should do with
// each frame it sends next. Pure: the Watcher's child protocol room
// (watcher/child_channels.h) executes the decisions; tests and the fuzz
// target drive it without processes.
//
// Contract: OnFrame never throws and accepts any frame in any order. A
// decision to kill names a pid of a live child in a group this child has an
// open route to, never the child itself; every refused frame is an offence,
// counted by the caller and logged once per kind per conversation.
#pragma once

#include <bitset>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "core/child_protocol.h"

namespace workerpool {

// Refused routes a conversation remembers (to log once and to open again
// when a reload allows them).
inline constexpr std::size_t kMaxRefusedRoutes = 64;

class ChildConversation {
 public:
  enum class Action {
    kNone,       // nothing to do (an offence, or a repeat)
    kHello,      // first hello: send config, link peers, mark up
    kHeartbeat,  // re-arm the heartbeat deadline
    kOpenRoute,  // check `group` against the routing rules and open it
    kKill,       // SIGKILL `pid` (a peer this child sends to)
    kStats,      // keep `stats` as the child's latest
  };

  struct Decision {
    Action action = Action::kNone;
    std::string group;     // kOpenRoute
    std::int64_t pid = 0;  // kKill
    std::string reason;    // kKill
    ChildStats stats;      // kStats
    // Set when the frame was refused; `log` is true the first time this
    // conversation commits an offence of that kind.
    std::optional<OffendingFrame> offence;
    bool log = false;
  };

  // The live child with a pid, as the Watcher's table of children knows it:
  // its group (nullptr when no live child has that pid) and a number unique
  // to that process among every child the Watcher ever started, so that a
  // pid reused by a new process is a new peer.
  struct Peer {
    const std::string* group = nullptr;
    std::uint64_t serial = 0;
  };
  using ChildGroupLookup = std::function<Peer(std::int64_t pid)>;

  explicit ChildConversation(std::int64_t own_pid) : own_pid_(own_pid) {}

  Decision OnFrame(wire::FrameType type, std::string_view body,
                   const ChildGroupLookup& group_of);

  bool said_hello() const { return said_hello_; }
  // How it takes its links, as its hello said (kPassed before hello).
  LinkMode links() const { return links_; }
  std::int64_t own_pid() const { return own_pid_; }

  // Routes: open ones (the child gets links to that group's children) and
  // refused ones (asked again for the child when a reload allows them).
  const std::set<std::string>& routes() const { return routes_; }
  const std::set<std::string>& refused_routes() const { return refused_; }
  void RouteOpened(const std::string& group);
  // True the first time GROUP is refused (to log it once); false too once
  // kMaxRefusedRoutes are remembered.
  bool RouteRefused(const std::string& group);
  // The route is no longer allowed (a reload): remembered as refused.
  void RouteRevoked(const std::string& group);
  // A refused route is about to be opened by the Watcher (a reload allows it).
  void ForgetRefusal(const std::string& group) { refused_.erase(group); }

  // Stats as last accepted (empty until the first).
  const ChildStats& stats() const;
  void KeepStats(ChildStats stats);

  std::uint64_t offences() const { return offences_; }
  // An offence the Watcher saw outside this child's channel (its link
  // connections): counted and logged like the others.
  Decision Offend(OffendingFrame offence) { return Refuse(std::move(offence)); }

  // The conversation as an in-place upgrade hands it over: what the child
  // said so far (core/upgrade_state.h). Kinds of offences already logged
  // are not handed over: the next Watcher logs each kind once more.
  void Restore(bool said_hello, LinkMode links, std::set<std::string> routes,
               std::set<std::string> refused, ChildStats stats,
               std::uint64_t offences) {
    said_hello_ = said_hello;
    links_ = links;
    routes_ = std::move(routes);
    refused_ = std::move(refused);
    offences_ = offences;
    if (!stats.counters.empty() || !stats.latency.empty() ||
        !stats.routes.empty() || !stats.app.empty()) {
      KeepStats(std::move(stats));
    }
  }

 private:
  Decision Refuse(OffendingFrame offence);

  std::int64_t own_pid_;
  bool said_hello_ = false;
  LinkMode links_ = LinkMode::kPassed;
  std::set<std::string> routes_;
  std::set<std::string> refused_;
  // Peers this child asked to kill, by serial (with their pid, to forget
  // them once gone): asked once, killed once.
  std::map<std::uint64_t, std::int64_t> killed_;
  // Allocated with the first stats frame: most children of a large idle
  // pool never send one, and the Watcher keeps a conversation per child.
  std::unique_ptr<ChildStats> stats_;
  std::bitset<kChildOffenceKinds> logged_;
  std::uint64_t offences_ = 0;
};

}  // namespace workerpool
