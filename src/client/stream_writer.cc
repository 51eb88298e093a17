#include "client/stream_writer.h"

namespace workerpool {

bool StreamWriter::Flush() {
  if (failed_) return false;
  if (writing_ || pending_.empty()) return true;
  uv_buf_t buf =
      uv_buf_init(pending_.data(), static_cast<unsigned int>(pending_.size()));
  int written = uv_try_write(stream_, &buf, 1);
  if (written == static_cast<int>(pending_.size())) {
    pending_.clear();
    return true;
  }
  if (written < 0 && written != UV_EAGAIN) {
    failed_ = true;
    if (on_error_) on_error_(written);
    return false;
  }
  if (written > 0) pending_.erase(0, static_cast<size_t>(written));
  in_flight_.swap(pending_);
  pending_.clear();
  buf = uv_buf_init(in_flight_.data(),
                    static_cast<unsigned int>(in_flight_.size()));
  request_.data = this;
  int rc = uv_write(&request_, stream_, &buf, 1, OnWritten);
  if (rc != 0) {
    failed_ = true;
    if (on_error_) on_error_(rc);
    return false;
  }
  writing_ = true;
  return true;
}

void StreamWriter::OnWritten(uv_write_t* request, int status) {
  auto* self = static_cast<StreamWriter*>(request->data);
  self->writing_ = false;
  self->in_flight_.clear();
  if (self->abandoned_) return;
  if (status != 0) {
    self->failed_ = true;
    if (self->on_error_) self->on_error_(status);
    return;
  }
  self->Flush();
}

}  // namespace workerpool
