#include "core/child_protocol.h"

#include <limits>

namespace workerpool {
namespace {

using nlohmann::json;

// Bodies of hello, route_open and kill_peer are a few dozen bytes.
constexpr std::size_t kMaxSmallBodyBytes = 4096;
// "app" is shown as given; deeper nesting than this is refused so that
// printing it cannot recurse without bound.
constexpr int kMaxAppDepth = 16;

// The detail is logged: whatever of the child's bytes it quotes must not
// start a line of its own or reach a terminal as a control sequence.
OffendingFrame Offence(ChildOffence offence, std::string detail) {
  for (char& c : detail) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) c = '?';
  }
  return OffendingFrame{offence, std::move(detail)};
}

// Parses BODY as a JSON object; an empty body is an empty object.
bool ParseObject(std::string_view body, json* out) {
  if (body.empty()) {
    *out = json::object();
    return true;
  }
  *out = json::parse(body, nullptr, /*allow_exceptions=*/false);
  return out->is_object();
}

const json* Find(const json& object, std::string_view key) {
  auto found = object.find(key);
  return found == object.end() ? nullptr : &*found;
}

bool ReadUnsigned(const json& value, std::uint64_t* out) {
  if (!value.is_number_unsigned()) return false;
  *out = value.get_ref<const json::number_unsigned_t&>();
  return true;
}

bool DepthAtMost(const json& value, int depth) {
  if (!value.is_structured()) return true;
  if (depth == 0) return false;
  for (const json& member : value) {
    if (!DepthAtMost(member, depth - 1)) return false;
  }
  return true;
}

// A group name as the config allows it: printable, short.
bool ReadName(const json& value, std::string* out) {
  if (!value.is_string()) return false;
  const std::string& text = value.get_ref<const std::string&>();
  if (text.empty() || text.size() > kMaxNameBytes) return false;
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  *out = text;
  return true;
}

// hello's fields are informative (pid, protocol), except "links": a child
// that asks for links by connect cannot receive fds, so a value the Watcher
// does not know is refused rather than guessed (the child is not ready until
// it says hello again, correctly).
ChildMessage ReadHello(std::string_view body) {
  HelloMessage message;
  json object;
  // A body that is not a JSON object was accepted before "links" existed:
  // such a child takes fds.
  if (body.size() > kMaxSmallBodyBytes || !ParseObject(body, &object)) {
    return message;
  }
  const json* links = Find(object, "links");
  if (links == nullptr) return message;
  if (links->is_string() && links->get_ref<const std::string&>() == "fd") {
    return message;
  }
  if (links->is_string() && links->get_ref<const std::string&>() == "connect") {
    message.links = LinkMode::kConnect;
    return message;
  }
  return Offence(ChildOffence::kBadField,
                 "hello: \"links\" must be \"fd\" or \"connect\", not " +
                     links->dump().substr(0, 64));
}

ChildMessage ReadRouteOpen(std::string_view body) {
  json object;
  if (body.size() > kMaxSmallBodyBytes || !ParseObject(body, &object)) {
    return Offence(ChildOffence::kBadBody,
                   "route_open: body is not a JSON object");
  }
  RouteOpenMessage message;
  const json* group = Find(object, "group");
  if (group == nullptr || !ReadName(*group, &message.group)) {
    return Offence(ChildOffence::kBadField,
                   "route_open: \"group\" must be a group name");
  }
  return message;
}

ChildMessage ReadKillPeer(std::string_view body) {
  json object;
  if (body.size() > kMaxSmallBodyBytes || !ParseObject(body, &object)) {
    return Offence(ChildOffence::kBadBody,
                   "kill_peer: body is not a JSON object");
  }
  KillPeerMessage message;
  const json* pid = Find(object, "pid");
  std::uint64_t number = 0;
  // Never 0, -1 or 1: kill(2) would read those as "my group", "everyone"
  // and init.
  if (pid == nullptr || !ReadUnsigned(*pid, &number) || number < 2 ||
      number > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
    return Offence(ChildOffence::kBadField,
                   "kill_peer: \"pid\" must be a process id");
  }
  message.pid = static_cast<std::int64_t>(number);
  message.reason = "no reason given";
  if (const json* reason = Find(object, "reason")) {
    if (!reason->is_string()) {
      return Offence(ChildOffence::kBadField,
                     "kill_peer: \"reason\" must be a string");
    }
    // Logged with the kill: one line, whatever the child wrote.
    message.reason = reason->get_ref<const std::string&>().substr(0, 200);
    for (char& c : message.reason) {
      const auto byte = static_cast<unsigned char>(c);
      if (byte < 0x20 || byte == 0x7f) c = '?';
    }
  }
  return message;
}

bool ReadHistogram(const json& value, LatencyHistogram* out) {
  if (!value.is_object()) return false;
  const json* bounds = Find(value, "bounds_ms");
  const json* counts = Find(value, "counts");
  const json* sum = Find(value, "sum_ms");
  if (bounds == nullptr || counts == nullptr || !bounds->is_array() ||
      !counts->is_array() || bounds->size() > kMaxLatencyBuckets ||
      counts->size() != bounds->size() + 1) {
    return false;
  }
  for (const json& bound : *bounds) {
    std::uint64_t number = 0;
    if (!ReadUnsigned(bound, &number)) return false;
    if (!out->bounds_ms.empty() && number <= out->bounds_ms.back())
      return false;
    out->bounds_ms.push_back(number);
  }
  for (const json& count : *counts) {
    std::uint64_t number = 0;
    if (!ReadUnsigned(count, &number)) return false;
    out->counts.push_back(number);
  }
  if (sum != nullptr && !ReadUnsigned(*sum, &out->sum_ms)) return false;
  return true;
}

ChildMessage ReadStats(std::string_view body) {
  if (body.size() > kMaxStatsBytes) {
    return Offence(ChildOffence::kTooLarge,
                   "stats: body of " + std::to_string(body.size()) +
                       " bytes (at most " + std::to_string(kMaxStatsBytes) +
                       ")");
  }
  json object;
  if (!ParseObject(body, &object)) {
    return Offence(ChildOffence::kBadBody, "stats: body is not a JSON object");
  }
  StatsMessage message;
  ChildStats& stats = message.stats;
  for (auto& [key, value] : object.items()) {
    if (key == "latency") {
      if (!value.is_object() || value.size() > kMaxLatencyTargets) {
        return Offence(ChildOffence::kBadField,
                       "stats: \"latency\" must be an object of histograms");
      }
      for (auto& [target, histogram] : value.items()) {
        LatencyHistogram read;
        if (target.empty() || target.size() > kMaxNameBytes ||
            !ReadHistogram(histogram, &read)) {
          return Offence(ChildOffence::kBadField,
                         "stats: \"latency\" must map group names to "
                         "{bounds_ms, counts, sum_ms} of unsigned integers");
        }
        stats.latency.emplace(target, std::move(read));
      }
    } else if (key == "routes") {
      if (!value.is_object() || value.size() > kMaxLatencyTargets) {
        return Offence(ChildOffence::kBadField,
                       "stats: \"routes\" must be an object of routes");
      }
      for (auto& [target, route] : value.items()) {
        RouteLoad read;
        const json* queued =
            route.is_object() ? Find(route, "queued") : nullptr;
        const json* inflight =
            route.is_object() ? Find(route, "inflight") : nullptr;
        if (target.empty() || target.size() > kMaxNameBytes ||
            !route.is_object() ||
            (queued != nullptr && !ReadUnsigned(*queued, &read.queued)) ||
            (inflight != nullptr && !ReadUnsigned(*inflight, &read.inflight))) {
          return Offence(ChildOffence::kBadField,
                         "stats: \"routes\" must map group names to "
                         "{queued, inflight} of unsigned integers");
        }
        stats.routes.emplace(target, read);
      }
    } else if (key == "app") {
      if (!value.is_object() || !DepthAtMost(value, kMaxAppDepth)) {
        return Offence(ChildOffence::kBadField,
                       "stats: \"app\" must be a JSON object");
      }
      stats.app = value;
    } else {
      std::uint64_t number = 0;
      if (!ReadUnsigned(value, &number)) {
        return Offence(
            ChildOffence::kBadField,
            "stats: \"" + key.substr(0, 64) + "\" must be an unsigned integer");
      }
      if (stats.counters.size() == kMaxStatsCounters) {
        return Offence(ChildOffence::kTooLarge,
                       "stats: more than " + std::to_string(kMaxStatsCounters) +
                           " counters");
      }
      if (key.empty() || key.size() > 64) {
        return Offence(ChildOffence::kBadField,
                       "stats: a counter name must be 1 to 64 bytes");
      }
      stats.counters.emplace(key, number);
    }
  }
  return message;
}

}  // namespace

const char* OffenceName(ChildOffence offence) {
  switch (offence) {
    case ChildOffence::kBadBody:
      return "bad-body";
    case ChildOffence::kBadField:
      return "bad-field";
    case ChildOffence::kBeforeHello:
      return "before-hello";
    case ChildOffence::kRepeatedHello:
      return "repeated-hello";
    case ChildOffence::kRouteAlreadyOpen:
      return "route-already-open";
    case ChildOffence::kKillRefused:
      return "kill-refused";
    case ChildOffence::kUnknownFrame:
      return "unknown-frame";
    case ChildOffence::kTooLarge:
      return "too-large";
    case ChildOffence::kLinkRefused:
      return "link-refused";
    case ChildOffence::kLinkTimeout:
      return "link-timeout";
  }
  return "unknown";
}

std::uint64_t ChildStats::Counter(std::string_view name) const {
  auto found = counters.find(name);
  return found == counters.end() ? 0 : found->second;
}

ChildMessage ReadChildFrame(wire::FrameType type, std::string_view body) {
  switch (type) {
    case wire::FrameType::kHello:
      return ReadHello(body);
    case wire::FrameType::kHeartbeat:
      return HeartbeatMessage{};
    case wire::FrameType::kRouteOpen:
      return ReadRouteOpen(body);
    case wire::FrameType::kKillPeer:
      return ReadKillPeer(body);
    case wire::FrameType::kStats:
      return ReadStats(body);
    default:
      return Offence(ChildOffence::kUnknownFrame,
                     "frame type " + std::to_string(static_cast<int>(type)) +
                         " is not one a child sends on its pool channel");
  }
}

}  // namespace workerpool
