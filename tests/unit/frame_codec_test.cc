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

TEST_CASE("borrowed reads: whole frames are views, split frames are kept") {
  std::string bytes;
  for (int i = 0; i < 40; ++i) {
    AppendFrame(bytes, wire::FrameType::kReply, i, 0, "m",
                std::string(static_cast<size_t>(i * 7),
                            static_cast<char>('a' + i % 26)));
  }
  // Every read size from 1 byte to the whole stream; each read lives in a
  // buffer that is overwritten once the decoder is drained, as a read
  // callback's buffer is.
  for (size_t read_size = 1; read_size <= bytes.size(); read_size += 13) {
    CAPTURE(read_size);
    FrameDecoder decoder;
    std::vector<std::string> bodies;
    std::string read_buffer;
    for (size_t at = 0; at < bytes.size(); at += read_size) {
      read_buffer.assign(bytes, at, read_size);
      decoder.FeedBorrowed(read_buffer);
      FrameView frame;
      while (decoder.Next(&frame)) {
        CHECK(frame.meta == "m");
        bodies.emplace_back(frame.body);
      }
      read_buffer.assign(read_buffer.size(), '#');  // the buffer is reused
    }
    REQUIRE(bodies.size() == 40);
    for (int i = 0; i < 40; ++i) {
      CHECK(bodies[i] == std::string(static_cast<size_t>(i * 7),
                                     static_cast<char>('a' + i % 26)));
    }
    CHECK(decoder.buffered() == 0);
    CHECK(decoder.error().ok());
  }
}

TEST_CASE("a borrowed read that holds whole frames is not copied") {
  std::string bytes;
  AppendFrame(bytes, wire::FrameType::kRequest, 1, 0, {}, "first");
  AppendFrame(bytes, wire::FrameType::kRequest, 2, 0, {}, "second");
  FrameDecoder decoder;
  decoder.FeedBorrowed(bytes);
  FrameView frame;
  REQUIRE(decoder.Next(&frame));
  CHECK(frame.body.data() >= bytes.data());
  CHECK(frame.body.data() < bytes.data() + bytes.size());
  REQUIRE(decoder.Next(&frame));
  CHECK(frame.body == "second");
  CHECK_FALSE(decoder.Next(&frame));
  CHECK(decoder.buffered() == 0);
}

TEST_CASE("borrowed and copied reads mix") {
  std::string bytes;
  for (int i = 0; i < 6; ++i) {
    AppendFrame(bytes, wire::FrameType::kReply, i, 0, {}, std::string(10, 'x'));
  }
  FrameDecoder decoder;
  std::vector<std::string> bodies;
  for (size_t at = 0, turn = 0; at < bytes.size(); at += 17, ++turn) {
    std::string chunk = bytes.substr(at, 17);
    if (turn % 2 == 0) {
      decoder.FeedBorrowed(chunk);
    } else {
      decoder.Feed(chunk);
    }
    auto more = DecodeAll(decoder);
    bodies.insert(bodies.end(), more.begin(), more.end());
  }
  CHECK(bodies.size() == 6);
  CHECK(decoder.buffered() == 0);
}

TEST_CASE("a bad frame in a borrowed read is the same clear error") {
  std::string bytes;
  AppendFrame(bytes, wire::FrameType::kRequest, 1, 0, {}, "x");
  bytes[5] = 99;  // unknown type
  FrameDecoder decoder;
  decoder.FeedBorrowed(bytes);
  FrameView frame;
  CHECK_FALSE(decoder.Next(&frame));
  CHECK(decoder.error().message().find("unknown frame type 99") !=
        std::string::npos);
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
