#include "core/frame_codec.h"

#include <bit>
#include <cstring>

namespace workerpool {
namespace {

// Every frame is encoded and decoded once per hop: on a little-endian host
// (all the pool runs on) a field is one memcpy, not a loop over its bytes.
template <typename T>
void PutLittle(char* out, T value) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out, &value, sizeof(T));
  } else {
    for (size_t i = 0; i < sizeof(T); ++i) {
      out[i] = static_cast<char>(
          (static_cast<std::uint64_t>(value) >> (8 * i)) & 0xff);
    }
  }
}

template <typename T>
T GetLittle(const char* in) {
  if constexpr (std::endian::native == std::endian::little) {
    T value;
    std::memcpy(&value, in, sizeof(T));
    return value;
  } else {
    std::uint64_t value = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      value |= static_cast<std::uint64_t>(static_cast<unsigned char>(in[i]))
               << (8 * i);
    }
    return static_cast<T>(value);
  }
}

bool KnownType(std::uint8_t type) {
  return (type >= 1 && type <= 5) || (type >= 16 && type <= 27);
}

}  // namespace

bool FrameFits(std::string_view meta, std::string_view body) {
  return meta.size() <= wire::kMaxPayload &&
         body.size() <= wire::kMaxPayload - meta.size();
}

void AppendFrame(std::string& out, wire::FrameType type, std::uint64_t id,
                 std::uint32_t aux, std::string_view meta,
                 std::string_view body, std::uint16_t flags) {
  char header[wire::kHeaderSize];
  PutLittle<std::uint32_t>(header, meta.size() + body.size());
  header[4] = static_cast<char>(wire::kWireVersion);
  header[5] = static_cast<char>(type);
  PutLittle<std::uint16_t>(header + 6, flags);
  PutLittle<std::uint64_t>(header + 8, id);
  PutLittle<std::uint32_t>(header + 16, aux);
  PutLittle<std::uint32_t>(header + 20, meta.size());
  out.append(header, sizeof(header));
  out.append(meta);
  out.append(body);
}

FrameHeader DecodeHeader(std::string_view data) {
  FrameHeader header;
  header.payload_length = GetLittle<std::uint32_t>(data.data());
  header.version = static_cast<std::uint8_t>(data[4]);
  header.type = static_cast<wire::FrameType>(data[5]);
  header.flags = GetLittle<std::uint16_t>(data.data() + 6);
  header.id = GetLittle<std::uint64_t>(data.data() + 8);
  header.aux = GetLittle<std::uint32_t>(data.data() + 16);
  header.meta_length = GetLittle<std::uint32_t>(data.data() + 20);
  return header;
}

void FrameDecoder::Feed(std::string_view bytes) {
  if (!error_.ok()) return;
  if (!borrowed_.empty()) {  // Next() was not drained: keep the bytes
    buffer_.append(borrowed_);
    borrowed_ = {};
  }
  // Compact lazily: drop consumed bytes only when they dominate the buffer.
  if (offset_ > 0 && offset_ * 2 >= buffer_.size()) {
    buffer_.erase(0, offset_);
    offset_ = 0;
  }
  buffer_.append(bytes);
}

void FrameDecoder::FeedBorrowed(std::string_view bytes) {
  if (!error_.ok()) return;
  if (!borrowed_.empty() || offset_ < buffer_.size()) {
    // A frame is split across reads: it is joined in the buffer.
    Feed(bytes);
    return;
  }
  buffer_.clear();
  offset_ = 0;
  borrowed_ = bytes;
}

FrameDecoder::Parse FrameDecoder::ParseFrame(std::string_view rest,
                                             FrameView* frame,
                                             size_t* consumed) {
  if (rest.size() < wire::kHeaderSize) return Parse::kNeedMore;
  FrameHeader header = DecodeHeader(rest);
  if (header.version != wire::kWireVersion) {
    error_ = Status::Error("unsupported protocol version " +
                           std::to_string(header.version) + " (expected " +
                           std::to_string(wire::kWireVersion) + ")");
    return Parse::kError;
  }
  if (!KnownType(static_cast<std::uint8_t>(header.type))) {
    error_ = Status::Error("unknown frame type " +
                           std::to_string(static_cast<int>(header.type)));
    return Parse::kError;
  }
  if (header.payload_length > wire::kMaxPayload) {
    error_ = Status::Error("frame of " + std::to_string(header.payload_length) +
                           " bytes is over the limit of " +
                           std::to_string(wire::kMaxPayload));
    return Parse::kError;
  }
  if (header.meta_length > header.payload_length) {
    error_ = Status::Error(
        "frame metadata length " + std::to_string(header.meta_length) +
        " is larger than its payload " + std::to_string(header.payload_length));
    return Parse::kError;
  }
  if (rest.size() < wire::kHeaderSize + header.payload_length) {
    return Parse::kNeedMore;
  }
  frame->header = header;
  frame->meta = rest.substr(wire::kHeaderSize, header.meta_length);
  frame->body = rest.substr(wire::kHeaderSize + header.meta_length,
                            header.payload_length - header.meta_length);
  *consumed = wire::kHeaderSize + header.payload_length;
  return Parse::kFrame;
}

bool FrameDecoder::Next(FrameView* frame) {
  if (!error_.ok()) return false;
  size_t consumed = 0;
  if (!borrowed_.empty()) {
    Parse parse = ParseFrame(borrowed_, frame, &consumed);
    if (parse == Parse::kFrame) {
      borrowed_.remove_prefix(consumed);
      return true;
    }
    if (parse == Parse::kNeedMore) {
      // The caller's buffer is about to be reused: keep the tail.
      buffer_.assign(borrowed_);
      offset_ = 0;
      borrowed_ = {};
    }
    return false;
  }
  std::string_view rest(buffer_.data() + offset_, buffer_.size() - offset_);
  if (ParseFrame(rest, frame, &consumed) != Parse::kFrame) return false;
  // Consumed bytes are dropped by the next Feed(), so the views stay valid.
  offset_ += consumed;
  return true;
}

}  // namespace workerpool
