// The publishing side of `workerpool builtin rabbitmq-service`: one thread
// with its own connection to RabbitMQ (librabbitmq is blocking, and one
// connection belongs to one thread), apart from the consumer's
// (children/amqp_session.h) so that a service that only publishes has no
// consumer, and a service that does both keeps its consumer's hot path as
// it is. It talks to the loop thread only through two queues:
//
//   loop -> AMQP thread: batches of messages to publish, and the shutdown,
//     woken through an eventfd (one write per batch, not per message);
//   AMQP thread -> loop: AmqpPublisherEvent (connection state, confirms,
//     refusals, returns, replies, connection.blocked), woken through the
//     callback given (a uv_async_send).
//
// Every message is published on channel 1 in confirm mode and mandatory:
// RabbitMQ confirms it (basic.ack) once it is queued (persistent messages:
// written), refuses it (basic.nack), or, when no queue takes it, returns it
// (basic.return, then its confirm). The channel also consumes RabbitMQ's
// direct reply-to pseudo-queue (amq.rabbitmq.reply-to, no-ack): an RPC
// reply arrives on this very channel, without a reply queue to declare or
// to leave behind, and RabbitMQ discards replies for a connection that is
// gone (docs/RABBITMQ.md, "Publishing").
//
// Ids: the loop numbers its messages (AmqpOutgoing::id); confirms and
// refusals name that number. Returns and replies carry the message's own
// properties (message_id, correlation_id), which the loop reads.
//
// Connections: each (re)connection has a generation number. A batch is
// published only on the connection it was meant for; kDisconnected means
// every message of that generation not yet confirmed, refused or returned
// will never be, and that no reply for it can arrive any more.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/amqp_message.h"
#include "core/amqp_service_config.h"

namespace workerpool {

struct AmqpOutgoing {
  std::uint64_t id = 0;
  AmqpProperties properties;
  std::string body;
};

struct AmqpPublisherEvent {
  enum class Type {
    kConnected,      // generation
    kDisconnected,   // generation: the lost one; text: why
    kConnectFailed,  // text: why (the thread tries again after a backoff)
    kConfirmed,      // generation, id
    kRefused,        // generation, id: basic.nack
    kReturned,       // generation, properties; text: RabbitMQ's reason
    kReply,          // generation, properties, body
    kBlocked,        // text: RabbitMQ's reason (connection.blocked)
    kUnblocked,      // connection.unblocked, or a new connection
    kStopped,        // the thread is about to exit
  };
  Type type = Type::kConnected;
  std::uint64_t generation = 0;
  std::uint64_t id = 0;
  std::string text;
  AmqpProperties properties;
  std::string body;
};

class AmqpPublisher {
 public:
  // CONFIG: the URL, timeouts and heartbeat; CONFIG.publish is set. WAKE is
  // called on the AMQP thread whenever events are waiting.
  AmqpPublisher(AmqpServiceConfig config, std::function<void()> wake);
  ~AmqpPublisher();  // joins the thread (after Shutdown)

  void Start();
  // Thread-safe. Publishes MESSAGES, in order, on connection GENERATION;
  // dropped when that connection is gone (its kDisconnected says so).
  void Publish(std::uint64_t generation, std::vector<AmqpOutgoing> messages);
  // Thread-safe. Closes the connection (after the messages already handed
  // over are written) and ends the thread; kStopped follows.
  void Shutdown();
  // Thread-safe; the events in order.
  std::deque<AmqpPublisherEvent> TakeEvents();
  // Waits for the thread to exit (call Shutdown first).
  void Join();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace workerpool
