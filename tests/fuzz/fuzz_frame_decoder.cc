// Fuzzes the wire frame decoder (src/core/frame_codec.h). The input is cut
// into reads at sizes taken from its first bytes, as a socket would deliver
// it; every decoded frame must re-encode to the same bytes, and the decoder
// must account for every byte it was fed. Reads alternate between Feed()
// and FeedBorrowed().
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/frame_codec.h"
#include "fuzz_check.h"

using workerpool::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  using workerpool::FrameDecoder;
  using workerpool::FrameView;
  if (size < 2) return 0;
  // Two read sizes (1..256) alternate, so frames straddle reads.
  const std::size_t read_sizes[2] = {std::size_t{data[0]} + 1,
                                     std::size_t{data[1]} + 1};
  std::string_view stream(reinterpret_cast<const char*>(data) + 2, size - 2);

  FrameDecoder decoder;
  std::size_t fed = 0, decoded = 0;
  std::string reencoded;
  for (int turn = 0; fed < stream.size(); turn ^= 1) {
    std::string_view chunk = stream.substr(fed, read_sizes[turn]);
    // Borrowed reads (every other one) live in a heap copy that is freed
    // once the decoder is drained: ASan sees any view kept past that.
    std::string* borrowed = nullptr;
    if (turn == 1) {
      borrowed = new std::string(chunk);
      decoder.FeedBorrowed(*borrowed);
    } else {
      decoder.Feed(chunk);
    }
    fed += chunk.size();
    FrameView frame;
    while (decoder.Next(&frame)) {
      Check(frame.header.version == workerpool::wire::kWireVersion);
      Check(frame.meta.size() == frame.header.meta_length);
      Check(frame.meta.size() + frame.body.size() ==
            frame.header.payload_length);
      Check(workerpool::FrameFits(frame.meta, frame.body));
      std::size_t before = reencoded.size();
      workerpool::AppendFrame(reencoded, frame.header.type, frame.header.id,
                              frame.header.aux, frame.meta, frame.body,
                              frame.header.flags);
      decoded += reencoded.size() - before;
    }
    delete borrowed;
    if (!decoder.error().ok()) break;
  }
  // What came out as frames is exactly the start of the stream.
  Check(reencoded == stream.substr(0, decoded));
  if (decoder.error().ok()) {
    Check(decoded + decoder.buffered() == stream.size());
  }
  return 0;
}
