// The Watcher's reading of a child's pool channel: every frame type with
// wrong JSON types, missing fields, non-object bodies, huge and negative
// numbers, frames out of order and floods; no frame may throw, and a kill
// is only ever decided for a peer the child sends to.
#include "core/child_conversation.h"

#include <doctest/doctest.h>

#include <map>
#include <string>

#include "core/child_protocol.h"

namespace workerpool {
namespace {

using Action = ChildConversation::Action;
using wire::FrameType;

// pid -> group of the live children the tests pretend exist.
struct FakeChildren {
  std::map<std::int64_t, std::string> groups{
      {100, "web"}, {200, "echo"}, {201, "echo"}, {300, "other"}};
  // Spawn serials; a pid given to a new process gets a new one.
  std::map<std::int64_t, std::uint64_t> serials{
      {100, 1}, {200, 2}, {201, 3}, {300, 4}};
  ChildConversation::ChildGroupLookup Lookup() {
    return [this](std::int64_t pid) -> ChildConversation::Peer {
      auto found = groups.find(pid);
      if (found == groups.end()) return {};
      return {&found->second, serials[pid]};
    };
  }
};

ChildConversation Greeted(FakeChildren& children) {
  ChildConversation conversation(100);
  CHECK(
      conversation.OnFrame(FrameType::kHello, "{}", children.Lookup()).action ==
      Action::kHello);
  return conversation;
}

ChildOffence OffenceOf(const ChildConversation::Decision& decision) {
  REQUIRE(decision.offence.has_value());
  CHECK(decision.action == Action::kNone);
  return decision.offence->offence;
}

TEST_CASE("child protocol: kill_peer with wrong types is an offence") {
  for (const char* body :
       {R"({"pid": "x"})", R"({"pid": -5})", R"({"pid": 0})", R"({"pid": 1})",
        R"({"pid": 1.5})", R"({"pid": null})", R"({})",
        R"({"pid": 18446744073709551615})", R"({"pid": 4294967296})",
        R"({"pid": 200, "reason": 7})", R"([200])", R"("pid")", "{", "\xff",
        R"({"pid": true})"}) {
    CAPTURE(body);
    ChildMessage message = ReadChildFrame(FrameType::kKillPeer, body);
    REQUIRE(std::holds_alternative<OffendingFrame>(message));
  }
  ChildMessage good =
      ReadChildFrame(FrameType::kKillPeer, R"({"pid": 200, "reason": "slow"})");
  REQUIRE(std::holds_alternative<KillPeerMessage>(good));
  CHECK(std::get<KillPeerMessage>(good).pid == 200);
  CHECK(std::get<KillPeerMessage>(good).reason == "slow");
}

TEST_CASE("child protocol: stats with wrong types is an offence") {
  for (const char* body :
       {R"({"served": "x"})", R"({"served": -1})", R"({"served": 1.5})",
        R"({"served_errors": null})", R"({"latency": 3})",
        R"({"latency": {"echo": {"bounds_ms": [1], "counts": [1]}}})",
        R"({"latency": {"echo": {"bounds_ms": [2, 1], "counts": [1, 2, 3]}}})",
        R"({"latency": {"echo": {"bounds_ms": ["a"], "counts": [1, 2]}}})",
        R"({"app": []})", R"({"app": "text"})", R"([1, 2])", "17", "nul",
        R"({"routes": 1})", R"({"routes": {"echo": 1}})",
        R"({"routes": {"echo": {"queued": -1}}})",
        R"({"routes": {"echo": {"inflight": "x"}}})"}) {
    CAPTURE(body);
    ChildMessage message = ReadChildFrame(FrameType::kStats, body);
    REQUIRE(std::holds_alternative<OffendingFrame>(message));
  }
  ChildMessage good = ReadChildFrame(
      FrameType::kStats,
      R"({"served": 18446744073709551615, "inflight": 2, "app": {"k": [1]},
          "routes": {"echo": {"queued": 7, "inflight": 3}},
          "latency": {"echo": {"bounds_ms": [1, 5], "counts": [1, 2, 3],
                               "sum_ms": 9}}})");
  REQUIRE(std::holds_alternative<StatsMessage>(good));
  const ChildStats& stats = std::get<StatsMessage>(good).stats;
  CHECK(stats.Counter("served") == 18446744073709551615ull);
  CHECK(stats.Counter("inflight") == 2);
  CHECK(stats.Counter("absent") == 0);
  CHECK(stats.latency.at("echo").counts.size() == 3);
  CHECK(stats.app["k"][0] == 1);
  CHECK(stats.routes.at("echo").queued == 7);
  CHECK(stats.routes.at("echo").inflight == 3);
}

TEST_CASE("child protocol: oversized and deeply nested stats are refused") {
  std::string huge =
      R"({"app": {"x": ")" + std::string(kMaxStatsBytes, 'a') + "\"}}";
  ChildMessage message = ReadChildFrame(FrameType::kStats, huge);
  REQUIRE(std::holds_alternative<OffendingFrame>(message));
  CHECK(std::get<OffendingFrame>(message).offence == ChildOffence::kTooLarge);

  std::string deep =
      R"({"app": )" + std::string(5000, '[') + std::string(5000, ']') + "}";
  CHECK(std::holds_alternative<OffendingFrame>(
      ReadChildFrame(FrameType::kStats, deep)));

  std::string many = "{";
  for (size_t i = 0; i <= kMaxStatsCounters; ++i) {
    many += (i ? "," : "") + std::string("\"c") + std::to_string(i) + "\": 1";
  }
  many += "}";
  CHECK(std::get<OffendingFrame>(ReadChildFrame(FrameType::kStats, many))
            .offence == ChildOffence::kTooLarge);
}

TEST_CASE("child protocol: route_open needs a group name") {
  for (const char* body : {R"({})", R"({"group": 5})", R"({"group": ""})",
                           R"({"group": "a\nb"})", R"([])", "x"}) {
    CAPTURE(body);
    CHECK(std::holds_alternative<OffendingFrame>(
        ReadChildFrame(FrameType::kRouteOpen, body)));
  }
  CHECK(std::get<RouteOpenMessage>(
            ReadChildFrame(FrameType::kRouteOpen, R"({"group": "echo"})"))
            .group == "echo");
}

TEST_CASE("child protocol: frame types children do not send") {
  for (FrameType type :
       {FrameType::kRequest, FrameType::kReply, FrameType::kRouteRefused,
        FrameType::kPeerAdded, FrameType::kDrain, FrameType::kConfig,
        static_cast<FrameType>(0), static_cast<FrameType>(255)}) {
    ChildMessage message = ReadChildFrame(type, "{}");
    REQUIRE(std::holds_alternative<OffendingFrame>(message));
    CHECK(std::get<OffendingFrame>(message).offence ==
          ChildOffence::kUnknownFrame);
  }
}

TEST_CASE("conversation: frames before hello are refused") {
  FakeChildren children;
  ChildConversation conversation(100);
  for (FrameType type : {FrameType::kRouteOpen, FrameType::kStats,
                         FrameType::kKillPeer, FrameType::kHeartbeat}) {
    auto decision = conversation.OnFrame(
        type, R"({"group": "echo", "pid": 200})", children.Lookup());
    CHECK(OffenceOf(decision) == ChildOffence::kBeforeHello);
  }
  CHECK_FALSE(conversation.said_hello());
  CHECK(conversation.offences() == 4);
}

TEST_CASE("conversation: each kind of offence is logged once") {
  FakeChildren children;
  ChildConversation conversation = Greeted(children);
  auto first = conversation.OnFrame(FrameType::kKillPeer, R"({"pid": "x"})",
                                    children.Lookup());
  CHECK(OffenceOf(first) == ChildOffence::kBadField);
  CHECK(first.log);
  for (int i = 0; i < 100; ++i) {
    auto again = conversation.OnFrame(FrameType::kStats, R"({"served": "x"})",
                                      children.Lookup());
    CHECK(OffenceOf(again) == ChildOffence::kBadField);
    CHECK_FALSE(again.log);
  }
  auto hello = conversation.OnFrame(FrameType::kHello, "", children.Lookup());
  CHECK(OffenceOf(hello) == ChildOffence::kRepeatedHello);
  CHECK(hello.log);
  CHECK(conversation.offences() == 102);
}

TEST_CASE("conversation: a route is opened once") {
  FakeChildren children;
  ChildConversation conversation = Greeted(children);
  auto open = conversation.OnFrame(FrameType::kRouteOpen,
                                   R"({"group": "echo"})", children.Lookup());
  CHECK(open.action == Action::kOpenRoute);
  CHECK(open.group == "echo");
  conversation.RouteOpened("echo");
  auto again = conversation.OnFrame(FrameType::kRouteOpen,
                                    R"({"group": "echo"})", children.Lookup());
  CHECK(OffenceOf(again) == ChildOffence::kRouteAlreadyOpen);
  // Refused routes may be asked again (the client retries on a new send).
  CHECK(conversation.RouteRefused("other"));
  CHECK_FALSE(conversation.RouteRefused("other"));
  CHECK(conversation
            .OnFrame(FrameType::kRouteOpen, R"({"group": "other"})",
                     children.Lookup())
            .action == Action::kOpenRoute);
  for (int i = 0; i < 1000; ++i)
    conversation.RouteRefused("x" + std::to_string(i));
  CHECK(conversation.refused_routes().size() == kMaxRefusedRoutes);
  conversation.RouteRevoked("echo");
  CHECK(conversation.routes().empty());
  CHECK(conversation.refused_routes().count("echo") == 1);
}

TEST_CASE("conversation: kill_peer only for peers it sends to") {
  FakeChildren children;
  ChildConversation conversation = Greeted(children);
  conversation.RouteOpened("echo");
  // Itself, the Watcher (not a child), pid 1, a child of a group it does not
  // route to, a pid that is no child at all.
  for (const char* body : {R"({"pid": 100})", R"({"pid": 300})",
                           R"({"pid": 2})", R"({"pid": 99999})"}) {
    CAPTURE(body);
    CHECK(OffenceOf(conversation.OnFrame(FrameType::kKillPeer, body,
                                         children.Lookup())) ==
          ChildOffence::kKillRefused);
  }
  auto kill = conversation.OnFrame(FrameType::kKillPeer,
                                   R"({"pid": 200, "reason": "timeout"})",
                                   children.Lookup());
  CHECK(kill.action == Action::kKill);
  CHECK(kill.pid == 200);
  CHECK(kill.reason == "timeout");
  // A flood for the same peer is one kill, and no offence.
  auto repeat = conversation.OnFrame(FrameType::kKillPeer, R"({"pid": 200})",
                                     children.Lookup());
  CHECK(repeat.action == Action::kNone);
  CHECK_FALSE(repeat.offence.has_value());
  // Once that child is gone its pid may be reused by a new peer.
  children.groups.erase(200);
  CHECK(conversation
            .OnFrame(FrameType::kKillPeer, R"({"pid": 201})", children.Lookup())
            .action == Action::kKill);
  children.groups[200] = "echo";
  children.serials[200] = 9;
  CHECK(conversation
            .OnFrame(FrameType::kKillPeer, R"({"pid": 200})", children.Lookup())
            .action == Action::kKill);
}

// Found by fuzz_child_protocol: a peer killed, gone, and its pid given to a
// new peer before the sender asked again; the new one must be killable.
TEST_CASE("conversation: a pid reused at once is a new peer") {
  FakeChildren children;
  ChildConversation conversation = Greeted(children);
  conversation.RouteOpened("echo");
  CHECK(conversation
            .OnFrame(FrameType::kKillPeer, R"({"pid": 200})", children.Lookup())
            .action == Action::kKill);
  children.serials[200] = 10;  // died; a new echo child got pid 200
  CHECK(conversation
            .OnFrame(FrameType::kKillPeer, R"({"pid": 200})", children.Lookup())
            .action == Action::kKill);
}

// Found by fuzz_child_protocol: the detail of an offence is logged, and a
// child's bytes quoted in it must not break the log line.
TEST_CASE("child protocol: an offence's detail holds no control bytes") {
  const std::string body = nlohmann::json{{"a\nb\x1b[31m", "x"}}.dump();
  ChildMessage message = ReadChildFrame(FrameType::kStats, body);
  REQUIRE(std::holds_alternative<OffendingFrame>(message));
  const std::string& detail = std::get<OffendingFrame>(message).detail;
  CHECK(detail.find('\n') == std::string::npos);
  CHECK(detail.find('\x1b') == std::string::npos);
  CAPTURE(detail);
  CHECK(detail.find("a?b?[31m") != std::string::npos);
}

TEST_CASE("conversation: stats and heartbeats after hello") {
  FakeChildren children;
  ChildConversation conversation = Greeted(children);
  CHECK(conversation.OnFrame(FrameType::kHeartbeat, "", children.Lookup())
            .action == Action::kHeartbeat);
  auto stats = conversation.OnFrame(FrameType::kStats, R"({"served": 3})",
                                    children.Lookup());
  REQUIRE(stats.action == Action::kStats);
  conversation.KeepStats(std::move(stats.stats));
  CHECK(conversation.stats().Counter("served") == 3);
  // A refused stats frame leaves the last good one in place.
  conversation.OnFrame(FrameType::kStats, R"({"served": -3})",
                       children.Lookup());
  CHECK(conversation.stats().Counter("served") == 3);
}

}  // namespace
}  // namespace workerpool

namespace workerpool {
namespace {

TEST_CASE("hello: links by fd or by connect; anything else is refused") {
  FakeChildren children;
  struct Case {
    const char* body;
    LinkMode links;
  };
  for (const Case& c :
       {Case{"", LinkMode::kPassed}, Case{"{}", LinkMode::kPassed},
        Case{"not json", LinkMode::kPassed}, Case{R"([1])", LinkMode::kPassed},
        Case{R"({"links": "fd"})", LinkMode::kPassed},
        Case{R"({"pid": 5, "protocol": 1, "links": "connect"})",
             LinkMode::kConnect}}) {
    CAPTURE(c.body);
    ChildConversation conversation(100);
    auto hello =
        conversation.OnFrame(FrameType::kHello, c.body, children.Lookup());
    CHECK(hello.action == Action::kHello);
    CHECK(conversation.said_hello());
    CHECK(conversation.links() == c.links);
  }
  for (const char* body :
       {R"({"links": "Connect"})", R"({"links": 1})", R"({"links": null})",
        R"({"links": ["connect"]})", R"({"links": {"connect": true}})",
        R"({"links": ""})", R"({"links": "connect\u0000"})",
        R"({"links": "fd,connect"})"}) {
    CAPTURE(body);
    ChildConversation conversation(100);
    auto hello =
        conversation.OnFrame(FrameType::kHello, body, children.Lookup());
    CHECK(OffenceOf(hello) == ChildOffence::kBadField);
    CHECK(hello.log);
    CHECK(hello.offence->detail.find("\"links\"") != std::string::npos);
    // Not ready: no routes, no links until a correct hello.
    CHECK_FALSE(conversation.said_hello());
    auto route = conversation.OnFrame(
        FrameType::kRouteOpen, R"({"group": "echo"})", children.Lookup());
    CHECK(OffenceOf(route) == ChildOffence::kBeforeHello);
    auto again = conversation.OnFrame(
        FrameType::kHello, R"({"links": "connect"})", children.Lookup());
    CHECK(again.action == Action::kHello);
    CHECK(conversation.links() == LinkMode::kConnect);
    CHECK(conversation.offences() == 2);
  }
}

TEST_CASE("conversation: link offences are counted and logged once per kind") {
  FakeChildren children;
  ChildConversation conversation = Greeted(children);
  auto first = conversation.Offend({ChildOffence::kLinkRefused, "wrong pid"});
  CHECK(first.log);
  CHECK_FALSE(
      conversation.Offend({ChildOffence::kLinkRefused, "wrong pid"}).log);
  CHECK(conversation.Offend({ChildOffence::kLinkTimeout, "late"}).log);
  CHECK(conversation.offences() == 3);
  CHECK(std::string(OffenceName(ChildOffence::kLinkRefused)) == "link-refused");
  CHECK(std::string(OffenceName(ChildOffence::kLinkTimeout)) == "link-timeout");
}

}  // namespace
}  // namespace workerpool
