#include "watcher/channel.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include "os/uv_owner.h"

namespace workerpool {
namespace {

// Control frames are small and rare: a child this far behind is not reading.
constexpr size_t kMaxQueuedBytes = 4 << 20;

struct WriteRequest {
  uv_write_t request;
  std::string bytes;
  uv_pipe_t* passed = nullptr;  // the fd being sent, wrapped for libuv
};

void OnWritten(uv_write_t* request, int) {
  auto* write = Owner<WriteRequest>(request);
  if (write->passed != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(write->passed),
             [](uv_handle_t* handle) {
               delete reinterpret_cast<uv_pipe_t*>(handle);
             });
  }
  delete write;
}

}  // namespace

Channel* Channel::Open(uv_loop_t* loop, int fd, FrameHandler on_frame,
                       ClosedHandler on_closed) {
  auto* channel = new Channel;
  channel->on_frame_ = std::move(on_frame);
  channel->on_closed_ = std::move(on_closed);
  uv_pipe_init(loop, &channel->pipe_, /*ipc=*/1);
  channel->pipe_.data = channel;
  if (uv_pipe_open(&channel->pipe_, fd) != 0) {
    ::close(fd);
    channel->closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&channel->pipe_),
             [](uv_handle_t* h) { delete Owner<Channel>(h); });
    return nullptr;
  }
  auto on_alloc = [](uv_handle_t*, size_t, uv_buf_t* buf) {
    static char buffer[64 * 1024];
    *buf = uv_buf_init(buffer, sizeof(buffer));
  };
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&channel->pipe_), on_alloc,
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
        auto* self = Owner<Channel>(stream);
        if (nread < 0) {
          self->Fail();
          return;
        }
        // Children never pass fds to the Watcher; drop any they try to.
        while (uv_pipe_pending_count(&self->pipe_) > 0) {
          auto* unwanted = new uv_pipe_t;
          uv_pipe_init(stream->loop, unwanted, 0);
          int rc = uv_accept(stream, reinterpret_cast<uv_stream_t*>(unwanted));
          uv_close(
              reinterpret_cast<uv_handle_t*>(unwanted),
              [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
          if (rc != 0) break;
        }
        self->decoder_.Feed(std::string_view(buf->base, nread));
        FrameView frame;
        while (!self->closed_ && self->decoder_.Next(&frame)) {
          self->on_frame_(self, frame);
        }
        if (!self->closed_ && !self->decoder_.error().ok()) {
          spdlog::warn("closing a child's pool channel: {}",
                       self->decoder_.error().message());
          self->Fail();
        }
      });
  return channel;
}

void Channel::Send(wire::FrameType type, const nlohmann::json& body,
                   int pass_fd) {
  if (closed_) {
    if (pass_fd >= 0) ::close(pass_fd);
    return;
  }
  if (uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(&pipe_)) >
      kMaxQueuedBytes) {
    // The child stopped reading its channel (the Watcher holds a copy of the
    // child's end, so a child that closed its own sees no error either):
    // never buffer without bound.
    spdlog::warn(
        "closing a child's pool channel: {} bytes unread",
        uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(&pipe_)));
    if (pass_fd >= 0) ::close(pass_fd);
    Fail();
    return;
  }
  auto* write = new WriteRequest;
  write->request.data = write;
  AppendFrame(write->bytes, type, 0, 0, {}, body.dump());
  uv_buf_t buf = uv_buf_init(write->bytes.data(),
                             static_cast<unsigned int>(write->bytes.size()));
  int rc;
  if (pass_fd >= 0) {
    write->passed = new uv_pipe_t;
    uv_pipe_init(pipe_.loop, write->passed, 0);
    uv_pipe_open(write->passed, pass_fd);
    rc =
        uv_write2(&write->request, reinterpret_cast<uv_stream_t*>(&pipe_), &buf,
                  1, reinterpret_cast<uv_stream_t*>(write->passed), OnWritten);
  } else {
    rc = uv_write(&write->request, reinterpret_cast<uv_stream_t*>(&pipe_), &buf,
                  1, OnWritten);
  }
  if (rc != 0) OnWritten(&write->request, rc);
}

void Channel::Fail() {
  if (closed_) return;
  ClosedHandler on_closed = std::move(on_closed_);
  Close();
  if (on_closed) on_closed(this);
}

void Channel::Close() {
  if (closed_) return;
  closed_ = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&pipe_),
           [](uv_handle_t* h) { delete Owner<Channel>(h); });
}

int Channel::fd() const {
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<const uv_handle_t*>(&pipe_), &fd) != 0) {
    return -1;
  }
  return fd;
}

}  // namespace workerpool
