#include "core/amqp_frame_scan.h"

namespace workerpool {

namespace {

constexpr unsigned char kMethodFrame = 1;
constexpr unsigned char kHeaderFrame = 2;
constexpr unsigned char kBodyFrame = 3;
constexpr unsigned char kHeartbeatFrame = 8;
constexpr unsigned char kFrameEnd = 0xCE;
constexpr std::size_t kFrameOverhead = 8;  // 7-byte header + frame end
constexpr std::uint16_t kBasicClass = 60;
constexpr std::uint16_t kDeliverMethod = 60;

std::uint16_t Be16(const unsigned char* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}

std::uint32_t Be32(const unsigned char* p) {
  return (static_cast<std::uint32_t>(p[0]) << 24) |
         (static_cast<std::uint32_t>(p[1]) << 16) |
         (static_cast<std::uint32_t>(p[2]) << 8) | p[3];
}

std::uint64_t Be64(const unsigned char* p) {
  return (static_cast<std::uint64_t>(Be32(p)) << 32) | Be32(p + 4);
}

}  // namespace

AmqpDeliveryScan ScanDeliveries(const unsigned char* data, std::size_t size,
                                std::uint16_t channel) {
  using Stop = AmqpDeliveryScan::Stop;
  AmqpDeliveryScan scan;
  enum class Expect { kDeliver, kHeader, kBody } expect = Expect::kDeliver;
  std::uint64_t body_left = 0;
  std::size_t pos = 0;
  for (;;) {
    if (pos == size) {
      scan.stop = expect == Expect::kDeliver ? Stop::kEnd : Stop::kPartial;
      return scan;
    }
    if (size - pos < 7) {
      scan.stop = Stop::kPartial;
      return scan;
    }
    const unsigned char* frame = data + pos;
    const unsigned char type = frame[0];
    const std::uint16_t frame_channel = Be16(frame + 1);
    const std::uint32_t payload_size = Be32(frame + 3);
    if (size - pos < kFrameOverhead ||
        payload_size > size - pos - kFrameOverhead) {
      scan.stop = Stop::kPartial;
      return scan;
    }
    const unsigned char* payload = frame + 7;
    if (payload[payload_size] != kFrameEnd) {
      scan.stop = Stop::kMalformed;
      return scan;
    }
    const std::size_t next = pos + kFrameOverhead + payload_size;
    if (type == kHeartbeatFrame && expect == Expect::kDeliver) {
      pos = next;
      scan.bytes = pos;
      continue;
    }
    switch (expect) {
      case Expect::kDeliver:
        if (type != kMethodFrame || frame_channel != channel ||
            payload_size < 4 || Be16(payload) != kBasicClass ||
            Be16(payload + 2) != kDeliverMethod) {
          scan.stop = Stop::kOther;
          return scan;
        }
        expect = Expect::kHeader;
        break;
      case Expect::kHeader:
        // Between a deliver and its header only the header may come.
        if (type != kHeaderFrame || frame_channel != channel ||
            payload_size < 12) {
          scan.stop = Stop::kMalformed;
          return scan;
        }
        body_left = Be64(payload + 4);
        expect = body_left == 0 ? Expect::kDeliver : Expect::kBody;
        break;
      case Expect::kBody:
        if (type != kBodyFrame || frame_channel != channel ||
            payload_size > body_left) {
          scan.stop = Stop::kMalformed;
          return scan;
        }
        body_left -= payload_size;
        if (body_left == 0) expect = Expect::kDeliver;
        break;
    }
    pos = next;
    if (expect == Expect::kDeliver) {
      ++scan.deliveries;
      scan.bytes = pos;
    }
  }
}

}  // namespace workerpool
