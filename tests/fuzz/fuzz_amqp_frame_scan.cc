// Fuzzes the AMQP delivery scanner (src/core/amqp_frame_scan.h), which reads
// bytes peeked from the broker's socket before librabbitmq sees them. The
// first two input bytes pick the channel; the rest is the socket's bytes.
// Besides not crashing, the scan must stay inside the bytes, and cutting the
// bytes after the deliveries it found must find the same deliveries again:
// the loop thread lets librabbitmq read exactly that many.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/amqp_frame_scan.h"
#include "fuzz_check.h"

using workerpool::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  using workerpool::AmqpDeliveryScan;
  using workerpool::ScanDeliveries;
  if (size < 2) return 0;
  const auto channel = static_cast<std::uint16_t>(data[0] << 8 | data[1]);
  const std::uint8_t* bytes = data + 2;
  const std::size_t length = size - 2;
  AmqpDeliveryScan scan = ScanDeliveries(bytes, length, channel);
  Check(scan.deliveries >= 0);
  Check(scan.bytes <= length);
  Check(scan.deliveries == 0 || scan.bytes > 0);
  if (scan.deliveries > 0) {
    AmqpDeliveryScan again = ScanDeliveries(bytes, scan.bytes, channel);
    Check(again.deliveries == scan.deliveries);
    Check(again.bytes == scan.bytes);
  }
  // Fewer bytes never hold more whole deliveries.
  if (length > 0) {
    AmqpDeliveryScan shorter = ScanDeliveries(bytes, length / 2, channel);
    Check(shorter.deliveries <= scan.deliveries);
  }
  return 0;
}
