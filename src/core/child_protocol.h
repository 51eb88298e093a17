// What a child says on its pool channel (docs/PROTOCOL.md, "The pool
// channel"), read without trusting it.
//
// A child is someone else's program, in any language: every frame it sends
// the Watcher is untrusted input, like a config file or a socket. This module
// turns one decoded control frame into a typed message, or into an offence
// that names what was wrong. It never throws (nlohmann's throwing accessors
// are not used on a child's JSON), never aborts and holds no state; what the
// Watcher then does with a message is decided by ChildConversation
// (core/child_conversation.h). Pure: no processes, no sockets.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "workerpool/wire.h"

namespace workerpool {

// The kinds of protocol error a child can commit. Each kind is logged once
// per child (a flood of one mistake is one line) and every offending frame is
// counted in its group's `protocol_errors`.
enum class ChildOffence : std::uint8_t {
  kBadBody,           // the body is not a JSON object
  kBadField,          // a field is missing, of the wrong type or out of range
  kBeforeHello,       // a frame other than hello before hello
  kRepeatedHello,     // hello after hello
  kRouteAlreadyOpen,  // route_open for a route it already has
  kKillRefused,       // kill_peer for a pid it does not send to
  kUnknownFrame,      // a frame type children do not send on the pool channel
  kTooLarge,          // a stats body over kMaxStatsBytes, or too many keys
  kLinkRefused,       // a connection to a link path that was not its own (pid)
  kLinkTimeout,       // never connected to the link path it was given
};
inline constexpr int kChildOffenceKinds = 10;

// "bad-body", "bad-field", ...: a stable name for logs and tests.
const char* OffenceName(ChildOffence offence);

// Bounds on what the Watcher keeps of a child's stats: a child cannot make
// the Watcher hold more than this per child.
inline constexpr std::size_t kMaxStatsBytes = 64 * 1024;
inline constexpr std::size_t kMaxStatsCounters = 64;
inline constexpr std::size_t kMaxLatencyTargets = 64;
inline constexpr std::size_t kMaxLatencyBuckets = 64;
inline constexpr std::size_t kMaxNameBytes = 255;

// One sender's request latency histogram towards one target group.
struct LatencyHistogram {
  std::vector<std::uint64_t> bounds_ms;  // upper bounds, ascending
  std::vector<std::uint64_t> counts;     // bounds_ms.size() + 1 (last: +Inf)
  std::uint64_t sum_ms = 0;
};

// A sender's requests towards one target group, as it last reported them.
struct RouteLoad {
  std::uint64_t queued = 0;    // held for lack of a free process there
  std::uint64_t inflight = 0;  // sent, not answered yet
};

// A child's last stats frame, every field checked. Counters are the
// unsigned-integer members (served, served_errors, inflight, queued,
// serving, sent, ...); the other members are "latency", "routes" and "app".
struct ChildStats {
  std::map<std::string, std::uint64_t, std::less<>> counters;
  std::map<std::string, LatencyHistogram, std::less<>> latency;  // by target
  std::map<std::string, RouteLoad, std::less<>> routes;          // by target
  // The application's own: an object once the child sent one, null before
  // (null allocates nothing: a slot per child keeps one of these).
  nlohmann::json app;
  // 0 when the child did not report it.
  std::uint64_t Counter(std::string_view name) const;
};

// How a child takes its links (docs/PROTOCOL.md, "Links by connect").
enum class LinkMode : std::uint8_t {
  kPassed,   // "fd" (the default): socketpair ends by SCM_RIGHTS
  kConnect,  // "connect": a Unix socket path per link, to connect to
};

struct HelloMessage {
  LinkMode links = LinkMode::kPassed;
};
struct HeartbeatMessage {};
struct RouteOpenMessage {
  std::string group;
};
struct KillPeerMessage {
  std::int64_t pid =
      0;  // > 1; whether the sender may kill it is not known here
  std::string reason;
};
struct StatsMessage {
  ChildStats stats;
};
struct OffendingFrame {
  ChildOffence offence = ChildOffence::kBadBody;
  std::string detail;  // one line: what was wrong, for the log
};

using ChildMessage =
    std::variant<HelloMessage, HeartbeatMessage, RouteOpenMessage,
                 KillPeerMessage, StatsMessage, OffendingFrame>;

// Reads one control frame of TYPE with BODY (the frame's payload) from a
// child. Never throws; anything unexpected is an OffendingFrame.
ChildMessage ReadChildFrame(wire::FrameType type, std::string_view body);

}  // namespace workerpool
