#include "core/amqp_service_config.h"

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

}  // namespace workerpool
