// A link: this process's end of one socketpair to a peer process, handed
// over by the Watcher (peer_added, the fd by SCM_RIGHTS). Requests,
// replies, progress and cancels flow on it directly between the two
// children (docs/PROTOCOL.md, "Links").
//
// This room is the socket: accepting it from the pool channel, reading
// (libuv's reads, and one read without blocking for the busy poll, both
// into one shared buffer), framing what goes out and writing it (whole
// loop turns coalesced, early slices of a burst to a peer on another CPU),
// and closing. What the frames mean is the client's (pool_client.h): it
// supplies the read callback, so a read reaches it without any call in
// between, and keeps the per-role bookkeeping below.
//
// Threading: the client's loop thread. Lifetime: a Link is created by
// Accept() and deleted when the close that CloseSocket() starts completes;
// until then it stays valid, also with `closed` set.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "client/balancer.h"
#include "client/busy_poll_backoff.h"
#include "client/deadline_list.h"
#include "client/peer_placement.h"
#include "client/stream_writer.h"
#include "core/frame_codec.h"

namespace workerpool::client {

class Client;
class ServerRequest;
struct OutRequest;
struct Route;

// A burst of frames queued on a link in one loop turn leaves in slices of
// this size when the peer runs on another CPU (WriteSlice). Measured with
// ipc_bench's 64 x 1 KiB window, the two processes on two CPUs: 8 KiB
// gave more requests/s than 4 or 16 KiB.
inline constexpr std::size_t kSliceBytes = 8 * 1024;

// Where a link's bytes are read, by libuv or by a busy poll; every frame is
// taken out before the next read reuses it.
alignas(64) inline char g_link_read_buffer[256 * 1024];

// The balancer's view (PeerLoad: outstanding, draining, condemned, closed)
// is kept by the client.
struct Link : PeerLoad {
  enum class Role { kSender, kServer };  // our role on this link

  // A link accepted from POOL (the pool channel, which just received its
  // socket), or nullptr when the accept failed. Reads start with
  // StartReading().
  static Link* Accept(Client* client, uv_loop_t* loop, uv_stream_t* pool,
                      Role role, std::string peer_group, int peer_index,
                      int peer_pid);

  // A link by connect: connected to PATH (the Watcher accepts at once),
  // or nullptr with a line on stderr.
  static Link* Connect(Client* client, uv_loop_t* loop, const std::string& path,
                       Role role, std::string peer_group, int peer_index,
                       int peer_pid);

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&pipe); }
  // Reads into g_link_read_buffer; ON_READ gets this link as the stream's
  // data and must take every frame out before it returns.
  void StartReading(uv_read_cb on_read);
  void StopReading() { uv_read_stop(stream()); }

  // Queues a frame for the next Flush of the writer. True when the bytes
  // queued this loop turn reached a slice: the caller then calls
  // WriteSlice().
  bool AppendFrame(wire::FrameType type, std::uint64_t id, std::uint32_t aux,
                   std::string_view meta, std::string_view body) {
    workerpool::AppendFrame(writer->pending(), type, id, aux, meta, body);
    return writer->pending().size() >= kSliceBytes;
  }
  // Writes what is pending now if the peer gains from an early slice (a
  // write error closes the link through the writer's error callback).
  void WriteSlice(std::uint64_t now_ms);

  enum class Read { kBytes, kNothing, kEnd };
  // One read without blocking, for the busy poll: kBytes with *BYTES in
  // g_link_read_buffer; kNothing when nothing is there yet; kEnd at EOF or
  // on an error, which is left to libuv's read to report.
  Read TryRead(std::string_view* bytes) {
    uv_os_fd_t fd;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&pipe), &fd) != 0) {
      return Read::kEnd;
    }
    const ssize_t n =
        recv(fd, g_link_read_buffer, sizeof(g_link_read_buffer), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return Read::kNothing;
    if (n <= 0) return Read::kEnd;
    *bytes = std::string_view(g_link_read_buffer, static_cast<size_t>(n));
    return Read::kBytes;
  }

  // Closes the socket; the link is deleted when the close completes. The
  // caller has flushed or abandoned the writer.
  void CloseSocket();

  std::string Describe() const {
    return peer_group + "[" + std::to_string(peer_index) + "] pid " +
           std::to_string(peer_pid);
  }

  Client* client = nullptr;
  Role role = Role::kSender;
  uv_pipe_t pipe;
  std::unique_ptr<StreamWriter> writer;
  FrameDecoder decoder;
  std::string peer_group;
  int peer_index = -1;
  int peer_pid = 0;
  std::unique_ptr<PeerPlacement> placement;  // where the peer runs

  Route* route = nullptr;             // kSender
  DeadlineList<OutRequest> inflight;  // kSender: ours it has, not cancelled
  // kServer: requests from the peer being handled or waiting here.
  std::unordered_map<std::uint64_t, std::shared_ptr<ServerRequest>> serving;

  bool dirty = false;   // on the client's list of links to flush
  bool sliced = false;  // this loop turn's burst passed kSliceBytes
  bool hot = false;     // bytes arrived since the last busy poll
  BusyPollBackoff busy_poll;
};

}  // namespace workerpool::client
