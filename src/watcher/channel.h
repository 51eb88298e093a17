// The Watcher's end of one child's pool channel (WORKERPOOL_IPC_FD): a
// SOCK_STREAM socketpair carrying control frames (include/workerpool/wire.h)
// and, with kPeerAdded, one end of a new link by SCM_RIGHTS. Runs on the
// Watcher's loop. Control traffic is rare, so every frame is its own write:
// that keeps frames and passed fds in order without a coalescing buffer.
#pragma once

#include <uv.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/frame_codec.h"

namespace workerpool {

class Channel {
 public:
  using FrameHandler = std::function<void(Channel*, const FrameView&)>;
  using ClosedHandler = std::function<void(Channel*)>;

  // Takes ownership of FD. ON_FRAME is called for each frame; ON_CLOSED
  // once, when the child closes its end, a read fails or it sends garbage.
  static Channel* Open(uv_loop_t* loop, int fd, FrameHandler on_frame,
                       ClosedHandler on_closed);

  // Sends a control frame with a JSON body; with PASS_FD >= 0 the fd rides
  // along (SCM_RIGHTS) and is closed here once sent.
  void Send(wire::FrameType type, const nlohmann::json& body, int pass_fd = -1);

  // Closes the channel; the object deletes itself once libuv is done.
  // ON_CLOSED is not called.
  void Close();

  bool closed() const { return closed_; }

  // For an in-place upgrade (watcher/upgrade.h): the socket, whether every
  // frame sent has been written, the bytes read that make no whole frame
  // yet, and, in the next Watcher, those bytes fed back before it reads on.
  int fd() const;
  bool flushed() const { return pipe_.write_queue_size == 0; }
  std::string Pending() const { return decoder_.Pending(); }
  void Preload(std::string_view bytes) { decoder_.Feed(bytes); }
  void* owner = nullptr;  // the Watcher's slot

 private:
  Channel() = default;
  void Fail();
  uv_pipe_t pipe_;
  FrameDecoder decoder_;
  FrameHandler on_frame_;
  ClosedHandler on_closed_;
  bool closed_ = false;
};

}  // namespace workerpool
