#include "core/frame_codec.h"

#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

namespace workerpool {
namespace {

std::vector<std::string> DecodeAll(FrameDecoder& decoder) {
  std::vector<std::string> bodies;
  FrameView frame;
  while (decoder.Next(&frame)) bodies.emplace_back(frame.body);
  return bodies;
}

TEST_CASE("a frame round-trips with its header fields, meta and body") {
  std::string bytes;
  AppendFrame(bytes, wire::FrameType::kRequest, 0x1122334455667788ull, 7,
              R"({"k":1})", "hello");
  REQUIRE(bytes.size() == wire::kHeaderSize + 7 + 5);
  FrameDecoder decoder;
  decoder.Feed(bytes);
  FrameView frame;
  REQUIRE(decoder.Next(&frame));
  CHECK(frame.header.type == wire::FrameType::kRequest);
  CHECK(frame.header.id == 0x1122334455667788ull);
  CHECK(frame.header.aux == 7);
  CHECK(frame.meta == R"({"k":1})");
  CHECK(frame.body == "hello");
  CHECK_FALSE(decoder.Next(&frame));
  CHECK(decoder.error().ok());
}

TEST_CASE("frames split at every byte boundary decode the same") {
  std::string bytes;
  for (int i = 0; i < 5; ++i) {
    AppendFrame(bytes, wire::FrameType::kReply, i, 0, {},
                std::string(i * 3, 'x'));
  }
  FrameDecoder decoder;
  std::vector<std::string> bodies;
  for (char c : bytes) {
    decoder.Feed(std::string_view(&c, 1));
    auto more = DecodeAll(decoder);
    bodies.insert(bodies.end(), more.begin(), more.end());
  }
  REQUIRE(bodies.size() == 5);
  for (int i = 0; i < 5; ++i) CHECK(bodies[i].size() == size_t(i * 3));
  CHECK(decoder.buffered() == 0);
}

TEST_CASE("a binary body with NUL bytes is carried unchanged") {
  std::string body("\0\x01\xff\n\0", 5);
  std::string bytes;
  AppendFrame(bytes, wire::FrameType::kRequest, 1, 0, {}, body);
  FrameDecoder decoder;
  decoder.Feed(bytes);
  FrameView frame;
  REQUIRE(decoder.Next(&frame));
  CHECK(frame.body == body);
}

TEST_CASE("a wrong version is a clear error") {
  std::string bytes;
  AppendFrame(bytes, wire::FrameType::kRequest, 1, 0, {}, "x");
  bytes[4] = 9;
  FrameDecoder decoder;
  decoder.Feed(bytes);
  FrameView frame;
  CHECK_FALSE(decoder.Next(&frame));
  CHECK(decoder.error().message().find("version 9") != std::string::npos);
}

TEST_CASE("an unknown frame type is a clear error") {
  std::string bytes;
  AppendFrame(bytes, wire::FrameType::kRequest, 1, 0, {}, "x");
  bytes[5] = 99;
  FrameDecoder decoder;
  decoder.Feed(bytes);
  FrameView frame;
  CHECK_FALSE(decoder.Next(&frame));
  CHECK(decoder.error().message().find("unknown frame type 99") !=
        std::string::npos);
}

TEST_CASE("a frame over the size limit is refused before it is buffered") {
  std::string bytes;
  AppendFrame(bytes, wire::FrameType::kRequest, 1, 0, {}, "");
  uint32_t huge = wire::kMaxPayload + 1;
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>(huge >> (8 * i));
  FrameDecoder decoder;
  decoder.Feed(bytes);
  FrameView frame;
  CHECK_FALSE(decoder.Next(&frame));
  CHECK(decoder.error().message().find("over the limit") != std::string::npos);
}

TEST_CASE("metadata longer than the payload is a clear error") {
  std::string bytes;
  AppendFrame(bytes, wire::FrameType::kRequest, 1, 0, {}, "abc");
  bytes[20] = 10;
  FrameDecoder decoder;
  decoder.Feed(bytes);
  FrameView frame;
  CHECK_FALSE(decoder.Next(&frame));
  CHECK(decoder.error().message().find("metadata length") != std::string::npos);
}

TEST_CASE("after an error the decoder stays broken") {
  FrameDecoder decoder;
  decoder.Feed(std::string(wire::kHeaderSize, '\xff'));
  FrameView frame;
  CHECK_FALSE(decoder.Next(&frame));
  CHECK_FALSE(decoder.error().ok());
  std::string good;
  AppendFrame(good, wire::FrameType::kReply, 1, 0, {}, "x");
  decoder.Feed(good);
  CHECK_FALSE(decoder.Next(&frame));
}

TEST_CASE("random garbage never crashes the decoder") {
  std::mt19937 random(42);
  for (int round = 0; round < 2000; ++round) {
    FrameDecoder decoder;
    std::string garbage(random() % 200, '\0');
    for (char& c : garbage) c = static_cast<char>(random());
    decoder.Feed(garbage);
    FrameView frame;
    while (decoder.Next(&frame)) {
      CHECK(frame.meta.size() + frame.body.size() ==
            frame.header.payload_length);
    }
  }
}

TEST_CASE("FrameFits follows the payload limit") {
  CHECK(FrameFits("", std::string(16, 'x')));
  CHECK_FALSE(FrameFits("", std::string(wire::kMaxPayload + 1, 'x')));
  CHECK(FrameFits("ab", std::string(wire::kMaxPayload - 2, 'x')));
}

}  // namespace
}  // namespace workerpool
