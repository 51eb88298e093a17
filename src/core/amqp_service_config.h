// The RabbitMQ service's settings, from the JSON the Watcher passes in
// WORKERPOOL_RABBITMQ (a service group's `rabbitmq:` section plus its
// routes_to). Pure.
//
//   {"url", "queues": [...], "declare": bool, "prefetch": int,
//    "max_retries": int, "dead_letter_queue": str, "routes_to": [...],
//    "queue_type": "classic" | "quorum", "delivery_limit": int,
//    "consumer_timeout_ms": int, "target_request_timeout_ms": int,
//    "connection_name": str, "publish": {...} (core/amqp_publish_config.h)}
// "queues" may be empty (and then "routes_to" too) when "publish" is set.
//
// Optional keys, not (yet) in the YAML, for tuning and tests:
//   "retry_initial_ms" (500), "retry_max_ms" (30000): retry backoff;
//   "reconnect_initial_ms" (100), "reconnect_max_ms" (5000);
//   "stats_interval_ms" (5000): queue depth refresh while busy;
//   "heartbeat_s" (30; the URL's ?heartbeat= wins).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/amqp_message.h"
#include "core/amqp_publish_config.h"
#include "core/amqp_retry.h"
#include "core/amqp_url.h"
#include "core/pool_model.h"
#include "core/status.h"
#include "core/units.h"

namespace workerpool {

// What `queue_type` declares (with declare: true).
enum class AmqpQueueType { kClassic, kQuorum };

// RabbitMQ's default consumer_timeout (since 3.8.15): a delivery unacked
// this long makes the broker close the channel.
inline constexpr Duration kRabbitmqDefaultConsumerTimeout{30 * 60 * 1000};
// The default x-delivery-limit of the quorum queues the service declares
// (RabbitMQ 4's own default for quorum queues).
inline constexpr int kDefaultDeliveryLimit = 20;

struct AmqpServiceConfig {
  AmqpUrl url;
  std::vector<std::string> queues;
  bool declare = false;
  AmqpQueueType queue_type = AmqpQueueType::kClassic;
  // Quorum queues only: x-delivery-limit (RabbitMQ dead-letters a message
  // redelivered more often than this to dead_letter_queue, or drops it).
  int delivery_limit = kDefaultDeliveryLimit;
  int prefetch = 32;
  int max_retries = 5;
  std::string dead_letter_queue;  // empty: reject (RabbitMQ's own DLX, if any)
  std::string target;             // routes_to[0]: where requests go
  AmqpBackoff retry_backoff{Duration(500), Duration(30000), 2.0, 0.2};
  AmqpBackoff reconnect_backoff{Duration(100), Duration(5000), 2.0, 0.2};
  Duration stats_interval{5000};
  int heartbeat_s = 30;
  Duration connect_timeout{5000};
  // How long the broker lets a delivery stay unacked (its consumer_timeout);
  // 0: it has none. The service settles every delivery before it (see
  // AmqpConsumerTimeoutCutoff).
  Duration consumer_timeout = kRabbitmqDefaultConsumerTimeout;
  // The target group's request_timeout, when the Watcher passed it; 0:
  // unknown. Only for the start-up warning against consumer_timeout.
  Duration target_request_timeout{0};
  // Shown in RabbitMQ's management views (client property
  // connection_name); the service sets POOL/GROUP/INDEX when it is empty.
  std::string connection_name;
  // Set: the service serves requests by publishing them (the outbox).
  std::optional<AmqpPublishSettings> publish;
};

// Parses and checks TEXT; the error names the key and what was wrong.
Result<AmqpServiceConfig> ParseAmqpServiceConfig(std::string_view text);

// What the Watcher puts in WORKERPOOL_RABBITMQ for a child of GROUP (a
// service group with a rabbitmq section; "{}" without one) of POOL: the
// section's keys, the group's routes_to, and the request_timeout of the
// group it routes to. ParseAmqpServiceConfig reads it back.
std::string AmqpServiceEnvironment(const PoolConfig& pool,
                                   const GroupConfig& group);

// "classic" or "quorum".
const char* AmqpQueueTypeName(AmqpQueueType type);

// The arguments of the queue.declare of a consumed queue (declare: true):
// none for a classic queue (a queue declared differently is then used as
// it is); for a quorum queue x-queue-type, x-delivery-limit and, with a
// dead_letter_queue, the broker's own dead-lettering into it
// (x-dead-letter-exchange "" and x-dead-letter-routing-key, at-least-once,
// which RabbitMQ allows only with x-overflow reject-publish).
AmqpTable AmqpQueueArguments(const AmqpServiceConfig& config);
// The arguments of the dead-letter queue's declare: x-queue-type quorum
// next to quorum queues, else none.
AmqpTable AmqpDeadLetterQueueArguments(const AmqpServiceConfig& config);

// When the service gives up on a delivery that has not been settled, so
// that it settles it before RabbitMQ's consumer_timeout CONSUMER_TIMEOUT
// closes the channel: a tenth of it earlier, at least 200 ms and at most
// 60 s (RabbitMQ checks once per channel tick, 60 s by default, so it may
// fire up to a tick late, never early). 0 when CONSUMER_TIMEOUT is 0.
Duration AmqpConsumerTimeoutCutoff(Duration consumer_timeout);

// The consumer_timeout RabbitMQ applied, when CODE and TEXT are the
// channel.close it sends when it ran out ("406 PRECONDITION_FAILED -
// delivery acknowledgement on channel 1 timed out. Timeout value used:
// 2000 ms. ..."): the value it names, or 0 when it names none. Nothing for
// any other close.
std::optional<Duration> ParseConsumerTimeoutClose(int code,
                                                  std::string_view text);

}  // namespace workerpool
