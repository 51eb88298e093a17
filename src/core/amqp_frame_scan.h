// How many whole deliveries a run of AMQP 0-9-1 bytes holds, read from the
// frame headers alone (no decoding: librabbitmq decodes).
//
// Why: the rabbitmq-service's loop thread reads deliveries itself when it
// can (children/amqp_session.cc, ReadDeliveries), but librabbitmq reads a
// delivery's content frames with no timeout: a delivery whose body is still
// on the wire would block the loop until it arrives. The loop therefore
// peeks at the socket first (recv MSG_PEEK) and lets librabbitmq read only
// as many deliveries as this scan found complete; anything else (a partial
// delivery, a publisher confirm, a channel close) is left to the AMQP
// thread, which may block.
//
// Frame layout (AMQP 0-9-1, section 4.2.3): type (1 byte), channel (2),
// payload size (4, big-endian), payload, frame end 0xCE. A delivery is a
// basic.deliver method frame (class 60, method 60), a content header frame
// (its payload starts with class (2), weight (2), body size (8)) and body
// frames whose sizes add up to the body size.
#pragma once

#include <cstddef>
#include <cstdint>

namespace workerpool {

struct AmqpDeliveryScan {
  // Whole deliveries on CHANNEL at the start of the bytes, in order.
  int deliveries = 0;
  // Bytes those deliveries (and heartbeats between them) take.
  std::size_t bytes = 0;
  // What ended the scan.
  enum class Stop {
    kEnd,        // the bytes end right after the last whole delivery
    kPartial,    // a delivery or frame is cut off by the end of the bytes
    kOther,      // a frame that is not part of a delivery on CHANNEL
    kMalformed,  // not what this scan follows (a bad frame end, a frame of
                 // another channel inside a delivery): librabbitmq decides
  };
  Stop stop = Stop::kEnd;
};

AmqpDeliveryScan ScanDeliveries(const unsigned char* data, std::size_t size,
                                std::uint16_t channel);

}  // namespace workerpool
