#include "children/amqp_publisher.h"

#include <amqp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "children/amqp_connection.h"
#include "children/amqp_convert.h"
#include "children/amqp_log.h"
#include "core/amqp_outbox.h"
#include "core/amqp_retry.h"
#include "core/status.h"

namespace workerpool {
namespace {

using Clock = std::chrono::steady_clock;
using amqp::Bytes;
using amqp::DescribeReply;
using amqp::Text;
using std::chrono::milliseconds;

// Publishes and consumes on the consume channel (confirm mode); the
// declare channel only checks the exchange at connect.
constexpr amqp_channel_t kChannel = kAmqpConsumeChannel;
constexpr amqp_channel_t kCheckChannel = kAmqpDeclareChannel;
// Frames read between looks at the loop's batches.
constexpr int kReadBatch = 256;

void Log(const std::string& level, const std::string& text) {
  AmqpLog((level.empty() ? "" : level + ": ") + "publisher: " + text);
}

}  // namespace

class AmqpPublisher::Impl {
 public:
  Impl(AmqpServiceConfig config, std::function<void()> wake)
      : config_(std::move(config)),
        settings_(*config_.publish),
        wake_(std::move(wake)),
        rng_(std::random_device{}()) {
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    init_amqp_pool(&pool_, 4096);
  }
  ~Impl() {
    Join();
    empty_amqp_pool(&pool_);
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  void Publish(std::uint64_t generation, std::vector<AmqpOutgoing> messages) {
    bool was_empty;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      was_empty = batches_.empty();
      batches_.push_back(Batch{generation, std::move(messages)});
    }
    // Batches already waiting were announced by the call that queued the
    // first of them.
    if (was_empty) WakeThread();
  }

  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      shutdown_requested_ = true;
    }
    WakeThread();
  }

  std::deque<AmqpPublisherEvent> TakeEvents() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(events_, {});
  }

 private:
  struct Batch {
    std::uint64_t generation = 0;
    std::vector<AmqpOutgoing> messages;
  };

  // ---------------------------------------------------------- plumbing

  void WakeThread() {
    std::uint64_t one = 1;
    ssize_t n = write(wake_fd_, &one, sizeof(one));
    (void)n;
  }

  void DrainWakeFd() {
    std::uint64_t value;
    while (read(wake_fd_, &value, sizeof(value)) > 0) {
    }
  }

  void Emit(AmqpPublisherEvent event) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(std::move(event));
    }
    wake_();
  }

  void Emit(AmqpPublisherEvent::Type type, std::string text = {}) {
    AmqpPublisherEvent event;
    event.type = type;
    event.generation = generation_;
    event.text = std::move(text);
    Emit(std::move(event));
  }

  std::deque<Batch> TakeBatches() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(batches_, {});
  }

  bool BatchesWaiting() {
    std::lock_guard<std::mutex> lock(mutex_);
    return !batches_.empty();
  }

  bool ShutdownRequested() {
    std::lock_guard<std::mutex> lock(mutex_);
    return shutdown_requested_;
  }

  // ---------------------------------------------------------- main loop

  void Run() {
    int attempt = 0;
    while (!ShutdownRequested()) {
      Status connected = Connect();
      if (connected.ok()) {
        attempt = 0;
        if (Status served = ServeLoop(); !served.ok()) Lost(served);
        if (ShutdownRequested()) break;
      } else {
        LogConnectFailure(connected.message(), attempt);
        Emit(AmqpPublisherEvent::Type::kConnectFailed, connected.message());
        ++attempt;
      }
      // Disconnected: what the loop hands over now was meant for a lost
      // connection (it fails those on kDisconnected).
      auto until = Clock::now() + config_.reconnect_backoff.Delay(
                                      std::max(0, attempt - 1), Random01());
      while (!ShutdownRequested()) {
        TakeBatches();
        auto left =
            std::chrono::duration_cast<milliseconds>(until - Clock::now());
        if (left.count() <= 0) break;
        pollfd fd = {wake_fd_, POLLIN, 0};
        poll(&fd, 1, static_cast<int>(std::max<long>(1, left.count())));
        DrainWakeFd();
      }
    }
    Emit(AmqpPublisherEvent::Type::kStopped);
  }

  void LogConnectFailure(const std::string& error, int attempt) {
    int held_back = 0;
    if (!connect_log_.ShouldLog(error, Clock::now(), &held_back)) return;
    Duration next =
        config_.reconnect_backoff.Delay(std::max(0, attempt), /*random=*/0.5);
    std::string line = error +
                       "; requests are refused until it connects; "
                       "retrying in about " +
                       FormatDuration(next) + " (attempt " +
                       std::to_string(attempt + 1);
    if (held_back > 0) {
      line += ", " + std::to_string(held_back) +
              " failures like this one not logged since the last line";
    }
    Log("error", line + ")");
  }

  double Random01() {
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }

  // ---------------------------------------------------------- connecting

  Status Connect() {
    Status status =
        connection_.Open(wake_fd_, [this] { return ShutdownRequested(); });
    if (status.ok()) status = CheckExchange();
    if (status.ok() && settings_.mode == AmqpPublishMode::kRpc) {
      amqp_basic_consume_ok_t* ok = amqp_basic_consume(
          connection_.state(), kChannel, Bytes(kDirectReplyTo),
          amqp_empty_bytes, /*no_local=*/0, /*no_ack=*/1, /*exclusive=*/0,
          amqp_empty_table);
      if (ok == nullptr) {
        status = Status::Error(
            std::string("cannot consume RabbitMQ's direct reply-to (") +
            kDirectReplyTo + "): " +
            DescribeReply(amqp_get_rpc_reply(connection_.state())).text);
      }
    }
    if (!status.ok()) {
      connection_.Drop(false);
      return status;
    }
    ++generation_;
    unconfirmed_.clear();
    next_seq_ = 1;
    last_rx_ = Clock::now();
    connect_log_.Reset();
    const AmqpUrl& url = config_.url;
    Log("", "connected to " + url.Describe() + " as '" + url.user +
                "'; publishing to " + Where() + " (" +
                AmqpPublishModeName(settings_.mode) +
                (settings_.mode == AmqpPublishMode::kRpc
                     ? ", replies by direct reply-to"
                     : "") +
                ", heartbeat " + std::to_string(connection_.heartbeat()) +
                "s)");
    Emit(AmqpPublisherEvent::Type::kConnected);
    return Status::Ok();
  }

  std::string Where() const {
    return settings_.exchange.empty()
               ? "queue '" + settings_.routing_key + "' (default exchange)"
               : "exchange '" + settings_.exchange + "' with routing key '" +
                     settings_.routing_key + "'";
  }

  // A named exchange must exist: a publish to a missing one closes the
  // channel (404), which would fail every request in flight with it.
  Status CheckExchange() {
    if (settings_.exchange.empty()) return Status::Ok();
    amqp_exchange_declare_ok_t* ok = amqp_exchange_declare(
        connection_.state(), kCheckChannel, Bytes(settings_.exchange),
        Bytes(std::string("direct")), /*passive=*/1, /*durable=*/0,
        /*auto_delete=*/0, /*internal=*/0, amqp_empty_table);
    if (ok != nullptr) return Status::Ok();
    amqp::RpcError why = DescribeReply(amqp_get_rpc_reply(connection_.state()));
    if (why.code == 404) {
      return Status::Error("exchange '" + settings_.exchange +
                           "' (publish.exchange) does not exist on " +
                           config_.url.Describe() +
                           ": declare it, or name another");
    }
    return Status::Error("cannot check exchange '" + settings_.exchange +
                         "' on " + config_.url.Describe() + ": " + why.text);
  }

  // ---------------------------------------------------------- connected

  // Ok once shut down (the connection closed); the error that ended the
  // connection otherwise.
  Status ServeLoop() {
    amqp_connection_state_t conn = connection_.state();
    const int fd = amqp_get_sockfd(conn);
    for (;;) {
      if (Status s = PublishBatches(); !s.ok()) return s;
      if (ShutdownRequested()) {
        connection_.Close(false);
        Log("", "connection to " + config_.url.Describe() + " closed");
        return Status::Ok();
      }
      int read = 0;
      for (; read < kReadBatch; ++read) {
        Result<bool> got = ReadOne();
        if (!got.ok()) return got.status();
        if (!*got) break;
      }
      if (read == kReadBatch || BatchesWaiting()) continue;
      if (amqp_frames_enqueued(conn) || amqp_data_in_buffer(conn)) continue;

      const int heartbeat = connection_.heartbeat();
      if (heartbeat > 0 &&
          Clock::now() - last_rx_ > std::chrono::seconds(2 * heartbeat + 1)) {
        return Status::Error(
            "nothing heard from RabbitMQ for " + std::to_string(2 * heartbeat) +
            "s (missed heartbeats): connection considered dead");
      }
      const int wait = heartbeat > 0 ? heartbeat * 500 : 30000;
      pollfd fds[2] = {{fd, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      int n = poll(fds, 2, wait);
      if (n > 0 && fds[1].revents != 0) DrainWakeFd();
    }
  }

  Status PublishBatches() {
    for (Batch& batch : TakeBatches()) {
      if (batch.generation != generation_) continue;  // failed by the loop
      for (const AmqpOutgoing& message : batch.messages) {
        if (Status s = PublishOne(message); !s.ok()) return s;
      }
    }
    return Status::Ok();
  }

  Status PublishOne(const AmqpOutgoing& message) {
    amqp_basic_properties_t properties =
        amqp::ToAmqp(message.properties, &pool_);
    amqp_bytes_t body;
    body.len = message.body.size();
    body.bytes = const_cast<char*>(message.body.data());
    int rc = amqp_basic_publish(connection_.state(), kChannel,
                                Bytes(settings_.exchange),
                                Bytes(settings_.routing_key), /*mandatory=*/1,
                                /*immediate=*/0, &properties, body);
    recycle_amqp_pool(&pool_);
    if (rc != AMQP_STATUS_OK) {
      return Status::Error(std::string("publish failed: ") +
                           amqp_error_string2(rc));
    }
    unconfirmed_.emplace_hint(unconfirmed_.end(), next_seq_++, message.id);
    return Status::Ok();
  }

  // True when something was read, false when nothing is waiting.
  Result<bool> ReadOne() {
    amqp_envelope_t envelope;
    amqp_frame_t frame;
    Result<AmqpRead> read =
        ReadWithoutWaiting(connection_.state(), &envelope, &frame);
    if (!read.ok()) return read.status();
    if (*read == AmqpRead::kNothing) return false;
    last_rx_ = Clock::now();
    if (*read == AmqpRead::kFrame) {
      if (Status s = OnFrame(frame); !s.ok()) return s;
      return true;
    }
    AmqpPublisherEvent event;
    event.type = AmqpPublisherEvent::Type::kReply;
    event.generation = generation_;
    event.properties = amqp::FromAmqp(envelope.message.properties);
    event.body = Text(envelope.message.body);
    amqp_destroy_envelope(&envelope);
    Emit(std::move(event));
    return true;
  }

  Status OnFrame(const amqp_frame_t& frame) {
    if (frame.frame_type != AMQP_FRAME_METHOD) return Status::Ok();
    switch (frame.payload.method.id) {
      case AMQP_BASIC_ACK_METHOD: {
        auto* ack =
            static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
        OnConfirm(ack->delivery_tag, ack->multiple != 0, true);
        return Status::Ok();
      }
      case AMQP_BASIC_NACK_METHOD: {
        auto* nack =
            static_cast<amqp_basic_nack_t*>(frame.payload.method.decoded);
        OnConfirm(nack->delivery_tag, nack->multiple != 0, false);
        return Status::Ok();
      }
      case AMQP_BASIC_RETURN_METHOD: {
        auto* returned =
            static_cast<amqp_basic_return_t*>(frame.payload.method.decoded);
        std::string why = std::to_string(returned->reply_code) + " " +
                          Text(returned->reply_text);
        amqp_message_t message;
        amqp_rpc_reply_t reply =
            amqp_read_message(connection_.state(), frame.channel, &message, 0);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
          return Status::Error(DescribeReply(reply).text);
        }
        AmqpPublisherEvent event;
        event.type = AmqpPublisherEvent::Type::kReturned;
        event.generation = generation_;
        event.text = std::move(why);
        event.properties = amqp::FromAmqp(message.properties);
        amqp_destroy_message(&message);
        Emit(std::move(event));
        return Status::Ok();
      }
      case AMQP_BASIC_CANCEL_METHOD:
        return Status::Error("RabbitMQ cancelled the direct reply-to consumer");
      case AMQP_CHANNEL_CLOSE_METHOD: {
        auto* close =
            static_cast<amqp_channel_close_t*>(frame.payload.method.decoded);
        return Status::Error("RabbitMQ closed the channel: " +
                             std::to_string(close->reply_code) + " " +
                             Text(close->reply_text));
      }
      case AMQP_CONNECTION_CLOSE_METHOD: {
        return connection_.AnswerConnectionClose(
            *static_cast<amqp_connection_close_t*>(
                frame.payload.method.decoded));
      }
      case AMQP_CONNECTION_BLOCKED_METHOD: {
        auto* blocked = static_cast<amqp_connection_blocked_t*>(
            frame.payload.method.decoded);
        std::string reason = Text(blocked->reason);
        Log("warning", "RabbitMQ blocked publishing (" + reason +
                           "): new requests are answered \"queue full\" "
                           "until it unblocks");
        Emit(AmqpPublisherEvent::Type::kBlocked, reason);
        return Status::Ok();
      }
      case AMQP_CONNECTION_UNBLOCKED_METHOD:
        Log("", "RabbitMQ unblocked publishing");
        Emit(AmqpPublisherEvent::Type::kUnblocked);
        return Status::Ok();
      default:
        return Status::Ok();
    }
  }

  // RabbitMQ confirmed (ACK) or refused publish SEQ, and with MULTIPLE
  // every one before it too.
  void OnConfirm(std::uint64_t seq, bool multiple, bool ack) {
    auto end = unconfirmed_.upper_bound(seq);
    auto begin = multiple ? unconfirmed_.begin() : unconfirmed_.find(seq);
    if (begin == unconfirmed_.end()) return;
    if (!multiple) end = std::next(begin);
    AmqpPublisherEvent event;
    event.type = ack ? AmqpPublisherEvent::Type::kConfirmed
                     : AmqpPublisherEvent::Type::kRefused;
    event.generation = generation_;
    for (auto it = begin; it != end; ++it) {
      // One event per message keeps the loop's side simple; under load
      // they are taken in one go (TakeEvents).
      AmqpPublisherEvent each = event;
      each.id = it->second;
      Emit(std::move(each));
    }
    unconfirmed_.erase(begin, end);
  }

  void Lost(const Status& why) {
    connection_.Drop(false);
    const std::size_t unconfirmed = unconfirmed_.size();
    unconfirmed_.clear();
    Log("error", "connection to " + config_.url.Describe() + " lost: " +
                     why.message() + "; " + std::to_string(unconfirmed) +
                     " messages not yet confirmed, and every request waiting "
                     "for a reply, fail; reconnecting");
    Emit(AmqpPublisherEvent::Type::kDisconnected, why.message());
  }

  AmqpServiceConfig config_;
  const AmqpPublishSettings settings_;
  std::function<void()> wake_;
  std::thread thread_;
  int wake_fd_ = -1;
  std::mutex mutex_;  // batches_, events_, shutdown_requested_
  std::deque<Batch> batches_;
  std::deque<AmqpPublisherEvent> events_;
  bool shutdown_requested_ = false;
  std::mt19937 rng_;

  // The AMQP thread's alone.
  AmqpConnection connection_{config_};
  amqp_pool_t pool_;  // a message's properties while it is published
  std::uint64_t generation_ = 0;
  std::uint64_t next_seq_ = 1;
  std::map<std::uint64_t, std::uint64_t> unconfirmed_;  // seq -> message id
  Clock::time_point last_rx_{};
  AmqpRepeatFilter connect_log_{Duration(30000)};
};

AmqpPublisher::AmqpPublisher(AmqpServiceConfig config,
                             std::function<void()> wake)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(wake))) {}
AmqpPublisher::~AmqpPublisher() = default;
void AmqpPublisher::Start() { impl_->Start(); }
void AmqpPublisher::Publish(std::uint64_t generation,
                            std::vector<AmqpOutgoing> messages) {
  impl_->Publish(generation, std::move(messages));
}
void AmqpPublisher::Shutdown() { impl_->Shutdown(); }
std::deque<AmqpPublisherEvent> AmqpPublisher::TakeEvents() {
  return impl_->TakeEvents();
}
void AmqpPublisher::Join() { impl_->Join(); }

}  // namespace workerpool
