// The publishing side of the RabbitMQ service (the "outbox"): its settings
// as they travel in WORKERPOOL_RABBITMQ under "publish", and that section
// of the JSON built from the pool model. Pure.
//
//   "publish": {"exchange": str, "routing_key": str,
//               "mode": "rpc" | "enqueue", "timeout_ms": int,
//               "persistent": bool, "max_pending": int}
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/pool_model.h"
#include "core/status.h"
#include "core/units.h"

namespace workerpool {

enum class AmqpPublishMode {
  kRpc,      // the request's answer is the consumer's reply
  kEnqueue,  // the request's answer is RabbitMQ's confirm
};

struct AmqpPublishSettings {
  std::string exchange;  // "": the default exchange
  std::string routing_key;
  AmqpPublishMode mode = AmqpPublishMode::kRpc;
  // rpc: no reply by then is error "timeout"; enqueue: bounds the wait for
  // the confirm (a broker that stops reading, e.g. under a memory alarm).
  Duration timeout{30000};
  bool persistent = true;
  int max_pending = 1000;
};

// "rpc" or "enqueue".
const char* AmqpPublishModeName(AmqpPublishMode mode);

// Reads the "publish" object SECTION. The error names the key
// ("WORKERPOOL_RABBITMQ: publish.routing_key: ...").
Result<AmqpPublishSettings> ParseAmqpPublishSettings(
    const nlohmann::json& section);

// The "publish" object for CONFIG (from the YAML), as
// ParseAmqpPublishSettings reads it.
nlohmann::json AmqpPublishJson(const RabbitmqPublishConfig& config);
// (The whole of WORKERPOOL_RABBITMQ is AmqpServiceEnvironment, in
// core/amqp_service_config.h; it carries this as "publish".)

}  // namespace workerpool
