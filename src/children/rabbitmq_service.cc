// `workerpool builtin rabbitmq-service`.
//
// Design: two threads.
//
//   The loop thread runs the PoolClient (which is loop-thread-only): it
//   turns each delivery into a request to the target group, and decides
//   from the reply what becomes of the delivery (ack, retry, dead letter).
//
//   The AMQP thread (children/amqp_session.cc) owns the librabbitmq
//   connection and does every blocking call: connect, login, declares,
//   publishes. It hands deliveries to the loop through a uv_async_t and
//   takes settle/publish commands back through a queue and an eventfd.
//
//   One exception, the hot path: plain acks (the job succeeded, nothing was
//   published on the message's behalf). They are collected during one loop
//   iteration and written by the loop thread itself (AmqpSession::TryAck)
//   when the AMQP thread is asleep in poll(), no command waits and the
//   socket is writable; otherwise they become settle commands like the
//   rest. Waking the AMQP thread just to write a 21-byte frame cost ~40 us
//   a message on a 2-vCPU VM (more than the job round trip), and at
//   prefetch 1 every message pays it in full. TryAck never blocks: it only
//   try-locks the connection, skips TLS (SSL_write may need to read), and
//   writes at most 64 small frames to a socket poll() reported writable.
//
// The other way round, deliveries: while the AMQP thread sleeps, the loop
// watches the socket itself (uv_poll_t on a dup) and reads the deliveries
// whose every byte has arrived (AmqpSession::ReadDeliveries), so a message
// goes to its job without a wake-up of the AMQP thread first (12-20 us a
// message on a 2-vCPU VM, paid in full at prefetch 1). Anything else on the
// socket (a confirm, a heartbeat, a delivery still on the wire) hands the
// watch back to the AMQP thread, which gives it to the loop again before
// it sleeps.
//
// Why not run the whole connection on the loop (uv_poll_t + zero-timeout
// reads)? librabbitmq is blocking everywhere but in its reads: connect and
// the DNS lookup, the login handshake, every RPC (queue.declare, basic.qos,
// basic.cancel), and every write (a publish blocks while RabbitMQ's flow
// control or a memory alarm stops reading the socket, which can last
// minutes). On the loop thread any of these would stall the pool channel:
// no replies from jobs, no heartbeats to the Watcher (which then kills the
// service as hung: a crash loop caused by the broker). One thread keeps all
// of that away from the loop at the price of one queue each way.
//
// At-least-once: a delivery is acked only after its job succeeded and every
// message published on its behalf (RPC reply, retry copy, dead letter) was
// confirmed by RabbitMQ (publisher confirms). A kill at any point leaves it
// unacked, and RabbitMQ redelivers it.
//
// Retries: on an error reply (or the job died, or timed out) the delivery is
// held, unacked, for an exponential backoff; then a copy with
// x-workerpool-retries + 1 is published to the same queue and, once
// confirmed, the original is acked. A held delivery keeps its prefetch slot,
// which slows intake while jobs fail, as it should. After max_retries the
// message goes to dead_letter_queue (declared durable) with
// x-workerpool-error, -error-code, -retries and -queue, then is acked;
// without a dead_letter_queue it is rejected (RabbitMQ then applies the
// queue's own dead-letter exchange, if it has one). A body that cannot fit a
// pool frame is dead-lettered at once. "No live job", "queue full" and
// "route refused" are not the message's fault: it is held and sent again
// after a pause, without counting a retry.
//
// Attempts count x-workerpool-retries plus, on a quorum queue, RabbitMQ's
// x-delivery-count (deliveries that came back unsettled: a lost
// connection, a consumer timeout). Retry copies and dead letters are
// published mandatory: one RabbitMQ cannot route (the queue was deleted)
// comes back, and its delivery is requeued instead of acked.
//
// A queue whose consumer RabbitMQ cancels (deleted, its node gone) or that
// the depth look finds gone is flagged (status: consuming false, problem,
// last_error) and consumed again when it is back (AmqpSession); a retry of
// its messages waits for that. A delivery never stays here past the
// broker's consumer_timeout (CutOffOverdue): RabbitMQ would close the
// channel and redeliver it, forever if the job is always slower.
//
// RPC: a delivery with reply_to gets the job's reply published there with
// its correlation_id (x-workerpool-status: ok), progress updates as
// messages with x-workerpool-status: progress and x-workerpool-progress (the
// fraction; the text is the body), and a final failure as
// x-workerpool-status: error with x-workerpool-error.
//
// Stop (SIGTERM, drain): cancel the consumers, finish the requests in
// flight (publishing their acks, retry copies and dead letters; deliveries
// in backoff get their retry copy now), close the connection, return.
#include "children/rabbitmq_service.h"

#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "children/amqp_log.h"
#include "children/amqp_session.h"
#include "children/rabbitmq_outbox.h"
#include "core/amqp_message.h"
#include "core/amqp_retry.h"
#include "core/amqp_service_config.h"
#include "core/frame_codec.h"
#include "workerpool/client.h"

namespace workerpool {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// Pauses before sending a delivery again when the target group cannot take
// it (no live process, queue full): 200ms doubling to 5s.
const AmqpBackoff kResendBackoff{Duration(200), Duration(5000), 2.0, 0.2};

struct QueueFigures {
  std::uint64_t deliveries = 0, redelivered = 0, acks = 0, retries = 0,
                dead_letters = 0, rejected = 0, requeued = 0;
  // Times the queue lost its consumer (RabbitMQ cancelled it, or the depth
  // look found the queue gone), and jobs that ran into the broker's
  // consumer_timeout (cut off by the service, or the channel closed).
  std::uint64_t cancels = 0, consumer_timeouts = 0;
  long messages = -1, consumers = -1;  // -1: not looked at yet
  bool consuming = false;
  std::string error;  // why not consuming; empty while it is
};

// A delivery between its arrival and its settle command.
struct HoldTimer;

struct Work {
  std::unique_ptr<AmqpDelivery> delivery;
  std::string meta;  // the request's meta, built once
  int retries = 0;   // attempts before this one (AttemptsBefore)
  int resends = 0;   // pauses for a group that could not take it
  Clock::time_point arrived{};
  bool in_request = false;
  std::uint64_t request_id = 0;  // while in_request
  // Cut off before the broker's consumer_timeout: its request cancelled,
  // the failure counted as consumer_timeout.
  bool cut_off = false;
  // kWaitQueue: a retry whose queue is not consumed now (deleted?): its
  // copy is published once the queue is consumed again.
  enum class Hold { kNone, kRetry, kResend, kWaitQueue } hold = Hold::kNone;
  HoldTimer* timer = nullptr;
  std::string error;  // of the last failed attempt
  wire::ErrorCode code = wire::ErrorCode::kHandlerError;
  std::string code_name;  // overrides ErrorCodeName(code) when set
};

std::string CodeName(const Work& work) {
  return work.code_name.empty() ? std::string(ErrorCodeName(work.code))
                                : work.code_name;
}

using WorkKey = std::pair<std::uint64_t, std::uint64_t>;  // generation, tag

class Service;

struct HoldTimer {
  uv_timer_t handle;
  Service* service;
  WorkKey key;
};

// The loop's watch on one connection's socket (a dup the AMQP thread gave
// with kConnected), started on kLoopReads: see AmqpSession::ReadDeliveries.
struct SocketWatch {
  uv_poll_t handle;
  Service* service;
  std::uint64_t generation;
  int fd;
};

// At most one line a second per kind; counts what it held back.
class LineLimiter {
 public:
  void Log(const std::string& line) {
    auto now = Clock::now();
    if (logged_once_ && now - last_ < std::chrono::seconds(1)) {
      ++held_back_;
      return;
    }
    std::string text = line;
    if (held_back_ > 0) {
      text += " (" + std::to_string(held_back_) +
              " similar lines not logged in the last second)";
    }
    AmqpLog(text);
    logged_once_ = true;
    last_ = now;
    held_back_ = 0;
  }

 private:
  bool logged_once_ = false;
  Clock::time_point last_{};
  int held_back_ = 0;
};

std::string Describe(const AmqpDelivery& delivery) {
  std::string text = "message";
  if (delivery.properties.message_id) {
    text += " '" + *delivery.properties.message_id + "'";
  } else if (delivery.properties.correlation_id) {
    text += " (correlation_id '" + *delivery.properties.correlation_id + "')";
  }
  return text + " from '" + delivery.queue + "'";
}

std::string OneLine(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  if (text.size() > 300) text = text.substr(0, 300) + "...";
  return text;
}

class Service {
 public:
  Service(PoolClient* client, AmqpServiceConfig config)
      : client_(client),
        config_(std::move(config)),
        rng_(std::random_device{}()) {
    for (const std::string& queue : config_.queues) figures_[queue];
  }

  void Start() {
    uv_loop_t* loop = client_->loop();
    uv_async_init(loop, &async_, [](uv_async_t* handle) {
      static_cast<Service*>(handle->data)->OnEvents();
    });
    async_.data = this;
    uv_timer_init(loop, &stats_timer_);
    stats_timer_.data = this;
    uv_check_init(loop, &flush_check_);
    flush_check_.data = this;
    uv_timer_init(loop, &cutoff_timer_);
    cutoff_timer_.data = this;
    if (config_.connection_name.empty()) {
      const char* pool = std::getenv("WORKERPOOL_POOL");
      config_.connection_name = std::string(pool != nullptr ? pool : "?") +
                                "/" + client_->group() + "/" +
                                std::to_string(client_->index());
    }
    cutoff_ = AmqpConsumerTimeoutCutoff(config_.consumer_timeout);
    session_ = std::make_unique<AmqpSession>(
        config_, [this] { uv_async_send(&async_); });
    client_->OnStop([this] { BeginStop(); });
    std::string queues;
    for (const std::string& queue : config_.queues) {
      queues += (queues.empty() ? "'" : ", '") + queue + "'";
    }
    AmqpLog("starting: " + queues + " on " + config_.url.Redacted() +
            " -> group '" + config_.target + "' (max_retries " +
            std::to_string(config_.max_retries) + ", dead letters " +
            (config_.dead_letter_queue.empty()
                 ? std::string("rejected to the queue's own DLX, if any")
                 : "to '" + config_.dead_letter_queue + "'") +
            (config_.queue_type == AmqpQueueType::kQuorum
                 ? ", quorum queues, delivery_limit " +
                       std::to_string(config_.delivery_limit)
                 : std::string()) +
            ")");
    WarnIfJobsOutlastConsumerTimeout("");
    MarkDirty();
    session_->Start();
  }

  void OnHoldTimer(HoldTimer* timer) {
    WorkKey key = timer->key;
    CloseTimer(timer);
    auto found = works_.find(key);
    if (found == works_.end()) return;
    Work* work = found->second.get();
    work->timer = nullptr;
    Work::Hold hold = work->hold;
    work->hold = Work::Hold::kNone;
    if (Stale(*work)) {
      EraseWork(key);
      return;
    }
    if (hold == Work::Hold::kRetry) {
      if (!Consuming(work->delivery->queue) && !stopping_) {
        // Its copy would find no queue (RabbitMQ would return it): wait
        // until the queue is consumed again, or the consumer_timeout cut.
        work->hold = Work::Hold::kWaitQueue;
        return;
      }
      PublishRetry(key);
    } else {
      SendRequest(key);
    }
  }

  void OnCutoffTimer() { CutOffOverdue(); }

 private:
  // ------------------------------------------------------------ events

  void OnEvents() {
    for (AmqpEvent& event : session_->TakeEvents()) {
      switch (event.type) {
        case AmqpEvent::Type::kConnected:
          if (ever_connected_) ++reconnects_;
          ever_connected_ = true;
          generation_ = event.generation;
          connected_ = true;
          blocked_ = false;
          state_ = stopping_ ? "stopping" : "connected";
          MarkDirty();
          OpenWatch(event.generation, event.fd);
          break;
        case AmqpEvent::Type::kLoopReads:
          StartWatch(event.generation);
          break;
        case AmqpEvent::Type::kDisconnected:
          OnDisconnected(event.text, event.consumer_timeout);
          break;
        case AmqpEvent::Type::kDelivery:
          OnDelivery(std::move(event.delivery));
          break;
        case AmqpEvent::Type::kSettled: {
          QueueFigures& figures = figures_[event.queue];
          switch (event.outcome) {
            case AmqpOutcome::kAcked:
              ++figures.acks;
              break;
            case AmqpOutcome::kRetried:
              ++figures.retries;
              break;
            case AmqpOutcome::kDeadLettered:
              ++figures.dead_letters;
              break;
            case AmqpOutcome::kRejected:
              ++figures.rejected;
              break;
            case AmqpOutcome::kRequeued:
              ++figures.requeued;
              break;
          }
          MarkDirty();
          break;
        }
        case AmqpEvent::Type::kQueueStats: {
          QueueFigures& figures = figures_[event.queue];
          figures.messages = event.messages;
          figures.consumers = event.consumers;
          MarkDirty();
          break;
        }
        case AmqpEvent::Type::kQueueState:
          OnQueueState(event);
          break;
        case AmqpEvent::Type::kBlocked:
          blocked_ = true;
          blocked_reason_ = event.text;
          last_error_ = "RabbitMQ blocked the connection: " + event.text;
          MarkDirty();
          break;
        case AmqpEvent::Type::kUnblocked:
          blocked_ = false;
          MarkDirty();
          break;
        case AmqpEvent::Type::kStopped:
          Finish();
          return;
      }
    }
  }

  // A queue consumed again, or not any more (see AmqpEvent::kQueueState).
  void OnQueueState(const AmqpEvent& event) {
    if (event.generation != generation_) return;
    QueueFigures& figures = figures_[event.queue];
    figures.consuming = event.consuming;
    figures.error = event.text;
    if (!event.consuming) {
      // RabbitMQ's figures went with the consumer; a look when it is back.
      figures.consumers = 0;
      figures.messages = -1;
      last_error_ = "queue '" + event.queue + "': " + event.text;
    }
    if (event.cancelled) ++figures.cancels;
    MarkDirty();
    if (!event.consuming) return;
    // Retries that waited for their queue: their copies can go now.
    std::vector<WorkKey> waiting;
    for (auto& [key, work] : works_) {
      if (work->hold == Work::Hold::kWaitQueue &&
          work->delivery->queue == event.queue && !Stale(*work)) {
        waiting.push_back(key);
      }
    }
    for (const WorkKey& key : waiting) {
      works_.at(key)->hold = Work::Hold::kNone;
      PublishRetry(key);
    }
  }

  bool Consuming(const std::string& queue) const {
    auto found = figures_.find(queue);
    return connected_ && found != figures_.end() && found->second.consuming;
  }

  void OnDisconnected(const std::string& why,
                      std::optional<Duration> consumer_timeout) {
    CloseWatch();
    bool was_connected = connected_;
    connected_ = false;
    blocked_ = false;
    last_error_ = why;
    for (auto& [queue, figures] : figures_) {
      figures.consuming = false;
      figures.error = "not connected to RabbitMQ";
      figures.consumers = 0;
    }
    if (consumer_timeout && was_connected) {
      OnBrokerConsumerTimeout(*consumer_timeout);
    }
    state_ = stopping_ ? "stopping"
                       : (ever_connected_ ? "reconnecting" : "connecting");
    MarkDirty();
    if (!was_connected) return;
    // Every delivery of that connection is back in its queue. Held ones are
    // forgotten now; those with a request out are forgotten when it ends.
    int requests = 0;
    std::vector<WorkKey> held;
    for (auto& [key, work] : works_) {
      if (work->in_request) {
        ++requests;
      } else {
        held.push_back(key);
      }
    }
    for (const WorkKey& key : held) EraseWork(key);
    if (requests > 0) {
      AmqpLog(std::to_string(requests) +
              " requests in flight belong to the lost connection: RabbitMQ "
              "redelivers their messages, so their results are dropped");
    }
    MaybeShutdown();
  }

  // ------------------------------------------------------------ socket watch

  void OpenWatch(std::uint64_t generation, int fd) {
    CloseWatch();
    if (fd < 0) return;  // TLS: the AMQP thread reads everything
    auto* watch = new SocketWatch{{}, this, generation, fd};
    watch->handle.data = watch;
    int rc = uv_poll_init_socket(client_->loop(), &watch->handle, fd);
    if (rc != 0) {
      AmqpLog(std::string("warning: cannot watch the RabbitMQ socket from the "
                          "loop (") +
              uv_strerror(rc) + "); the AMQP thread reads every delivery");
      close(fd);
      delete watch;
      return;
    }
    watch_ = watch;
  }

  void StartWatch(std::uint64_t generation) {
    if (watch_ == nullptr || watch_->generation != generation) {
      session_->DeclineReads(generation);
      return;
    }
    uv_poll_start(&watch_->handle, UV_READABLE,
                  [](uv_poll_t* handle, int status, int /*events*/) {
                    auto* watch = static_cast<SocketWatch*>(handle->data);
                    watch->service->OnSocketReadable(watch, status);
                  });
  }

  void OnSocketReadable(SocketWatch* watch, int status) {
    const std::uint64_t generation = watch->generation;
    if (status < 0) {
      uv_poll_stop(&watch->handle);
      session_->DeclineReads(generation);
      return;
    }
    std::vector<std::unique_ptr<AmqpDelivery>> deliveries;
    if (session_->ReadDeliveries(generation, &deliveries) ==
        AmqpLoopRead::kStopWatching) {
      uv_poll_stop(&watch->handle);
    }
    for (std::unique_ptr<AmqpDelivery>& delivery : deliveries) {
      OnDelivery(std::move(delivery));
    }
  }

  void CloseWatch() {
    if (watch_ == nullptr) return;
    uv_poll_stop(&watch_->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&watch_->handle),
             [](uv_handle_t* handle) {
               auto* watch = static_cast<SocketWatch*>(handle->data);
               close(watch->fd);
               delete watch;
             });
    watch_ = nullptr;
  }

  bool Stale(const Work& work) const {
    return !connected_ || work.delivery->generation != generation_;
  }

  // ------------------------------------------------------------ deliveries

  void OnDelivery(std::unique_ptr<AmqpDelivery> delivery) {
    // Left unacked: RabbitMQ requeues it when the connection closes.
    if (stopping_ || !connected_ || delivery->generation != generation_) {
      return;
    }
    QueueFigures& figures = figures_[delivery->queue];
    ++figures.deliveries;
    if (delivery->redelivered) ++figures.redelivered;
    MarkDirty();

    WorkKey key{delivery->generation, delivery->tag};
    auto owned = std::make_unique<Work>();
    Work* work = owned.get();
    work->retries = AttemptsBefore(delivery->properties);
    work->arrived = Clock::now();
    work->meta =
        RequestMeta(delivery->queue, delivery->exchange, delivery->routing_key,
                    delivery->redelivered, work->retries, delivery->properties);
    work->delivery = std::move(delivery);
    works_[key] = std::move(owned);
    if (!FrameFits(work->meta, work->delivery->body)) {
      work->code = wire::ErrorCode::kTooLarge;
      work->error = "message of " +
                    std::to_string(work->delivery->body.size()) +
                    " bytes (with " + std::to_string(work->meta.size()) +
                    " bytes of properties) is over the pool's frame limit "
                    "of " +
                    std::to_string(wire::kMaxPayload) + " bytes";
      DeadLetter(key);
      return;
    }
    SendRequest(key);
    ArmCutoff();
  }

  void SendRequest(const WorkKey& key) {
    Work* work = works_.at(key).get();
    work->in_request = true;
    const AmqpDelivery& delivery = *work->delivery;
    SendOptions options;
    options.meta = work->meta;
    // AMQP: a higher priority first; the pool: a lower number first.
    if (delivery.properties.priority) {
      options.priority =
          -static_cast<std::int32_t>(*delivery.properties.priority);
    }
    if (delivery.properties.reply_to) {
      options.on_progress = [this, key](const Progress& progress) {
        OnProgress(key, progress);
      };
    }
    const std::uint64_t id = client_->Send(
        config_.target, delivery.body,
        [this, key](Reply reply) { OnReply(key, std::move(reply)); },
        std::move(options));
    // (DONE may have run already, and the work be gone or held.)
    auto found = works_.find(key);
    if (found != works_.end() && found->second->in_request) {
      found->second->request_id = id;
    }
  }

  void OnProgress(const WorkKey& key, const Progress& progress) {
    auto found = works_.find(key);
    if (found == works_.end() || Stale(*found->second)) return;
    const AmqpDelivery& delivery = *found->second->delivery;
    if (!delivery.properties.reply_to) return;
    AmqpPublish publish;
    publish.routing_key = *delivery.properties.reply_to;
    publish.properties = ReplyProperties(delivery.properties, "progress");
    SetHeader(&publish.properties, kProgressHeader,
              AmqpValue::Double(progress.fraction));
    publish.body = progress.text;
    AmqpCommand command;
    command.type = AmqpCommand::Type::kPublish;
    command.publishes.push_back(std::move(publish));
    session_->Post(std::move(command));
  }

  void OnReply(const WorkKey& key, Reply reply) {
    auto found = works_.find(key);
    if (found == works_.end()) return;
    Work* work = found->second.get();
    work->in_request = false;
    if (Stale(*work)) {
      EraseWork(key);
      return;
    }
    if (reply.ok) {
      std::vector<AmqpPublish> publishes;
      if (work->delivery->properties.reply_to) {
        AmqpPublish publish;
        publish.routing_key = *work->delivery->properties.reply_to;
        publish.properties = ReplyProperties(work->delivery->properties, "ok");
        publish.body = std::move(reply.body);
        publishes.push_back(std::move(publish));
      }
      Settle(key, AmqpOutcome::kAcked, std::move(publishes));
      return;
    }
    work->error = reply.body;
    work->code = reply.code;
    work->code_name.clear();
    if (work->cut_off) {
      // Cancelled by CutOffOverdue: a timeout, told as the broker's.
      work->cut_off = false;
      work->code = wire::ErrorCode::kTimeout;
      work->code_name = "consumer_timeout";
      work->error = "no answer from group '" + config_.target + "' after " +
                    FormatDuration(std::chrono::duration_cast<Duration>(
                        Clock::now() - work->arrived)) +
                    ": cut off before RabbitMQ's consumer_timeout (" +
                    FormatDuration(config_.consumer_timeout) +
                    ") would close the channel; keep the group's "
                    "request_timeout below it, or raise consumer_timeout on "
                    "the broker and in rabbitmq.consumer_timeout";
    }
    switch (DecideOnFailure(work->code, work->retries, config_.max_retries)) {
      case AmqpFailureAction::kRetry: {
        if (stopping_) {
          PublishRetry(key);
          return;
        }
        Duration delay = config_.retry_backoff.Delay(work->retries, Random01());
        // Held no longer than the consumer_timeout allows: a delivery that
        // long here gets its retry copy at once.
        const bool overdue = cutoff_.count() > 0 &&
                             work->arrived + cutoff_ <= Clock::now() + delay;
        retry_log_.Log(
            Describe(*work->delivery) + " failed (" + CodeName(*work) + ": " +
            OneLine(work->error) + "); retry " +
            std::to_string(work->retries + 1) + " of " +
            std::to_string(config_.max_retries) +
            (overdue ? std::string(" now") : " in " + FormatDuration(delay)));
        if (overdue) {
          PublishRetry(key);
          return;
        }
        Hold(key, Work::Hold::kRetry, delay);
        return;
      }
      case AmqpFailureAction::kDeadLetter:
        DeadLetter(key);
        return;
      case AmqpFailureAction::kResend: {
        if (stopping_) {
          EraseWork(key);  // unacked: requeued when we close
          return;
        }
        Duration delay = kResendBackoff.Delay(work->resends++, Random01());
        resend_log_.Log("group '" + config_.target +
                        "' cannot take requests now (" +
                        ErrorCodeName(reply.code) + ": " + OneLine(reply.body) +
                        "); holding " + Describe(*work->delivery) +
                        " and sending it again in " + FormatDuration(delay));
        Hold(key, Work::Hold::kResend, delay);
        return;
      }
      case AmqpFailureAction::kAbandon:
        EraseWork(key);
        return;
    }
  }

  void PublishRetry(const WorkKey& key) {
    Work* work = works_.at(key).get();
    AmqpPublish publish;
    publish.routing_key = work->delivery->queue;
    publish.properties =
        RetryProperties(work->delivery->properties, work->retries + 1,
                        CodeName(*work) + ": " + work->error);
    publish.body = std::move(work->delivery->body);
    publish.mandatory = true;
    std::vector<AmqpPublish> publishes;
    publishes.push_back(std::move(publish));
    Settle(key, AmqpOutcome::kRetried, std::move(publishes));
  }

  void DeadLetter(const WorkKey& key) {
    Work* work = works_.at(key).get();
    AmqpDelivery& delivery = *work->delivery;
    const std::string code = CodeName(*work);
    const std::string reason = code + ": " + work->error;
    std::vector<AmqpPublish> publishes;
    if (delivery.properties.reply_to) {
      AmqpPublish publish;
      publish.routing_key = *delivery.properties.reply_to;
      publish.properties = ReplyProperties(delivery.properties, "error");
      SetHeader(&publish.properties, kErrorHeader, AmqpValue::String(reason));
      publish.body = reason;
      publishes.push_back(std::move(publish));
    }
    AmqpOutcome outcome = AmqpOutcome::kRejected;
    std::string where;
    if (!config_.dead_letter_queue.empty()) {
      AmqpPublish publish;
      publish.routing_key = config_.dead_letter_queue;
      publish.properties =
          DeadLetterProperties(delivery.properties, work->retries, work->error,
                               code, delivery.queue);
      publish.body = std::move(delivery.body);
      publish.mandatory = true;
      publishes.push_back(std::move(publish));
      outcome = AmqpOutcome::kDeadLettered;
      where = "dead-lettered to '" + config_.dead_letter_queue + "'";
    } else {
      where =
          "rejected (no dead_letter_queue: the queue's own dead-letter "
          "exchange gets it, if it has one)";
    }
    std::string after =
        work->code == wire::ErrorCode::kTooLarge
            ? ""
            : " after " + std::to_string(work->retries) + " retries";
    dead_log_.Log(Describe(delivery) + " " + where + after + ": " +
                  OneLine(reason));
    Settle(key, outcome, std::move(publishes));
  }

  void Settle(const WorkKey& key, AmqpOutcome outcome,
              std::vector<AmqpPublish> publishes) {
    if (outcome == AmqpOutcome::kAcked && publishes.empty()) {
      // The common case: collected, and acked together after this loop
      // iteration's callbacks (FlushAcks), from this thread when it can.
      acks_.push_back(key);
      if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&flush_check_))) {
        uv_check_start(&flush_check_, [](uv_check_t* handle) {
          static_cast<Service*>(handle->data)->FlushAcks();
        });
      }
      return;
    }
    PostSettle(key, outcome, std::move(publishes));
  }

  // The acks collected in this loop iteration: written right here when the
  // AMQP thread sleeps (AmqpSession::TryAck), which spares the wake-up of
  // that thread per message, the cost that dominates at prefetch 1; else
  // settle commands as for every other outcome.
  void FlushAcks() {
    uv_check_stop(&flush_check_);
    std::vector<WorkKey> keys;
    std::vector<std::uint64_t> tags;
    for (const WorkKey& key : std::exchange(acks_, {})) {
      if (works_.count(key) == 0) continue;  // its connection is gone
      keys.push_back(key);
      tags.push_back(key.second);
    }
    if (keys.empty()) return;
    const std::uint64_t generation = keys.front().first;
    bool one_generation = std::all_of(
        keys.begin(), keys.end(),
        [generation](const WorkKey& key) { return key.first == generation; });
    AmqpFastAck result = one_generation ? session_->TryAck(generation, tags)
                                        : AmqpFastAck::kNotNow;
    for (const WorkKey& key : keys) {
      switch (result) {
        case AmqpFastAck::kAcked:
          ++figures_[works_.at(key)->delivery->queue].acks;
          EraseWork(key);
          break;
        case AmqpFastAck::kLost:  // kDisconnected follows; requeued
          EraseWork(key);
          break;
        case AmqpFastAck::kNotNow:
          PostSettle(key, AmqpOutcome::kAcked, {});
          break;
      }
    }
  }

  void PostSettle(const WorkKey& key, AmqpOutcome outcome,
                  std::vector<AmqpPublish> publishes) {
    Work* work = works_.at(key).get();
    AmqpCommand command;
    command.type = AmqpCommand::Type::kSettle;
    command.generation = work->delivery->generation;
    command.tag = work->delivery->tag;
    command.queue = work->delivery->queue;
    command.outcome = outcome;
    command.publishes = std::move(publishes);
    session_->Post(std::move(command));
    EraseWork(key);
  }

  // ------------------------------------------------------------ holds

  void Hold(const WorkKey& key, Work::Hold hold, Duration delay) {
    Work* work = works_.at(key).get();
    work->hold = hold;
    auto* timer = new HoldTimer;
    timer->service = this;
    timer->key = key;
    uv_timer_init(client_->loop(), &timer->handle);
    timer->handle.data = timer;
    uv_timer_start(
        &timer->handle,
        [](uv_timer_t* handle) {
          auto* t = static_cast<HoldTimer*>(handle->data);
          t->service->OnHoldTimer(t);
        },
        static_cast<std::uint64_t>(delay.count()), 0);
    work->timer = timer;
  }

  static void CloseTimer(HoldTimer* timer) {
    uv_timer_stop(&timer->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer->handle),
             [](uv_handle_t* handle) {
               delete static_cast<HoldTimer*>(handle->data);
             });
  }

  void EraseWork(const WorkKey& key) {
    auto found = works_.find(key);
    if (found == works_.end()) return;
    if (found->second->timer != nullptr) CloseTimer(found->second->timer);
    works_.erase(found);
    MarkDirty();
    MaybeShutdown();
  }

  // ------------------------------------------------------------ stopping

  void BeginStop() {
    if (stopping_) return;
    stopping_ = true;
    state_ = "stopping";
    MarkDirty();
    AmqpCommand stop;
    stop.type = AmqpCommand::Type::kStopConsuming;
    session_->Post(std::move(stop));
    std::vector<WorkKey> retry_now, drop;
    for (auto& [key, work] : works_) {
      if ((work->hold == Work::Hold::kRetry ||
           work->hold == Work::Hold::kWaitQueue) &&
          !Stale(*work)) {
        retry_now.push_back(key);
      } else if (work->hold != Work::Hold::kNone) {
        drop.push_back(key);
      }
    }
    // A delivery in backoff gets its retry copy now, so its count is kept.
    for (const WorkKey& key : retry_now) {
      Work* work = works_.at(key).get();
      if (work->timer != nullptr) CloseTimer(work->timer);
      work->timer = nullptr;
      work->hold = Work::Hold::kNone;
      PublishRetry(key);
    }
    for (const WorkKey& key : drop) EraseWork(key);
    MaybeShutdown();
  }

  void MaybeShutdown() {
    if (!stopping_ || shutdown_sent_ || !works_.empty() || !session_) return;
    shutdown_sent_ = true;
    AmqpCommand command;
    command.type = AmqpCommand::Type::kShutdown;
    session_->Post(std::move(command));
  }

  void Finish() {
    session_->Join();
    CloseWatch();
    state_ = "stopped";
    PublishStats();
    std::string summary;
    for (const auto& [queue, f] : figures_) {
      if (!summary.empty()) summary += "; ";
      summary += "'" + queue + "': " + std::to_string(f.deliveries) +
                 " deliveries, " + std::to_string(f.acks) + " acked, " +
                 std::to_string(f.retries) + " retried, " +
                 std::to_string(f.dead_letters + f.rejected) + " dead-lettered";
    }
    AmqpLog("stopped (" + summary + ")");
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&stats_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&flush_check_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&cutoff_timer_), nullptr);
  }

  // ------------------------------------------------------------ figures

  void MarkDirty() {
    if (state_ == "stopped") return;
    if (uv_is_active(reinterpret_cast<uv_handle_t*>(&stats_timer_))) return;
    uv_timer_start(
        &stats_timer_,
        [](uv_timer_t* handle) {
          static_cast<Service*>(handle->data)->PublishStats();
        },
        1000, 0);
  }

  void PublishStats() {
    int requests = 0, held = 0;
    for (const auto& [key, work] : works_) {
      if (work->in_request) ++requests;
      if (work->hold != Work::Hold::kNone) ++held;
    }
    json queues = json::object();
    for (const auto& [queue, f] : figures_) {
      queues[queue] = {
          {"deliveries", f.deliveries},
          {"redelivered", f.redelivered},
          {"acks", f.acks},
          {"retries", f.retries},
          {"dead_letters", f.dead_letters},
          {"rejected", f.rejected},
          {"requeued", f.requeued},
          {"cancels", f.cancels},
          {"consumer_timeouts", f.consumer_timeouts},
          {"consuming", f.consuming},
          {"error", f.error},
          {"messages", f.messages < 0 ? json(nullptr) : json(f.messages)},
          {"consumers", f.consumers < 0 ? json(nullptr) : json(f.consumers)}};
    }
    json stats = {{"connection", state_},
                  {"broker", config_.url.Describe()},
                  {"target", config_.target},
                  {"inflight", requests},
                  {"held", held},
                  {"reconnects", reconnects_},
                  {"blocked", blocked_},
                  {"consumer_timeout_ms", config_.consumer_timeout.count()},
                  {"last_error", last_error_},
                  {"problem", Problem()},
                  {"queues", queues}};
    client_->SetAppStats(DumpJson(stats));
  }

  // What `workerpool status` should flag, in one line; empty when the
  // service consumes every queue and may publish.
  std::string Problem() const {
    if (state_ == "stopping" || state_ == "stopped") return "";
    if (!connected_) {
      return "not connected to RabbitMQ" +
             (last_error_.empty() ? std::string() : ": " + last_error_);
    }
    std::string problem;
    for (const auto& [queue, f] : figures_) {
      if (f.consuming) continue;
      if (!problem.empty()) problem += "; ";
      problem += "queue '" + queue + "' not consumed: " + f.error;
    }
    if (blocked_) {
      if (!problem.empty()) problem += "; ";
      problem += "RabbitMQ blocked the connection (" + blocked_reason_ +
                 "): nothing is published or acked until it unblocks it";
    }
    return problem;
  }

  // ------------------------------------------------------------ consumer
  // timeout. RabbitMQ closes the channel when a delivery stays unacked
  // longer than its consumer_timeout, and requeues every unacked delivery
  // of it: a job slower than that would run again and again. So no
  // delivery stays here past AmqpConsumerTimeoutCutoff: its request is
  // cancelled and the attempt counted as failed (code consumer_timeout:
  // retried, dead-lettered after max_retries), a retry in backoff has its
  // copy published now, a delivery waiting for a busy group is requeued.

  // The target's request_timeout against the broker's consumer_timeout,
  // at start and when the broker told a lower one (LEARNED: how).
  void WarnIfJobsOutlastConsumerTimeout(const std::string& learned) {
    if (cutoff_.count() <= 0 || config_.target_request_timeout.count() <= 0 ||
        config_.target_request_timeout < cutoff_) {
      return;
    }
    AmqpLog("warning: group '" + config_.target + "' has request_timeout " +
            FormatDuration(config_.target_request_timeout) +
            ", but RabbitMQ closes the channel of a delivery unacked for " +
            FormatDuration(config_.consumer_timeout) + " (consumer_timeout" +
            (learned.empty() ? std::string(" per rabbitmq.consumer_timeout; "
                                           "RabbitMQ's default is 30m")
                             : learned) +
            "): a job still running after " + FormatDuration(cutoff_) +
            " is cut off and its message retried; lower request_timeout, "
            "or raise consumer_timeout on the broker and in "
            "rabbitmq.consumer_timeout");
  }

  // The oldest delivery of this connection not cut off yet, if any.
  Work* OldestUncut() {
    for (auto& [key, work] : works_) {
      if (Stale(*work) || work->cut_off) continue;
      if (!work->in_request && work->hold == Work::Hold::kNone) continue;
      return work.get();
    }
    return nullptr;
  }

  void ArmCutoff() {
    if (cutoff_.count() <= 0 || stopping_) return;
    if (uv_is_active(reinterpret_cast<uv_handle_t*>(&cutoff_timer_))) return;
    Work* oldest = OldestUncut();
    if (oldest == nullptr) return;
    auto left = std::chrono::duration_cast<Duration>(oldest->arrived + cutoff_ -
                                                     Clock::now());
    uv_timer_start(
        &cutoff_timer_,
        [](uv_timer_t* handle) {
          static_cast<Service*>(handle->data)->OnCutoffTimer();
        },
        static_cast<std::uint64_t>(std::max<Duration::rep>(0, left.count())),
        0);
  }

  void CutOffOverdue() {
    const auto now = Clock::now();
    std::vector<WorkKey> overdue;
    for (auto& [key, work] : works_) {
      if (Stale(*work) || work->cut_off) continue;
      if (work->arrived + cutoff_ > now) continue;
      // Neither with a job nor held: its settle is on its way already.
      if (!work->in_request && work->hold == Work::Hold::kNone) continue;
      overdue.push_back(key);
    }
    for (const WorkKey& key : overdue) {
      auto found = works_.find(key);  // an earlier cut may have settled it
      if (found == works_.end()) continue;
      Work* work = found->second.get();
      if (work->in_request) {
        ++figures_[work->delivery->queue].consumer_timeouts;
        MarkDirty();
        work->cut_off = true;
        client_->Cancel(work->request_id);  // OnReply: kCancelled
        continue;
      }
      if (work->timer != nullptr) CloseTimer(work->timer);
      work->timer = nullptr;
      const Work::Hold hold = std::exchange(work->hold, Work::Hold::kNone);
      if (hold == Work::Hold::kResend) {
        // The group could not take it all this time: back to the queue.
        resend_log_.Log(Describe(*work->delivery) + " waited " +
                        FormatDuration(std::chrono::duration_cast<Duration>(
                            now - work->arrived)) +
                        " for group '" + config_.target +
                        "'; requeued before RabbitMQ's consumer_timeout (" +
                        FormatDuration(config_.consumer_timeout) + ")");
        PostSettle(key, AmqpOutcome::kRequeued, {});
      } else {
        PublishRetry(key);  // in backoff, or waiting for its queue
      }
    }
    ArmCutoff();
  }

  // RabbitMQ closed the channel because a delivery stayed unacked longer
  // than its consumer_timeout (BROKER_TIMEOUT, 0 if it named none): the
  // service did not know the broker's setting. Names the delivery, counts
  // it, and cuts off at the broker's value from now on.
  void OnBrokerConsumerTimeout(Duration broker_timeout) {
    Work* oldest = nullptr;
    for (auto& [key, work] : works_) {
      if (work->delivery->generation == generation_) {
        oldest = work.get();
        break;
      }
    }
    std::string which = "a delivery";
    if (oldest != nullptr) {
      ++figures_[oldest->delivery->queue].consumer_timeouts;
      which = Describe(*oldest->delivery) + " (with group '" + config_.target +
              "' for " +
              FormatDuration(std::chrono::duration_cast<Duration>(
                  Clock::now() - oldest->arrived)) +
              ")";
    }
    const bool lower = broker_timeout.count() > 0 &&
                       (config_.consumer_timeout.count() <= 0 ||
                        broker_timeout < config_.consumer_timeout);
    if (lower) {
      config_.consumer_timeout = broker_timeout;
      cutoff_ = AmqpConsumerTimeoutCutoff(broker_timeout);
      uv_timer_stop(&cutoff_timer_);  // armed for the longer cut-off
      ArmCutoff();
    }
    AmqpLog("warning: RabbitMQ's consumer_timeout (" +
            (broker_timeout.count() > 0 ? FormatDuration(broker_timeout)
                                        : std::string("value not named")) +
            ") ran out for " + which +
            ": it closed the channel and requeued every unacked delivery "
            "of this connection" +
            (lower ? "; from now on this service cuts a job off at " +
                         FormatDuration(cutoff_) +
                         " and retries it (set rabbitmq.consumer_timeout to "
                         "the broker's value to know it from the start)"
                   : std::string()));
    if (lower) WarnIfJobsOutlastConsumerTimeout(", as RabbitMQ said");
  }

  double Random01() {
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }

  PoolClient* client_;
  AmqpServiceConfig config_;
  std::unique_ptr<AmqpSession> session_;
  uv_async_t async_;
  uv_timer_t stats_timer_;
  uv_check_t flush_check_;        // runs FlushAcks while acks_ is not empty
  uv_timer_t cutoff_timer_;       // the next consumer_timeout cut-off
  Duration cutoff_{0};            // AmqpConsumerTimeoutCutoff; 0: none
  SocketWatch* watch_ = nullptr;  // of the current connection, if any
  std::vector<WorkKey> acks_;     // decided this loop iteration (Settle)
  std::map<WorkKey, std::unique_ptr<Work>> works_;
  std::uint64_t generation_ = 0;
  bool connected_ = false;
  bool ever_connected_ = false;
  bool stopping_ = false;
  bool shutdown_sent_ = false;
  std::string state_ = "connecting";
  std::string last_error_;
  bool blocked_ = false;  // RabbitMQ blocked the connection
  std::string blocked_reason_;
  std::uint64_t reconnects_ = 0;
  std::map<std::string, QueueFigures> figures_;
  std::mt19937 rng_;
  LineLimiter retry_log_, resend_log_, dead_log_;
};

}  // namespace

int RunRabbitmqService(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::fprintf(stderr,
                 "workerpool builtin rabbitmq-service: takes no arguments "
                 "(got '%s'); its settings come from the group's rabbitmq: "
                 "section\n",
                 args.front().c_str());
    return 1;
  }
  const char* text = std::getenv("WORKERPOOL_RABBITMQ");
  if (text == nullptr || *text == '\0') {
    std::fprintf(stderr,
                 "workerpool builtin rabbitmq-service: WORKERPOOL_RABBITMQ is "
                 "not set; this child is started by `workerpool run` for a "
                 "service group with a rabbitmq: section\n");
    return 1;
  }
  Result<AmqpServiceConfig> config = ParseAmqpServiceConfig(text);
  if (!config.ok()) {
    std::fprintf(stderr, "workerpool builtin rabbitmq-service: %s\n",
                 config.status().message().c_str());
    return 1;
  }
  std::string error;
  std::unique_ptr<PoolClient> client =
      PoolClient::FromEnvironment(nullptr, &error);
  if (!client) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  // One process may publish (the outbox, children/rabbitmq_outbox.h),
  // consume, or both; the consumer then shares the client through the
  // outbox, which must hear of the stop too.
  std::unique_ptr<RabbitmqOutbox> outbox;
  PoolClient* consumer_client = client.get();
  if (config->publish) {
    outbox = StartRabbitmqOutbox(client.get(), *config);
    consumer_client = outbox->consumer_client();
  }
  std::optional<Service> service;
  if (!config->queues.empty()) {
    service.emplace(consumer_client, std::move(*config));
    service->Start();
  }
  return client->Run();
}

}  // namespace workerpool
