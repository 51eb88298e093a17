#include "watcher/output_capture.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/file_limit.h"
#include "core/proc_stat.h"
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

// Bounds on what one event costs with a shared group socket: a wake-up
// reads at most this much (the poll is level-triggered: the rest comes at
// the next turn, after other groups and channels), a reap drains at most
// the other (more than the socket's buffer holds, so everything a dead
// child wrote before its exit, queued ahead of its siblings' later bytes).
constexpr size_t kSharedReadPerWake = 16 * kOutputBufferSize;
constexpr size_t kSharedDrainAtReap = 64 * kOutputBufferSize;
// The socket buffer asked for (SO_SNDBUFFORCE where permitted, else capped
// by net.core.wmem_max): children of a group block on a full buffer
// together.
constexpr int kSharedSocketBuffer = 4 << 20;
// How far /proc/PID/stat's ppid is followed to find a writer's child, and
// how many descendants' splitters one child keeps.
constexpr int kAncestorDepth = 16;
constexpr size_t kDescendantWriters = 64;

void DeleteGroupOutput(uv_handle_t* handle) {
  auto* group = Owner<GroupOutput>(handle);
  if (group->fd >= 0) close(group->fd);
  if (group->child_end >= 0) close(group->child_end);
  delete group;
}

std::optional<pid_t> ParentOf(pid_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(file)),
                   std::istreambuf_iterator<char>());
  std::optional<int> parent = ProcStatParent(stat);
  if (!parent) return std::nullopt;
  return static_cast<pid_t>(*parent);
}

void LogLine(const std::string& prefix, std::string_view line);

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

void OutputReader::Log(std::string_view line) const { LogLine(prefix, line); }

namespace {

// At the level the child gave the line with a syslog prefix ("<3>...", as
// systemd reads stderr), else at info. Never above error: critical lines are
// the Watcher's own (operators alert on them).
void LogLine(const std::string& prefix, std::string_view line) {
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

}  // namespace

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
    DrainShared(slot);
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
  for (auto& [group, output] : shared_) CloseShared(output);
  shared_.clear();
  shared_children_.clear();
}

int OutputCapture::SharedOutputFor(const Group* group) {
  auto found = shared_.find(group);
  if (found != shared_.end()) return found->second->child_end;
  int ends[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
    spdlog::error("group {}: output socket: {}; a pipe per child",
                  group->config.name, strerror(errno));
    return -1;
  }
  // Credentials on every write, asked for before any child can write.
  const int on = 1;
  if (setsockopt(ends[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0) {
    spdlog::error("group {}: output socket: SO_PASSCRED: {}; a pipe per child",
                  group->config.name, strerror(errno));
    close(ends[0]);
    close(ends[1]);
    return -1;
  }
  // Unix stream sockets count queued bytes against the writer's send
  // buffer, and the writers all share this end.
  const int size = kSharedSocketBuffer;
  if (setsockopt(ends[1], SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) !=
      0) {
    setsockopt(ends[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
  }
  if (setsockopt(ends[0], SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) !=
      0) {
    setsockopt(ends[0], SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  }
  shutdown(ends[0], SHUT_WR);
  shutdown(ends[1], SHUT_RD);
  // Only the Watcher's end: the children's end is their stdout, blocking.
  fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK);
  return WatchShared(group, ends[0], ends[1])->child_end;
}

void OutputCapture::AdoptShared(const Group* group, int fd, int child_end) {
  if (shared_.count(group) != 0) return;
  // Close-on-exec again (cleared for the exec that handed them over).
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  fcntl(child_end, F_SETFD, FD_CLOEXEC);
  WatchShared(group, fd, child_end);
}

std::pair<int, int> OutputCapture::SharedFds(const Group* group) const {
  auto found = shared_.find(group);
  if (found == shared_.end()) return {-1, -1};
  return {found->second->fd, found->second->child_end};
}

std::string OutputCapture::SharedPartial(const Slot* slot) const {
  auto found = shared_children_.find(slot->pid);
  if (found == shared_children_.end()) return {};
  auto writer = found->second->writers.find(slot->pid);
  if (writer == found->second->writers.end()) return {};
  return writer->second.splitter.partial();
}

void OutputCapture::FeedShared(const Slot* slot, std::string_view bytes) {
  if (bytes.empty()) return;
  auto found = shared_children_.find(slot->pid);
  if (found == shared_children_.end()) return;
  GroupOutput::Writer& writer = found->second->writers[slot->pid];
  LogBatch batch;
  writer.splitter.Feed(bytes, [&writer](std::string_view line) {
    LogLine(writer.prefix, line);
  });
}

GroupOutput* OutputCapture::WatchShared(const Group* group, int fd,
                                        int child_end) {
  auto* output = new GroupOutput;
  output->capture = this;
  output->name = group->config.name;
  output->fd = fd;
  output->child_end = child_end;
  uv_poll_init(loop_, &output->poll, output->fd);
  output->poll.data = output;
  uv_poll_start(&output->poll, UV_READABLE,
                [](uv_poll_t* poll, int status, int) {
                  auto* output = Owner<GroupOutput>(poll);
                  if (status < 0) return;
                  output->capture->ReadShared(output, kSharedReadPerWake);
                });
  shared_[group] = output;
  return output;
}

void OutputCapture::StartShared(Slot* slot) {
  slot->output = nullptr;
  auto found = shared_.find(slot->group);
  if (found == shared_.end()) return;
  GroupOutput* output = found->second;
  std::string prefix = slot->group->config.name + "[" +
                       std::to_string(slot->index) + "] " +
                       std::to_string(slot->pid);
  output->children[slot->pid] = prefix;
  // A writer left by an earlier process with this pid is not this child.
  ForgetDescendant(slot->pid);
  GroupOutput::Writer& writer = output->writers[slot->pid];
  writer.prefix = std::move(prefix);
  writer.child = slot->pid;
  shared_children_[slot->pid] = output;
}

GroupOutput::Writer& OutputCapture::WriterFor(GroupOutput* output, pid_t pid) {
  auto found = output->writers.find(pid);
  if (found != output->writers.end()) return found->second;
  // A descendant of a child (its pipe was inherited as it is today): named
  // after the nearest ancestor that is a child of this group.
  pid_t child = 0;
  std::string prefix;
  pid_t at = pid;
  for (int depth = 0; depth < kAncestorDepth && at > 1; ++depth) {
    std::optional<pid_t> parent = ParentOf(at);
    if (!parent) break;
    auto known = output->children.find(*parent);
    if (known != output->children.end()) {
      child = *parent;
      prefix = known->second;
      break;
    }
    at = *parent;
  }
  if (child == 0) prefix = output->name + " pid " + std::to_string(pid);
  // Bounded: a child that forks many short-lived writers (reaped by it,
  // not by us) would otherwise keep a splitter per pid until its own exit,
  // and writers of no known child (key 0) until the group goes.
  std::vector<pid_t>& kept = output->descendants[child];
  if (kept.size() >= kDescendantWriters) {
    auto oldest = output->writers.find(kept.front());
    if (oldest != output->writers.end() && oldest->second.child == child) {
      FinishWriter(output, kept.front());
    }
    kept.erase(kept.begin());
  }
  kept.push_back(pid);
  GroupOutput::Writer& writer = output->writers[pid];
  writer.prefix = std::move(prefix);
  writer.child = child;
  return writer;
}

void OutputCapture::ReadShared(GroupOutput* output, size_t limit) {
  LogBatch batch;
  for (size_t total = 0; total < limit;) {
    iovec iov{OutputBuffer(), kOutputBufferSize};
    // Room for the credentials and for descriptors a child may have sent
    // on its stdout: they are closed below (MSG_CTRUNC drops the rest).
    alignas(cmsghdr) char
        control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(16 * sizeof(int))];
    msghdr message{};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    ssize_t n = recvmsg(output->fd, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // EAGAIN (EOF cannot come: we hold the other end)
    pid_t pid = 0;
    for (cmsghdr* part = CMSG_FIRSTHDR(&message); part != nullptr;
         part = CMSG_NXTHDR(&message, part)) {
      if (part->cmsg_level != SOL_SOCKET) continue;
      if (part->cmsg_type == SCM_CREDENTIALS &&
          part->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
        ucred credentials;
        std::memcpy(&credentials, CMSG_DATA(part), sizeof(credentials));
        pid = credentials.pid;
      } else if (part->cmsg_type == SCM_RIGHTS) {
        const size_t count = (part->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(part) + i * sizeof(int), sizeof(fd));
          close(fd);
        }
      }
    }
    GroupOutput::Writer& writer = WriterFor(output, pid);
    writer.splitter.Feed(
        std::string_view(OutputBuffer(), n),
        [&writer](std::string_view line) { LogLine(writer.prefix, line); });
    total += static_cast<size_t>(n);
  }
}

bool OutputCapture::DrainShared(Slot* slot) {
  auto found = shared_children_.find(slot->pid);
  if (found == shared_children_.end()) return false;
  GroupOutput* output = found->second;
  shared_children_.erase(found);
  // Everything the child wrote is queued already: read it (and what its
  // siblings queued before), then its last partial line is whole.
  ReadShared(output, kSharedDrainAtReap);
  LogBatch batch;
  FinishWriter(output, slot->pid);
  // Its descendants' splitters go too: they now write as "group pid N".
  auto descendants = output->descendants.find(slot->pid);
  if (descendants != output->descendants.end()) {
    for (pid_t pid : descendants->second) {
      auto writer = output->writers.find(pid);
      if (writer != output->writers.end() &&
          writer->second.child == slot->pid) {
        FinishWriter(output, pid);
      }
    }
    output->descendants.erase(descendants);
  }
  output->children.erase(slot->pid);
  return true;
}

void OutputCapture::ForgetDescendant(pid_t pid) {
  for (auto& [group, output] : shared_) {
    auto writer = output->writers.find(pid);
    if (writer == output->writers.end()) continue;
    const pid_t child = writer->second.child;
    if (child == pid) continue;  // a child: DrainShared forgets it
    LogBatch batch;
    FinishWriter(output, pid);
    auto kept = output->descendants.find(child);
    if (kept != output->descendants.end()) std::erase(kept->second, pid);
  }
}

void OutputCapture::FinishWriter(GroupOutput* output, pid_t pid) {
  auto writer = output->writers.find(pid);
  if (writer == output->writers.end()) return;
  writer->second.splitter.Finish([&writer](std::string_view line) {
    LogLine(writer->second.prefix, line);
  });
  output->writers.erase(writer);
}

void OutputCapture::ForgetGroup(const Group* group) {
  auto found = shared_.find(group);
  if (found == shared_.end()) return;
  CloseShared(found->second);
  shared_.erase(found);
}

void OutputCapture::CloseShared(GroupOutput* output) {
  ReadShared(output, kSharedDrainAtReap);
  LogBatch batch;
  for (auto& [pid, writer] : output->writers) {
    writer.splitter.Finish(
        [&writer](std::string_view line) { LogLine(writer.prefix, line); });
  }
  output->writers.clear();
  output->descendants.clear();
  for (auto& [pid, child] : output->children) shared_children_.erase(pid);
  uv_poll_stop(&output->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&output->poll), DeleteGroupOutput);
}

}  // namespace workerpool
