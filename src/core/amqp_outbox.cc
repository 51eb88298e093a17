#include "core/amqp_outbox.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/amqp_retry.h"

namespace workerpool {
namespace {

using json = nlohmann::json;

constexpr wire::ErrorCode kAllCodes[] = {
    wire::ErrorCode::kHandlerError, wire::ErrorCode::kWorkerDied,
    wire::ErrorCode::kTimeout,      wire::ErrorCode::kQueueFull,
    wire::ErrorCode::kNoWorkers,    wire::ErrorCode::kRefused,
    wire::ErrorCode::kCancelled,    wire::ErrorCode::kTooLarge,
    wire::ErrorCode::kProtocol,     wire::ErrorCode::kShuttingDown,
};

std::string Lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) {
    return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  });
  return out;
}

// The string members of OBJECT["headers"], as AMQP headers.
void AddHeaders(const json& object, AmqpProperties* properties) {
  auto headers = object.find("headers");
  if (headers == object.end() || !headers->is_object()) return;
  for (auto it = headers->begin(); it != headers->end(); ++it) {
    const std::string* value = it.value().get_ptr<const std::string*>();
    if (value == nullptr || it.key().empty()) continue;
    const std::string name = Lower(it.key());
    // A field name is a short string: 255 bytes with the prefix.
    if (name.size() + sizeof(kRequestHeaderPrefix) - 1 > 255) continue;
    SetHeader(properties, kRequestHeaderPrefix + name,
              AmqpValue::String(*value));
    if (name == "content-type" && value->size() <= 255) {
      properties->content_type = *value;
    } else if (name == "content-encoding" && value->size() <= 255) {
      properties->content_encoding = *value;
    }
  }
}

const std::string* HeaderText(const AmqpProperties& properties,
                              std::string_view name) {
  const AmqpValue* value = FindHeader(properties, name);
  if (value == nullptr || (value->kind != 'S' && value->kind != 'x')) {
    return nullptr;
  }
  return &value->bytes;
}

}  // namespace

AmqpOutboxIds::AmqpOutboxIds(std::uint64_t random) {
  char text[32];
  std::snprintf(text, sizeof(text), "wp-%016llx-",
                static_cast<unsigned long long>(random));
  prefix_ = text;
}

std::string AmqpOutboxIds::Make(std::uint64_t n) const {
  return prefix_ + std::to_string(n);
}

std::optional<std::uint64_t> AmqpOutboxIds::Parse(std::string_view id) const {
  if (!id.starts_with(prefix_)) return std::nullopt;
  id.remove_prefix(prefix_.size());
  std::uint64_t n = 0;
  auto [end, error] = std::from_chars(id.data(), id.data() + id.size(), n);
  if (error != std::errc() || end != id.data() + id.size() || id.empty()) {
    return std::nullopt;
  }
  return n;
}

std::optional<std::uint8_t> AmqpPriorityFor(std::int32_t priority) {
  if (priority >= 0) return std::nullopt;
  const std::int64_t amqp = -static_cast<std::int64_t>(priority);
  return static_cast<std::uint8_t>(std::min<std::int64_t>(amqp, 255));
}

AmqpProperties OutboxRequestProperties(const AmqpPublishSettings& settings,
                                       const std::string& message_id,
                                       std::int32_t priority,
                                       std::string_view meta,
                                       std::uint64_t now_s) {
  AmqpProperties properties;
  properties.message_id = message_id;
  properties.delivery_mode = settings.persistent ? 2 : 1;
  properties.timestamp = now_s;
  properties.priority = AmqpPriorityFor(priority);
  if (settings.mode == AmqpPublishMode::kRpc) {
    properties.correlation_id = message_id;
    properties.reply_to = kDirectReplyTo;
    properties.expiration = std::to_string(settings.timeout.count());
  }
  if (!meta.empty()) {
    json object = json::parse(meta, nullptr, /*allow_exceptions=*/false);
    if (object.is_object()) {
      AddHeaders(object, &properties);
      auto http = object.find("http");
      if (http != object.end() && http->is_object()) {
        AddHeaders(*http, &properties);
      }
    }
  }
  return properties;
}

std::optional<wire::ErrorCode> ErrorCodeFromName(std::string_view name) {
  for (wire::ErrorCode code : kAllCodes) {
    if (name == ErrorCodeName(code)) return code;
  }
  return std::nullopt;
}

OutboxReply ReadOutboxReply(const AmqpProperties& properties) {
  OutboxReply reply;
  const std::string* status = HeaderText(properties, kStatusHeader);
  if (status != nullptr && *status == "progress") {
    reply.kind = OutboxReply::Kind::kProgress;
    if (const AmqpValue* value = FindHeader(properties, kProgressHeader)) {
      if (value->kind == 'd' || value->kind == 'f') {
        reply.fraction = value->real;
      } else if (std::optional<std::int64_t> n = value->AsInteger()) {
        reply.fraction = static_cast<double>(*n);
      }
    }
    reply.fraction = std::clamp(reply.fraction, 0.0, 1.0);
    return reply;
  }
  if (status == nullptr || *status != "error") return reply;
  reply.kind = OutboxReply::Kind::kError;
  const std::string* code_name = HeaderText(properties, kErrorCodeHeader);
  const std::string* error = HeaderText(properties, kErrorHeader);
  std::string text = error != nullptr ? *error : "";
  // rabbitmq-service writes x-workerpool-error as "CODE: text"; the code
  // travels apart too (x-workerpool-error-code), or only in that prefix.
  std::optional<wire::ErrorCode> code;
  if (code_name != nullptr) code = ErrorCodeFromName(*code_name);
  if (std::size_t colon = text.find(": "); colon != std::string::npos) {
    std::optional<wire::ErrorCode> prefixed =
        ErrorCodeFromName(std::string_view(text).substr(0, colon));
    if (prefixed && (!code || *code == *prefixed)) {
      code = prefixed;
      text.erase(0, colon + 2);
    }
  }
  reply.code = code.value_or(wire::ErrorCode::kHandlerError);
  reply.text = std::move(text);
  return reply;
}

}  // namespace workerpool
