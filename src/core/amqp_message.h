// AMQP 0-9-1 message properties as plain C++ values, so a delivery can cross
// from the AMQP thread to the loop thread and be published again (a retry, a
// dead letter) with its headers intact, types included. Also what the
// service adds to messages (the x-workerpool-* headers) and the JSON meta a
// job receives. Pure: librabbitmq's own types are converted in
// src/children/amqp_session.cc.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace workerpool {

// Headers the service reads and writes.
inline constexpr char kRetriesHeader[] = "x-workerpool-retries";
inline constexpr char kLastErrorHeader[] = "x-workerpool-last-error";
inline constexpr char kErrorHeader[] = "x-workerpool-error";
inline constexpr char kErrorCodeHeader[] = "x-workerpool-error-code";
inline constexpr char kQueueHeader[] = "x-workerpool-queue";
inline constexpr char kStatusHeader[] = "x-workerpool-status";
inline constexpr char kProgressHeader[] = "x-workerpool-progress";
inline constexpr char kOriginalExpirationHeader[] =
    "x-workerpool-original-expiration";
// Set by RabbitMQ on a quorum queue's redeliveries: how often the message
// was delivered before and came back unsettled (a lost connection, a
// consumer timeout, a requeue).
inline constexpr char kDeliveryCountHeader[] = "x-delivery-count";

struct AmqpField;

// One field-table value. KIND is the AMQP type letter as librabbitmq names
// it: t bool; b B s u I i l L integers (signed/unsigned 8..64 bits); f d
// floats; D decimal; S long string; x byte array; T timestamp; A array;
// F table; V void.
struct AmqpValue {
  char kind = 'V';
  bool boolean = false;
  std::int64_t integer = 0;    // b s I l, and B u i (which fit)
  std::uint64_t uinteger = 0;  // L T
  double real = 0;             // f d
  std::uint8_t decimals = 0;   // D: integer / 10^decimals
  std::string bytes;           // S x
  std::vector<AmqpValue> array;
  std::vector<AmqpField> table;

  static AmqpValue String(std::string_view text);
  static AmqpValue Int32(std::int32_t value);
  static AmqpValue Int64(std::int64_t value);
  static AmqpValue Double(double value);
  static AmqpValue Bool(bool value);

  // The value as a signed integer when it is one (or a decimal string).
  std::optional<std::int64_t> AsInteger() const;
};

struct AmqpField {
  std::string name;
  AmqpValue value;
};

using AmqpTable = std::vector<AmqpField>;

struct AmqpProperties {
  std::optional<std::string> content_type, content_encoding, correlation_id,
      reply_to, expiration, message_id, type, user_id, app_id, cluster_id;
  std::optional<std::uint8_t> delivery_mode, priority;
  std::optional<std::uint64_t> timestamp;
  std::optional<AmqpTable> headers;
};

const AmqpValue* FindHeader(const AmqpProperties& properties,
                            std::string_view name);
// Replaces NAME's value, or appends it.
void SetHeader(AmqpProperties* properties, std::string_view name,
               AmqpValue value);
void RemoveHeader(AmqpProperties* properties, std::string_view name);

// x-workerpool-retries as a count >= 0 (0 when absent or not a number).
int RetriesOf(const AmqpProperties& properties);
// x-delivery-count as a count >= 0 (0 when absent or not a number).
int DeliveryCountOf(const AmqpProperties& properties);
// The attempts a delivery had before this one: its failed attempts
// (x-workerpool-retries) plus the deliveries RabbitMQ counted that came
// back unsettled (x-delivery-count, quorum queues). What max_retries
// bounds.
int AttemptsBefore(const AmqpProperties& properties);

nlohmann::json ToJson(const AmqpValue& value);
nlohmann::json ToJson(const AmqpTable& table);
// Present properties only; headers as an object.
nlohmann::json ToJson(const AmqpProperties& properties);

// Serialises JSON that may hold bytes that are not UTF-8 (AMQP strings are
// binary): invalid sequences become U+FFFD instead of throwing.
std::string DumpJson(const nlohmann::json& value);

// What the job receives in IncomingRequest::meta():
// {"queue","exchange","routing_key","redelivered","retries","properties"}.
std::string RequestMeta(std::string_view queue, std::string_view exchange,
                        std::string_view routing_key, bool redelivered,
                        int retries, const AmqpProperties& properties);

// The copy published back to the queue for retry number RETRIES (>= 1),
// without RabbitMQ's x-delivery-count (RETRIES counts it already).
AmqpProperties RetryProperties(AmqpProperties original, int retries,
                               std::string_view error);

// The copy published to the dead-letter queue: the original properties plus
// x-workerpool-error, -error-code, -retries and -queue; persistent, and
// without expiration (kept in x-workerpool-original-expiration) so the
// evidence does not expire; without x-delivery-count.
AmqpProperties DeadLetterProperties(AmqpProperties original, int retries,
                                    std::string_view error,
                                    std::string_view error_code,
                                    std::string_view queue);

// An answer for a request's reply_to (RPC): correlation_id copied, and
// x-workerpool-status "ok", "error" (with x-workerpool-error) or "progress"
// (with x-workerpool-progress, a fraction 0..1).
AmqpProperties ReplyProperties(const AmqpProperties& request,
                               std::string_view status);

}  // namespace workerpool
