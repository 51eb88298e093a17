#include "core/amqp_frame_scan.h"

#include <amqp.h>
#include <amqp_framing.h>
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace workerpool {
namespace {

using Bytes = std::vector<unsigned char>;
using Stop = AmqpDeliveryScan::Stop;

constexpr std::uint16_t kChannel = 1;

void AppendFrame(Bytes* out, unsigned char type, std::uint16_t channel,
                 const Bytes& payload) {
  out->push_back(type);
  out->push_back(static_cast<unsigned char>(channel >> 8));
  out->push_back(static_cast<unsigned char>(channel));
  const auto size = static_cast<std::uint32_t>(payload.size());
  for (int shift = 24; shift >= 0; shift -= 8) {
    out->push_back(static_cast<unsigned char>(size >> shift));
  }
  out->insert(out->end(), payload.begin(), payload.end());
  out->push_back(0xCE);
}

// A method frame's payload as librabbitmq encodes it.
Bytes EncodeMethod(amqp_method_number_t method, void* decoded) {
  unsigned char buffer[512];
  amqp_bytes_t encoded{sizeof(buffer) - 4, buffer + 4};
  int size = amqp_encode_method(method, decoded, encoded);
  REQUIRE(size >= 0);
  buffer[0] = static_cast<unsigned char>((method >> 24) & 0xFF);
  buffer[1] = static_cast<unsigned char>((method >> 16) & 0xFF);
  buffer[2] = static_cast<unsigned char>((method >> 8) & 0xFF);
  buffer[3] = static_cast<unsigned char>(method & 0xFF);
  return Bytes(buffer, buffer + 4 + size);
}

Bytes DeliverPayload(std::uint64_t tag) {
  amqp_basic_deliver_t deliver{};
  deliver.consumer_tag = amqp_cstring_bytes("amq.ctag-test");
  deliver.delivery_tag = tag;
  deliver.exchange = amqp_cstring_bytes("");
  deliver.routing_key = amqp_cstring_bytes("work");
  return EncodeMethod(AMQP_BASIC_DELIVER_METHOD, &deliver);
}

Bytes HeaderPayload(std::uint64_t body_size) {
  Bytes payload = {0, 60, 0, 0};  // class basic, weight 0
  for (int shift = 56; shift >= 0; shift -= 8) {
    payload.push_back(static_cast<unsigned char>(body_size >> shift));
  }
  payload.push_back(0);  // no properties
  payload.push_back(0);
  return payload;
}

// A whole delivery of BODY, split into body frames of at most CHUNK bytes.
void AppendDelivery(Bytes* out, std::uint64_t tag, const std::string& body,
                    std::size_t chunk = 131064,
                    std::uint16_t channel = kChannel) {
  AppendFrame(out, AMQP_FRAME_METHOD, channel, DeliverPayload(tag));
  AppendFrame(out, AMQP_FRAME_HEADER, channel, HeaderPayload(body.size()));
  for (std::size_t at = 0; at < body.size(); at += chunk) {
    std::string part = body.substr(at, chunk);
    AppendFrame(out, AMQP_FRAME_BODY, channel, Bytes(part.begin(), part.end()));
  }
}

void AppendHeartbeat(Bytes* out) {
  AppendFrame(out, AMQP_FRAME_HEARTBEAT, 0, {});
}

void AppendConfirm(Bytes* out) {
  amqp_basic_ack_t ack{};
  ack.delivery_tag = 7;
  AppendFrame(out, AMQP_FRAME_METHOD, kChannel,
              EncodeMethod(AMQP_BASIC_ACK_METHOD, &ack));
}

AmqpDeliveryScan Scan(const Bytes& bytes) {
  return ScanDeliveries(bytes.data(), bytes.size(), kChannel);
}

TEST_CASE("nothing to scan is no delivery and the end") {
  AmqpDeliveryScan scan = ScanDeliveries(nullptr, 0, kChannel);
  CHECK(scan.deliveries == 0);
  CHECK(scan.bytes == 0);
  CHECK(scan.stop == Stop::kEnd);
}

TEST_CASE("whole deliveries are counted with the bytes they take") {
  Bytes bytes;
  AppendDelivery(&bytes, 1, std::string(100, 'a'));
  const std::size_t first = bytes.size();
  AppendDelivery(&bytes, 2, "");  // no body frame at all
  AppendDelivery(&bytes, 3, std::string(300, 'c'), /*chunk=*/64);
  AmqpDeliveryScan scan = Scan(bytes);
  CHECK(scan.deliveries == 3);
  CHECK(scan.bytes == bytes.size());
  CHECK(scan.stop == Stop::kEnd);

  AmqpDeliveryScan one = ScanDeliveries(bytes.data(), first, kChannel);
  CHECK(one.deliveries == 1);
  CHECK(one.bytes == first);
}

TEST_CASE("a delivery cut anywhere is partial and not counted") {
  Bytes whole;
  AppendDelivery(&whole, 1, std::string(50, 'a'));
  const std::size_t first = whole.size();
  AppendDelivery(&whole, 2, std::string(200, 'b'), /*chunk=*/80);
  for (std::size_t cut = first + 1; cut < whole.size(); ++cut) {
    AmqpDeliveryScan scan = ScanDeliveries(whole.data(), cut, kChannel);
    CAPTURE(cut);
    CHECK(scan.deliveries == 1);
    CHECK(scan.bytes == first);
    CHECK(scan.stop == Stop::kPartial);
  }
  for (std::size_t cut = 1; cut < first; ++cut) {
    AmqpDeliveryScan scan = ScanDeliveries(whole.data(), cut, kChannel);
    CHECK(scan.deliveries == 0);
    CHECK(scan.bytes == 0);
    CHECK(scan.stop == Stop::kPartial);
  }
}

TEST_CASE("heartbeats between deliveries are passed over") {
  Bytes bytes;
  AppendHeartbeat(&bytes);
  AppendDelivery(&bytes, 1, "x");
  AppendHeartbeat(&bytes);
  AmqpDeliveryScan scan = Scan(bytes);
  CHECK(scan.deliveries == 1);
  CHECK(scan.bytes == bytes.size());
  CHECK(scan.stop == Stop::kEnd);
}

TEST_CASE("a frame that is not a delivery stops the scan before it") {
  Bytes bytes;
  AppendDelivery(&bytes, 1, "x");
  const std::size_t first = bytes.size();
  AppendConfirm(&bytes);  // a publisher confirm: the AMQP thread's
  AppendDelivery(&bytes, 2, "y");
  AmqpDeliveryScan scan = Scan(bytes);
  CHECK(scan.deliveries == 1);
  CHECK(scan.bytes == first);
  CHECK(scan.stop == Stop::kOther);

  Bytes other_channel;
  AppendDelivery(&other_channel, 1, "x", 131064, /*channel=*/2);
  CHECK(Scan(other_channel).stop == Stop::kOther);
  CHECK(Scan(other_channel).deliveries == 0);
}

TEST_CASE("framing the scan does not follow is left to librabbitmq") {
  SUBCASE("a bad frame end") {
    Bytes bytes;
    AppendDelivery(&bytes, 1, "x");
    bytes.back() = 0x00;
    AmqpDeliveryScan scan = Scan(bytes);
    CHECK(scan.deliveries == 0);
    CHECK(scan.stop == Stop::kMalformed);
  }
  SUBCASE("a heartbeat inside a delivery") {
    Bytes bytes;
    AppendFrame(&bytes, AMQP_FRAME_METHOD, kChannel, DeliverPayload(1));
    AppendHeartbeat(&bytes);
    CHECK(Scan(bytes).stop == Stop::kMalformed);
  }
  SUBCASE("body frames longer than the body") {
    Bytes bytes;
    AppendFrame(&bytes, AMQP_FRAME_METHOD, kChannel, DeliverPayload(1));
    AppendFrame(&bytes, AMQP_FRAME_HEADER, kChannel, HeaderPayload(2));
    AppendFrame(&bytes, AMQP_FRAME_BODY, kChannel, {'a', 'b', 'c'});
    CHECK(Scan(bytes).stop == Stop::kMalformed);
  }
  SUBCASE("a header frame too short for a body size") {
    Bytes bytes;
    AppendFrame(&bytes, AMQP_FRAME_METHOD, kChannel, DeliverPayload(1));
    AppendFrame(&bytes, AMQP_FRAME_HEADER, kChannel, {0, 60, 0, 0});
    CHECK(Scan(bytes).stop == Stop::kMalformed);
  }
}

TEST_CASE("a frame size beyond the bytes is partial, even near 4 GiB") {
  Bytes bytes = {AMQP_FRAME_METHOD, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 60};
  AmqpDeliveryScan scan = Scan(bytes);
  CHECK(scan.deliveries == 0);
  CHECK(scan.stop == Stop::kPartial);
}

TEST_CASE("garbage never counts more deliveries than bytes allow") {
  std::mt19937 rng(1234);
  Bytes valid;
  for (int i = 0; i < 4; ++i) AppendDelivery(&valid, i + 1, "body", 3);
  for (int round = 0; round < 2000; ++round) {
    Bytes bytes = valid;
    // Flip a few bytes, or cut the run short.
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      bytes[rng() % bytes.size()] = static_cast<unsigned char>(rng());
    }
    bytes.resize(rng() % (bytes.size() + 1));
    AmqpDeliveryScan scan = Scan(bytes);
    CHECK(scan.bytes <= bytes.size());
    // The smallest delivery: deliver (8+>4), header (8+>=12), no body.
    CHECK(static_cast<std::size_t>(scan.deliveries) * 32 <= scan.bytes);
  }
}

}  // namespace
}  // namespace workerpool
