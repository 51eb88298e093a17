// The RabbitMQ side of `workerpool builtin rabbitmq-service`: one thread
// that owns the librabbitmq connection (librabbitmq is blocking and one
// connection belongs to one thread) and talks to the loop thread only
// through two queues:
//
//   loop -> AMQP thread: AmqpCommand (settle a delivery after publishing its
//     retry copy / dead letter / RPC reply, publish a progress message, stop
//     consuming, shut down), woken through an eventfd; plain acks go the
//     same way unless TryAck could write them from the loop thread (the
//     connection is behind a mutex that the AMQP thread releases only while
//     it sleeps in poll(), and that the loop thread only ever try-locks);
//   AMQP thread -> loop: AmqpEvent (deliveries, connection state, settled
//     deliveries, queue depth), woken through the callback given (a
//     uv_async_send).
//
// Deliveries also have a shortcut: while the AMQP thread sleeps, the loop
// thread watches the socket itself (a dup of it, handed over with
// kConnected) and reads whole deliveries under the same try-locked mutex
// (ReadDeliveries), so a message reaches its job without waking the AMQP
// thread first. Who watches the socket is handed back and forth: the AMQP
// thread gives it to the loop (kLoopReads) when it goes to sleep; the loop
// gives it back (and wakes the AMQP thread) as soon as it meets anything
// but whole deliveries, or finds the connection busy.
//
// Each configured queue is consumed on its own terms: a queue missing at
// connect (declare: false), or whose consumer RabbitMQ cancels later (the
// queue deleted, its node gone; the login advertises
// consumer_cancel_notify so that RabbitMQ says so), is looked for with
// backoff (declared again at once with declare: true) and consumed as soon
// as it is there, while the other queues go on; kQueueState tells the loop.
// The deliveries of a cancelled consumer stay valid on the channel and are
// settled as usual.
//
// Delivery tags only mean something on the connection that produced them:
// every (re)connection gets a new generation number, and a command for an
// older generation is dropped (RabbitMQ has already requeued that delivery).
//
// Publishing uses publisher confirms: a delivery is acked only once every
// message published on its behalf was confirmed, so a crash at any point
// leaves the original unacked (RabbitMQ redelivers it): at-least-once.
//
// The pieces, in amqp_session.cc and beside it: setting a connection up and
// taking it down (connect, login, channels, declares, consumers, depth
// polls) in children/amqp_connection.h; which acks to write and which
// settles wait for confirms in children/amqp_settle.h; librabbitmq's types
// converted in children/amqp_convert.h. The session itself holds the two
// threads' plumbing, the reconnect loop with its backoff, the reads and
// frame handling of a live connection, and the commands.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/amqp_message.h"
#include "core/amqp_service_config.h"
#include "core/units.h"

namespace workerpool {

struct AmqpDelivery {
  std::uint64_t generation = 0;
  std::uint64_t tag = 0;
  std::string queue;
  std::string exchange;
  std::string routing_key;
  bool redelivered = false;
  AmqpProperties properties;
  std::string body;
};

// A message for the default exchange: ROUTING_KEY names the queue.
struct AmqpPublish {
  std::string routing_key;
  AmqpProperties properties;
  std::string body;
  // Published mandatory: when no queue takes it (the queue was deleted),
  // RabbitMQ returns it, and the delivery it was published for is requeued
  // instead of acked. For the copies to the service's own queues (retries,
  // dead letters), never for replies (a caller that left is no reason to
  // process a message again).
  bool mandatory = false;
};

// How a delivery ends, for the figures and the AMQP operation:
// kAcked, kRetried, kDeadLettered: basic.ack (after its publishes);
// kRejected: basic.reject without requeue (the queue's own DLX, if any);
// kRequeued: basic.reject with requeue (also what a nacked publish becomes).
enum class AmqpOutcome {
  kAcked,
  kRetried,
  kDeadLettered,
  kRejected,
  kRequeued
};

struct AmqpCommand {
  enum class Type { kSettle, kPublish, kStopConsuming, kShutdown };
  Type type = Type::kSettle;
  std::uint64_t generation = 0;  // kSettle
  std::uint64_t tag = 0;         // kSettle
  std::string queue;             // kSettle: for the figures
  AmqpOutcome outcome = AmqpOutcome::kAcked;
  // kSettle: published (and confirmed) before the settle; kPublish: sent
  // when connected, not waited for (progress messages).
  std::vector<AmqpPublish> publishes;
};

// What AmqpSession::TryAck did.
enum class AmqpFastAck {
  kAcked,   // basic.ack written; no kSettled event follows
  kNotNow,  // nothing done: Post a kSettle command instead
  kLost,    // the write failed; the connection is dropped (kDisconnected
            // follows) and RabbitMQ requeues the delivery
};

// What AmqpSession::ReadDeliveries asks of the loop.
enum class AmqpLoopRead {
  kKeepWatching,  // go on watching the socket
  kStopWatching,  // stop: the AMQP thread watches it until kLoopReads
};

struct AmqpEvent {
  enum class Type {
    kConnected,     // generation: the new connection's; fd: see below
    kLoopReads,     // generation: the loop may watch the socket now
    kDisconnected,  // text: why
    kDelivery,      // delivery
    kSettled,       // queue, outcome
    kQueueStats,    // queue, messages, consumers
    // queue, consuming; text: why not (empty while consuming); cancelled:
    // it was consumed and no longer is (RabbitMQ cancelled the consumer, or
    // the depth look found the queue gone). After kConnected one per queue,
    // then whenever it changes.
    kQueueState,
    kBlocked,    // text: RabbitMQ's reason; it reads nothing we send
    kUnblocked,  // RabbitMQ reads again
    kStopped,    // the thread is about to exit
  };
  Type type = Type::kConnected;
  std::uint64_t generation = 0;
  std::unique_ptr<AmqpDelivery> delivery;
  std::string queue;
  AmqpOutcome outcome = AmqpOutcome::kAcked;
  std::string text;
  long messages = -1;
  long consumers = -1;
  bool consuming = false;  // kQueueState
  bool cancelled = false;  // kQueueState
  // kDisconnected: RabbitMQ closed the channel because a delivery stayed
  // unacked past its consumer_timeout: the value it named (0: none named).
  std::optional<Duration> consumer_timeout;
  // kConnected: a duplicate of the connection's socket for the loop to
  // watch (never to read or write itself: ReadDeliveries does that through
  // librabbitmq), or -1 when the loop may not read (TLS). The loop owns it
  // and closes it when that connection is gone. A dup, so that the AMQP
  // thread closing the connection never leaves the loop watching a closed
  // (or reused) descriptor number.
  int fd = -1;
};

class AmqpSession {
 public:
  // WAKE is called on the AMQP thread whenever events are waiting.
  AmqpSession(AmqpServiceConfig config, std::function<void()> wake);
  ~AmqpSession();  // joins the thread (after kShutdown)

  void Start();
  // Thread-safe.
  void Post(AmqpCommand command);
  // Thread-safe; the events in order.
  std::deque<AmqpEvent> TakeEvents();
  // Waits for the thread to exit (post kShutdown first).
  void Join();
  // Loop thread; never blocks. Acks deliveries TAGS of connection
  // GENERATION (their jobs succeeded, nothing was published on their
  // behalf) right here when the AMQP thread is asleep, no command is queued
  // and the socket takes the frames at once; all or none: on kNotNow the
  // caller Posts a kSettle per tag. Spares the wake-up of the AMQP thread
  // per message, the cost that limits prefetch 1.
  AmqpFastAck TryAck(std::uint64_t generation,
                     const std::vector<std::uint64_t>& tags);
  // Loop thread, when the socket of connection GENERATION is readable
  // after a kLoopReads; never blocks. Appends the whole deliveries waiting
  // to OUT (those librabbitmq can read without waiting for more bytes, see
  // core/amqp_frame_scan.h). kStopWatching: anything else is waiting, or
  // the AMQP thread holds the connection, or the connection is not that
  // one any more; the AMQP thread has been woken to take over.
  AmqpLoopRead ReadDeliveries(std::uint64_t generation,
                              std::vector<std::unique_ptr<AmqpDelivery>>* out);
  // Loop thread: it cannot watch the socket of connection GENERATION (it
  // has no handle for it); the AMQP thread watches it again, for good.
  void DeclineReads(std::uint64_t generation);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace workerpool
