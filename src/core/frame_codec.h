// Encoding and incremental decoding of wire frames (include/workerpool/
// wire.h). Pure: bytes in, frames out; no sockets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"
#include "workerpool/wire.h"

namespace workerpool {

struct FrameHeader {
  std::uint32_t payload_length = 0;
  std::uint8_t version = wire::kWireVersion;
  wire::FrameType type = wire::FrameType::kRequest;
  std::uint16_t flags = 0;
  std::uint64_t id = 0;
  std::uint32_t aux = 0;
  std::uint32_t meta_length = 0;
};

// A decoded frame; views point into the decoder's buffer and stay valid
// until the next call to Feed() or Next().
struct FrameView {
  FrameHeader header;
  std::string_view meta;
  std::string_view body;
};

// Appends one frame to OUT. REQUIRES: meta.size() + body.size() <=
// wire::kMaxPayload (checked by the caller; see FrameFits()).
void AppendFrame(std::string& out, wire::FrameType type, std::uint64_t id,
                 std::uint32_t aux, std::string_view meta,
                 std::string_view body, std::uint16_t flags = 0);

bool FrameFits(std::string_view meta, std::string_view body);

// Reads the 24 header bytes at DATA. REQUIRES: data.size() >= kHeaderSize.
FrameHeader DecodeHeader(std::string_view data);

// Incremental decoder: feed whatever read() returned, then take frames with
// Next() until it returns false. After an error the stream is unusable.
class FrameDecoder {
 public:
  // Copies BYTES.
  void Feed(std::string_view bytes);
  // Like Feed(), without copying the whole frames in BYTES: their views
  // point into BYTES, which must stay valid and unchanged until Next()
  // returns false; only the incomplete tail left then is copied. For a read
  // callback that drains the decoder before its buffer is reused.
  void FeedBorrowed(std::string_view bytes);
  // True and fills FRAME when a whole frame is buffered. False when more
  // bytes are needed or the stream is broken (then error() is not ok).
  bool Next(FrameView* frame);
  const Status& error() const { return error_; }
  // Bytes buffered but not yet returned as frames.
  size_t buffered() const {
    return buffer_.size() - offset_ + borrowed_.size();
  }
  // Those bytes (an in-place upgrade hands them to the next Watcher, which
  // feeds them to its decoder before reading on).
  std::string Pending() const {
    return buffer_.substr(offset_) + std::string(borrowed_);
  }

 private:
  enum class Parse { kFrame, kNeedMore, kError };
  // Decodes the frame at the start of REST; on kFrame sets *CONSUMED.
  Parse ParseFrame(std::string_view rest, FrameView* frame, size_t* consumed);

  std::string buffer_;
  size_t offset_ = 0;
  std::string_view borrowed_;  // the caller's bytes; buffer_ is empty then
  Status error_;
};

}  // namespace workerpool
