// What the RabbitMQ service's outbox (children/rabbitmq_outbox.h) puts on a
// message it publishes for a request, and how it reads what comes back.
// Pure: no clock, no randomness of its own (the caller passes both in).
//
// A request becomes one message:
//   body            the request body
//   message_id      "wp-<16 hex digits>-<n>": a prefix random per process,
//                   then a counter (unique across hosts and restarts)
//   correlation_id  the message_id (rpc mode)
//   reply_to        amq.rabbitmq.reply-to (rpc mode; RabbitMQ's direct
//                   reply-to, see docs/RABBITMQ.md)
//   expiration      the timeout in ms (rpc mode): a request nobody waits for
//                   any more is not delivered
//   delivery_mode   2 when persistent, else 1
//   priority        -(the request's priority) when that is below 0, at most
//                   255 (the pool serves lower numbers first, AMQP higher)
//   timestamp       seconds since the epoch
//   content_type, content_encoding   from those request headers
//   headers         each string of the request meta's "headers" object, or
//                   of "http"."headers" (what the http-reactor passes), as
//                   kRequestHeaderPrefix + its lower-case name
//
// A reply (a message on the reply-to with the request's correlation_id) is
// read by its x-workerpool-status header, as rabbitmq-service writes it:
// "progress" (x-workerpool-progress, the text in the body), "error"
// (x-workerpool-error-code and x-workerpool-error, "CODE: text"), anything
// else, or none (any AMQP client's plain reply), is the answer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/amqp_message.h"
#include "core/amqp_publish_config.h"
#include "workerpool/wire.h"

namespace workerpool {

// RabbitMQ's direct reply-to pseudo-queue.
inline constexpr char kDirectReplyTo[] = "amq.rabbitmq.reply-to";
// Request headers travel as AMQP headers with this prefix.
inline constexpr char kRequestHeaderPrefix[] = "x-workerpool-header-";

// Message ids of one process: PREFIX-N. Parse() gives N back for an id of
// this process, nothing for any other (another process's, or garbage).
class AmqpOutboxIds {
 public:
  // RANDOM makes the prefix ("wp-" and 16 hex digits).
  explicit AmqpOutboxIds(std::uint64_t random);
  std::string Make(std::uint64_t n) const;
  std::optional<std::uint64_t> Parse(std::string_view id) const;
  const std::string& prefix() const { return prefix_; }

 private:
  std::string prefix_;  // with the trailing '-'
};

// The AMQP priority for a request of pool PRIORITY: nothing at 0 and above.
std::optional<std::uint8_t> AmqpPriorityFor(std::int32_t priority);

// The properties of the message for one request (see the top of this file).
// META is the request's meta (JSON object text, or empty; anything else is
// ignored); NOW_S the time in seconds since the epoch.
AmqpProperties OutboxRequestProperties(const AmqpPublishSettings& settings,
                                       const std::string& message_id,
                                       std::int32_t priority,
                                       std::string_view meta,
                                       std::uint64_t now_s);

// The inverse of ErrorCodeName (core/amqp_retry.h).
std::optional<wire::ErrorCode> ErrorCodeFromName(std::string_view name);

// A reply as the outbox reads it.
struct OutboxReply {
  enum class Kind { kAnswer, kError, kProgress } kind = Kind::kAnswer;
  wire::ErrorCode code = wire::ErrorCode::kHandlerError;  // kError
  std::string text;     // kError: the consumer's error text
  double fraction = 0;  // kProgress: 0..1
};
// Reads PROPERTIES of a reply (the body is the answer, the progress text,
// or, without x-workerpool-error, the error text).
OutboxReply ReadOutboxReply(const AmqpProperties& properties);

}  // namespace workerpool
