// The bookkeeping behind settling rabbitmq-service's deliveries on one AMQP
// connection: which acks to write, and which settles wait for publisher
// confirms. No I/O (children/amqp_session.cc writes the frames); not
// thread-safe (the session's connection lock). Delivery tags and publish
// sequence numbers only mean something on the connection that produced
// them: Clear() both for every new connection.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "children/amqp_session.h"

namespace workerpool {

// Acks, written in batches. A delivery is unsettled from its arrival until
// it is acked or rejected. An ack decided is held until the next Take(),
// which turns every held ack into as few basic.ack frames as it can: one
// with multiple=1 up to the highest held tag below the oldest unsettled
// delivery (RabbitMQ then acks every unacked tag up to it, and below the
// oldest unsettled delivery those are exactly the held ones), single acks
// for the held tags above it. Under load that is one write for a batch of
// messages instead of one per message.
class AmqpAckBatch {
 public:
  // The basic.ack frames to write, in this order.
  struct Frames {
    std::uint64_t multiple = 0;          // multiple=1 up to this tag; 0: none
    std::vector<std::uint64_t> singles;  // multiple=0 each
  };

  // A new connection: nothing delivered, nothing held.
  void Clear();
  // Delivery TAG arrived. Every delivery counts, also one that is dropped
  // unprocessed (it is unacked until the connection closes): a multiple ack
  // must never reach past it.
  void Delivered(std::uint64_t tag);
  // TAG is to be acked: settled now, held until Take().
  void Ack(std::uint64_t tag);
  // TAG is to be rejected: the acks held so far, as Take() gives them, but
  // never covering TAG (an ack of it would take the message as done, and
  // make the reject fail). Write those first, then the reject. TAG is
  // settled after this.
  Frames Reject(std::uint64_t tag);
  // The frames for every held ack, which are then no longer held.
  Frames Take();
  // True when no ack is held.
  bool empty() const { return held_.empty(); }

 private:
  std::set<std::uint64_t> unsettled_;  // delivered, neither acked nor rejected
  std::vector<std::uint64_t> held_;    // acked, not yet taken, in order
};

// A delivery's settle (ack or reject) that waits for the publisher confirms
// of the messages published on its behalf (an RPC reply, a retry copy, a
// dead letter).
struct AmqpPendingSettle {
  std::uint64_t tag = 0;
  AmqpOutcome outcome = AmqpOutcome::kAcked;
  std::string queue;    // the delivery's, for the figures
  int remaining = 0;    // publishes not yet confirmed
  bool nacked = false;  // RabbitMQ refused one: the delivery is requeued
  // RabbitMQ returned one (mandatory, no queue to route it to): the
  // delivery is requeued too. The queue it was for names it.
  std::string returned_to;
};

// Publisher confirms: RabbitMQ numbers the messages published on a channel
// in confirm mode 1, 2, ... and confirms (basic.ack) or refuses (basic.nack)
// each, possibly many at once (multiple). A settle is complete once every
// one of its publishes is confirmed or refused.
//
// A mandatory publish that no queue takes comes back first as basic.return
// (which names the routing key, not the number), then is confirmed. The
// return cannot be matched to one number, so Returned() marks every
// unconfirmed publish to that routing key: the one returned is among them
// (its confirm follows its return), and the others only cost a duplicate
// (their delivery is requeued although their copy was routed), never a
// loss.
class AmqpConfirmBook {
 public:
  // A new connection: the next publish is number 1; no settle waits.
  void Clear();
  // A settle of delivery TAG waiting for PUBLISHES (> 0) confirms; its id,
  // for Published().
  std::uint64_t Add(std::uint64_t tag, AmqpOutcome outcome, std::string queue,
                    int publishes);
  // A message was published to ROUTING_KEY for settle SETTLE_ID (0: for
  // none, as progress messages are) and took the next number.
  void Published(std::uint64_t settle_id, std::string routing_key = {});
  // RabbitMQ returned a message published to ROUTING_KEY: every settle with
  // an unconfirmed publish to it is marked returned. How many were marked.
  int Returned(const std::string& routing_key);
  // RabbitMQ confirmed (ACK) or refused (!ACK) publish SEQ, and with
  // MULTIPLE every one before it too. The settles this completed, in the
  // order of their publishes; a refused publish marks its settle nacked.
  std::vector<AmqpPendingSettle> Confirm(std::uint64_t seq, bool multiple,
                                         bool ack);
  // Settles still waiting.
  std::size_t waiting() const { return settles_.size(); }

 private:
  struct Unconfirmed {
    std::uint64_t settle_id = 0;
    std::string routing_key;
  };
  std::uint64_t next_seq_ = 1;
  std::map<std::uint64_t, Unconfirmed> unconfirmed_;  // by seq
  std::uint64_t next_settle_ = 1;
  std::unordered_map<std::uint64_t, AmqpPendingSettle> settles_;
};

}  // namespace workerpool
