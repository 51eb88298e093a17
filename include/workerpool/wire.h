// workerpool wire format: every constant of docs/PROTOCOL.md in one place.
//
// A frame is a fixed 24-byte header, little-endian, then `payload_length`
// bytes of payload. The payload starts with `meta_length` bytes of metadata
// (a JSON object, or nothing) followed by the body (opaque bytes).
//
//   offset size field
//   0      4    payload_length   bytes after the header, <= kMaxPayload
//   4      1    version          kWireVersion
//   5      1    type             FrameType
//   6      2    flags            FrameFlag bits
//   8      8    id               request id (data frames), 0 otherwise
//   16     4    aux              per type: priority, error code, progress
//   20     4    meta_length      <= payload_length
#pragma once

#include <cstddef>
#include <cstdint>

namespace workerpool::wire {

inline constexpr std::uint8_t kWireVersion = 1;
inline constexpr std::size_t kHeaderSize = 24;
// Largest payload one frame may carry; a bigger frame is a protocol error.
inline constexpr std::uint32_t kMaxPayload = 16u * 1024 * 1024;

enum class FrameType : std::uint8_t {
  // Data frames, on a link between a sender and a serving child.
  kRequest = 1,   // sender -> server; aux = priority (lower first)
  kReply = 2,     // server -> sender; success, body is the answer
  kError = 3,     // server -> sender (or library-made); aux = ErrorCode
  kProgress = 4,  // server -> sender; aux = fraction in millionths
  kCancel = 5,    // sender -> server; id = the request to cancel

  // Control frames, on the pool channel (WORKERPOOL_IPC_FD); the body is a
  // JSON object (meta_length 0). See docs/PROTOCOL.md for the fields.
  kHello = 16,         // child -> pool: {"pid", "protocol"}
  kRouteOpen = 17,     // child -> pool: {"group"}: links to that group
  kRouteRefused = 18,  // pool -> child: {"group", "error"}
  kPeerAdded = 19,     // pool -> child, with one fd (SCM_RIGHTS): a link
  kPeerGone = 20,      // pool -> sender: {"group","index","pid","how"}
  kPeerDraining = 21,  // pool -> sender: stop sending to that peer
  kKillPeer = 22,      // sender -> pool: {"pid","reason"} (timeout, cancel)
  kHeartbeat = 23,     // child -> pool: {} (when heartbeat_timeout is set)
  kStats = 24,         // child -> pool: counters, at most once a second
  kDrain = 25,         // pool -> child: finish what you have, take no more
  kConfig = 26,        // pool -> child: {"heartbeat_ms", ...} after hello
  kRouteOpened = 27,   // pool -> child: {"group", limits}: after its peers
};

enum FrameFlag : std::uint16_t {
  kFlagNone = 0,
};

// Error codes carried in aux of kError frames.
enum class ErrorCode : std::uint32_t {
  kHandlerError = 1,   // the handler answered with an error
  kWorkerDied = 2,     // the serving process died with the request
  kTimeout = 3,        // request_timeout passed; the server was killed
  kQueueFull = 4,      // queue_limit reached
  kNoWorkers = 5,      // the group has no live process
  kRefused = 6,        // the routing rules or routes_to forbid it
  kCancelled = 7,      // the sender cancelled it
  kTooLarge = 8,       // over kMaxPayload
  kProtocol = 9,       // a malformed frame
  kShuttingDown = 10,  // the pool or the process is stopping
};

inline constexpr std::uint32_t kProgressScale = 1000000;

// kConfig's "busy_poll_us" (groups[].busy_poll_us): how long a child reads a
// busy link without blocking before its loop sleeps; 0: never. A child
// takes at most kMaxBusyPollUs, and kDefaultBusyPollUs when not told.
inline constexpr int kDefaultBusyPollUs = 50;
inline constexpr int kMaxBusyPollUs = 10 * 1000;

}  // namespace workerpool::wire
