#include "watcher/output_capture.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include "core/file_limit.h"
#include "os/uv_owner.h"
#include "watcher/logging.h"
#include "watcher/pool_state.h"

namespace workerpool {
namespace {

// Every read of a child's output lands here (one loop thread, and each read
// is consumed before the next): one buffer for all pipes, not one each.
constexpr size_t kOutputBufferSize = 64 * 1024;
char* OutputBuffer() {
  static char buffer[kOutputBufferSize];
  return buffer;
}

void DeleteReader(uv_handle_t* handle) { delete Owner<OutputReader>(handle); }

}  // namespace

// The lines of one read leave in one write (a chatty child, such as a
// reactor's access log, would otherwise cost the Watcher a write(2) per
// line).
void OutputReader::Feed(std::string_view bytes) {
  LogBatch batch;
  splitter.Feed(bytes, [this](std::string_view line) { Log(line); });
}

void OutputReader::Finish() {
  LogBatch batch;
  splitter.Finish([this](std::string_view line) { Log(line); });
}

// At the level the child gave the line with a syslog prefix ("<3>...", as
// systemd reads stderr), else at info. Never above error: critical lines are
// the Watcher's own (operators alert on them).
void OutputReader::Log(std::string_view line) const {
  spdlog::level::level_enum level = spdlog::level::info;
  switch (TakeLinePriority(&line)) {
    case 0:
    case 1:
    case 2:
    case 3:
      level = spdlog::level::err;
      break;
    case 4:
      level = spdlog::level::warn;
      break;
    case 7:
      level = spdlog::level::debug;
      break;
    default:
      break;
  }
  spdlog::log(level, "{}: {}", prefix, line);
}

void OutputCapture::Start(int fd, Slot* slot) {
  slot->output = nullptr;
  auto* reader = new OutputReader;
  reader->capture = this;
  reader->prefix = slot->group->config.name + "[" +
                   std::to_string(slot->index) + "] " +
                   std::to_string(slot->pid);
  uv_pipe_init(loop_, &reader->pipe, 0);
  reader->pipe.data = reader;
  if (uv_pipe_open(&reader->pipe, fd) != 0) {
    close(fd);
    uv_close(reinterpret_cast<uv_handle_t*>(&reader->pipe), DeleteReader);
    return;
  }
  reader->slot = slot;
  readers_.insert(reader);
  auto on_alloc = [](uv_handle_t*, size_t, uv_buf_t* buf) {
    *buf = uv_buf_init(OutputBuffer(), kOutputBufferSize);
  };
  auto on_read = [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* reader = Owner<OutputReader>(stream);
    if (nread > 0) {
      reader->Feed(std::string_view(buf->base, nread));
      return;
    }
    if (nread == 0) return;  // EAGAIN
    reader->Finish();
    if (reader->slot != nullptr) reader->slot->output = nullptr;
    OutputCapture* capture = reader->capture;
    capture->readers_.erase(reader);
    uv_close(reinterpret_cast<uv_handle_t*>(stream), DeleteReader);
    capture->on_reader_closed_();
  };
  uv_read_start(reinterpret_cast<uv_stream_t*>(&reader->pipe), on_alloc,
                on_read);
  slot->output = reader;
}

bool OutputCapture::HoldsChildEnds(std::size_t children,
                                   std::uint64_t file_limit) const {
  // With a low RLIMIT_NOFILE, more children matter more than fewer
  // wake-ups: hold them while the limit has room for every child's four
  // (core/file_limit.h; the Watcher asks for that much when it may).
  return ComfortableLimit(children + 1) <= file_limit;
}

void OutputCapture::DrainAfterExit(Slot* slot) {
  OutputReader* reader = slot->output;
  if (reader == nullptr) {
    ReleaseChildEnds(slot);
    return;
  }
  if (slot->output_write_end >= 0) {
    // The child is gone but our write end keeps the pipe from reaching EOF:
    // log what it wrote now, before its exit, then let EOF come (at once, or
    // when a descendant that inherited the pipe closes it too). Bounded, so
    // a descendant writing without pause cannot hold the loop here.
    uv_os_fd_t fd = -1;
    uv_fileno(reinterpret_cast<uv_handle_t*>(&reader->pipe), &fd);
    for (size_t drained = 0; fd >= 0 && drained < 4 * kOutputBufferSize;) {
      ssize_t n = read(fd, OutputBuffer(), kOutputBufferSize);
      if (n <= 0) break;
      reader->Feed(std::string_view(OutputBuffer(), n));
      drained += static_cast<size_t>(n);
    }
  }
  reader->slot = nullptr;
  slot->output = nullptr;
  ReleaseChildEnds(slot);
  // Most often the pipe is at EOF now (no descendant holds it): close it
  // here rather than on the next loop turn, so that a restart spawned in
  // the same turn does not need two more descriptors. A storm of deaths
  // near RLIMIT_NOFILE otherwise failed its restarts with EMFILE (seen
  // killing 1,000 of 9,872 children with the direct spawn's timing).
  uv_os_fd_t fd = -1;
  uv_fileno(reinterpret_cast<uv_handle_t*>(&reader->pipe), &fd);
  for (size_t drained = 0; fd >= 0 && drained < 4 * kOutputBufferSize;) {
    ssize_t n = read(fd, OutputBuffer(), kOutputBufferSize);
    if (n < 0) return;  // EAGAIN: a descendant holds it; EOF comes later
    if (n == 0) {
      // The caller reports the change (ChildTable::Reap): no callback here.
      reader->Finish();
      readers_.erase(reader);
      uv_close(reinterpret_cast<uv_handle_t*>(&reader->pipe), DeleteReader);
      return;
    }
    reader->Feed(std::string_view(OutputBuffer(), n));
    drained += static_cast<size_t>(n);
  }
}

void OutputCapture::ReleaseChildEnds(Slot* slot) {
  for (int* fd : {&slot->output_write_end, &slot->channel_child_end}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void OutputCapture::CloseAll() {
  for (OutputReader* reader : readers_) {
    reader->Finish();
    if (reader->slot != nullptr) reader->slot->output = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&reader->pipe), DeleteReader);
  }
  readers_.clear();
}

}  // namespace workerpool
