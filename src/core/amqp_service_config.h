// The RabbitMQ service's settings, from the JSON the Watcher passes in
// WORKERPOOL_RABBITMQ (a service group's `rabbitmq:` section plus its
// routes_to). Pure.
//
//   {"url", "queues": [...], "declare": bool, "prefetch": int,
//    "max_retries": int, "dead_letter_queue": str, "routes_to": [...],
//    "publish": {...} (core/amqp_publish_config.h)}
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

#include "core/amqp_publish_config.h"
#include "core/amqp_retry.h"
#include "core/amqp_url.h"
#include "core/status.h"
#include "core/units.h"

namespace workerpool {

struct AmqpServiceConfig {
  AmqpUrl url;
  std::vector<std::string> queues;
  bool declare = false;
  int prefetch = 32;
  int max_retries = 5;
  std::string dead_letter_queue;  // empty: reject (RabbitMQ's own DLX, if any)
  std::string target;             // routes_to[0]: where requests go
  AmqpBackoff retry_backoff{Duration(500), Duration(30000), 2.0, 0.2};
  AmqpBackoff reconnect_backoff{Duration(100), Duration(5000), 2.0, 0.2};
  Duration stats_interval{5000};
  int heartbeat_s = 30;
  Duration connect_timeout{5000};
  // Set: the service serves requests by publishing them (the outbox).
  std::optional<AmqpPublishSettings> publish;
};

// Parses and checks TEXT; the error names the key and what was wrong.
Result<AmqpServiceConfig> ParseAmqpServiceConfig(std::string_view text);

}  // namespace workerpool
