// The outbox: the half of `workerpool builtin rabbitmq-service` that
// serves requests from reactors by publishing them to RabbitMQ (a service
// group whose rabbitmq section has `publish:`; docs/RABBITMQ.md,
// "Publishing"). The other half, the consumer, is rabbitmq_service.cc's;
// a process runs either or both.
//
// Each request becomes one message (core/amqp_outbox.h), published with
// publisher confirms on the publisher's own connection
// (children/amqp_publisher.h). In enqueue mode the request is answered once
// RabbitMQ confirmed the message (the reply's meta carries message_id and
// http_status 202); in rpc mode by the consumer's reply, which arrives by
// direct reply-to with the message id as correlation_id, errors and
// progress included. Every failure is an answer, never a wait: a nack or a
// return (no queue for the routing key), a lost connection (before the
// confirm: "may or may not be queued"; after it: "may still be
// processed"), no reply within publish.timeout ("timeout"), more than
// publish.max_pending requests waiting, or RabbitMQ's connection.blocked
// ("queue full"), no connection ("no live process"-like: refused at once).
//
// Runs on the loop thread of the process's PoolClient; the publisher's
// thread only publishes and reads.
#pragma once

#include <memory>

#include "core/amqp_service_config.h"
#include "workerpool/client.h"

namespace workerpool {

class RabbitmqOutbox {
 public:
  virtual ~RabbitmqOutbox() = default;

  // The PoolClient the consumer half of the same process must use instead
  // of the process's own: the same client, but its OnStop callback is
  // called by the outbox (which has to know of the stop too) and the
  // figures it sets are merged with the outbox's (under "publish") before
  // they reach the Watcher.
  virtual PoolClient* consumer_client() = 0;
};

// Starts serving requests on CLIENT (its loop thread) for CONFIG, whose
// publish section is set, and connects to RabbitMQ. Lives until the
// client's Run() returned.
std::unique_ptr<RabbitmqOutbox> StartRabbitmqOutbox(
    PoolClient* client, const AmqpServiceConfig& config);

}  // namespace workerpool
