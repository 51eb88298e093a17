// Coalescing writer for one libuv stream: frames appended during a loop
// iteration go out together in one write at the end of it (the caller calls
// Flush() from a uv_prepare_t), so a burst costs one syscall, not one per
// frame. Shared by the client library and the Watcher.
#pragma once

#include <uv.h>

#include <functional>
#include <string>

namespace workerpool {

class StreamWriter {
 public:
  // STREAM must outlive the writer's last write callback; ON_ERROR is called
  // once when a write fails (the peer is gone).
  StreamWriter(uv_stream_t* stream, std::function<void(int)> on_error)
      : stream_(stream), on_error_(std::move(on_error)) {}
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  // Bytes to send at the next Flush().
  std::string& pending() { return pending_; }
  bool has_pending() const { return !pending_.empty(); }
  // Bytes accepted but not yet written to the socket.
  size_t backlog() const { return pending_.size() + in_flight_.size(); }

  // Writes what is pending: directly when the socket takes it, else queued
  // behind the write in progress. Returns false after a write error.
  bool Flush();

  // Forgets everything; call before closing the stream.
  void Abandon() { abandoned_ = true; }

 private:
  static void OnWritten(uv_write_t* request, int status);

  uv_stream_t* stream_;
  std::function<void(int)> on_error_;
  std::string pending_;
  std::string in_flight_;  // owned by the uv_write in progress
  uv_write_t request_;
  bool writing_ = false;
  bool failed_ = false;
  bool abandoned_ = false;
};

}  // namespace workerpool
