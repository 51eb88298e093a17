#include "client/pool_client.h"

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace workerpool {
namespace client {

using wire::ErrorCode;
using wire::FrameType;

namespace {
// Counters reach the Watcher at most this often, and only when they moved.
constexpr uint64_t kStatsIntervalMs = 1000;
}  // namespace

Client::~Client() {
  // Before the loop closes, as the application's callbacks in them may
  // expect it open.
  sender_.DeleteRequests();
  if (owns_loop_) {
    uv_loop_close(loop_);
    delete loop_;
  }
}

// ---------------------------------------------------------------- set-up

bool Client::Open(int fd, std::string* error) {
  if (const char* group = std::getenv("WORKERPOOL_GROUP")) group_ = group;
  if (const char* index = std::getenv("WORKERPOOL_INDEX")) index_ = atoi(index);

  if (!pool_.Open(loop_, fd, this, error)) return false;
  uv_prepare_init(loop_, &flusher_);
  flusher_.data = this;
  busy_.Init(loop_, &finished_);
  sender_.Init(loop_);
  uv_timer_init(loop_, &stats_timer_);
  stats_timer_.data = this;
  uv_signal_init(loop_, &sigterm_);
  sigterm_.data = this;
  uv_signal_start(
      &sigterm_,
      [](uv_signal_t* handle, int) {
        static_cast<Client*>(handle->data)->Stop();
      },
      SIGTERM);
  // A peer that goes away mid-write must not kill us.
  signal(SIGPIPE, SIG_IGN);

  pool_.StartReading();
  const char* links = std::getenv("WP_CONNECT_LINKS");
  connect_links_ = links != nullptr && std::strcmp(links, "1") == 0;
  pool_.SendHello(connect_links_);
  FlushAll();
  return true;
}

// ---------------------------------------------------------------- loop turn

void Client::OnFlusher(uv_prepare_t* handle) {
  static_cast<Client*>(handle->data)->BeforeBlocking();
}

void Client::FlushAll() {
  // Until nothing is left: a deferred completion's callback may send.
  do {
    // Taken first: a failed write closes its link, which leaves dirty_.
    std::vector<Link*> dirty;
    dirty.swap(dirty_);
    for (Link* link : dirty) {
      link->dirty = false;
      link->sliced = false;
      if (!link->closed) link->writer->Flush();
    }
    if (dirty_.empty()) {  // keep the capacity: no allocation per loop turn
      dirty.clear();
      dirty_.swap(dirty);
    }
    // Deferred completions run here, outside any caller's stack.
    sender_.RunCompletions();
    if (stats_due_) {
      stats_due_ = false;
      SendStats();
    }
    pool_.Flush();
  } while (!dirty_.empty());
  if (!busy_.has_hot()) uv_prepare_stop(&flusher_);
}

void Client::BeforeBlocking() {
  FlushAll();
  if (busy_.has_hot()) BusyPoll();
}

void Client::BusyPoll() {
  const BusyPoller::Outcome outcome = busy_.Poll(
      [this](Link* link, std::string_view bytes) { OnLinkInput(link, bytes); });
  if (outcome == BusyPoller::Outcome::kMissed) CountChanged();
  if (outcome != BusyPoller::Outcome::kDelivered) {
    // FlushAll ran just before and nothing ran since: no work is left, so
    // the loop may sleep without calling back first.
    uv_prepare_stop(&flusher_);
    return;
  }
  if (finished_) return;
  CountChanged();
  FlushAll();
  if (finished_) return;
  busy_.TurnAgain();
}

void Client::MarkDirty(Link* link) {
  if (!link->dirty) {
    link->dirty = true;
    dirty_.push_back(link);
  }
  ArmFlusher();
}

void Client::SendOnLink(Link* link, FrameType type, uint64_t id, uint32_t aux,
                        std::string_view meta, std::string_view body) {
  if (link->closed) return;
  if (link->AppendFrame(type, id, aux, meta, body)) {
    link->WriteSlice(uv_now(loop_));
    if (link->closed) return;  // the write failed: the peer is gone
  }
  MarkDirty(link);
}

// ---------------------------------------------------------------- pool events

void Client::OnConfig(const ChildConfig& config) {
  server_.SetLimits(config.max_inflight, config.max_requests);
  busy_.SetBudgetUs(config.busy_poll_us);
  server_.ReportRecycleLimit();
  pool_.SetHeartbeat(config.heartbeat_ms);
  server_.ServeNext();
}

void Client::OnPeerAdded(const PeerInfo& peer) {
  const Link::Role role =
      peer.we_serve ? Link::Role::kServer : Link::Role::kSender;
  Link* link = nullptr;
  if (connect_links_ && peer.path.empty()) {
    // A "listen" link (both ends connect): the C++ library receives fds
    // and asks for connect links only to measure that path.
    fprintf(stderr,
            "workerpool: a link to listen for; WP_CONNECT_LINKS=1 "
            "supports only links to connect to\n");
    return;
  }
  if (connect_links_) {
    link = Link::Connect(this, loop_, peer.path, role, peer.group, peer.index,
                         peer.pid);
  } else if (!pool_.has_socket()) {
    fprintf(stderr, "workerpool: peer announced without a socket\n");
    return;
  } else {
    link = Link::Accept(this, loop_, pool_.stream(), role, peer.group,
                        peer.index, peer.pid);
  }
  if (link == nullptr) return;
  link->writer = std::make_unique<StreamWriter>(link->stream(), [link](int) {
    link->client->OnLinkClosed(link, "write failed");
  });
  links_.insert(link);
  if (link->role == Link::Role::kSender) {
    link->route = sender_.RouteTo(link->peer_group);
    link->route->balancer.AddPeer(link);
  }
  link->StartReading(&Client::OnLinkRead);
  if (link->route != nullptr) sender_.Dispatch(link->route);
}

std::vector<Link*> Client::LinksTo(int pid) const {
  std::vector<Link*> matching;
  for (Link* link : links_) {
    if (link->peer_pid == pid) matching.push_back(link);
  }
  return matching;
}

void Client::OnPeerGone(int pid, const std::string& how) {
  for (Link* link : LinksTo(pid)) {
    FailLink(link, ErrorCode::kWorkerDied,
             "worker died: " + link->Describe() + " " + how);
    CloseLink(link);
  }
}

void Client::OnPeerDraining(int pid) {
  for (Link* link : LinksTo(pid)) {
    link->draining = true;
    if (link->outstanding == 0 && link->role == Link::Role::kSender) {
      CloseLink(link);
    }
  }
}

void Client::OnPoolGone() {
  sender_.OnPoolGone();
  Stop();
}

// ---------------------------------------------------------------- links

void Client::OnLinkRead(uv_stream_t* stream, ssize_t nread,
                        const uv_buf_t* buf) {
  Link* link = static_cast<Link*>(stream->data);
  Client* self = link->client;
  if (nread < 0) {
    self->OnLinkClosed(link, nread == UV_EOF
                                 ? "closed"
                                 : uv_strerror(static_cast<int>(nread)));
    self->FlushAll();
    return;
  }
  self->OnLinkInput(link, std::string_view(buf->base, nread));
  self->FlushAll();
}

void Client::OnLinkInput(Link* link, std::string_view bytes) {
  if (bytes.empty()) return;  // libuv's EAGAIN: nothing came, nothing to poll
  // Drained below before the (shared) read buffer is used again.
  link->decoder.FeedBorrowed(bytes);
  FrameView frame;
  while (!link->closed && link->decoder.Next(&frame)) {
    OnLinkFrame(link, frame);
  }
  if (link->closed) return;
  if (!link->decoder.error().ok()) {
    fprintf(stderr, "workerpool: bad frame from %s: %s\n",
            link->Describe().c_str(), link->decoder.error().message().c_str());
    FailLink(link, ErrorCode::kProtocol,
             "protocol error from " + link->Describe());
    CloseLink(link);
    return;
  }
  if (busy_.MarkHot(link)) ArmFlusher();
}

void Client::OnLinkClosed(Link* link, const std::string& why) {
  if (link->closed) return;
  if (link->role == Link::Role::kSender && link->outstanding > 0) {
    // The peer died; the Watcher's peer_gone names how, so keep the
    // requests until then. Without a pool there is nobody to ask.
    if (!pool_.open()) {
      FailLink(link, ErrorCode::kWorkerDied,
               "worker died: " + link->Describe() + " (" + why + ")");
    } else {
      link->draining = true;
      link->route->balancer.RemovePeer(link);
      link->StopReading();
      return;
    }
  }
  CloseLink(link);
}

void Client::FailLink(Link* link, ErrorCode code, const std::string& text) {
  sender_.FailLinkRequests(link, code, text);
  server_.DetachLink(link);
}

void Client::CloseLink(Link* link) {
  if (link->closed) return;
  link->closed = true;
  FailLink(link, ErrorCode::kWorkerDied, "worker died: " + link->Describe());
  server_.DropLink(link);
  if (link->route != nullptr) {
    Route* route = link->route;
    route->balancer.RemovePeer(link);
    link->route = nullptr;
    sender_.Dispatch(route);
  }
  links_.erase(link);
  // The next FlushAll must not reach it: it is deleted when the close ends.
  if (link->dirty) {
    std::erase(dirty_, link);
    link->dirty = false;
  }
  busy_.Forget(link);
  link->writer->Abandon();
  link->CloseSocket();
  MaybeFinishStop();
}

// ---------------------------------------------------------------- stats

ClientStats Client::stats() const {
  ClientStats stats;
  sender_.FillStats(&stats);
  server_.FillStats(&stats);
  stats.busy_poll_reads = busy_.reads();
  stats.busy_poll_misses = busy_.misses();
  return stats;
}

void Client::ScheduleStats() {
  const uint64_t now = uv_now(loop_);
  if (!stats_sent_ || now - stats_sent_ms_ >= kStatsIntervalMs) {
    stats_due_ = true;
    ArmFlusher();
    return;
  }
  StartStatsTimer(stats_sent_ms_ + kStatsIntervalMs - now);
}

void Client::LoadRising() {
  if (!pool_.open() || stats_due_) return;
  const uint64_t now = uv_now(loop_);
  if (rising_sent_ && now - rising_sent_ms_ < kStatsIntervalMs) {
    CountChanged();
    return;
  }
  rising_sent_ = true;
  rising_sent_ms_ = now;
  stats_due_ = true;
  ArmFlusher();
}

void Client::StartStatsTimer(uint64_t delay_ms) {
  uv_timer_start(
      &stats_timer_,
      [](uv_timer_t* timer) {
        Client* self = static_cast<Client*>(timer->data);
        self->SendStats();
        self->FlushAll();
      },
      delay_ms, 0);
}

void Client::SendStats() {
  stats_sent_ = true;
  stats_sent_ms_ = uv_now(loop_);
  pool_.SendStats(stats(), sender_.Latencies(), app_stats_);
}

// ---------------------------------------------------------------- stopping

void Client::Stop() {
  if (stopping_) return;
  stopping_ = true;
  if (on_stop_) on_stop_();
  MaybeFinishStop();
}

void Client::FinishStopIfIdle() {
  if (!sender_.idle() || server_.serving() > 0) return;
  for (Link* link : links_) {
    // Senders still linked to us may have requests on the way.
    if (link->role == Link::Role::kServer && pool_.open()) return;
  }
  finished_ = true;
  busy_.ForgetAll();
  // Close every handle of ours; Run() returns once the application's
  // handles are closed too.
  std::vector<Link*> open(links_.begin(), links_.end());
  for (Link* link : open) {
    link->closed = true;
    link->writer->Flush();
    links_.erase(link);
    link->CloseSocket();
  }
  pool_.Close();
  for (uv_handle_t* handle :
       {reinterpret_cast<uv_handle_t*>(&flusher_), busy_.idle_handle(),
        sender_.deadline_timer(), pool_.heartbeat_handle(),
        reinterpret_cast<uv_handle_t*>(&stats_timer_),
        reinterpret_cast<uv_handle_t*>(&sigterm_)}) {
    if (!uv_is_closing(handle)) uv_close(handle, nullptr);
  }
}

}  // namespace client

std::unique_ptr<PoolClient> PoolClient::FromFd(int fd, uv_loop_t* loop,
                                               std::string* error) {
  bool owns = loop == nullptr;
  if (owns) {
    loop = new uv_loop_t;
    uv_loop_init(loop);
  }
  auto client = std::make_unique<client::Client>(loop, owns);
  if (!client->Open(fd, error)) return nullptr;
  return client;
}

std::unique_ptr<PoolClient> PoolClient::FromEnvironment(uv_loop_t* loop,
                                                        std::string* error) {
  const char* text = std::getenv("WORKERPOOL_IPC_FD");
  if (text == nullptr || *text == '\0') {
    *error =
        "workerpool: WORKERPOOL_IPC_FD is not set; this program is a "
        "workerpool child and must be started by `workerpool run`";
    return nullptr;
  }
  char* end = nullptr;
  long fd = std::strtol(text, &end, 10);
  if (*end != '\0' || fd < 0 || fd > 65535) {
    *error = std::string(
                 "workerpool: WORKERPOOL_IPC_FD is not a file "
                 "descriptor number: '") +
             text + "'";
    return nullptr;
  }
  return FromFd(static_cast<int>(fd), loop, error);
}

}  // namespace workerpool
