// The spawner's side (os/spawner.h): one request at a time, one answer each.
// Nothing here may leave a descriptor open between requests: the table it
// keeps small is the whole point.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "os/spawner.h"

namespace workerpool {
namespace {

namespace sw = spawner_wire;

// Big enough for any request the Watcher's socket can send in one message
// (its SO_SNDBUF); a bigger one arrives truncated and is refused.
constexpr std::size_t kMaxRequest = 8 << 20;

bool Reply(int socket, pid_t pid, const std::string& error) {
  sw::Reply reply{};
  reply.pid = pid;
  std::snprintf(reply.error, sizeof(reply.error), "%s", error.c_str());
  ssize_t sent;
  do {
    sent = send(socket, &reply, sizeof(reply), MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  return sent == static_cast<ssize_t>(sizeof(reply));
}

// Reads COUNT NUL-terminated strings from [*at, end).
bool ReadStrings(const char** at, const char* end, std::uint32_t count,
                 std::vector<std::string>* out) {
  for (std::uint32_t i = 0; i < count; ++i) {
    const void* nul = std::memchr(*at, '\0', static_cast<size_t>(end - *at));
    if (nul == nullptr) return false;
    out->emplace_back(*at, static_cast<const char*>(nul));
    *at = static_cast<const char*>(nul) + 1;
  }
  return true;
}

// Parses one request; SPEC gets its fds (FDS[0] is the output pipe).
std::string Parse(const char* data, std::size_t size,
                  const std::vector<int>& fds, SpawnSpec* spec) {
  sw::Request header;
  if (size < sizeof(header)) return "short request";
  std::memcpy(&header, data, sizeof(header));
  if (header.magic != sw::kMagic) return "bad request";
  if (header.fd_count != fds.size() || fds.empty()) return "fds missing";
  const char* at = data + sizeof(header);
  const char* end = data + size;
  std::vector<std::string> cwd;
  if (!ReadStrings(&at, end, 1, &cwd) ||
      !ReadStrings(&at, end, header.argc, &spec->argv) ||
      !ReadStrings(&at, end, header.envc, &spec->env) || at != end) {
    return "malformed request";
  }
  if (spec->argv.empty()) return "empty command";
  spec->cwd = cwd[0];
  spec->uid = header.uid;
  spec->gid = header.gid;
  spec->set_listen_pid = (header.flags & sw::kSetListenPid) != 0;
  spec->pass_fds.assign(fds.begin() + 1, fds.end());
  return "";
}

}  // namespace

int RunSpawner(int socket) {
  // Not a vector: its zero fill would make all of it resident.
  std::unique_ptr<char[]> buffer(new char[kMaxRequest]);
  const pid_t watcher = getppid();
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * sw::kMaxFds)];
  for (;;) {
    iovec iov{buffer.get(), kMaxRequest};
    msghdr message{};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    ssize_t got = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return 0;  // the Watcher closed its end, or is gone
    std::vector<int> fds;
    for (cmsghdr* each = CMSG_FIRSTHDR(&message); each != nullptr;
         each = CMSG_NXTHDR(&message, each)) {
      if (each->cmsg_level != SOL_SOCKET || each->cmsg_type != SCM_RIGHTS) {
        continue;
      }
      const std::size_t count = (each->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const std::size_t first = fds.size();
      fds.resize(first + count);
      std::memcpy(fds.data() + first, CMSG_DATA(each), count * sizeof(int));
    }
    SpawnSpec spec;
    std::string error;
    if ((message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
      error = "request too large";
    } else {
      error = Parse(buffer.get(), static_cast<std::size_t>(got), fds, &spec);
    }
    pid_t pid = -1;
    if (error.empty()) {
      Result<pid_t> child = CloneChild(spec, fds[0], watcher, true);
      if (child.ok()) {
        pid = *child;
      } else {
        error = child.status().message();
      }
    }
    for (int fd : fds) close(fd);
    if (!Reply(socket, pid, error)) return 0;
  }
}

}  // namespace workerpool
