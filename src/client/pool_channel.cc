#include "client/pool_channel.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace workerpool::client {
namespace {

using json = nlohmann::json;
using wire::FrameType;

// After the pool channel closes, the process exits at the latest after this.
constexpr uint64_t kPoolGoneExitMs = 2000;

json ParseJsonObject(std::string_view text) {
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!value.is_object()) return json::object();
  return value;
}

template <typename T>
T JsonField(const json& object, const char* key, T fallback) {
  auto found = object.find(key);
  if (found == object.end()) return fallback;
  // get<T> may throw on a type mismatch: a malformed control frame from a
  // peer must not take the child down.
  try {
    return found->get<T>();
  } catch (const json::exception&) {
    return fallback;
  }
}

}  // namespace

bool PoolChannel::Open(uv_loop_t* loop, int fd, Listener* listener,
                       std::string* error) {
  loop_ = loop;
  listener_ = listener;
  uv_pipe_init(loop, &pipe_, /*ipc=*/1);
  pipe_.data = this;
  int rc = uv_pipe_open(&pipe_, fd);
  if (rc != 0) {
    *error = std::string("workerpool: cannot use pool channel fd ") +
             std::to_string(fd) + ": " + uv_strerror(rc);
    uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), nullptr);
    uv_run(loop, UV_RUN_NOWAIT);
    return false;
  }
  open_ = true;
  writer_ = std::make_unique<StreamWriter>(
      stream(), [this](int) { Gone("write to the pool failed"); });
  uv_timer_init(loop, &heartbeat_timer_);
  heartbeat_timer_.data = this;
  return true;
}

void PoolChannel::StartReading() {
  auto on_alloc = [](uv_handle_t*, size_t, uv_buf_t* buf) {
    static char buffer[64 * 1024];
    *buf = uv_buf_init(buffer, sizeof(buffer));
  };
  uv_read_start(stream(), on_alloc, &PoolChannel::OnRead);
}

void PoolChannel::OnRead(uv_stream_t* stream, ssize_t nread,
                         const uv_buf_t* buf) {
  auto* self = static_cast<PoolChannel*>(stream->data);
  if (nread < 0) {
    self->Gone(nread == UV_EOF ? "the pool closed its channel"
                               : uv_strerror(static_cast<int>(nread)));
    return;
  }
  self->decoder_.Feed(std::string_view(buf->base, nread));
  FrameView frame;
  while (self->open_ && self->decoder_.Next(&frame)) self->OnFrame(frame);
  if (!self->decoder_.error().ok()) {
    fprintf(stderr, "workerpool: bad frame from the pool: %s\n",
            self->decoder_.error().message().c_str());
    self->Gone("protocol error");
  }
  self->listener_->OnPoolReadDone();
}

void PoolChannel::OnFrame(const FrameView& frame) {
  json body = ParseJsonObject(frame.body);
  switch (frame.header.type) {
    case FrameType::kConfig: {
      ChildConfig config;
      config.max_inflight = JsonField<int>(body, "max_inflight", 1);
      config.max_requests = JsonField<uint64_t>(body, "max_requests", 0);
      config.busy_poll_us =
          JsonField<int>(body, "busy_poll_us", wire::kDefaultBusyPollUs);
      config.heartbeat_ms = JsonField<int>(body, "heartbeat_ms", 0);
      listener_->OnConfig(config);
      break;
    }
    case FrameType::kPeerAdded: {
      PeerInfo peer;
      peer.we_serve = JsonField<std::string>(body, "role", "") == "server";
      peer.group = JsonField<std::string>(body, "group", "");
      peer.index = JsonField<int>(body, "index", -1);
      peer.pid = JsonField<int>(body, "pid", 0);
      peer.path = JsonField<std::string>(body, "path", "");
      listener_->OnPeerAdded(peer);
      break;
    }
    case FrameType::kRouteOpened: {
      RouteLimits limits;
      limits.group = JsonField<std::string>(body, "group", "");
      limits.max_inflight = JsonField<int>(body, "max_inflight", 1);
      limits.queue_limit = JsonField<int>(body, "queue_limit", 1000);
      limits.request_timeout_ms =
          JsonField<int64_t>(body, "request_timeout_ms", 30000);
      listener_->OnRouteOpened(limits);
      break;
    }
    case FrameType::kRouteRefused:
      listener_->OnRouteRefused(
          JsonField<std::string>(body, "group", ""),
          JsonField<std::string>(body, "error", "refused"));
      break;
    case FrameType::kPeerGone:
      listener_->OnPeerGone(JsonField<int>(body, "pid", 0),
                            JsonField<std::string>(body, "how", "exited"));
      break;
    case FrameType::kPeerDraining:
      listener_->OnPeerDraining(JsonField<int>(body, "pid", 0));
      break;
    case FrameType::kDrain:
      listener_->OnDrain();
      break;
    default:
      break;  // unknown control frames are ignored (forward compatible)
  }
}

bool PoolChannel::has_socket() { return uv_pipe_pending_count(&pipe_) > 0; }

void PoolChannel::Send(FrameType type, std::string_view body) {
  if (!open_) return;
  AppendFrame(writer_->pending(), type, 0, 0, {}, body);
  listener_->OnPoolOutput();
}

void PoolChannel::SendHello(bool connect_links) {
  json hello{{"pid", getpid()}, {"protocol", wire::kWireVersion}};
  if (connect_links) hello["links"] = "connect";
  Send(FrameType::kHello, hello.dump());
}

void PoolChannel::SendRouteOpen(const std::string& group) {
  Send(FrameType::kRouteOpen, json{{"group", group}}.dump());
}

void PoolChannel::SendKillPeer(int pid, const std::string& reason) {
  Send(FrameType::kKillPeer, json{{"pid", pid}, {"reason", reason}}.dump());
}

void PoolChannel::SendStats(const ClientStats& s,
                            const std::vector<GroupLatency>& latency,
                            const std::string& app_stats) {
  json body{{"sent", s.sent},
            {"replied", s.replied},
            {"failed", s.failed},
            {"refused", s.refused},
            {"cancelled", s.cancelled},
            {"timed_out", s.timed_out},
            {"served", s.served},
            {"served_errors", s.served_errors},
            {"queued", s.queued},
            {"inflight", s.inflight},
            {"serving", s.serving},
            {"busy_poll_reads", s.busy_poll_reads},
            {"busy_poll_misses", s.busy_poll_misses}};
  json by_group = json::object();
  json queued = json::object();
  for (const GroupLatency& route : latency) {
    // Only routes with a backlog: a route absent from a frame has none.
    if (route.queued > 0) {
      queued[*route.group] = {{"queued", route.queued}};
    }
    if (route.latency->total() == 0) continue;
    by_group[*route.group] = {{"bounds_ms", kLatencyBoundsMs},
                              {"counts", route.latency->counts},
                              {"sum_ms", route.latency->sum_ms}};
  }
  if (!by_group.empty()) body["latency"] = std::move(by_group);
  if (!queued.empty()) body["routes"] = std::move(queued);
  if (!app_stats.empty()) body["app"] = ParseJsonObject(app_stats);
  Send(FrameType::kStats, body.dump());
}

void PoolChannel::SetHeartbeat(int heartbeat_ms) {
  if (heartbeat_ms <= 0) {
    uv_timer_stop(&heartbeat_timer_);
    return;
  }
  uint64_t every = std::max(1, heartbeat_ms / 3);
  uv_timer_start(
      &heartbeat_timer_,
      [](uv_timer_t* timer) {
        static_cast<PoolChannel*>(timer->data)
            ->Send(FrameType::kHeartbeat, json::object().dump());
      },
      every, every);
}

void PoolChannel::Close() {
  if (!open_) return;
  open_ = false;
  writer_->Flush();
  uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), nullptr);
}

void PoolChannel::Gone(const char* why) {
  if (!open_) return;
  open_ = false;
  fprintf(stderr, "workerpool: %s; exiting\n", why);
  uv_read_stop(stream());
  writer_->Abandon();
  uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), nullptr);
  listener_->OnPoolGone();
  // The Watcher is gone: do not linger if the application keeps handles.
  static uv_timer_t exit_timer;
  uv_timer_init(loop_, &exit_timer);
  uv_timer_start(
      &exit_timer, [](uv_timer_t*) { _exit(0); }, kPoolGoneExitMs, 0);
  uv_unref(reinterpret_cast<uv_handle_t*>(&exit_timer));
}

}  // namespace workerpool::client
