// The client library behind include/workerpool/client.h.
//
// Data path: the Watcher hands this process one end of a socketpair per peer
// (kPeerAdded, fd by SCM_RIGHTS) and steps out; requests, replies, progress
// and cancels then flow directly between the two children. This process
// balances its own requests over the peers of a group (least in flight, at
// most max_inflight each, then a bounded priority queue).
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>
#include <vector>

#include "client/peer_placement.h"
#include "client/stream_writer.h"
#include "core/frame_codec.h"
#include "core/id_map.h"
#include "workerpool/client.h"

namespace workerpool {
namespace {

using json = nlohmann::json;
using wire::ErrorCode;
using wire::FrameType;

// A job that ignores a cancel this long is killed.
constexpr auto kCancelGrace = std::chrono::seconds(5);
// Counters reach the Watcher at most this often, and only when they moved.
constexpr uint64_t kStatsIntervalMs = 1000;
// After the pool channel closes, the process exits at the latest after this.
constexpr uint64_t kPoolGoneExitMs = 2000;
// A burst of frames queued on a link in one loop turn leaves in slices of
// this size when the peer runs on another CPU (SendOnLink). Measured with
// ipc_bench's 64 x 1 KiB window, the two processes on two CPUs: 8 KiB
// gave more requests/s than 4 or 16 KiB.
constexpr size_t kSliceBytes = 8 * 1024;

// Where a link's bytes are read, by libuv or by a busy poll; every frame is
// taken out before the next read reuses it.
alignas(64) char g_link_read_buffer[256 * 1024];

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

class Client;
struct Link;
struct Route;
struct RequestList;

constexpr uint64_t kNoDeadline = UINT64_MAX;

// Upper bounds (ms) of the request latency histogram reported in stats; the
// Watcher sums them per target group for the metrics endpoint.
constexpr std::array<uint64_t, 14> kLatencyBoundsMs = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000};

// A request this process sent (or will send).
struct OutRequest {
  uint64_t id = 0;
  Route* route = nullptr;
  std::string body;  // kept only while queued
  std::string meta;
  int32_t priority = 0;
  uint64_t sequence = 0;  // arrival order within a priority
  PoolClient::ReplyCallback done;
  std::function<void(const Progress&)> on_progress;
  Link* link = nullptr;  // while in flight
  // In flight: on its link's list, or on the client's list of cancelled
  // requests; each list is ordered by deadline (loop time, ms).
  RequestList* listed_in = nullptr;
  OutRequest* prev = nullptr;
  OutRequest* next = nullptr;
  uint64_t deadline_ms = kNoDeadline;
  uint64_t sent_ms = 0;    // loop time of Send(), for the latency histogram
  bool cancelled = false;  // answered kCancelled; waiting for the server
};

// Requests in deadline order, linked through the requests themselves: one
// timeout per route (and one cancel grace) makes deadlines arrive in order,
// so inserting is O(1) at the tail and no node is allocated per request.
struct RequestList {
  OutRequest* head = nullptr;
  OutRequest* tail = nullptr;

  bool empty() const { return head == nullptr; }
  void Insert(OutRequest* request) {
    OutRequest* after = tail;
    while (after != nullptr && after->deadline_ms > request->deadline_ms) {
      after = after->prev;  // a timeout changed by a reload
    }
    request->prev = after;
    request->next = after != nullptr ? after->next : head;
    if (request->next != nullptr) {
      request->next->prev = request;
    } else {
      tail = request;
    }
    if (after != nullptr) {
      after->next = request;
    } else {
      head = request;
    }
    request->listed_in = this;
  }
  void Remove(OutRequest* request) {
    (request->prev != nullptr ? request->prev->next : head) = request->next;
    (request->next != nullptr ? request->next->prev : tail) = request->prev;
    request->prev = request->next = nullptr;
    request->listed_in = nullptr;
  }
};

struct QueueKey {
  int32_t priority;
  uint64_t sequence;
  bool operator<(const QueueKey& other) const {
    return priority != other.priority ? priority < other.priority
                                      : sequence < other.sequence;
  }
};

// The target side of a route: the peers of one group this process sends to.
struct Route {
  enum class State { kOpening, kOpen, kRefused } state = State::kOpening;
  std::string group;
  std::string refusal;  // why, when refused
  int max_inflight = 1;
  int queue_limit = 1000;
  std::chrono::milliseconds request_timeout{30000};
  std::vector<Link*> peers;
  std::map<QueueKey, OutRequest*> queue;
  // Answered requests by latency bucket (the last one is +Inf).
  std::array<uint64_t, kLatencyBoundsMs.size() + 1> latency_counts{};
  uint64_t latency_sum_ms = 0;
};

class ServerRequest;

// One socketpair end to a peer process.
struct Link {
  enum class Role { kSender, kServer };  // our role on this link
  Client* client = nullptr;
  Role role = Role::kSender;
  uv_pipe_t pipe;
  std::unique_ptr<StreamWriter> writer;
  FrameDecoder decoder;
  std::string peer_group;
  int peer_index = -1;
  int peer_pid = 0;
  Route* route = nullptr;  // kSender
  RequestList inflight;    // kSender: our requests it has, not cancelled
  int outstanding = 0;     // kSender: every request it has, cancelled too
  std::unordered_map<uint64_t, std::shared_ptr<ServerRequest>> serving;
  bool draining = false;   // the peer takes no new requests
  bool condemned = false;  // we asked the Watcher to kill the peer
  bool closed = false;
  bool dirty = false;
  bool sliced = false;  // this loop turn's burst passed kSliceBytes
  bool hot = false;     // bytes arrived since the last busy poll
  // Busy polls of this link in a row that found nothing, and how many of
  // its next chances to be busy-polled are skipped because of them.
  int busy_poll_misses = 0;
  int busy_poll_skips = 0;
  std::unique_ptr<PeerPlacement> placement;  // where the peer runs
  std::string Describe() const {
    return peer_group + "[" + std::to_string(peer_index) + "] pid " +
           std::to_string(peer_pid);
  }
};

class ServerRequest : public IncomingRequest,
                      public std::enable_shared_from_this<ServerRequest> {
 public:
  // Borrows BODY and META (views into the read buffer) until OwnPayload():
  // a sync handler reads a request where it arrived.
  ServerRequest(Client* client, Link* link, uint64_t id, std::string_view body,
                std::string_view meta, int32_t priority)
      : client_(client),
        link_(link),
        id_(id),
        body_(body),
        meta_(meta),
        priority_(priority) {}

  // Copies the payload into this object: before an async handler sees the
  // request (it may keep it, and views of its bytes, past this read), and
  // for a request that waits in the queue.
  void OwnPayload() {
    if (owns_payload_) return;
    owns_payload_ = true;
    // A small request lives inside this object.
    char* data = inline_payload_;
    if (meta_.size() + body_.size() > sizeof(inline_payload_)) {
      heap_payload_ =
          std::make_unique_for_overwrite<char[]>(meta_.size() + body_.size());
      data = heap_payload_.get();
    }
    if (!meta_.empty()) std::memcpy(data, meta_.data(), meta_.size());
    if (!body_.empty()) {
      std::memcpy(data + meta_.size(), body_.data(), body_.size());
    }
    meta_ = std::string_view(data, meta_.size());
    body_ = std::string_view(data + meta_.size(), body_.size());
  }
  // Once owned, the views point into the object itself.
  ServerRequest(const ServerRequest&) = delete;
  ServerRequest& operator=(const ServerRequest&) = delete;

  uint64_t id() const override { return id_; }
  std::string_view body() const override { return body_; }
  std::string_view meta() const override { return meta_; }
  int32_t priority() const override { return priority_; }
  const std::string& sender_group() const override { return sender_group_; }
  void Reply(std::string_view body, std::string_view meta) override;
  void Fail(std::string_view message) override;
  void SendProgress(double fraction, std::string_view text) override;
  bool cancelled() const override { return cancelled_; }
  void OnCancel(std::function<void()> callback) override {
    on_cancel_ = std::move(callback);
  }

  void MarkCancelled() {
    cancelled_ = true;
    if (on_cancel_) on_cancel_();
  }
  void Detach() { link_ = nullptr; }
  Link* link() const { return link_; }
  bool answered() const { return answered_; }
  bool started = false;
  std::string sender_group_;

 private:
  void Answer(FrameType type, uint32_t aux, std::string_view meta,
              std::string_view body);
  Client* client_;
  Link* link_;
  uint64_t id_;
  // Into the read buffer, or (owns_payload_) inline_payload_/heap_payload_.
  std::string_view body_;
  std::string_view meta_;
  int32_t priority_;
  bool owns_payload_ = false;
  bool cancelled_ = false;
  bool answered_ = false;
  std::function<void()> on_cancel_;
  std::unique_ptr<char[]> heap_payload_;
  char inline_payload_[192];
};

class Client : public PoolClient {
 public:
  Client(uv_loop_t* loop, bool owns_loop)
      : loop_(loop), owns_loop_(owns_loop) {}
  ~Client() override {
    requests_.ForEach([](uint64_t, OutRequest* request) { delete request; });
    if (owns_loop_) {
      uv_loop_close(loop_);
      delete loop_;
    }
  }

  bool Open(int fd, std::string* error);

  void Serve(SyncHandler handler) override {
    sync_handler_ = std::move(handler);
    async_handler_ = nullptr;
  }
  void Serve(AsyncHandler handler) override {
    async_handler_ = std::move(handler);
    sync_handler_ = nullptr;
  }
  uint64_t Send(const std::string& group, std::string_view body,
                ReplyCallback done, SendOptions options) override;
  void Cancel(uint64_t request_id) override;
  void OnStop(std::function<void()> callback) override {
    on_stop_ = std::move(callback);
  }
  int Run() override {
    uv_run(loop_, UV_RUN_DEFAULT);
    return 0;
  }
  void Stop() override;
  ClientStats stats() const override {
    ClientStats copy = stats_;
    copy.inflight = 0;
    copy.queued = 0;
    copy.serving = static_cast<uint64_t>(serving_now_) + serve_queue_.size();
    requests_.ForEach([&copy](uint64_t, const OutRequest* request) {
      if (request->link != nullptr) {
        ++copy.inflight;
      } else if (!request->cancelled) {
        ++copy.queued;
      }
    });
    return copy;
  }
  uv_loop_t* loop() override { return loop_; }
  void SetAppStats(std::string json_object) override {
    app_stats_ = std::move(json_object);
    CountChanged();
  }
  const std::string& group() const override { return group_; }
  int index() const override { return index_; }

  // Used by ServerRequest.
  void SendOnLink(Link* link, FrameType type, uint64_t id, uint32_t aux,
                  std::string_view meta, std::string_view body);
  void ServerRequestDone(const ServerRequest& request, bool ok);

 private:
  // Pool channel.
  void OnPoolFrame(const FrameView& frame);
  void SendToPool(FrameType type, const json& body);
  // Writes what LINK has pending now if the peer gains from an early slice.
  void WriteSlice(Link* link);
  void PoolGone(const char* why);

  // Links.
  Link* AdoptLink(const json& info);
  void OnLinkFrame(Link* link, const FrameView& frame);
  void OnLinkClosed(Link* link, const std::string& why);
  void CloseLink(Link* link);
  void OnLinkInput(Link* link, std::string_view bytes);
  void MarkDirty(Link* link);
  void ArmFlusher();
  // The prepare callback: flush, then busy-poll hot links.
  void BeforeBlocking();
  void FlushAll();
  // Reads hot links without blocking until one delivers or busy_poll_ns_
  // passed.
  void BusyPoll();
  bool WorthBusyPolling(Link* link);
  // Before the loop blocks, a process whose peer on another CPU just sent
  // it frames reads that link without blocking for up to this long (busy
  // polling, as SO_BUSY_POLL does for network sockets): waking a sleeping
  // process on another CPU costs more than the frames it carries (on two
  // vCPUs, ipc_bench's raw pair spends most of its time there). A link that
  // stays quiet this long goes back to the loop's blocking poll. The
  // group's busy_poll_us (kConfig); 0: never.
  uint64_t busy_poll_ns_ = wire::kDefaultBusyPollUs * 1000;

  // Sending side.
  Route* RouteTo(const std::string& group);
  void Dispatch(Route* route);
  // Both take the request by id: a request object is reused once complete,
  // so a stale pointer could name a newer request.
  void Complete(uint64_t id, Reply reply);
  void CompleteLater(uint64_t id, Reply reply);
  OutRequest* NewRequest();
  void RecycleRequest(OutRequest* request);
  void FailRoute(Route* route, ErrorCode code, const std::string& text);
  void FailLinkRequests(Link* link, ErrorCode code, const std::string& text);
  Link* PickPeer(Route* route);
  void SendRequest(Link* link, OutRequest* request, std::string_view body);
  void NoteDeadline(uint64_t deadline_ms);
  void ArmDeadlineTimer();
  void OnDeadlines();

  // Serving side.
  void OnIncomingRequest(Link* link, const FrameView& frame);
  void StartServing(const std::shared_ptr<ServerRequest>& request);
  void ServeNextQueued();

  void CountChanged();
  void SendStats();
  void ReportRecycleLimit();
  void MaybeFinishStop();

  uv_loop_t* loop_;
  bool owns_loop_;
  std::string group_;
  int index_ = -1;
  uv_pipe_t pool_pipe_;
  std::unique_ptr<StreamWriter> pool_writer_;
  FrameDecoder pool_decoder_;
  bool pool_open_ = false;

  uv_prepare_t flusher_;
  uv_timer_t deadline_timer_;
  uv_timer_t heartbeat_timer_;
  uv_timer_t stats_timer_;
  uv_signal_t sigterm_;
  std::vector<Link*> dirty_;
  std::vector<Link*> hot_;      // links with hot set
  std::vector<Link*> polling_;  // BusyPoll's list, kept for its capacity
  // Started when a busy poll read something: the loop then polls its other
  // handles without blocking and comes back to the busy poll.
  uv_idle_t poll_again_;
  std::set<Link*> links_;

  std::map<std::string, std::unique_ptr<Route>> routes_;
  // Requests sent or queued, by id; owned here (deleted in ~Client).
  IdMap<OutRequest> requests_;
  // Completed requests kept for reuse: no allocation per request.
  std::vector<std::unique_ptr<OutRequest>> spare_requests_;
  RequestList cancelled_;  // running requests the caller cancelled
  uint64_t deadline_due_ = kNoDeadline;  // when deadline_timer_ fires
  std::vector<std::pair<uint64_t, Reply>> completions_;
  uint64_t next_id_ = 0;
  uint64_t next_sequence_ = 0;

  SyncHandler sync_handler_;
  AsyncHandler async_handler_;
  int serve_limit_ = 1;  // max_inflight of our own group
  // The Watcher recycles this process after it answered this many requests
  // (0: never); reaching it is reported at once, not on the stats timer.
  uint64_t recycle_after_ = 0;
  bool recycle_reported_ = false;
  int serving_now_ = 0;
  std::map<QueueKey, std::shared_ptr<ServerRequest>> serve_queue_;

  std::function<void()> on_stop_;
  bool stopping_ = false;
  bool finished_ = false;
  ClientStats stats_;
  std::string app_stats_;
};

// ---------------------------------------------------------------- requests

void ServerRequest::Answer(FrameType type, uint32_t aux, std::string_view meta,
                           std::string_view body) {
  if (answered_) return;
  answered_ = true;
  if (link_ != nullptr) client_->SendOnLink(link_, type, id_, aux, meta, body);
  client_->ServerRequestDone(*this, type == FrameType::kReply);
}

void ServerRequest::Reply(std::string_view body, std::string_view meta) {
  if (!FrameFits(meta, body)) {
    Answer(FrameType::kError, static_cast<uint32_t>(ErrorCode::kTooLarge), {},
           "reply of " + std::to_string(body.size()) +
               " bytes is over the frame limit");
    return;
  }
  Answer(FrameType::kReply, 0, meta, body);
}

void ServerRequest::Fail(std::string_view message) {
  Answer(FrameType::kError, static_cast<uint32_t>(ErrorCode::kHandlerError), {},
         message.substr(0, 64 * 1024));
}

void ServerRequest::SendProgress(double fraction, std::string_view text) {
  if (answered_ || link_ == nullptr) return;
  if (!(fraction >= 0)) fraction = 0;  // also catches NaN
  if (fraction > 1) fraction = 1;
  client_->SendOnLink(link_, FrameType::kProgress, id_,
                      static_cast<uint32_t>(fraction * wire::kProgressScale),
                      {}, text.substr(0, 4096));
}

// ---------------------------------------------------------------- set-up

template <typename T>
T* OwnerOf(void* handle) {
  return static_cast<T*>(static_cast<uv_handle_t*>(handle)->data);
}

bool Client::Open(int fd, std::string* error) {
  if (const char* group = std::getenv("WORKERPOOL_GROUP")) group_ = group;
  if (const char* index = std::getenv("WORKERPOOL_INDEX")) index_ = atoi(index);

  uv_pipe_init(loop_, &pool_pipe_, /*ipc=*/1);
  pool_pipe_.data = this;
  int rc = uv_pipe_open(&pool_pipe_, fd);
  if (rc != 0) {
    *error = std::string("workerpool: cannot use pool channel fd ") +
             std::to_string(fd) + ": " + uv_strerror(rc);
    uv_close(reinterpret_cast<uv_handle_t*>(&pool_pipe_), nullptr);
    uv_run(loop_, UV_RUN_NOWAIT);
    return false;
  }
  pool_open_ = true;
  pool_writer_ = std::make_unique<StreamWriter>(
      reinterpret_cast<uv_stream_t*>(&pool_pipe_),
      [this](int) { PoolGone("write to the pool failed"); });

  uv_prepare_init(loop_, &flusher_);
  flusher_.data = this;
  uv_idle_init(loop_, &poll_again_);
  uv_timer_init(loop_, &deadline_timer_);
  deadline_timer_.data = this;
  uv_timer_init(loop_, &heartbeat_timer_);
  heartbeat_timer_.data = this;
  uv_timer_init(loop_, &stats_timer_);
  stats_timer_.data = this;
  uv_signal_init(loop_, &sigterm_);
  sigterm_.data = this;
  uv_signal_start(
      &sigterm_,
      [](uv_signal_t* handle, int) { OwnerOf<Client>(handle)->Stop(); },
      SIGTERM);
  // A peer that goes away mid-write must not kill us.
  signal(SIGPIPE, SIG_IGN);

  auto on_alloc = [](uv_handle_t*, size_t, uv_buf_t* buf) {
    static char buffer[64 * 1024];
    *buf = uv_buf_init(buffer, sizeof(buffer));
  };
  uv_read_start(reinterpret_cast<uv_stream_t*>(&pool_pipe_), on_alloc,
                [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
                  Client* self = OwnerOf<Client>(stream);
                  if (nread < 0) {
                    self->PoolGone(nread == UV_EOF
                                       ? "the pool closed its channel"
                                       : uv_strerror(static_cast<int>(nread)));
                    return;
                  }
                  self->pool_decoder_.Feed(std::string_view(buf->base, nread));
                  FrameView frame;
                  while (self->pool_open_ && self->pool_decoder_.Next(&frame)) {
                    self->OnPoolFrame(frame);
                  }
                  if (!self->pool_decoder_.error().ok()) {
                    fprintf(stderr, "workerpool: bad frame from the pool: %s\n",
                            self->pool_decoder_.error().message().c_str());
                    self->PoolGone("protocol error");
                  }
                  self->FlushAll();
                });

  SendToPool(FrameType::kHello,
             json{{"pid", getpid()}, {"protocol", wire::kWireVersion}});
  FlushAll();
  return true;
}

void Client::SendToPool(FrameType type, const json& body) {
  if (!pool_open_) return;
  AppendFrame(pool_writer_->pending(), type, 0, 0, {}, body.dump());
  ArmFlusher();
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
    while (!completions_.empty()) {
      auto batch = std::move(completions_);
      completions_.clear();
      for (auto& [id, reply] : batch) Complete(id, std::move(reply));
    }
    if (pool_open_) pool_writer_->Flush();
  } while (!dirty_.empty());
  if (hot_.empty()) uv_prepare_stop(&flusher_);
}

void Client::ArmFlusher() {
  if (finished_ || uv_is_active(reinterpret_cast<uv_handle_t*>(&flusher_))) {
    return;
  }
  uv_prepare_start(&flusher_, [](uv_prepare_t* handle) {
    OwnerOf<Client>(handle)->BeforeBlocking();
  });
}

void Client::BeforeBlocking() {
  FlushAll();
  if (!hot_.empty()) BusyPoll();
}

bool Client::WorthBusyPolling(Link* link) {
  // A draining sender link waits for the Watcher's word, not for bytes.
  if (link->closed || link->draining || finished_ || busy_poll_ns_ == 0) {
    return false;
  }
  // A peer on this CPU cannot answer while we spin; one whose CPU we do
  // not know might be.
  if (link->placement->Check(uv_now(loop_)) !=
      PeerPlacement::Where::kOtherCpu) {
    return false;
  }
  // A sender waits for replies; a server for the next request of a sender
  // that just sent some.
  if (link->role == Link::Role::kSender && link->outstanding == 0) {
    return false;
  }
  // A peer that keeps not answering within the spin (a slow handler, a
  // sender with pauses) is polled ever more rarely: after N misses in a
  // row, the next 2^N - 1 chances are skipped (at most 63).
  if (link->busy_poll_skips > 0) {
    --link->busy_poll_skips;
    return false;
  }
  return true;
}

void Client::BusyPoll() {
  polling_.swap(hot_);
  for (Link* link : polling_) link->hot = false;
  std::erase_if(polling_,
                [this](Link* link) { return !WorthBusyPolling(link); });
  const uint64_t start = uv_hrtime();
  bool got = false;
  size_t live = polling_.size();
  while (!got && live > 0 && uv_hrtime() - start < busy_poll_ns_) {
    for (Link*& link : polling_) {
      // A handler may have stopped the client or closed a link meanwhile.
      if (link == nullptr || link->closed || finished_) continue;
      uv_os_fd_t fd;
      if (uv_fileno(reinterpret_cast<uv_handle_t*>(&link->pipe), &fd) != 0) {
        link = nullptr;
        --live;
        continue;
      }
      const ssize_t n = recv(fd, g_link_read_buffer, sizeof(g_link_read_buffer),
                             MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) {
        // EOF or an error: left to libuv's read, which reports it.
        link = nullptr;
        --live;
        continue;
      }
      ++stats_.busy_poll_reads;
      link->busy_poll_misses = 0;
      OnLinkInput(link, std::string_view(g_link_read_buffer, n));
      got = true;
    }
    // Polite spinning: a process waiting for this CPU gets it (with the
    // HTTP front end, the pool and a load generator on two CPUs, spinning
    // without yielding cost a tenth of the requests/s); alone, the call
    // returns at once.
    if (!got) sched_yield();
  }
  if (!got && !finished_ && !polling_.empty()) {
    ++stats_.busy_poll_misses;
    CountChanged();
    for (Link* link : polling_) {
      if (link == nullptr) continue;
      link->busy_poll_misses = std::min(link->busy_poll_misses + 1, 6);
      link->busy_poll_skips = (1 << link->busy_poll_misses) - 1;
    }
  }
  polling_.clear();
  if (!got) {
    // FlushAll ran just before and nothing ran since: no work is left, so
    // the loop may sleep without calling back first.
    uv_prepare_stop(&flusher_);
    return;
  }
  if (finished_) return;
  CountChanged();
  FlushAll();
  if (finished_) return;
  // The other handles (the application's sockets and timers, the pool
  // channel) get their turn before the next busy poll, which the links
  // that delivered (hot again) are in: one loop turn without blocking.
  uv_idle_start(&poll_again_, [](uv_idle_t* idle) { uv_idle_stop(idle); });
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
  AppendFrame(link->writer->pending(), type, id, aux, meta, body);
  if (link->writer->pending().size() >= kSliceBytes) {
    WriteSlice(link);
    if (link->closed) return;  // the write failed: the peer is gone
  }
  MarkDirty(link);
}

void Client::WriteSlice(Link* link) {
  // A burst's slices leave at once rather than with the rest at the end of
  // the loop turn when that lets the peer work in parallel: a peer on
  // another CPU starts on them while this side produces the rest (a
  // pipeline, not a lockstep). A peer on this CPU could only run by
  // preempting this side: every early write would be two context switches
  // more, so the burst leaves in one write. Not knowing, only the first
  // slice leaves early (the better compromise measured on two CPUs).
  switch (link->placement->Check(uv_now(loop_))) {
    case PeerPlacement::Where::kOtherCpu:
      link->writer->Flush();
      break;
    case PeerPlacement::Where::kSameCpu:
      break;
    case PeerPlacement::Where::kUnknown:
      if (!link->sliced) link->writer->Flush();
      break;
  }
  link->sliced = true;
}

// ---------------------------------------------------------------- pool frames

void Client::OnPoolFrame(const FrameView& frame) {
  json body = ParseJsonObject(frame.body);
  switch (frame.header.type) {
    case FrameType::kConfig: {
      serve_limit_ = std::max(1, JsonField<int>(body, "max_inflight", 1));
      recycle_after_ = JsonField<uint64_t>(body, "max_requests", 0);
      busy_poll_ns_ =
          1000 *
          static_cast<uint64_t>(std::clamp(
              JsonField<int>(body, "busy_poll_us", wire::kDefaultBusyPollUs), 0,
              wire::kMaxBusyPollUs));
      ReportRecycleLimit();
      int heartbeat_ms = JsonField<int>(body, "heartbeat_ms", 0);
      if (heartbeat_ms > 0) {
        uint64_t every = std::max(1, heartbeat_ms / 3);
        uv_timer_start(
            &heartbeat_timer_,
            [](uv_timer_t* timer) {
              OwnerOf<Client>(timer)->SendToPool(FrameType::kHeartbeat,
                                                 json::object());
            },
            every, every);
      } else {
        uv_timer_stop(&heartbeat_timer_);
      }
      ServeNextQueued();
      break;
    }
    case FrameType::kPeerAdded: {
      Link* link = AdoptLink(body);
      if (link != nullptr && link->route != nullptr) Dispatch(link->route);
      break;
    }
    case FrameType::kRouteOpened:
    case FrameType::kRouteRefused: {
      std::string group = JsonField<std::string>(body, "group", "");
      auto found = routes_.find(group);
      if (found == routes_.end()) break;
      Route* route = found->second.get();
      if (frame.header.type == FrameType::kRouteRefused) {
        route->state = Route::State::kRefused;
        route->refusal = JsonField<std::string>(body, "error", "refused");
        FailRoute(route, ErrorCode::kRefused, route->refusal);
        // A route revoked by a reload: requests already sent finish, then
        // its links close; nothing new goes out on them.
        std::vector<Link*> peers = route->peers;
        for (Link* link : peers) {
          link->draining = true;
          if (link->outstanding == 0) CloseLink(link);
        }
        break;
      }
      route->state = Route::State::kOpen;
      route->max_inflight =
          std::max(1, JsonField<int>(body, "max_inflight", 1));
      route->queue_limit =
          std::max(0, JsonField<int>(body, "queue_limit", 1000));
      route->request_timeout = std::chrono::milliseconds(
          JsonField<int64_t>(body, "request_timeout_ms", 30000));
      Dispatch(route);
      break;
    }
    case FrameType::kPeerGone:
    case FrameType::kPeerDraining: {
      int pid = JsonField<int>(body, "pid", 0);
      std::string how = JsonField<std::string>(body, "how", "exited");
      std::vector<Link*> matching;
      for (Link* link : links_) {
        if (link->peer_pid == pid) matching.push_back(link);
      }
      for (Link* link : matching) {
        if (frame.header.type == FrameType::kPeerDraining) {
          link->draining = true;
          if (link->outstanding == 0 && link->role == Link::Role::kSender) {
            CloseLink(link);
          }
          continue;
        }
        FailLinkRequests(link, ErrorCode::kWorkerDied,
                         "worker died: " + link->Describe() + " " + how);
        CloseLink(link);
      }
      break;
    }
    case FrameType::kDrain:
      Stop();
      break;
    default:
      break;  // unknown control frames are ignored (forward compatible)
  }
}

void Client::PoolGone(const char* why) {
  if (!pool_open_) return;
  pool_open_ = false;
  fprintf(stderr, "workerpool: %s; exiting\n", why);
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&pool_pipe_));
  pool_writer_->Abandon();
  uv_close(reinterpret_cast<uv_handle_t*>(&pool_pipe_), nullptr);
  for (auto& [name, route] : routes_) {
    FailRoute(route.get(), ErrorCode::kShuttingDown, "the pool is gone");
  }
  Stop();
  // The Watcher is gone: do not linger if the application keeps handles.
  static uv_timer_t exit_timer;
  uv_timer_init(loop_, &exit_timer);
  uv_timer_start(
      &exit_timer, [](uv_timer_t*) { _exit(0); }, kPoolGoneExitMs, 0);
  uv_unref(reinterpret_cast<uv_handle_t*>(&exit_timer));
}

// ---------------------------------------------------------------- links

Link* Client::AdoptLink(const json& info) {
  if (uv_pipe_pending_count(&pool_pipe_) <= 0) {
    fprintf(stderr, "workerpool: peer announced without a socket\n");
    return nullptr;
  }
  auto* link = new Link;
  link->client = this;
  link->role = JsonField<std::string>(info, "role", "") == "server"
                   ? Link::Role::kServer
                   : Link::Role::kSender;
  link->peer_group = JsonField<std::string>(info, "group", "");
  link->peer_index = JsonField<int>(info, "index", -1);
  link->peer_pid = JsonField<int>(info, "pid", 0);
  link->placement = std::make_unique<PeerPlacement>(link->peer_pid);
  uv_pipe_init(loop_, &link->pipe, 0);
  link->pipe.data = link;
  if (uv_accept(reinterpret_cast<uv_stream_t*>(&pool_pipe_),
                reinterpret_cast<uv_stream_t*>(&link->pipe)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&link->pipe),
             [](uv_handle_t* h) { delete OwnerOf<Link>(h); });
    return nullptr;
  }
  link->writer = std::make_unique<StreamWriter>(
      reinterpret_cast<uv_stream_t*>(&link->pipe),
      [link](int) { link->client->OnLinkClosed(link, "write failed"); });
  links_.insert(link);
  if (link->role == Link::Role::kSender) {
    link->route = RouteTo(link->peer_group);
    link->route->peers.push_back(link);
  }
  auto on_alloc = [](uv_handle_t*, size_t, uv_buf_t* buf) {
    *buf = uv_buf_init(g_link_read_buffer, sizeof(g_link_read_buffer));
  };
  uv_read_start(reinterpret_cast<uv_stream_t*>(&link->pipe), on_alloc,
                [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
                  Link* link = OwnerOf<Link>(stream);
                  Client* self = link->client;
                  if (nread < 0) {
                    self->OnLinkClosed(
                        link, nread == UV_EOF
                                  ? "closed"
                                  : uv_strerror(static_cast<int>(nread)));
                    self->FlushAll();
                    return;
                  }
                  self->OnLinkInput(link, std::string_view(buf->base, nread));
                  self->FlushAll();
                });
  return link;
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
    FailLinkRequests(link, ErrorCode::kProtocol,
                     "protocol error from " + link->Describe());
    CloseLink(link);
    return;
  }
  if (!link->hot && busy_poll_ns_ > 0) {
    link->hot = true;
    hot_.push_back(link);
    ArmFlusher();
  }
}

void Client::OnLinkFrame(Link* link, const FrameView& frame) {
  const uint64_t id = frame.header.id;
  if (link->role == Link::Role::kServer) {
    if (frame.header.type == FrameType::kRequest) {
      OnIncomingRequest(link, frame);
    } else if (frame.header.type == FrameType::kCancel) {
      auto found = link->serving.find(id);
      if (found == link->serving.end()) return;
      std::shared_ptr<ServerRequest> request = found->second;
      if (!request->started) {
        for (auto it = serve_queue_.begin(); it != serve_queue_.end(); ++it) {
          if (it->second == request) {
            serve_queue_.erase(it);
            break;
          }
        }
        link->serving.erase(found);
        SendOnLink(link, FrameType::kError, id,
                   static_cast<uint32_t>(ErrorCode::kCancelled), {},
                   "cancelled before it started");
      } else {
        request->MarkCancelled();
      }
    }
    return;
  }
  // We are the sender on this link: answers to our requests.
  if (frame.header.type == FrameType::kRequest) {
    // The peer only serves us; a request from it breaks the routing rules.
    ++stats_.refused;
    SendOnLink(
        link, FrameType::kError, id, static_cast<uint32_t>(ErrorCode::kRefused),
        {},
        "refused: " + link->peer_group + " may not send requests to " + group_);
    return;
  }
  OutRequest* request = requests_.Find(id);
  // Gone or elsewhere: a late answer to a timeout.
  if (request == nullptr || request->link != link) return;
  if (frame.header.type == FrameType::kProgress) {
    if (request->on_progress && !request->cancelled) {
      request->on_progress(
          Progress{static_cast<double>(frame.header.aux) / wire::kProgressScale,
                   std::string(frame.body)});
    }
    return;
  }
  if (frame.header.type != FrameType::kReply &&
      frame.header.type != FrameType::kError) {
    return;
  }
  Reply reply;
  reply.ok = frame.header.type == FrameType::kReply;
  reply.code = reply.ok ? ErrorCode::kHandlerError
                        : static_cast<ErrorCode>(frame.header.aux);
  reply.body.assign(frame.body);
  reply.meta.assign(frame.meta);
  Route* route = request->route;
  Complete(id, std::move(reply));
  if (link->draining && link->outstanding == 0) CloseLink(link);
  Dispatch(route);
}

void Client::OnLinkClosed(Link* link, const std::string& why) {
  if (link->closed) return;
  if (link->role == Link::Role::kSender && link->outstanding > 0) {
    // The peer died; the Watcher's kPeerGone names how, so keep the
    // requests until then. Without a pool there is nobody to ask.
    if (!pool_open_) {
      FailLinkRequests(link, ErrorCode::kWorkerDied,
                       "worker died: " + link->Describe() + " (" + why + ")");
    } else {
      link->draining = true;
      auto& peers = link->route->peers;
      std::erase(peers, link);
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&link->pipe));
      return;
    }
  }
  CloseLink(link);
}

void Client::FailLinkRequests(Link* link, ErrorCode code,
                              const std::string& text) {
  std::vector<uint64_t> failed;
  for (OutRequest* r = link->inflight.head; r != nullptr; r = r->next) {
    failed.push_back(r->id);
  }
  for (OutRequest* r = cancelled_.head; r != nullptr; r = r->next) {
    if (r->link == link) failed.push_back(r->id);
  }
  for (uint64_t id : failed) Complete(id, Reply{false, code, text, ""});
  // Requests this link was serving: their answers have nowhere to go.
  for (auto& [id, request] : link->serving) request->Detach();
}

void Client::CloseLink(Link* link) {
  if (link->closed) return;
  link->closed = true;
  FailLinkRequests(link, ErrorCode::kWorkerDied,
                   "worker died: " + link->Describe());
  for (auto it = serve_queue_.begin(); it != serve_queue_.end();) {
    if (it->second->link() == nullptr) {
      it = serve_queue_.erase(it);
    } else {
      ++it;
    }
  }
  link->serving.clear();
  if (link->route != nullptr) {
    std::erase(link->route->peers, link);
    Route* route = link->route;
    link->route = nullptr;
    Dispatch(route);
  }
  links_.erase(link);
  // The next FlushAll must not reach it: it is deleted when the close ends.
  if (link->dirty) {
    std::erase(dirty_, link);
    link->dirty = false;
  }
  if (link->hot) {
    std::erase(hot_, link);
    link->hot = false;
  }
  link->writer->Abandon();
  uv_close(reinterpret_cast<uv_handle_t*>(&link->pipe),
           [](uv_handle_t* h) { delete OwnerOf<Link>(h); });
  MaybeFinishStop();
}

// ---------------------------------------------------------------- sending

Route* Client::RouteTo(const std::string& group) {
  auto& route = routes_[group];
  if (!route) {
    route = std::make_unique<Route>();
    route->group = group;
    SendToPool(FrameType::kRouteOpen, json{{"group", group}});
  }
  return route.get();
}

uint64_t Client::Send(const std::string& group, std::string_view body,
                      ReplyCallback done, SendOptions options) {
  OutRequest* request = NewRequest();
  // Dispatch() below may complete (and recycle) the request at once.
  const uint64_t id = request->id = ++next_id_;
  request->done = std::move(done);
  request->on_progress = std::move(options.on_progress);
  request->priority = options.priority;
  request->sequence = ++next_sequence_;
  request->sent_ms = uv_now(loop_);
  requests_.Insert(request->id, request);
  ++stats_.sent;
  CountChanged();

  if (!FrameFits(options.meta, body)) {
    CompleteLater(id, Reply{false, ErrorCode::kTooLarge,
                            "request of " + std::to_string(body.size()) +
                                " bytes is over the frame limit of " +
                                std::to_string(wire::kMaxPayload),
                            ""});
    return id;
  }
  if (stopping_ || !pool_open_) {
    CompleteLater(id, Reply{false, ErrorCode::kShuttingDown,
                            "this process is stopping", ""});
    return id;
  }
  Route* route = RouteTo(group);
  request->route = route;
  if (route->state == Route::State::kRefused) {
    CompleteLater(id, Reply{false, ErrorCode::kRefused, route->refusal, ""});
    return id;
  }
  if (route->state == Route::State::kOpen &&
      static_cast<int>(route->queue.size()) >= route->queue_limit) {
    bool has_room = false;
    for (Link* peer : route->peers) {
      has_room |= !peer->draining && !peer->condemned &&
                  peer->outstanding < route->max_inflight;
    }
    if (!has_room) {
      CompleteLater(id, Reply{false, ErrorCode::kQueueFull,
                              "queue of group " + group + " is full (" +
                                  std::to_string(route->queue_limit) + ")",
                              ""});
      return id;
    }
  }
  request->meta = std::move(options.meta);
  if (route->state == Route::State::kOpen && route->queue.empty()) {
    // A peer with room takes the frame straight from the caller's bytes;
    // only a queued request needs its own copy.
    if (Link* peer = PickPeer(route)) {
      SendRequest(peer, request, body);
      return id;
    }
  }
  request->body.assign(body);
  route->queue.emplace(QueueKey{request->priority, request->sequence}, request);
  if (route->state == Route::State::kOpen) Dispatch(route);
  return id;
}

Link* Client::PickPeer(Route* route) {
  Link* best = nullptr;
  for (Link* peer : route->peers) {
    if (peer->draining || peer->condemned || peer->closed) continue;
    if (peer->outstanding >= route->max_inflight) continue;
    if (best == nullptr || peer->outstanding < best->outstanding) best = peer;
  }
  return best;
}

void Client::SendRequest(Link* link, OutRequest* request,
                         std::string_view body) {
  request->link = link;
  ++link->outstanding;
  const int64_t timeout_ms = link->route->request_timeout.count();
  // Loop time, not the clock: no clock read per request.
  request->deadline_ms = timeout_ms > 0
                             ? uv_now(loop_) + static_cast<uint64_t>(timeout_ms)
                             : kNoDeadline;
  link->inflight.Insert(request);
  NoteDeadline(request->deadline_ms);
  SendOnLink(link, FrameType::kRequest, request->id,
             static_cast<uint32_t>(request->priority), request->meta, body);
}

void Client::Dispatch(Route* route) {
  if (route->state != Route::State::kOpen) return;
  while (!route->queue.empty()) {
    Link* best = PickPeer(route);
    if (best == nullptr) break;
    auto head = route->queue.begin();
    OutRequest* request = head->second;
    route->queue.erase(head);
    SendRequest(best, request, request->body);
    std::string().swap(request->body);
  }
  bool any_live = false;
  for (Link* peer : route->peers) {
    any_live |= !peer->draining && !peer->condemned && !peer->closed;
  }
  if (!route->queue.empty() && !any_live) {
    FailRoute(route, ErrorCode::kNoWorkers,
              "group " + route->group + " has no live process");
  }
}

void Client::FailRoute(Route* route, ErrorCode code, const std::string& text) {
  std::vector<uint64_t> failed;
  for (auto& [key, request] : route->queue) failed.push_back(request->id);
  route->queue.clear();
  for (uint64_t id : failed) Complete(id, Reply{false, code, text, ""});
}

void Client::CompleteLater(uint64_t id, Reply reply) {
  completions_.emplace_back(id, std::move(reply));
  ArmFlusher();
}

OutRequest* Client::NewRequest() {
  if (spare_requests_.empty()) return new OutRequest;
  OutRequest* request = spare_requests_.back().release();
  spare_requests_.pop_back();
  return request;
}

void Client::RecycleRequest(OutRequest* request) {
  // Enough spares for a window of requests in flight; more is freed.
  constexpr size_t kMaxSpares = 256;
  if (spare_requests_.size() >= kMaxSpares) {
    delete request;
    return;
  }
  // Reset field by field: small strings keep their capacity for the next
  // use; a large one is freed rather than kept by an idle spare.
  constexpr size_t kKeptCapacity = 4096;
  for (std::string* text : {&request->body, &request->meta}) {
    if (text->capacity() > kKeptCapacity) {
      std::string().swap(*text);
    } else {
      text->clear();
    }
  }
  request->id = 0;
  request->route = nullptr;
  request->priority = 0;
  request->sequence = 0;
  request->done = nullptr;
  request->on_progress = nullptr;
  request->link = nullptr;
  request->listed_in = nullptr;
  request->prev = request->next = nullptr;
  request->deadline_ms = kNoDeadline;
  request->sent_ms = 0;
  request->cancelled = false;
  spare_requests_.emplace_back(request);
}

void Client::Complete(uint64_t id, Reply reply) {
  OutRequest* request = requests_.Erase(id);
  if (request == nullptr) return;
  // Reused only after the caller's callback returned: nothing (Cancel of
  // this id, a Send) can reach it through requests_ meanwhile.
  struct Recycle {
    Client* client;
    OutRequest* request;
    ~Recycle() { client->RecycleRequest(request); }
  } recycle{this, request};
  if (request->listed_in != nullptr) request->listed_in->Remove(request);
  if (request->link != nullptr) --request->link->outstanding;
  if (request->cancelled) return;  // already answered kCancelled
  if (request->route != nullptr) {
    const uint64_t elapsed = uv_now(loop_) - request->sent_ms;
    std::size_t bucket = 0;
    while (bucket < kLatencyBoundsMs.size() &&
           elapsed > kLatencyBoundsMs[bucket]) {
      ++bucket;
    }
    ++request->route->latency_counts[bucket];
    request->route->latency_sum_ms += elapsed;
  }
  if (reply.ok) {
    ++stats_.replied;
  } else if (reply.code == ErrorCode::kRefused) {
    ++stats_.refused;
  } else if (reply.code == ErrorCode::kTimeout) {
    ++stats_.timed_out;
  } else if (reply.code == ErrorCode::kCancelled) {
    ++stats_.cancelled;
  } else {
    ++stats_.failed;
  }
  CountChanged();
  if (request->done) request->done(std::move(reply));
  MaybeFinishStop();
}

void Client::Cancel(uint64_t request_id) {
  OutRequest* request = requests_.Find(request_id);
  if (request == nullptr) return;
  if (request->cancelled) return;
  if (request->link == nullptr) {
    // Still queued (or about to fail): drop it.
    if (request->route != nullptr) {
      request->route->queue.erase(
          QueueKey{request->priority, request->sequence});
    }
    CompleteLater(request_id, Reply{false, ErrorCode::kCancelled,
                                    "cancelled while queued", ""});
    return;
  }
  // Running: tell the server, answer the caller now, and give the server a
  // grace period before it is killed.
  Link* link = request->link;
  SendOnLink(link, FrameType::kCancel, request->id, 0, {}, {});
  ++stats_.cancelled;
  CountChanged();
  ReplyCallback done = std::move(request->done);
  request->cancelled = true;
  if (request->listed_in != nullptr) request->listed_in->Remove(request);
  request->deadline_ms =
      uv_now(loop_) +
      static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(kCancelGrace)
              .count());
  cancelled_.Insert(request);
  NoteDeadline(request->deadline_ms);
  if (done) done(Reply{false, ErrorCode::kCancelled, "cancelled", ""});
}

void Client::NoteDeadline(uint64_t deadline_ms) {
  // The timer may fire early (its request finished): OnDeadlines re-arms.
  if (deadline_ms >= deadline_due_) return;
  deadline_due_ = deadline_ms;
  const uint64_t now = uv_now(loop_);
  uv_timer_start(
      &deadline_timer_,
      [](uv_timer_t* timer) { OwnerOf<Client>(timer)->OnDeadlines(); },
      deadline_ms > now ? deadline_ms - now : 0, 0);
}

void Client::ArmDeadlineTimer() {
  uint64_t earliest = kNoDeadline;
  if (!cancelled_.empty()) earliest = cancelled_.head->deadline_ms;
  for (Link* link : links_) {
    if (!link->inflight.empty()) {
      earliest = std::min(earliest, link->inflight.head->deadline_ms);
    }
  }
  deadline_due_ = kNoDeadline;
  if (earliest == kNoDeadline) {
    uv_timer_stop(&deadline_timer_);
    return;
  }
  NoteDeadline(earliest);
}

void Client::OnDeadlines() {
  const uint64_t now = uv_now(loop_);
  // Collected first: completing runs callbacks that may close links.
  std::vector<uint64_t> expired;
  auto collect = [&](const RequestList& list) {
    for (OutRequest* r = list.head; r != nullptr && r->deadline_ms <= now;
         r = r->next) {
      expired.push_back(r->id);
    }
  };
  collect(cancelled_);
  for (Link* link : links_) collect(link->inflight);
  std::sort(expired.begin(), expired.end());
  for (uint64_t id : expired) {
    OutRequest* request = requests_.Find(id);
    if (request == nullptr) continue;
    Link* link = request->link;
    if (link == nullptr || request->deadline_ms > now) continue;
    std::string reason =
        request->cancelled
            ? "ignored a cancel for " + std::to_string(kCancelGrace.count()) +
                  "s"
            : "request timed out after " +
                  std::to_string(request->route->request_timeout.count()) +
                  "ms";
    link->condemned = true;
    SendToPool(FrameType::kKillPeer,
               json{{"pid", link->peer_pid}, {"reason", reason}});
    Complete(
        id,
        Reply{false, ErrorCode::kTimeout,
              "timeout: " + reason + "; " + link->Describe() + " killed", ""});
    if (link->route != nullptr) Dispatch(link->route);
  }
  ArmDeadlineTimer();
  FlushAll();
}

// ---------------------------------------------------------------- serving

void Client::OnIncomingRequest(Link* link, const FrameView& frame) {
  auto request = std::make_shared<ServerRequest>(
      this, link, frame.header.id, frame.body, frame.meta,
      static_cast<int32_t>(frame.header.aux));
  request->sender_group_ = link->peer_group;
  if (!sync_handler_ && !async_handler_) {
    SendOnLink(link, FrameType::kError, frame.header.id,
               static_cast<uint32_t>(ErrorCode::kRefused), {},
               "group " + group_ + " does not serve requests");
    return;
  }
  CountChanged();
  if (serving_now_ < serve_limit_ && serve_queue_.empty()) {
    // Most handlers answer before they return: the request is filed under
    // its link (for a cancel, or the link closing) only if it is still
    // open afterwards. Nothing else can reach it while the handler runs.
    StartServing(request);
    if (!request->answered()) {
      if (link->closed) {
        request->Detach();
      } else {
        link->serving[frame.header.id] = request;
      }
    }
  } else {
    request->OwnPayload();
    link->serving[frame.header.id] = request;
    serve_queue_.emplace(QueueKey{request->priority(), ++next_sequence_},
                         request);
  }
}

void Client::StartServing(const std::shared_ptr<ServerRequest>& request) {
  request->started = true;
  ++serving_now_;
  if (async_handler_) {
    request->OwnPayload();
    async_handler_(request);
    return;
  }
  HandlerResult result = sync_handler_(*request);
  if (result.ok) {
    request->Reply(result.body, {});
  } else {
    request->Fail(result.body);
  }
}

void Client::ServerRequestDone(const ServerRequest& request, bool ok) {
  if (request.started) --serving_now_;
  ++(ok ? stats_.served : stats_.served_errors);
  CountChanged();
  ReportRecycleLimit();
  // Most requests are answered inside their handler and were never filed.
  if (Link* link = request.link(); link != nullptr && !link->serving.empty()) {
    link->serving.erase(request.id());
  }
  ServeNextQueued();
  MaybeFinishStop();
}

void Client::ServeNextQueued() {
  while (serving_now_ < serve_limit_ && !serve_queue_.empty()) {
    auto head = serve_queue_.begin();
    std::shared_ptr<ServerRequest> request = head->second;
    serve_queue_.erase(head);
    if (request->link() == nullptr) continue;  // its sender went away
    StartServing(request);
  }
}

// ---------------------------------------------------------------- stopping

void Client::CountChanged() {
  if (!pool_open_ ||
      uv_is_active(reinterpret_cast<uv_handle_t*>(&stats_timer_))) {
    return;
  }
  uv_timer_start(
      &stats_timer_,
      [](uv_timer_t* timer) {
        Client* self = OwnerOf<Client>(timer);
        self->SendStats();
        self->FlushAll();
      },
      kStatsIntervalMs, 0);
}

void Client::SendStats() {
  ClientStats s = stats();
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
  json latency = json::object();
  for (const auto& [name, route] : routes_) {
    uint64_t answered = 0;
    for (uint64_t count : route->latency_counts) answered += count;
    if (answered == 0) continue;
    latency[name] = {{"bounds_ms", kLatencyBoundsMs},
                     {"counts", route->latency_counts},
                     {"sum_ms", route->latency_sum_ms}};
  }
  if (!latency.empty()) body["latency"] = std::move(latency);
  if (!app_stats_.empty()) body["app"] = ParseJsonObject(app_stats_);
  SendToPool(FrameType::kStats, body);
}

void Client::ReportRecycleLimit() {
  if (recycle_after_ == 0 || recycle_reported_ || !pool_open_) return;
  if (stats_.served + stats_.served_errors < recycle_after_) return;
  recycle_reported_ = true;
  SendStats();  // the Watcher starts a replacement and then drains us
}

void Client::Stop() {
  if (stopping_) return;
  stopping_ = true;
  if (on_stop_) on_stop_();
  MaybeFinishStop();
}

void Client::MaybeFinishStop() {
  if (!stopping_ || finished_) return;
  if (!requests_.empty() || serving_now_ > 0) return;
  for (Link* link : links_) {
    // Senders still linked to us may have requests on the way.
    if (link->role == Link::Role::kServer && pool_open_) return;
  }
  finished_ = true;
  for (Link* link : hot_) link->hot = false;
  hot_.clear();
  // Close every handle of ours; Run() returns once the application's
  // handles are closed too.
  std::vector<Link*> open(links_.begin(), links_.end());
  for (Link* link : open) {
    link->closed = true;
    link->writer->Flush();
    links_.erase(link);
    uv_close(reinterpret_cast<uv_handle_t*>(&link->pipe),
             [](uv_handle_t* h) { delete OwnerOf<Link>(h); });
  }
  if (pool_open_) {
    pool_open_ = false;
    pool_writer_->Flush();
    uv_close(reinterpret_cast<uv_handle_t*>(&pool_pipe_), nullptr);
  }
  for (uv_handle_t* handle : {reinterpret_cast<uv_handle_t*>(&flusher_),
                              reinterpret_cast<uv_handle_t*>(&poll_again_),
                              reinterpret_cast<uv_handle_t*>(&deadline_timer_),
                              reinterpret_cast<uv_handle_t*>(&heartbeat_timer_),
                              reinterpret_cast<uv_handle_t*>(&stats_timer_),
                              reinterpret_cast<uv_handle_t*>(&sigterm_)}) {
    if (!uv_is_closing(handle)) uv_close(handle, nullptr);
  }
}

}  // namespace

std::unique_ptr<PoolClient> PoolClient::FromFd(int fd, uv_loop_t* loop,
                                               std::string* error) {
  bool owns = loop == nullptr;
  if (owns) {
    loop = new uv_loop_t;
    uv_loop_init(loop);
  }
  auto client = std::make_unique<Client>(loop, owns);
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
