#include "core/amqp_publish_config.h"

#include <cstdint>
#include <string_view>

namespace workerpool {
namespace {

using json = nlohmann::json;

Status KeyError(std::string_view key, const std::string& what) {
  return Status::Error("WORKERPOOL_RABBITMQ: publish." + std::string(key) +
                       ": " + what);
}

// An optional string KEY of at most 255 bytes (an AMQP short string).
Status ReadName(const json& section, const char* key, bool required,
                std::string* out) {
  auto found = section.find(key);
  if (found == section.end() || found->is_null()) {
    return required ? KeyError(key, "missing") : Status::Ok();
  }
  const std::string* text = found->get_ptr<const std::string*>();
  if (text == nullptr) return KeyError(key, "expected a string");
  if (text->size() > 255) return KeyError(key, "longer than 255 bytes");
  *out = *text;
  return Status::Ok();
}

// An optional integer KEY in [MIN, MAX].
Status ReadNumber(const json& section, const char* key, std::int64_t min,
                  std::int64_t max, std::int64_t* out) {
  auto found = section.find(key);
  if (found == section.end() || found->is_null()) return Status::Ok();
  const auto* negative = found->get_ptr<const json::number_integer_t*>();
  const auto* positive = found->get_ptr<const json::number_unsigned_t*>();
  if (negative == nullptr && positive == nullptr) {
    return KeyError(key, "expected an integer, got " + found->dump());
  }
  if ((positive != nullptr && *positive > static_cast<std::uint64_t>(max)) ||
      (positive == nullptr && (*negative < min || *negative > max))) {
    return KeyError(key, found->dump() + " is out of range (" +
                             std::to_string(min) + ".." + std::to_string(max) +
                             ")");
  }
  std::int64_t number = positive != nullptr
                            ? static_cast<std::int64_t>(*positive)
                            : static_cast<std::int64_t>(*negative);
  if (number < min) {
    return KeyError(key, std::to_string(number) + " is out of range (" +
                             std::to_string(min) + ".." + std::to_string(max) +
                             ")");
  }
  *out = number;
  return Status::Ok();
}

}  // namespace

const char* AmqpPublishModeName(AmqpPublishMode mode) {
  return mode == AmqpPublishMode::kEnqueue ? "enqueue" : "rpc";
}

Result<AmqpPublishSettings> ParseAmqpPublishSettings(const json& section) {
  if (!section.is_object()) {
    return Status::Error(
        "WORKERPOOL_RABBITMQ: publish: expected an object, got " +
        section.dump());
  }
  AmqpPublishSettings settings;
  if (Status s = ReadName(section, "exchange", false, &settings.exchange);
      !s.ok()) {
    return s;
  }
  if (Status s = ReadName(section, "routing_key", true, &settings.routing_key);
      !s.ok()) {
    return s;
  }
  if (settings.exchange.empty() && settings.routing_key.empty()) {
    return KeyError("routing_key",
                    "empty, and the exchange is the default one: name a "
                    "queue");
  }
  if (auto found = section.find("mode");
      found != section.end() && !found->is_null()) {
    const std::string* mode = found->get_ptr<const std::string*>();
    if (mode != nullptr && *mode == "rpc") {
      settings.mode = AmqpPublishMode::kRpc;
    } else if (mode != nullptr && *mode == "enqueue") {
      settings.mode = AmqpPublishMode::kEnqueue;
    } else {
      return KeyError("mode",
                      "expected \"rpc\" or \"enqueue\", got " + found->dump());
    }
  }
  std::int64_t number = settings.timeout.count();
  if (Status s =
          ReadNumber(section, "timeout_ms", 1, 365LL * 86400000LL, &number);
      !s.ok()) {
    return s;
  }
  settings.timeout = Duration(number);
  if (auto found = section.find("persistent");
      found != section.end() && !found->is_null()) {
    const bool* persistent = found->get_ptr<const bool*>();
    if (persistent == nullptr) {
      return KeyError("persistent", "expected true or false");
    }
    settings.persistent = *persistent;
  }
  number = settings.max_pending;
  if (Status s = ReadNumber(section, "max_pending", 1, 1000000, &number);
      !s.ok()) {
    return s;
  }
  settings.max_pending = static_cast<int>(number);
  return settings;
}

json AmqpPublishJson(const RabbitmqPublishConfig& config) {
  return {{"exchange", config.exchange},
          {"routing_key", config.routing_key},
          {"mode", config.mode},
          {"timeout_ms", config.timeout.count()},
          {"persistent", config.persistent},
          {"max_pending", config.max_pending}};
}

}  // namespace workerpool
