#include "core/amqp_service_config.h"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>

namespace workerpool {
namespace {

using json = nlohmann::json;

Status KeyError(const char* key, const std::string& what) {
  return Status::Error(std::string("WORKERPOOL_RABBITMQ: ") + key + ": " +
                       what);
}

// Reads an optional integer KEY in [MIN, MAX] into *OUT.
Status ReadInt(const json& object, const char* key, long min, long max,
               long* out) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return Status::Ok();
  // nlohmann keeps a negative integer signed and a non-negative one
  // unsigned, which may be beyond any long: compared before it is cast, or
  // 2^64-1 would read as -1.
  const auto* negative = found->get_ptr<const json::number_integer_t*>();
  const auto* positive = found->get_ptr<const json::number_unsigned_t*>();
  if (negative == nullptr && positive == nullptr) {
    return KeyError(key, "expected an integer, got " + found->dump());
  }
  if (positive != nullptr && *positive > static_cast<std::uint64_t>(max)) {
    return KeyError(key, found->dump() + " is out of range (" +
                             std::to_string(min) + ".." + std::to_string(max) +
                             ")");
  }
  long number = negative != nullptr ? static_cast<long>(*negative)
                                    : static_cast<long>(*positive);
  if (number < min || number > max) {
    return KeyError(key, std::to_string(number) + " is out of range (" +
                             std::to_string(min) + ".." + std::to_string(max) +
                             ")");
  }
  *out = number;
  return Status::Ok();
}

Status ReadStrings(const json& object, const char* key,
                   std::vector<std::string>* out) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return Status::Ok();
  if (!found->is_array()) {
    return KeyError(key, "expected a list of names, got " + found->dump());
  }
  for (const json& item : *found) {
    const std::string* name = item.get_ptr<const std::string*>();
    if (name == nullptr || name->empty()) {
      return KeyError(key, "expected non-empty names, got " + item.dump());
    }
    out->push_back(*name);
  }
  return Status::Ok();
}

}  // namespace

Result<AmqpServiceConfig> ParseAmqpServiceConfig(std::string_view text) {
  json object = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!object.is_object()) {
    return Status::Error(
        "WORKERPOOL_RABBITMQ is not a JSON object; it is set by the Watcher "
        "from the group's rabbitmq: section");
  }
  AmqpServiceConfig config;

  auto found_url = object.find("url");
  const std::string* url = found_url == object.end()
                               ? nullptr
                               : found_url->get_ptr<const std::string*>();
  if (url == nullptr) {
    return KeyError("url", "missing (expected amqp://USER:PASSWORD@HOST)");
  }
  Result<AmqpUrl> parsed = ParseAmqpUrl(*url);
  if (!parsed.ok()) return parsed.status();
  config.url = *parsed;

  if (auto found = object.find("publish");
      found != object.end() && !found->is_null()) {
    Result<AmqpPublishSettings> publish = ParseAmqpPublishSettings(*found);
    if (!publish.ok()) return publish.status();
    config.publish = *publish;
  }

  if (Status s = ReadStrings(object, "queues", &config.queues); !s.ok()) {
    return s;
  }
  if (config.queues.empty() && !config.publish) {
    return KeyError("queues", "no queue to consume");
  }
  std::set<std::string> unique(config.queues.begin(), config.queues.end());
  if (unique.size() != config.queues.size()) {
    return KeyError("queues", "a queue is listed twice");
  }
  for (const std::string& queue : config.queues) {
    if (queue.size() > 255) {
      return KeyError("queues", "queue name longer than 255 bytes");
    }
  }

  if (auto found = object.find("declare");
      found != object.end() && !found->is_null()) {
    const bool* declare = found->get_ptr<const bool*>();
    if (declare == nullptr) {
      return KeyError("declare", "expected true or false");
    }
    config.declare = *declare;
  }

  if (auto found = object.find("queue_type");
      found != object.end() && !found->is_null()) {
    const std::string* type = found->get_ptr<const std::string*>();
    if (type != nullptr && *type == "classic") {
      config.queue_type = AmqpQueueType::kClassic;
    } else if (type != nullptr && *type == "quorum") {
      config.queue_type = AmqpQueueType::kQuorum;
    } else {
      return KeyError("queue_type", "expected \"classic\" or \"quorum\", got " +
                                        found->dump());
    }
  }
  if (auto found = object.find("delivery_limit");
      found != object.end() && !found->is_null()) {
    if (config.queue_type != AmqpQueueType::kQuorum) {
      return KeyError("delivery_limit",
                      "only quorum queues have one (queue_type: quorum)");
    }
    long limit = config.delivery_limit;
    if (Status s = ReadInt(object, "delivery_limit", 1, 1000000, &limit);
        !s.ok()) {
      return s;
    }
    config.delivery_limit = static_cast<int>(limit);
  }

  long value = config.prefetch;
  if (Status s = ReadInt(object, "prefetch", 1, 65535, &value); !s.ok()) {
    return s;
  }
  config.prefetch = static_cast<int>(value);
  value = config.max_retries;
  if (Status s = ReadInt(object, "max_retries", 0, 1000000, &value); !s.ok()) {
    return s;
  }
  config.max_retries = static_cast<int>(value);

  if (auto found = object.find("dead_letter_queue");
      found != object.end() && !found->is_null()) {
    const std::string* queue = found->get_ptr<const std::string*>();
    if (queue == nullptr) {
      return KeyError("dead_letter_queue", "expected a queue name");
    }
    config.dead_letter_queue = *queue;
    if (config.dead_letter_queue.size() > 255) {
      return KeyError("dead_letter_queue", "longer than 255 bytes");
    }
    if (unique.count(config.dead_letter_queue) != 0) {
      return KeyError("dead_letter_queue",
                      "'" + config.dead_letter_queue +
                          "' is also consumed: dead letters would come back");
    }
  }

  std::vector<std::string> routes;
  if (Status s = ReadStrings(object, "routes_to", &routes); !s.ok()) return s;
  if (routes.empty() && !config.queues.empty()) {
    return KeyError("routes_to",
                    "empty: the service group needs routes_to: [JOB_GROUP] "
                    "to know where to send deliveries");
  }
  if (!routes.empty()) config.target = routes.front();

  struct DurationKey {
    const char* key;
    Duration* out;
    long min;
  };
  const DurationKey durations[] = {
      {"retry_initial_ms", &config.retry_backoff.initial, 0},
      {"retry_max_ms", &config.retry_backoff.max, 0},
      {"reconnect_initial_ms", &config.reconnect_backoff.initial, 1},
      {"reconnect_max_ms", &config.reconnect_backoff.max, 1},
      {"stats_interval_ms", &config.stats_interval, 100},
  };
  for (const DurationKey& d : durations) {
    value = static_cast<long>(d.out->count());
    if (Status s = ReadInt(object, d.key, d.min, 86400000L, &value); !s.ok()) {
      return s;
    }
    *d.out = Duration(value);
  }
  // Up to ten years: any duration the YAML allows (config_group.cc).
  constexpr long kLongest = 3650L * 86400000L;
  value = static_cast<long>(config.consumer_timeout.count());
  if (Status s = ReadInt(object, "consumer_timeout_ms", 0, kLongest, &value);
      !s.ok()) {
    return s;
  }
  config.consumer_timeout = Duration(value);
  value = static_cast<long>(config.target_request_timeout.count());
  if (Status s =
          ReadInt(object, "target_request_timeout_ms", 0, kLongest, &value);
      !s.ok()) {
    return s;
  }
  config.target_request_timeout = Duration(value);
  if (auto found = object.find("connection_name");
      found != object.end() && !found->is_null()) {
    const std::string* name = found->get_ptr<const std::string*>();
    if (name == nullptr) {
      return KeyError("connection_name", "expected a string");
    }
    config.connection_name = *name;
  }
  value = config.heartbeat_s;
  if (Status s = ReadInt(object, "heartbeat_s", 0, 65535, &value); !s.ok()) {
    return s;
  }
  config.heartbeat_s = static_cast<int>(value);
  if (config.url.heartbeat_s >= 0) config.heartbeat_s = config.url.heartbeat_s;
  if (config.url.connection_timeout_ms > 0) {
    config.connect_timeout = Duration(config.url.connection_timeout_ms);
  }
  return config;
}

std::string AmqpServiceEnvironment(const PoolConfig& pool,
                                   const GroupConfig& group) {
  if (!group.rabbitmq) return "{}";
  const RabbitmqConfig& rabbitmq = *group.rabbitmq;
  json section = {{"url", rabbitmq.url},
                  {"queues", rabbitmq.queues},
                  {"declare", rabbitmq.declare},
                  {"prefetch", rabbitmq.prefetch},
                  {"max_retries", rabbitmq.max_retries},
                  {"dead_letter_queue", rabbitmq.dead_letter_queue},
                  {"queue_type", rabbitmq.queue_type},
                  {"consumer_timeout_ms", rabbitmq.consumer_timeout.count()},
                  {"routes_to", group.routes_to}};
  if (rabbitmq.queue_type == "quorum") {
    section["delivery_limit"] = rabbitmq.delivery_limit;
  }
  if (rabbitmq.publish) section["publish"] = AmqpPublishJson(*rabbitmq.publish);
  if (!group.routes_to.empty()) {
    if (const GroupConfig* target = pool.FindGroup(group.routes_to.front())) {
      // Only compared with consumer_timeout: longer than ten years reads
      // as ten years.
      section["target_request_timeout_ms"] = std::min<Duration::rep>(
          target->request_timeout.count(), 3650L * 86400000L);
    }
  }
  return DumpJson(section);
}

const char* AmqpQueueTypeName(AmqpQueueType type) {
  return type == AmqpQueueType::kQuorum ? "quorum" : "classic";
}

AmqpTable AmqpQueueArguments(const AmqpServiceConfig& config) {
  AmqpTable arguments;
  if (config.queue_type != AmqpQueueType::kQuorum) return arguments;
  arguments.push_back({"x-queue-type", AmqpValue::String("quorum")});
  arguments.push_back(
      {"x-delivery-limit", AmqpValue::Int64(config.delivery_limit)});
  if (!config.dead_letter_queue.empty()) {
    arguments.push_back({"x-dead-letter-exchange", AmqpValue::String("")});
    arguments.push_back({"x-dead-letter-routing-key",
                         AmqpValue::String(config.dead_letter_queue)});
    // At-most-once (RabbitMQ's default) may lose a dead letter on a leader
    // change; at-least-once keeps it until the dead-letter queue has it.
    arguments.push_back(
        {"x-dead-letter-strategy", AmqpValue::String("at-least-once")});
    arguments.push_back({"x-overflow", AmqpValue::String("reject-publish")});
  }
  return arguments;
}

AmqpTable AmqpDeadLetterQueueArguments(const AmqpServiceConfig& config) {
  AmqpTable arguments;
  if (config.queue_type == AmqpQueueType::kQuorum) {
    arguments.push_back({"x-queue-type", AmqpValue::String("quorum")});
  }
  return arguments;
}

Duration AmqpConsumerTimeoutCutoff(Duration consumer_timeout) {
  if (consumer_timeout.count() <= 0) return Duration(0);
  Duration margin =
      std::clamp(consumer_timeout / 10, Duration(200), Duration(60000));
  return std::max(Duration(1), consumer_timeout - margin);
}

std::optional<Duration> ParseConsumerTimeoutClose(int code,
                                                  std::string_view text) {
  if (code != 406 ||
      text.find("delivery acknowledgement") == std::string_view::npos ||
      text.find("timed out") == std::string_view::npos) {
    return std::nullopt;
  }
  constexpr std::string_view kUsed = "Timeout value used: ";
  std::size_t at = text.find(kUsed);
  if (at == std::string_view::npos) return Duration(0);
  std::string_view number = text.substr(at + kUsed.size());
  long long ms = 0;
  auto [end, error] =
      std::from_chars(number.data(), number.data() + number.size(), ms);
  if (error != std::errc() || end == number.data() || ms <= 0) {
    return Duration(0);
  }
  return Duration(ms);
}

}  // namespace workerpool
