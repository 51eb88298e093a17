#include "client/link.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace workerpool::client {

Link* Link::Accept(Client* client, uv_loop_t* loop, uv_stream_t* pool,
                   Role role, std::string peer_group, int peer_index,
                   int peer_pid) {
  auto* link = new Link;
  link->client = client;
  link->role = role;
  link->peer_group = std::move(peer_group);
  link->peer_index = peer_index;
  link->peer_pid = peer_pid;
  link->placement = std::make_unique<PeerPlacement>(link->peer_pid);
  uv_pipe_init(loop, &link->pipe, 0);
  link->pipe.data = link;
  if (uv_accept(pool, link->stream()) != 0) {
    link->CloseSocket();
    return nullptr;
  }
  return link;
}

Link* Link::Connect(Client* client, uv_loop_t* loop, const std::string& path,
                    Role role, std::string peer_group, int peer_index,
                    int peer_pid) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    fprintf(stderr, "workerpool: bad link path\n");
    return nullptr;
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  // A Unix socket connects at once while the backlog has room; the Watcher
  // accepts each connection as soon as it is made.
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&address),
                        sizeof(address)) != 0) {
    fprintf(stderr, "workerpool: cannot connect to link %s: %s\n", path.c_str(),
            strerror(errno));
    if (fd >= 0) close(fd);
    return nullptr;
  }
  auto* link = new Link;
  link->client = client;
  link->role = role;
  link->peer_group = std::move(peer_group);
  link->peer_index = peer_index;
  link->peer_pid = peer_pid;
  link->placement = std::make_unique<PeerPlacement>(link->peer_pid);
  uv_pipe_init(loop, &link->pipe, 0);
  link->pipe.data = link;
  if (uv_pipe_open(&link->pipe, fd) != 0) {
    close(fd);
    link->CloseSocket();
    return nullptr;
  }
  return link;
}

void Link::StartReading(uv_read_cb on_read) {
  auto on_alloc = [](uv_handle_t*, size_t, uv_buf_t* buf) {
    *buf = uv_buf_init(g_link_read_buffer, sizeof(g_link_read_buffer));
  };
  uv_read_start(stream(), on_alloc, on_read);
}

void Link::WriteSlice(std::uint64_t now_ms) {
  // A burst's slices leave at once rather than with the rest at the end of
  // the loop turn when that lets the peer work in parallel: a peer on
  // another CPU starts on them while this side produces the rest (a
  // pipeline, not a lockstep). A peer on this CPU could only run by
  // preempting this side: every early write would be two context switches
  // more, so the burst leaves in one write. Not knowing, only the first
  // slice leaves early (the better compromise measured on two CPUs).
  switch (placement->Check(now_ms)) {
    case PeerPlacement::Where::kOtherCpu:
      writer->Flush();
      break;
    case PeerPlacement::Where::kSameCpu:
      break;
    case PeerPlacement::Where::kUnknown:
      if (!sliced) writer->Flush();
      break;
  }
  sliced = true;
}

void Link::CloseSocket() {
  uv_close(reinterpret_cast<uv_handle_t*>(&pipe),
           [](uv_handle_t* h) { delete static_cast<Link*>(h->data); });
}

}  // namespace workerpool::client
