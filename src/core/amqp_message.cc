#include "core/amqp_message.h"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace workerpool {

using json = nlohmann::json;

AmqpValue AmqpValue::String(std::string_view text) {
  AmqpValue value;
  value.kind = 'S';
  value.bytes.assign(text);
  return value;
}

AmqpValue AmqpValue::Int32(std::int32_t number) {
  AmqpValue value;
  value.kind = 'I';
  value.integer = number;
  return value;
}

AmqpValue AmqpValue::Int64(std::int64_t number) {
  AmqpValue value;
  value.kind = 'l';
  value.integer = number;
  return value;
}

AmqpValue AmqpValue::Double(double number) {
  AmqpValue value;
  value.kind = 'd';
  value.real = number;
  return value;
}

AmqpValue AmqpValue::Bool(bool flag) {
  AmqpValue value;
  value.kind = 't';
  value.boolean = flag;
  return value;
}

std::optional<std::int64_t> AmqpValue::AsInteger() const {
  switch (kind) {
    case 'b':
    case 'B':
    case 's':
    case 'u':
    case 'I':
    case 'i':
    case 'l':
      return integer;
    case 'L':
    case 'T':
      if (uinteger > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
      return static_cast<std::int64_t>(uinteger);
    case 'S':
    case 'x': {
      std::int64_t parsed = 0;
      auto [end, error] =
          std::from_chars(bytes.data(), bytes.data() + bytes.size(), parsed);
      if (error != std::errc() || end != bytes.data() + bytes.size() ||
          bytes.empty()) {
        return std::nullopt;
      }
      return parsed;
    }
    default:
      return std::nullopt;
  }
}

const AmqpValue* FindHeader(const AmqpProperties& properties,
                            std::string_view name) {
  if (!properties.headers) return nullptr;
  for (const AmqpField& field : *properties.headers) {
    if (field.name == name) return &field.value;
  }
  return nullptr;
}

void SetHeader(AmqpProperties* properties, std::string_view name,
               AmqpValue value) {
  if (!properties->headers) properties->headers.emplace();
  for (AmqpField& field : *properties->headers) {
    if (field.name == name) {
      field.value = std::move(value);
      return;
    }
  }
  properties->headers->push_back(
      AmqpField{std::string(name), std::move(value)});
}

void RemoveHeader(AmqpProperties* properties, std::string_view name) {
  if (!properties->headers) return;
  std::erase_if(*properties->headers,
                [name](const AmqpField& field) { return field.name == name; });
}

int RetriesOf(const AmqpProperties& properties) {
  const AmqpValue* value = FindHeader(properties, kRetriesHeader);
  if (value == nullptr) return 0;
  std::optional<std::int64_t> count = value->AsInteger();
  if (!count || *count < 0) return 0;
  return *count > 1000000 ? 1000000 : static_cast<int>(*count);
}

int DeliveryCountOf(const AmqpProperties& properties) {
  const AmqpValue* value = FindHeader(properties, kDeliveryCountHeader);
  if (value == nullptr) return 0;
  std::optional<std::int64_t> count = value->AsInteger();
  if (!count || *count < 0) return 0;
  return *count > 1000000 ? 1000000 : static_cast<int>(*count);
}

int AttemptsBefore(const AmqpProperties& properties) {
  return std::min(1000000, RetriesOf(properties) + DeliveryCountOf(properties));
}

json ToJson(const AmqpValue& value) {
  switch (value.kind) {
    case 't':
      return value.boolean;
    case 'b':
    case 'B':
    case 's':
    case 'u':
    case 'I':
    case 'i':
    case 'l':
      return value.integer;
    case 'L':
    case 'T':
      return value.uinteger;
    case 'f':
    case 'd':
      if (!std::isfinite(value.real)) return nullptr;
      return value.real;
    case 'D':
      return static_cast<double>(value.integer) /
             std::pow(10.0, static_cast<double>(value.decimals));
    case 'S':
    case 'x':
      return value.bytes;
    case 'A': {
      json array = json::array();
      for (const AmqpValue& item : value.array) array.push_back(ToJson(item));
      return array;
    }
    case 'F':
      return ToJson(value.table);
    default:
      return nullptr;
  }
}

json ToJson(const AmqpTable& table) {
  json object = json::object();
  for (const AmqpField& field : table) object[field.name] = ToJson(field.value);
  return object;
}

json ToJson(const AmqpProperties& p) {
  json object = json::object();
  auto text = [&object](const char* key, const std::optional<std::string>& v) {
    if (v) object[key] = *v;
  };
  text("content_type", p.content_type);
  text("content_encoding", p.content_encoding);
  if (p.delivery_mode) object["delivery_mode"] = *p.delivery_mode;
  if (p.priority) object["priority"] = *p.priority;
  text("correlation_id", p.correlation_id);
  text("reply_to", p.reply_to);
  text("expiration", p.expiration);
  text("message_id", p.message_id);
  if (p.timestamp) object["timestamp"] = *p.timestamp;
  text("type", p.type);
  text("user_id", p.user_id);
  text("app_id", p.app_id);
  text("cluster_id", p.cluster_id);
  if (p.headers) object["headers"] = ToJson(*p.headers);
  return object;
}

std::string DumpJson(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string RequestMeta(std::string_view queue, std::string_view exchange,
                        std::string_view routing_key, bool redelivered,
                        int retries, const AmqpProperties& properties) {
  json meta = {{"queue", queue},
               {"exchange", exchange},
               {"routing_key", routing_key},
               {"redelivered", redelivered},
               {"retries", retries},
               {"properties", ToJson(properties)}};
  return DumpJson(meta);
}

namespace {

// Error texts in headers stay short: a header table has to fit one frame.
std::string Clip(std::string_view text) {
  constexpr std::size_t kMax = 4096;
  if (text.size() <= kMax) return std::string(text);
  return std::string(text.substr(0, kMax)) + "...";
}

}  // namespace

AmqpProperties RetryProperties(AmqpProperties original, int retries,
                               std::string_view error) {
  SetHeader(&original, kRetriesHeader, AmqpValue::Int32(retries));
  SetHeader(&original, kLastErrorHeader, AmqpValue::String(Clip(error)));
  // RabbitMQ's count belongs to the original (RETRIES includes it); the
  // copy is a new message, and a quorum queue adds the header only once it
  // redelivers it, so a stale one would be counted twice.
  RemoveHeader(&original, kDeliveryCountHeader);
  return original;
}

AmqpProperties DeadLetterProperties(AmqpProperties original, int retries,
                                    std::string_view error,
                                    std::string_view error_code,
                                    std::string_view queue) {
  SetHeader(&original, kErrorHeader, AmqpValue::String(Clip(error)));
  SetHeader(&original, kErrorCodeHeader, AmqpValue::String(error_code));
  SetHeader(&original, kRetriesHeader, AmqpValue::Int32(retries));
  SetHeader(&original, kQueueHeader, AmqpValue::String(queue));
  RemoveHeader(&original, kLastErrorHeader);
  RemoveHeader(&original, kDeliveryCountHeader);
  if (original.expiration) {
    SetHeader(&original, kOriginalExpirationHeader,
              AmqpValue::String(*original.expiration));
    original.expiration.reset();
  }
  original.delivery_mode = 2;
  return original;
}

AmqpProperties ReplyProperties(const AmqpProperties& request,
                               std::string_view status) {
  AmqpProperties reply;
  reply.correlation_id = request.correlation_id;
  // As durable as the request was.
  reply.delivery_mode = request.delivery_mode;
  SetHeader(&reply, kStatusHeader, AmqpValue::String(status));
  return reply;
}

}  // namespace workerpool
