#include "children/rabbitmq_outbox.h"

#include <uv.h>

#include <chrono>
#include <cstdlib>
#include <deque>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "children/amqp_log.h"
#include "children/amqp_publisher.h"
#include "core/amqp_outbox.h"
#include "core/units.h"

namespace workerpool {
namespace {

using json = nlohmann::json;
using wire::ErrorCode;

// Answers REQUEST with an error of kind CODE (503 queue full, 504 timeout,
// ... at an http-reactor). The client library's IncomingRequest::Fail
// takes only a text today, which is always a handler error (502); once it
// takes a code too, this passes it on.
template <typename Request>
void FailWith(Request& request, ErrorCode code, std::string_view text) {
  if constexpr (requires { request.Fail(text, code); }) {
    request.Fail(text, code);
  } else {
    (void)code;
    request.Fail(text);
  }
}

void Log(const std::string& level, const std::string& text) {
  AmqpLog((level.empty() ? "" : level + ": ") + "publisher: " + text);
}

std::uint64_t NowSeconds() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
}

std::uint64_t RandomPrefix() {
  std::random_device device;
  return (static_cast<std::uint64_t>(device()) << 32) ^ device();
}

class Outbox;

// The consumer half's PoolClient: the process's own, but for OnStop and
// SetAppStats, which the outbox shares with it (see RabbitmqOutbox).
class ConsumerView : public PoolClient {
 public:
  ConsumerView(PoolClient* client, Outbox* outbox)
      : client_(client), outbox_(outbox) {}

  void Serve(SyncHandler handler) override {
    client_->Serve(std::move(handler));
  }
  void Serve(AsyncHandler handler) override {
    client_->Serve(std::move(handler));
  }
  std::uint64_t Send(const std::string& group, std::string_view body,
                     ReplyCallback done, SendOptions options) override {
    return client_->Send(group, body, std::move(done), std::move(options));
  }
  void Cancel(std::uint64_t request_id) override {
    client_->Cancel(request_id);
  }
  void OnStop(std::function<void()> callback) override;
  int Run() override { return client_->Run(); }
  void Stop() override { client_->Stop(); }
  void HoldStop() override { client_->HoldStop(); }
  void ReleaseStop() override { client_->ReleaseStop(); }
  ClientStats stats() const override { return client_->stats(); }
  void SetAppStats(std::string json_object) override;
  uv_loop_t* loop() override { return client_->loop(); }
  const std::string& group() const override { return client_->group(); }
  int index() const override { return client_->index(); }

 private:
  PoolClient* client_;
  Outbox* outbox_;
};

// A request between its arrival and its answer.
struct Pending {
  std::shared_ptr<IncomingRequest> request;
  std::uint64_t generation = 0;   // the connection it was published on
  std::uint64_t deadline_ms = 0;  // loop time
  bool confirmed = false;
};

struct Figures {
  std::uint64_t published = 0, confirmed = 0, nacked = 0, returned = 0,
                replies = 0, error_replies = 0, progress = 0, late_replies = 0,
                timeouts = 0, lost = 0, cancelled = 0, rejected_full = 0,
                rejected_blocked = 0, rejected_disconnected = 0, reconnects = 0;
};

class Outbox : public RabbitmqOutbox {
 public:
  Outbox(PoolClient* client, const AmqpServiceConfig& config)
      : client_(client),
        config_(config),
        settings_(*config.publish),
        ids_(RandomPrefix()),
        view_(client, this) {}

  PoolClient* consumer_client() override { return &view_; }

  void Start() {
    uv_loop_t* loop = client_->loop();
    uv_async_init(loop, &async_, [](uv_async_t* handle) {
      static_cast<Outbox*>(handle->data)->OnEvents();
    });
    async_.data = this;
    uv_check_init(loop, &flush_check_);
    flush_check_.data = this;
    uv_timer_init(loop, &deadline_timer_);
    deadline_timer_.data = this;
    uv_timer_init(loop, &stats_timer_);
    stats_timer_.data = this;
    // Named like the consumer's connection (POOL/GROUP/INDEX) with
    // "/publish": one process may hold both, and an operator looking at
    // `rabbitmqctl list_connections` must tell them apart.
    if (config_.connection_name.empty()) {
      const char* pool = std::getenv("WORKERPOOL_POOL");
      config_.connection_name = std::string(pool != nullptr ? pool : "?") +
                                "/" + client_->group() + "/" +
                                std::to_string(client_->index()) + "/publish";
    } else {
      config_.connection_name += "/publish";
    }
    publisher_ = std::make_unique<AmqpPublisher>(
        config_, [this] { uv_async_send(&async_); });
    client_->OnStop([this] { BeginStop(); });
    client_->Serve([this](std::shared_ptr<IncomingRequest> request) {
      OnRequest(std::move(request));
    });
    Log("", "starting: requests to " + config_.url.Redacted() + ", " + Where() +
                ", mode " + AmqpPublishModeName(settings_.mode) + ", timeout " +
                FormatDuration(settings_.timeout) + ", max_pending " +
                std::to_string(settings_.max_pending));
    MarkDirty();
    publisher_->Start();
  }

  // ConsumerView's two shared calls.
  void SetConsumerStop(std::function<void()> callback) {
    consumer_stop_ = std::move(callback);
  }
  void SetConsumerStats(std::string text) {
    consumer_stats_ = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!consumer_stats_.is_object()) consumer_stats_ = json::object();
    has_consumer_stats_ = true;
    PublishStats();
  }

 private:
  std::string Where() const {
    return settings_.exchange.empty()
               ? "queue '" + settings_.routing_key + "'"
               : "exchange '" + settings_.exchange + "', routing key '" +
                     settings_.routing_key + "'";
  }

  // ------------------------------------------------------------ requests

  void OnRequest(std::shared_ptr<IncomingRequest> request) {
    if (stopping_) {
      FailWith(*request, ErrorCode::kShuttingDown,
               "shutting down: this service process is stopping");
      return;
    }
    if (!connected_) {
      ++figures_.rejected_disconnected;
      MarkDirty();
      FailWith(*request, ErrorCode::kNoWorkers,
               "not connected to RabbitMQ (" + state_ +
                   (last_error_.empty() ? "" : ": " + last_error_) +
                   "); nothing was published");
      return;
    }
    if (blocked_) {
      ++figures_.rejected_blocked;
      MarkDirty();
      FailWith(*request, ErrorCode::kQueueFull,
               "queue full: RabbitMQ blocks publishing (" + blocked_reason_ +
                   "); nothing was published");
      return;
    }
    if (pending_.size() >= static_cast<std::size_t>(settings_.max_pending)) {
      ++figures_.rejected_full;
      MarkDirty();
      FailWith(*request, ErrorCode::kQueueFull,
               "queue full: " + std::to_string(pending_.size()) +
                   " requests of this process already wait for RabbitMQ "
                   "(publish.max_pending); nothing was published");
      return;
    }
    const std::uint64_t id = ++next_id_;
    AmqpOutgoing message;
    message.id = id;
    message.properties =
        OutboxRequestProperties(settings_, ids_.Make(id), request->priority(),
                                request->meta(), NowSeconds());
    message.body = std::string(request->body());
    const std::uint64_t deadline =
        uv_now(client_->loop()) +
        static_cast<std::uint64_t>(settings_.timeout.count());
    request->OnCancel([this, id] { OnCancelled(id); });
    pending_.emplace(id, Pending{std::move(request), generation_, deadline});
    deadlines_.emplace_back(deadline, id);
    if (deadlines_.size() == 1) ArmDeadline();
    batch_.push_back(std::move(message));
    ++figures_.published;
    MarkDirty();
    if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&flush_check_))) {
      uv_check_start(&flush_check_, [](uv_check_t* handle) {
        static_cast<Outbox*>(handle->data)->FlushBatch();
      });
    }
  }

  // The requests of this loop iteration go to the AMQP thread together:
  // one wake-up for the lot.
  void FlushBatch() {
    uv_check_stop(&flush_check_);
    if (batch_.empty()) return;
    publisher_->Publish(generation_, std::exchange(batch_, {}));
  }

  void OnCancelled(std::uint64_t id) {
    auto found = pending_.find(id);
    if (found == pending_.end()) return;
    std::shared_ptr<IncomingRequest> request = std::move(found->second.request);
    pending_.erase(found);
    ++figures_.cancelled;
    FailWith(*request, ErrorCode::kCancelled,
             "cancelled by the sender (message " + ids_.Make(id) +
                 " may still be processed)");
    Settled();
  }

  // Takes pending request ID out for its answer; null when it has none.
  std::shared_ptr<IncomingRequest> Take(std::uint64_t id) {
    auto found = pending_.find(id);
    if (found == pending_.end()) return nullptr;
    std::shared_ptr<IncomingRequest> request = std::move(found->second.request);
    pending_.erase(found);
    return request;
  }

  // After an answer: the figures, and the stop once nothing waits.
  void Settled() {
    MarkDirty();
    MaybeShutdown();
  }

  // ------------------------------------------------------------ deadlines

  // Arms the timer for the oldest request still waiting. Requests answered
  // in time leave their entry behind; they are dropped here rather than
  // found one by one, so that under load the timer fires about once per
  // timeout, not once per request.
  void ArmDeadline() {
    while (!deadlines_.empty() &&
           pending_.count(deadlines_.front().second) == 0) {
      deadlines_.pop_front();
    }
    if (deadlines_.empty() || stopped_) {
      uv_timer_stop(&deadline_timer_);
      return;
    }
    const std::uint64_t now = uv_now(client_->loop());
    const std::uint64_t at = deadlines_.front().first;
    uv_timer_start(
        &deadline_timer_,
        [](uv_timer_t* handle) {
          static_cast<Outbox*>(handle->data)->OnDeadline();
        },
        at > now ? at - now : 0, 0);
  }

  // Deadlines come in the order requests came (one timeout for all).
  void OnDeadline() {
    const std::uint64_t now = uv_now(client_->loop());
    while (!deadlines_.empty() && deadlines_.front().first <= now) {
      const std::uint64_t id = deadlines_.front().second;
      deadlines_.pop_front();
      auto found = pending_.find(id);
      if (found == pending_.end()) continue;  // answered already
      const bool confirmed = found->second.confirmed;
      std::shared_ptr<IncomingRequest> request = Take(id);
      ++figures_.timeouts;
      const std::string after = FormatDuration(settings_.timeout);
      if (settings_.mode == AmqpPublishMode::kRpc) {
        FailWith(
            *request, ErrorCode::kTimeout,
            "timeout: no reply within " + after +
                " (publish.timeout) "
                "to message " +
                ids_.Make(id) +
                (confirmed ? ", which RabbitMQ queued; it may still be "
                             "processed"
                           : ", which RabbitMQ did not even confirm; it may "
                             "or may not be queued"));
      } else {
        FailWith(*request, ErrorCode::kTimeout,
                 "timeout: RabbitMQ did not confirm message " + ids_.Make(id) +
                     " within " + after +
                     " (publish.timeout); it may or may not be queued");
      }
      Settled();
    }
    ArmDeadline();
  }

  // ------------------------------------------------------------ events

  void OnEvents() {
    for (AmqpPublisherEvent& event : publisher_->TakeEvents()) {
      switch (event.type) {
        case AmqpPublisherEvent::Type::kConnected:
          if (ever_connected_) ++figures_.reconnects;
          ever_connected_ = true;
          connected_ = true;
          generation_ = event.generation;
          blocked_ = false;
          state_ = stopping_ ? "stopping" : "connected";
          MarkDirty();
          break;
        case AmqpPublisherEvent::Type::kDisconnected:
          OnDisconnected(event.generation, event.text);
          break;
        case AmqpPublisherEvent::Type::kConnectFailed:
          // Said to every request refused until it connects.
          last_error_ = event.text;
          MarkDirty();
          break;
        case AmqpPublisherEvent::Type::kConfirmed:
          OnConfirmed(event.generation, event.id);
          break;
        case AmqpPublisherEvent::Type::kRefused:
          OnRefused(event.generation, event.id);
          break;
        case AmqpPublisherEvent::Type::kReturned:
          OnReturned(event);
          break;
        case AmqpPublisherEvent::Type::kReply:
          OnReply(event);
          break;
        case AmqpPublisherEvent::Type::kBlocked:
          blocked_ = true;
          blocked_reason_ = event.text;
          MarkDirty();
          break;
        case AmqpPublisherEvent::Type::kUnblocked:
          blocked_ = false;
          MarkDirty();
          break;
        case AmqpPublisherEvent::Type::kStopped:
          Finish();
          return;
      }
    }
  }

  void OnDisconnected(std::uint64_t generation, const std::string& why) {
    connected_ = false;
    blocked_ = false;
    last_error_ = why;
    state_ = stopping_ ? "stopping" : "reconnecting";
    // What was not handed over yet was meant for that connection too.
    if (generation == generation_) batch_.clear();
    std::vector<std::uint64_t> lost;
    for (const auto& [id, pending] : pending_) {
      if (pending.generation == generation) lost.push_back(id);
    }
    for (std::uint64_t id : lost) {
      const bool confirmed = pending_.at(id).confirmed;
      std::shared_ptr<IncomingRequest> request = Take(id);
      ++figures_.lost;
      std::string text =
          "connection to RabbitMQ lost (" + why + ") " +
          (confirmed
               ? "while waiting for the reply to message " + ids_.Make(id) +
                     ", which RabbitMQ had queued: it may still be "
                     "processed"
               : "before RabbitMQ confirmed message " + ids_.Make(id) +
                     ": it may or may not be queued");
      FailWith(*request, ErrorCode::kWorkerDied, text);
    }
    if (!lost.empty()) {
      Log("warning", std::to_string(lost.size()) +
                         " requests failed with the lost connection");
    }
    Settled();
  }

  Pending* Find(std::uint64_t generation, std::uint64_t id) {
    auto found = pending_.find(id);
    if (found == pending_.end() || found->second.generation != generation) {
      return nullptr;
    }
    return &found->second;
  }

  void OnConfirmed(std::uint64_t generation, std::uint64_t id) {
    ++figures_.confirmed;
    MarkDirty();
    Pending* pending = Find(generation, id);
    if (pending == nullptr) return;  // answered already (reply, timeout)
    if (settings_.mode == AmqpPublishMode::kRpc) {
      pending->confirmed = true;
      return;
    }
    std::shared_ptr<IncomingRequest> request = Take(id);
    const std::string message_id = ids_.Make(id);
    json meta = {{"message_id", message_id},
                 {"http_status", 202},
                 {"content_type", "application/json"}};
    json body = {{"message_id", message_id},
                 {"exchange", settings_.exchange},
                 {"routing_key", settings_.routing_key}};
    request->Reply(DumpJson(body) + "\n", DumpJson(meta));
    Settled();
  }

  void OnRefused(std::uint64_t generation, std::uint64_t id) {
    ++figures_.nacked;
    Pending* pending = Find(generation, id);
    if (pending == nullptr) {
      MarkDirty();
      return;
    }
    std::shared_ptr<IncomingRequest> request = Take(id);
    // A queue at its x-max-length with x-overflow reject-publish, or a
    // broker-side failure: either way nothing was queued.
    FailWith(*request, ErrorCode::kQueueFull,
             "queue full: RabbitMQ refused message " + ids_.Make(id) +
                 " (basic.nack: a queue at its length limit, or a broker "
                 "error); it was not queued");
    Settled();
  }

  std::optional<std::uint64_t> IdOf(const std::optional<std::string>& text) {
    if (!text) return std::nullopt;
    return ids_.Parse(*text);
  }

  void OnReturned(const AmqpPublisherEvent& event) {
    ++figures_.returned;
    std::optional<std::uint64_t> id = IdOf(event.properties.message_id);
    Pending* pending = id ? Find(event.generation, *id) : nullptr;
    if (pending == nullptr) {
      MarkDirty();
      return;
    }
    std::shared_ptr<IncomingRequest> request = Take(*id);
    std::string text =
        "no queue takes the message: RabbitMQ returned "
        "message " +
        ids_.Make(*id) + " (" + event.text + ") published to " + Where() +
        "; it was not queued";
    returned_log_.Log(text);
    FailWith(*request, ErrorCode::kNoWorkers, text);
    Settled();
  }

  void OnReply(const AmqpPublisherEvent& event) {
    std::optional<std::uint64_t> id = IdOf(event.properties.correlation_id);
    Pending* pending = id ? Find(event.generation, *id) : nullptr;
    if (pending == nullptr) {
      // Its request timed out or was cancelled, or a reply of another
      // process's or connection's: nobody waits for it.
      ++figures_.late_replies;
      MarkDirty();
      return;
    }
    OutboxReply reply = ReadOutboxReply(event.properties);
    switch (reply.kind) {
      case OutboxReply::Kind::kProgress:
        ++figures_.progress;
        pending->request->SendProgress(reply.fraction, event.body);
        MarkDirty();
        return;
      case OutboxReply::Kind::kError: {
        ++figures_.error_replies;
        std::shared_ptr<IncomingRequest> request = Take(*id);
        FailWith(*request, reply.code,
                 reply.text.empty() ? event.body : reply.text);
        Settled();
        return;
      }
      case OutboxReply::Kind::kAnswer: {
        ++figures_.replies;
        std::shared_ptr<IncomingRequest> request = Take(*id);
        json meta = {{"message_id", ids_.Make(*id)}};
        if (event.properties.content_type) {
          meta["content_type"] = *event.properties.content_type;
        }
        request->Reply(event.body, DumpJson(meta));
        Settled();
        return;
      }
    }
  }

  // ------------------------------------------------------------ stopping

  void BeginStop() {
    if (stopping_) return;
    stopping_ = true;
    state_ = "stopping";
    MarkDirty();
    if (consumer_stop_) consumer_stop_();
    MaybeShutdown();
  }

  void MaybeShutdown() {
    if (!stopping_ || shutdown_sent_ || !pending_.empty()) return;
    shutdown_sent_ = true;
    FlushBatch();
    publisher_->Shutdown();
  }

  void Finish() {
    publisher_->Join();
    stopped_ = true;
    state_ = "stopped";
    PublishStats();
    Log("", "stopped (" + std::to_string(figures_.published) + " published, " +
                std::to_string(figures_.confirmed) + " confirmed, " +
                std::to_string(figures_.replies) + " replies, " +
                std::to_string(figures_.error_replies) + " error replies, " +
                std::to_string(figures_.timeouts) + " timeouts, " +
                std::to_string(figures_.late_replies) +
                " late replies dropped)");
    for (uv_handle_t* handle :
         {reinterpret_cast<uv_handle_t*>(&async_),
          reinterpret_cast<uv_handle_t*>(&flush_check_),
          reinterpret_cast<uv_handle_t*>(&deadline_timer_),
          reinterpret_cast<uv_handle_t*>(&stats_timer_)}) {
      uv_close(handle, nullptr);
    }
  }

  // ------------------------------------------------------------ figures

  void MarkDirty() {
    if (stopped_) return;
    if (uv_is_active(reinterpret_cast<uv_handle_t*>(&stats_timer_))) return;
    uv_timer_start(
        &stats_timer_,
        [](uv_timer_t* handle) {
          static_cast<Outbox*>(handle->data)->PublishStats();
        },
        1000, 0);
  }

  void PublishStats() {
    const Figures& f = figures_;
    json publish = {{"connection", state_},
                    {"exchange", settings_.exchange},
                    {"routing_key", settings_.routing_key},
                    {"mode", AmqpPublishModeName(settings_.mode)},
                    {"pending", pending_.size()},
                    {"max_pending", settings_.max_pending},
                    {"blocked", blocked_},
                    {"published", f.published},
                    {"confirmed", f.confirmed},
                    {"nacked", f.nacked},
                    {"returned", f.returned},
                    {"replies", f.replies},
                    {"error_replies", f.error_replies},
                    {"progress", f.progress},
                    {"late_replies", f.late_replies},
                    {"timeouts", f.timeouts},
                    {"lost", f.lost},
                    {"cancelled", f.cancelled},
                    {"rejected_full", f.rejected_full},
                    {"rejected_blocked", f.rejected_blocked},
                    {"rejected_disconnected", f.rejected_disconnected},
                    {"reconnects", f.reconnects},
                    {"last_error", last_error_}};
    json stats = has_consumer_stats_ ? consumer_stats_
                                     : json{{"connection", state_},
                                            {"broker", config_.url.Describe()}};
    stats["publish"] = std::move(publish);
    client_->SetAppStats(DumpJson(stats));
  }

  PoolClient* client_;
  AmqpServiceConfig config_;
  const AmqpPublishSettings settings_;
  AmqpOutboxIds ids_;
  ConsumerView view_;
  std::unique_ptr<AmqpPublisher> publisher_;
  uv_async_t async_;
  uv_check_t flush_check_;  // runs FlushBatch while batch_ is not empty
  uv_timer_t deadline_timer_;
  uv_timer_t stats_timer_;

  std::uint64_t next_id_ = 0;
  std::unordered_map<std::uint64_t, Pending> pending_;
  std::deque<std::pair<std::uint64_t, std::uint64_t>> deadlines_;  // ms, id
  std::vector<AmqpOutgoing> batch_;  // for the AMQP thread, this iteration

  bool connected_ = false;
  bool ever_connected_ = false;
  std::uint64_t generation_ = 0;
  bool blocked_ = false;
  std::string blocked_reason_;
  std::string state_ = "connecting";
  std::string last_error_;
  bool stopping_ = false;
  bool shutdown_sent_ = false;
  bool stopped_ = false;
  Figures figures_;

  std::function<void()> consumer_stop_;
  json consumer_stats_ = json::object();
  bool has_consumer_stats_ = false;

  // At most one line a second about returned messages.
  struct {
    std::chrono::steady_clock::time_point last{};
    int held = 0;
    void Log(const std::string& text) {
      auto now = std::chrono::steady_clock::now();
      if (now - last < std::chrono::seconds(1)) {
        ++held;
        return;
      }
      std::string line = text;
      if (held > 0) {
        line += " (" + std::to_string(held) + " similar not logged)";
      }
      workerpool::Log("warning", line);
      last = now;
      held = 0;
    }
  } returned_log_;
};

void ConsumerView::OnStop(std::function<void()> callback) {
  outbox_->SetConsumerStop(std::move(callback));
}

void ConsumerView::SetAppStats(std::string json_object) {
  outbox_->SetConsumerStats(std::move(json_object));
}

}  // namespace

std::unique_ptr<RabbitmqOutbox> StartRabbitmqOutbox(
    PoolClient* client, const AmqpServiceConfig& config) {
  auto outbox = std::make_unique<Outbox>(client, config);
  outbox->Start();
  return outbox;
}

}  // namespace workerpool
