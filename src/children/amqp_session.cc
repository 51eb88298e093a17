#include "children/amqp_session.h"

#include <amqp.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "children/amqp_connection.h"
#include "children/amqp_convert.h"
#include "children/amqp_log.h"
#include "children/amqp_settle.h"
#include "core/amqp_frame_scan.h"
#include "core/amqp_retry.h"
#include "core/status.h"

namespace workerpool {
namespace {

using Clock = std::chrono::steady_clock;
using amqp::Bytes;
using amqp::DescribeReply;
using amqp::FromAmqp;
using amqp::Text;
using std::chrono::milliseconds;

constexpr auto kShutdownGrace = std::chrono::seconds(10);
constexpr int kReadBatch = 256;  // deliveries read between command checks
// Acks TryAck writes at once at most: 64 frames of 21 bytes, far below what
// a socket that polls writable takes without blocking.
constexpr std::size_t kMaxFastAcks = 64;
// What ReadDeliveries looks at in one go: whole deliveries within it are
// read by the loop, a larger one by the AMQP thread. Below librabbitmq's
// read buffer (kAmqpFrameMax), so that one read takes in everything peeked.
constexpr std::size_t kPeekBytes = 64 * 1024;
static_assert(kPeekBytes < static_cast<std::size_t>(kAmqpFrameMax));

}  // namespace

// ===================================================================== Impl

class AmqpSession::Impl {
 public:
  Impl(AmqpServiceConfig config, std::function<void()> wake)
      : config_(std::move(config)),
        wake_(std::move(wake)),
        rng_(std::random_device{}()),
        queue_arguments_(AmqpQueueArguments(config_)),
        dead_letter_arguments_(AmqpDeadLetterQueueArguments(config_)) {
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    for (const std::string& queue : config_.queues) queue_consumers_[queue];
  }
  ~Impl() {
    Join();
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  void Post(AmqpCommand command) {
    bool was_empty;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      was_empty = commands_.empty();
      commands_.push_back(std::move(command));
    }
    // Commands already waiting were announced by the Post that queued the
    // first of them, and the AMQP thread takes them all at once after it
    // drained the eventfd: one write per batch, not per settle.
    if (!was_empty) return;
    WakeAmqpThread();
  }

  void WakeAmqpThread() {
    uint64_t one = 1;
    ssize_t n = write(wake_fd_, &one, sizeof(one));
    (void)n;
  }

  std::deque<AmqpEvent> TakeEvents() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(events_, {});
  }

  // See AmqpSession::TryAck. Runs on the loop thread and must never block:
  // it only try-locks the connection, and writes only a 21-byte basic.ack
  // to a plain TCP socket that poll() just reported writable (a frame that
  // small then goes out whole, without librabbitmq waiting for the socket;
  // FlushAcks writes at most one frame per tag, and at most kMaxFastAcks).
  AmqpFastAck TryAck(uint64_t generation, const std::vector<uint64_t>& tags) {
    if (tags.empty() || tags.size() > kMaxFastAcks) return AmqpFastAck::kNotNow;
    if (config_.url.tls) return AmqpFastAck::kNotNow;  // SSL_write may read
    std::unique_lock<std::mutex> conn(conn_mutex_, std::try_to_lock);
    if (!conn.owns_lock()) return AmqpFastAck::kNotNow;
    if (!connected_ || !connection_.is_open() || generation != generation_ ||
        shutdown_ || !acks_.empty() || !loop_error_.ok()) {
      return AmqpFastAck::kNotNow;
    }
    {
      // A command queued earlier goes first (a settle with publishes, a
      // stop): the AMQP thread takes this one after it, in order.
      std::lock_guard<std::mutex> lock(mutex_);
      if (!commands_.empty()) return AmqpFastAck::kNotNow;
    }
    pollfd fd = {amqp_get_sockfd(connection_.state()), POLLOUT, 0};
    if (poll(&fd, 1, 0) != 1 || fd.revents != POLLOUT) {
      return AmqpFastAck::kNotNow;
    }
    Status acked;
    for (uint64_t tag : tags) {
      if (acked.ok()) {
        acked = Finish(tag, AmqpOutcome::kAcked, std::string(),
                       /*emit=*/false);
      }
    }
    if (acked.ok()) acked = FlushAcks();
    if (!acked.ok()) {
      // The stream may be torn: the AMQP thread drops the connection
      // (RabbitMQ requeues the delivery) as soon as it wakes.
      loop_error_ = acked;
      WakeAmqpThread();
      return AmqpFastAck::kLost;
    }
    if (!busy_) {
      // The AMQP thread sleeps without a depth-poll deadline: give it one.
      busy_ = true;
      WakeAmqpThread();
    }
    return AmqpFastAck::kAcked;
  }

  // See AmqpSession::ReadDeliveries. Runs on the loop thread and must never
  // block: librabbitmq reads a delivery's content frames without a timeout,
  // so the loop only lets it read deliveries whose every byte is already
  // here (peeked and scanned); it may send a heartbeat on its way into a
  // read, hence the writable check, as in TryAck.
  AmqpLoopRead ReadDeliveries(uint64_t generation,
                              std::vector<std::unique_ptr<AmqpDelivery>>* out) {
    std::unique_lock<std::mutex> conn(conn_mutex_, std::try_to_lock);
    if (!conn.owns_lock()) return HandReadsBack();
    if (!connected_ || !connection_.is_open() || generation != generation_ ||
        !loop_may_read_ || declined_generation_ == generation_ ||
        stop_consuming_ || shutdown_ || !loop_error_.ok()) {
      return HandReadsBack();
    }
    amqp_connection_state_t state = connection_.state();
    if (amqp_frames_enqueued(state) || amqp_data_in_buffer(state)) {
      return HandReadsBack();
    }
    const int fd = amqp_get_sockfd(state);
    pollfd writable = {fd, POLLOUT, 0};
    if (poll(&writable, 1, 0) != 1 || writable.revents != POLLOUT) {
      return HandReadsBack();
    }
    ssize_t n = recv(fd, peek_.data(), peek_.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      return AmqpLoopRead::kKeepWatching;  // woken for nothing
    }
    if (n <= 0) return HandReadsBack();  // EOF or an error: the thread's
    last_rx_ = Clock::now();             // heard from RabbitMQ
    AmqpDeliveryScan scan = ScanDeliveries(
        peek_.data(), static_cast<std::size_t>(n), kAmqpConsumeChannel);
    // Heartbeats alone, a confirm, a partial or large delivery: the AMQP
    // thread reads those.
    if (scan.deliveries == 0) return HandReadsBack();
    const bool was_busy = busy_;
    int read = 0;
    for (; read < scan.deliveries; ++read) {
      amqp_maybe_release_buffers(state);
      amqp_envelope_t envelope;
      timeval zero = {0, 0};
      amqp_rpc_reply_t reply = amqp_consume_message(state, &envelope, &zero, 0);
      if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        if (reply.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION ||
            (reply.library_error != AMQP_STATUS_TIMEOUT &&
             reply.library_error != AMQP_STATUS_UNEXPECTED_STATE)) {
          loop_error_ = Status::Error(DescribeReply(reply).text);
        }
        break;
      }
      std::unique_ptr<AmqpDelivery> delivery = TakeDelivery(envelope);
      amqp_destroy_envelope(&envelope);
      if (delivery) out->push_back(std::move(delivery));
    }
    if (!was_busy && busy_) {
      // The AMQP thread sleeps without a depth-poll deadline: give it one.
      WakeAmqpThread();
    }
    // Left to the AMQP thread: what follows in librabbitmq's buffer (the
    // socket no longer shows it), or whatever stopped a read the scan
    // promised (watching on would only spin).
    if (read < scan.deliveries || !loop_error_.ok() ||
        amqp_frames_enqueued(state) || amqp_data_in_buffer(state)) {
      return HandReadsBack();
    }
    return AmqpLoopRead::kKeepWatching;
  }

  void DeclineReads(uint64_t generation) {
    declined_generation_ = generation;
    HandReadsBack();
  }

 private:
  AmqpLoopRead HandReadsBack() {
    loop_watches_ = false;
    WakeAmqpThread();
    return AmqpLoopRead::kStopWatching;
  }

  // ---------------------------------------------------------- plumbing

  void Emit(AmqpEvent event) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(std::move(event));
    }
    wake_();
  }

  std::deque<AmqpCommand> TakeCommands() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(commands_, {});
  }

  bool CommandsWaiting() {
    std::lock_guard<std::mutex> lock(mutex_);
    return !commands_.empty();
  }

  bool ShutdownWaiting() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const AmqpCommand& command : commands_) {
      if (command.type == AmqpCommand::Type::kShutdown) return true;
    }
    return false;
  }

  void DrainWakeFd() {
    uint64_t value;
    while (read(wake_fd_, &value, sizeof(value)) > 0) {
    }
  }

  double Random01() {
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }

  // ---------------------------------------------------------- main loop

  void Run() {
    // The thread holds the connection lock all the time but while it sleeps
    // in ServeLoop's poll(): that is the only window for TryAck.
    conn_lock_.lock();
    int attempt = 0;
    while (!shutdown_) {
      if (!stop_consuming_) {
        Status connected = Connect();
        if (connected.ok()) {
          attempt = 0;
          Serve();
          if (shutdown_) break;
        } else {
          LogConnectFailure(connected.message(), attempt);
          ++attempt;
        }
      }
      // Disconnected: wait (for the backoff, or for the shutdown when
      // stopping), handling commands meanwhile.
      auto until = Clock::now() + config_.reconnect_backoff.Delay(
                                      std::max(0, attempt - 1), Random01());
      while (!shutdown_) {
        DisconnectedCommands();
        if (shutdown_) break;
        auto left =
            std::chrono::duration_cast<milliseconds>(until - Clock::now());
        if (!stop_consuming_ && left.count() <= 0) break;
        pollfd fd = {wake_fd_, POLLIN, 0};
        poll(&fd, 1,
             stop_consuming_ ? 1000
                             : static_cast<int>(std::max<long>(
                                   1, static_cast<long>(left.count()))));
        DrainWakeFd();
      }
    }
    conn_lock_.unlock();
    AmqpEvent event;
    event.type = AmqpEvent::Type::kStopped;
    Emit(std::move(event));
  }

  // Commands while there is no connection: deliveries of the lost one are
  // back in their queues already, progress has nowhere to go.
  void DisconnectedCommands() {
    for (AmqpCommand& command : TakeCommands()) {
      if (command.type == AmqpCommand::Type::kStopConsuming) {
        stop_consuming_ = true;
      } else if (command.type == AmqpCommand::Type::kShutdown) {
        shutdown_ = true;
      }
    }
  }

  void LogConnectFailure(const std::string& error, int attempt) {
    int held_back = 0;
    if (!connect_log_.ShouldLog(error, Clock::now(), &held_back)) return;
    Duration next =
        config_.reconnect_backoff.Delay(std::max(0, attempt), /*random=*/0.5);
    std::string line = "error: " + error + "; retrying in about " +
                       FormatDuration(next) + " (attempt " +
                       std::to_string(attempt + 1);
    if (held_back > 0) {
      line += ", " + std::to_string(held_back) +
              " failures like this one not logged since the last line";
    }
    line += ")";
    AmqpLog(line);
  }

  // ---------------------------------------------------------- connecting

  // A new connection: connected, logged in, the dead-letter queue
  // declared, every queue that is there consumed (the others looked for
  // with backoff, see MaybeLookForQueues). Leaves nothing open on an error.
  Status Connect() {
    Status status =
        connection_.Open(wake_fd_, [this] { return ShutdownWaiting(); });
    if (status.ok()) status = DeclareDeadLetterQueue();
    consumers_.clear();
    std::map<std::string, std::string> problems;  // queue -> why not consumed
    for (const std::string& queue : config_.queues) {
      if (!status.ok()) break;
      QueueConsumer& consumer = queue_consumers_[queue];
      consumer.tag.clear();
      consumer.attempt = 0;
      consumer.problem.clear();  // told again after kConnected
      Result<AmqpQueueCheck> found = StartConsuming(queue);
      if (!found.ok()) {
        status = found.status();
      } else if (!found->ok()) {
        problems[queue] = found->problem;
      } else {
        consumer.lost = false;
      }
    }
    if (!status.ok()) {
      Abandon();
      return status;
    }
    const AmqpUrl& url = config_.url;
    ++generation_;
    connected_ = true;
    confirms_.Clear();
    acks_.Clear();
    last_rx_ = Clock::now();
    next_stats_ = Clock::now();  // a first look right away
    busy_ = true;
    std::string queues;
    for (const std::string& queue : config_.queues) {
      if (problems.count(queue) != 0) continue;
      queues += (queues.empty() ? "'" : ", '") + queue + "'";
    }
    AmqpLog("connected to " + url.Describe() + " as '" + url.user +
            "'; consuming " + (queues.empty() ? "nothing yet" : queues) +
            " (prefetch " + std::to_string(config_.prefetch) + ", heartbeat " +
            std::to_string(connection_.heartbeat()) + "s)");
    connect_log_.Reset();
    AmqpEvent event;
    event.type = AmqpEvent::Type::kConnected;
    event.generation = generation_;
    // TLS stays with this thread: SSL may hold bytes poll() cannot see.
    event.fd = url.tls ? -1
                       : fcntl(amqp_get_sockfd(connection_.state()),
                               F_DUPFD_CLOEXEC, 0);
    loop_may_read_ = event.fd >= 0;
    loop_watches_ = false;
    Emit(std::move(event));
    for (const std::string& queue : config_.queues) {
      auto problem = problems.find(queue);
      if (problem == problems.end()) {
        queue_consumers_[queue].log.Reset();
        EmitQueueState(queue, true, "", false);
      } else {
        LookAgainLater(queue, problem->second);
      }
    }
    return Status::Ok();
  }

  Status DeclareDeadLetterQueue() {
    redeclare_dead_letter_queue_ = false;
    if (config_.dead_letter_queue.empty()) return Status::Ok();
    // Used as it is when it exists declared otherwise: it only collects.
    Result<AmqpQueueCheck> declared = connection_.DeclareQueue(
        config_.dead_letter_queue, /*create=*/true, dead_letter_arguments_,
        /*strict_arguments=*/false, "dead_letter_queue");
    if (!declared.ok()) return declared.status();
    if (!declared->ok()) return Status::Error(declared->problem);
    return Status::Ok();
  }

  // Declares (or looks for) QUEUE and consumes it. A problem: the queue's
  // own (missing, declared otherwise); an error: the connection's.
  Result<AmqpQueueCheck> StartConsuming(const std::string& queue) {
    Result<AmqpQueueCheck> found = connection_.DeclareQueue(
        queue, config_.declare, queue_arguments_,
        /*strict_arguments=*/config_.queue_type == AmqpQueueType::kQuorum,
        "queues");
    if (!found.ok() || !found->ok()) return found;
    Result<std::string> tag = connection_.Consume(queue);
    if (!tag.ok()) return tag.status();
    consumers_[*tag] = queue;
    queue_consumers_[queue].tag = *tag;
    return found;
  }

  // QUEUE is not consumed because of PROBLEM: looked for again after a
  // backoff (logged at once, then at most every 30 s while it repeats).
  void LookAgainLater(const std::string& queue, const std::string& problem) {
    QueueConsumer& consumer = queue_consumers_[queue];
    Duration delay =
        config_.reconnect_backoff.Delay(consumer.attempt, Random01());
    consumer.next_look = Clock::now() + delay;
    ++consumer.attempt;
    int held_back = 0;
    if (consumer.log.ShouldLog(problem, Clock::now(), &held_back)) {
      std::string line = "error: " + problem + "; looking again in about " +
                         FormatDuration(delay) + " (attempt " +
                         std::to_string(consumer.attempt);
      if (held_back > 0) {
        line += ", " + std::to_string(held_back) +
                " failures like this one not logged since the last line";
      }
      AmqpLog(line + ")");
    }
    if (problem != consumer.problem) {
      consumer.problem = problem;
      EmitQueueState(queue, false, problem, false);
    }
  }

  // QUEUE lost its consumer (WHY): logged once, told to the loop, and
  // looked for again at once (declared again with declare: true). Its
  // deliveries already here stay valid on the channel: they are processed
  // and settled as usual.
  void LoseConsumer(const std::string& queue, const std::string& why) {
    QueueConsumer& consumer = queue_consumers_[queue];
    if (consumer.tag.empty()) return;  // told already
    consumer.tag.clear();
    consumer.attempt = 0;
    consumer.lost = true;
    consumer.problem = why;
    consumer.next_look = Clock::now();
    consumer.log.Reset();
    std::string next =
        stop_consuming_ ? std::string("stopping anyway")
        : config_.declare
            ? std::string("declaring it again")
            : std::string("looking for it with backoff until it is back");
    AmqpLog("warning: queue '" + queue + "' is no longer consumed: " + why +
            "; its deliveries in flight are finished and settled; " + next);
    EmitQueueState(queue, false, why, true);
  }

  void EmitQueueState(const std::string& queue, bool consuming,
                      const std::string& why, bool cancelled) {
    AmqpEvent event;
    event.type = AmqpEvent::Type::kQueueState;
    event.generation = generation_;
    event.queue = queue;
    event.consuming = consuming;
    event.cancelled = cancelled;
    event.text = why;
    Emit(std::move(event));
  }

  // The queues not consumed whose next look is due: consumed when there.
  Status MaybeLookForQueues() {
    if (stop_consuming_ || shutdown_) return Status::Ok();
    const auto now = Clock::now();
    for (auto& [queue, consumer] : queue_consumers_) {
      if (!consumer.tag.empty() || now < consumer.next_look) continue;
      Result<AmqpQueueCheck> found = StartConsuming(queue);
      if (!found.ok()) return found.status();
      if (!found->ok()) {
        LookAgainLater(queue, found->problem);
        continue;
      }
      AmqpLog(consumer.lost ? "consuming queue '" + queue + "' again" +
                                  (config_.declare ? " (declared it anew)"
                                                   : " (it is back)")
                            : "queue '" + queue + "' found: consuming it");
      consumer.attempt = 0;
      consumer.lost = false;
      consumer.problem.clear();
      consumer.log.Reset();
      busy_ = true;  // a depth look soon
      EmitQueueState(queue, true, "", false);
    }
    return Status::Ok();
  }

  // When the next look at a queue not consumed is due, if any.
  std::optional<Clock::time_point> NextLook() const {
    std::optional<Clock::time_point> next;
    if (stop_consuming_ || shutdown_) return next;
    for (const auto& [queue, consumer] : queue_consumers_) {
      if (!consumer.tag.empty()) continue;
      if (!next || consumer.next_look < *next) next = consumer.next_look;
    }
    return next;
  }

  // Drops the connection, set up or not, at once.
  void Abandon() {
    // The loop's dup of the socket would keep the TCP connection open (and
    // RabbitMQ holding our unacked deliveries) until the loop closes it;
    // shutting the socket down ends it now, for both descriptors.
    connection_.Drop(/*shut_down_socket=*/loop_may_read_);
    connected_ = false;
    loop_may_read_ = false;
    loop_watches_ = false;
  }

  // ---------------------------------------------------------- connected

  // Runs until the connection fails or the shutdown completes; leaves the
  // connection dropped either way.
  void Serve() {
    if (Status served = ServeLoop(); !served.ok()) Lost(served);
  }

  // Ok once the shutdown completed; the error that ended the connection.
  Status ServeLoop() {
    amqp_connection_state_t conn = connection_.state();
    const int fd = amqp_get_sockfd(conn);
    for (;;) {
      if (!loop_error_.ok()) return std::exchange(loop_error_, Status::Ok());
      // Before the commands: a dead letter waiting among them must find
      // the queue that returned the last one declared again.
      if (redeclare_dead_letter_queue_) {
        if (Status s = DeclareDeadLetterQueue(); !s.ok()) return s;
      }
      if (Status s = RunCommands(); !s.ok()) return s;
      if (Status s = FlushAcks(); !s.ok()) return s;
      if (Status s = MaybeLookForQueues(); !s.ok()) return s;
      if (shutdown_) {
        if (confirms_.waiting() == 0 || Clock::now() >= shutdown_deadline_) {
          if (confirms_.waiting() != 0) {
            AmqpLog("warning: " + std::to_string(confirms_.waiting()) +
                    " deliveries still wait for publish confirms after " +
                    FormatDuration(
                        std::chrono::duration_cast<Duration>(kShutdownGrace)) +
                    "; closing anyway (RabbitMQ redelivers them)");
          }
          CloseGracefully();
          return Status::Ok();
        }
      }
      int read = 0;
      for (; read < kReadBatch; ++read) {
        Result<bool> got = ReadOne();
        if (!got.ok()) return got.status();
        if (!*got) break;
      }
      if (read == kReadBatch || CommandsWaiting()) continue;
      if (Status s = MaybeRefreshStats(); !s.ok()) return s;
      if (amqp_frames_enqueued(conn) || amqp_data_in_buffer(conn)) continue;

      auto now = Clock::now();
      const int heartbeat = connection_.heartbeat();
      if (heartbeat > 0 &&
          now - last_rx_ > std::chrono::seconds(2 * heartbeat + 1)) {
        return Status::Error(
            "nothing heard from RabbitMQ for " + std::to_string(2 * heartbeat) +
            "s (missed heartbeats): connection considered dead");
      }
      milliseconds wait(heartbeat > 0 ? heartbeat * 500 : 30000);
      if (busy_) {
        wait = std::min(wait, std::max(milliseconds(1),
                                       std::chrono::duration_cast<milliseconds>(
                                           next_stats_ - now)));
      }
      if (std::optional<Clock::time_point> look = NextLook()) {
        wait = std::min(
            wait,
            std::max(milliseconds(1),
                     std::chrono::duration_cast<milliseconds>(*look - now)));
      }
      if (shutdown_) wait = std::min(wait, milliseconds(100));
      if (Status s = FlushAcks(); !s.ok()) return s;  // confirms read above
      if (loop_may_read_ && declined_generation_ != generation_ &&
          !stop_consuming_ && !shutdown_ && !loop_watches_) {
        // The loop watches the socket while this thread sleeps, and reads
        // what it can without it (ReadDeliveries).
        loop_watches_ = true;
        AmqpEvent event;
        event.type = AmqpEvent::Type::kLoopReads;
        event.generation = generation_;
        Emit(std::move(event));
      }
      const bool loop_watches = loop_watches_ && !stop_consuming_ && !shutdown_;
      pollfd fds[2] = {{loop_watches ? -1 : fd, POLLIN, 0},
                       {wake_fd_, POLLIN, 0}};
      conn_lock_.unlock();  // TryAck's window
      int n = poll(fds, 2, static_cast<int>(wait.count()));
      conn_lock_.lock();
      if (n > 0 && fds[0].revents != 0) last_rx_ = Clock::now();
      if (n > 0 && fds[1].revents != 0) DrainWakeFd();
    }
  }

  void Lost(const Status& why) {
    Abandon();
    confirms_.Clear();
    acks_.Clear();  // RabbitMQ requeues the unsettled deliveries
    AmqpLog("error: connection to " + config_.url.Describe() +
            " lost: " + why.message() +
            "; unacked deliveries go back to their queues; reconnecting");
    AmqpEvent event;
    event.type = AmqpEvent::Type::kDisconnected;
    event.generation = generation_;
    event.text = why.message();
    event.consumer_timeout = std::exchange(lost_consumer_timeout_, {});
    Emit(std::move(event));
  }

  void CloseGracefully() {
    if (Status flushed = FlushAcks(); !flushed.ok()) {
      AmqpLog("warning: " + flushed.message() + " while closing");
    }
    connection_.Close(/*shut_down_socket=*/loop_may_read_);
    Abandon();
    AmqpLog("connection to " + config_.url.Describe() + " closed");
  }

  // One frame's worth of work: true when something was read, false when
  // nothing is waiting; an error when the connection failed.
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
    OnDelivery(envelope);
    amqp_destroy_envelope(&envelope);
    return true;
  }

  void OnDelivery(const amqp_envelope_t& envelope) {
    std::unique_ptr<AmqpDelivery> delivery = TakeDelivery(envelope);
    if (!delivery) return;
    AmqpEvent event;
    event.type = AmqpEvent::Type::kDelivery;
    event.generation = generation_;
    event.delivery = std::move(delivery);
    Emit(std::move(event));
  }

  // Either thread, with the connection lock held.
  std::unique_ptr<AmqpDelivery> TakeDelivery(const amqp_envelope_t& envelope) {
    // Every delivery, even one dropped here, is unacked until settled: a
    // multiple ack must never reach past it.
    acks_.Delivered(envelope.delivery_tag);
    if (stop_consuming_) return nullptr;  // unacked: requeued when we close
    auto delivery = std::make_unique<AmqpDelivery>();
    delivery->generation = generation_;
    delivery->tag = envelope.delivery_tag;
    auto consumer = consumers_.find(Text(envelope.consumer_tag));
    delivery->queue = consumer != consumers_.end() ? consumer->second
                                                   : Text(envelope.routing_key);
    delivery->exchange = Text(envelope.exchange);
    delivery->routing_key = Text(envelope.routing_key);
    delivery->redelivered = envelope.redelivered != 0;
    delivery->properties = FromAmqp(envelope.message.properties);
    delivery->body = Text(envelope.message.body);
    busy_ = true;
    return delivery;
  }

  Status OnFrame(const amqp_frame_t& frame) {
    if (frame.frame_type != AMQP_FRAME_METHOD) return Status::Ok();
    switch (frame.payload.method.id) {
      case AMQP_BASIC_ACK_METHOD: {
        auto* ack =
            static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
        return OnConfirm(ack->delivery_tag, ack->multiple != 0, true);
      }
      case AMQP_BASIC_NACK_METHOD: {
        auto* nack =
            static_cast<amqp_basic_nack_t*>(frame.payload.method.decoded);
        return OnConfirm(nack->delivery_tag, nack->multiple != 0, false);
      }
      case AMQP_BASIC_CANCEL_METHOD: {
        auto* cancel =
            static_cast<amqp_basic_cancel_t*>(frame.payload.method.decoded);
        auto consumer = consumers_.find(Text(cancel->consumer_tag));
        // An older consumer of a queue consumed again meanwhile (the depth
        // look found it gone first), or one we cancelled: nothing to do.
        if (consumer != consumers_.end() &&
            queue_consumers_[consumer->second].tag == consumer->first) {
          LoseConsumer(consumer->second,
                       "RabbitMQ cancelled its consumer (the queue was "
                       "deleted, or the node it lives on went down)");
        }
        return Status::Ok();
      }
      case AMQP_BASIC_RETURN_METHOD: {
        auto* returned =
            static_cast<amqp_basic_return_t*>(frame.payload.method.decoded);
        const std::string queue = Text(returned->routing_key);
        const std::string why = std::to_string(returned->reply_code) + " " +
                                Text(returned->reply_text);
        // Its content follows; only the routing key matters.
        amqp_message_t message;
        amqp_rpc_reply_t reply =
            amqp_read_message(connection_.state(), frame.channel, &message, 0);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
          return Status::Error(DescribeReply(reply).text);
        }
        amqp_destroy_message(&message);
        OnReturned(queue, why);
        return Status::Ok();
      }
      case AMQP_CHANNEL_CLOSE_METHOD: {
        auto* close =
            static_cast<amqp_channel_close_t*>(frame.payload.method.decoded);
        if (frame.channel == kAmqpDeclareChannel) {
          // A depth poll found a queue gone; its consumer's cancel follows.
          return connection_.ReopenDeclareChannel();
        }
        const std::string text = Text(close->reply_text);
        lost_consumer_timeout_ =
            ParseConsumerTimeoutClose(close->reply_code, text);
        return Status::Error("RabbitMQ closed the channel: " +
                             std::to_string(close->reply_code) + " " + text);
      }
      case AMQP_CONNECTION_CLOSE_METHOD: {
        return connection_.AnswerConnectionClose(
            *static_cast<amqp_connection_close_t*>(
                frame.payload.method.decoded));
      }
      case AMQP_CONNECTION_BLOCKED_METHOD: {
        auto* blocked = static_cast<amqp_connection_blocked_t*>(
            frame.payload.method.decoded);
        AmqpEvent event;
        event.type = AmqpEvent::Type::kBlocked;
        event.generation = generation_;
        event.text = Text(blocked->reason);
        AmqpLog("warning: RabbitMQ blocked this connection (" + event.text +
                "): replies, retry copies, dead letters and acks wait until "
                "it unblocks it");
        Emit(std::move(event));
        return Status::Ok();
      }
      case AMQP_CONNECTION_UNBLOCKED_METHOD: {
        AmqpLog("RabbitMQ unblocked this connection; publishing resumes");
        AmqpEvent event;
        event.type = AmqpEvent::Type::kUnblocked;
        event.generation = generation_;
        Emit(std::move(event));
        return Status::Ok();
      }
      default:
        return Status::Ok();
    }
  }

  // RabbitMQ returned a mandatory publish to QUEUE (WHY: its reply code and
  // text): no such queue. The deliveries it may have been published for are
  // requeued once confirmed (AmqpConfirmBook::Returned); a dead-letter queue
  // is declared again before the next publish.
  void OnReturned(const std::string& queue, const std::string& why) {
    const int marked = confirms_.Returned(queue);
    if (queue == config_.dead_letter_queue) redeclare_dead_letter_queue_ = true;
    int held_back = 0;
    std::string line = "warning: RabbitMQ returned a message published to '" +
                       queue + "' (" + why + ": no such queue); ";
    line += queue == config_.dead_letter_queue
                ? "declaring the dead-letter queue again; "
                : std::string();
    line += marked > 0 ? "requeueing the delivery it was published for"
                       : "nothing waited for it";
    if (return_log_.ShouldLog(line, Clock::now(), &held_back)) {
      if (held_back > 0) {
        line += " (" + std::to_string(held_back) +
                " like it not logged since the last line)";
      }
      AmqpLog(line);
    }
  }

  // ---------------------------------------------------------- commands

  Status RunCommands() {
    for (AmqpCommand& command : TakeCommands()) {
      Status status;
      switch (command.type) {
        case AmqpCommand::Type::kSettle:
          status = Settle(command);
          break;
        case AmqpCommand::Type::kPublish:
          for (const AmqpPublish& publish : command.publishes) {
            if (status.ok()) status = Publish(publish, 0);
          }
          break;
        case AmqpCommand::Type::kStopConsuming:
          status = StopConsuming();
          break;
        case AmqpCommand::Type::kShutdown:
          shutdown_ = true;
          shutdown_deadline_ = Clock::now() + kShutdownGrace;
          break;
      }
      if (!status.ok()) return status;
    }
    return Status::Ok();
  }

  Status StopConsuming() {
    if (stop_consuming_) return Status::Ok();
    stop_consuming_ = true;
    for (auto& [queue, consumer] : queue_consumers_) {
      if (consumer.tag.empty()) continue;  // RabbitMQ ended it already
      if (Status s = connection_.Cancel(consumer.tag); !s.ok()) return s;
      consumer.tag.clear();
    }
    AmqpLog("stopped consuming; finishing the deliveries in flight");
    return Status::Ok();
  }

  Status Settle(AmqpCommand& command) {
    if (command.generation != generation_) {
      return Status::Ok();  // requeued already
    }
    busy_ = true;
    if (command.publishes.empty()) {
      return Finish(command.tag, command.outcome, command.queue);
    }
    uint64_t id = confirms_.Add(command.tag, command.outcome, command.queue,
                                static_cast<int>(command.publishes.size()));
    for (const AmqpPublish& publish : command.publishes) {
      if (Status s = Publish(publish, id); !s.ok()) return s;
    }
    return Status::Ok();
  }

  // Publishes PUBLISH to the default exchange on behalf of settle SETTLE_ID
  // (0: none), confirmed later (OnConfirm).
  Status Publish(const AmqpPublish& publish, uint64_t settle_id) {
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_basic_properties_t properties =
        amqp::ToAmqp(publish.properties, &pool);
    amqp_bytes_t body;
    body.len = publish.body.size();
    body.bytes = const_cast<char*>(publish.body.data());
    int rc =
        amqp_basic_publish(connection_.state(), kAmqpConsumeChannel,
                           amqp_empty_bytes, Bytes(publish.routing_key),
                           publish.mandatory ? 1 : 0, 0, &properties, body);
    empty_amqp_pool(&pool);
    if (rc != AMQP_STATUS_OK) {
      return Status::Error(std::string("publish to '") + publish.routing_key +
                           "' failed: " + amqp_error_string2(rc));
    }
    confirms_.Published(settle_id,
                        publish.mandatory ? publish.routing_key : "");
    return Status::Ok();
  }

  Status OnConfirm(uint64_t seq, bool multiple, bool ok) {
    for (const AmqpPendingSettle& done : confirms_.Confirm(seq, multiple, ok)) {
      AmqpOutcome outcome = done.outcome;
      if (done.nacked) {
        AmqpLog(
            "warning: RabbitMQ refused (nack) a message published for a "
            "delivery of '" +
            done.queue + "'; requeueing that delivery");
        outcome = AmqpOutcome::kRequeued;
      } else if (!done.returned_to.empty()) {
        outcome = AmqpOutcome::kRequeued;  // logged by OnReturned
      }
      Status finished = Finish(done.tag, outcome, done.queue);
      if (!finished.ok()) return finished;
    }
    return Status::Ok();
  }

  // The ack or reject of a delivery, once its publishes are confirmed.
  Status Finish(uint64_t tag, AmqpOutcome outcome, const std::string& queue,
                bool emit = true) {
    switch (outcome) {
      case AmqpOutcome::kAcked:
      case AmqpOutcome::kRetried:
      case AmqpOutcome::kDeadLettered:
        acks_.Ack(tag);  // sent by FlushAcks()
        break;
      case AmqpOutcome::kRejected:
      case AmqpOutcome::kRequeued: {
        if (Status s = WriteAcks(acks_.Reject(tag)); !s.ok()) return s;
        int rc =
            amqp_basic_reject(connection_.state(), kAmqpConsumeChannel, tag,
                              outcome == AmqpOutcome::kRequeued ? 1 : 0);
        if (rc != AMQP_STATUS_OK) {
          return Status::Error(std::string("ack failed: ") +
                               amqp_error_string2(rc));
        }
        break;
      }
    }
    if (!emit) return Status::Ok();
    AmqpEvent event;
    event.type = AmqpEvent::Type::kSettled;
    event.generation = generation_;
    event.queue = queue;
    event.outcome = outcome;
    Emit(std::move(event));
    return Status::Ok();
  }

  // Sends the acks Finish() collected since the last flush, batched (see
  // AmqpAckBatch).
  Status FlushAcks() {
    if (acks_.empty()) return Status::Ok();
    return WriteAcks(acks_.Take());
  }

  Status WriteAcks(const AmqpAckBatch::Frames& frames) {
    amqp_connection_state_t conn = connection_.state();
    int rc = AMQP_STATUS_OK;
    if (frames.multiple != 0) {
      rc = amqp_basic_ack(conn, kAmqpConsumeChannel, frames.multiple,
                          /*multiple=*/1);
    }
    for (uint64_t tag : frames.singles) {
      if (rc != AMQP_STATUS_OK) break;
      rc = amqp_basic_ack(conn, kAmqpConsumeChannel, tag, /*multiple=*/0);
    }
    if (rc != AMQP_STATUS_OK) {
      return Status::Error(std::string("ack failed: ") +
                           amqp_error_string2(rc));
    }
    return Status::Ok();
  }

  // ---------------------------------------------------------- depth polls

  // A passive queue.declare per queue every stats_interval, but only while
  // busy (deliveries or settles since the last look), plus one look after
  // it goes quiet so the figures end at the true depth. An idle service
  // thus costs RabbitMQ nothing and wakes only for heartbeats.
  Status MaybeRefreshStats() {
    if (!busy_ || Clock::now() < next_stats_) return Status::Ok();
    busy_ = false;
    next_stats_ = Clock::now() + config_.stats_interval;
    for (const std::string& queue : config_.queues) {
      if (queue_consumers_[queue].tag.empty()) continue;  // looked for
      std::string gone;
      Result<std::optional<AmqpQueueDepth>> depth =
          connection_.PollQueue(queue, &gone);
      if (!depth.ok()) return depth.status();
      if (!*depth) {
        LoseConsumer(queue, "the depth look found it gone (" + gone + ")");
        continue;
      }
      AmqpEvent event;
      event.type = AmqpEvent::Type::kQueueStats;
      event.generation = generation_;
      event.queue = queue;
      event.messages = (*depth)->messages;
      event.consumers = (*depth)->consumers;
      Emit(std::move(event));
    }
    // Keep looking while there is work; the look after the last activity
    // sets busy_ false for good.
    if (confirms_.waiting() != 0) busy_ = true;
    return Status::Ok();
  }

  AmqpServiceConfig config_;
  std::function<void()> wake_;
  std::thread thread_;
  int wake_fd_ = -1;
  std::mutex mutex_;  // commands_ and events_
  std::deque<AmqpCommand> commands_;
  std::deque<AmqpEvent> events_;
  std::mt19937 rng_;

  // The connection and the state below: the AMQP thread's, but for TryAck
  // on the loop thread, which may use them while it holds conn_mutex_.
  std::mutex conn_mutex_;
  std::unique_lock<std::mutex> conn_lock_{conn_mutex_, std::defer_lock};
  // A write (TryAck) or read (ReadDeliveries) of the loop thread failed:
  // the AMQP thread drops the connection.
  Status loop_error_;
  // Who watches the socket for input: the loop while true (set by the AMQP
  // thread before it sleeps, cleared by the loop when it hands back), and
  // whether the loop may at all on this connection (plain TCP, a dup made,
  // the loop did not decline).
  std::atomic<bool> loop_watches_{false};
  std::atomic<uint64_t> declined_generation_{0};
  bool loop_may_read_ = false;
  std::vector<unsigned char> peek_ = std::vector<unsigned char>(kPeekBytes);
  AmqpConnection connection_{config_};
  bool connected_ = false;
  uint64_t generation_ = 0;
  // Every consumer tag of this connection, cancelled ones too (their late
  // deliveries are named by it) -> its queue.
  std::map<std::string, std::string> consumers_;
  // Every configured queue, consumed or not.
  struct QueueConsumer {
    std::string tag;      // empty: not consumed now
    bool lost = false;    // it was, and lost its consumer
    std::string problem;  // why not, as last told to the loop
    int attempt = 0;      // looks since it was last consumed
    Clock::time_point next_look{};
    AmqpRepeatFilter log{Duration(30000)};
  };
  std::map<std::string, QueueConsumer> queue_consumers_;
  AmqpTable queue_arguments_;
  AmqpTable dead_letter_arguments_;
  bool redeclare_dead_letter_queue_ = false;
  // Set when RabbitMQ closed the consume channel for a consumer timeout;
  // reported with kDisconnected.
  std::optional<Duration> lost_consumer_timeout_;
  AmqpRepeatFilter return_log_{Duration(30000)};
  bool stop_consuming_ = false;
  bool shutdown_ = false;
  Clock::time_point shutdown_deadline_{};
  AmqpConfirmBook confirms_;  // settles waiting for publisher confirms
  AmqpAckBatch acks_;         // acks decided, not yet sent (FlushAcks)
  Clock::time_point last_rx_{};
  Clock::time_point next_stats_{};
  bool busy_ = false;
  AmqpRepeatFilter connect_log_{Duration(30000)};
};

AmqpSession::AmqpSession(AmqpServiceConfig config, std::function<void()> wake)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(wake))) {}
AmqpSession::~AmqpSession() = default;
void AmqpSession::Start() { impl_->Start(); }
void AmqpSession::Post(AmqpCommand command) { impl_->Post(std::move(command)); }
std::deque<AmqpEvent> AmqpSession::TakeEvents() { return impl_->TakeEvents(); }
void AmqpSession::Join() { impl_->Join(); }
AmqpLoopRead AmqpSession::ReadDeliveries(
    std::uint64_t generation, std::vector<std::unique_ptr<AmqpDelivery>>* out) {
  return impl_->ReadDeliveries(generation, out);
}
void AmqpSession::DeclineReads(std::uint64_t generation) {
  impl_->DeclineReads(generation);
}
AmqpFastAck AmqpSession::TryAck(std::uint64_t generation,
                                const std::vector<std::uint64_t>& tags) {
  return impl_->TryAck(generation, tags);
}

}  // namespace workerpool
