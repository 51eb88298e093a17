#include "core/amqp_message.h"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace workerpool {
namespace {

using json = nlohmann::json;

AmqpProperties Sample() {
  AmqpProperties p;
  p.content_type = "text/plain";
  p.message_id = "m-1";
  p.correlation_id = "c-1";
  p.reply_to = "replies";
  p.expiration = "60000";
  p.delivery_mode = 2;
  p.headers.emplace();
  p.headers->push_back({"tenant", AmqpValue::String("acme")});
  return p;
}

TEST_CASE("RetriesOf reads the count in any integer type, else 0") {
  AmqpProperties p;
  CHECK(RetriesOf(p) == 0);
  SetHeader(&p, kRetriesHeader, AmqpValue::Int32(3));
  CHECK(RetriesOf(p) == 3);
  SetHeader(&p, kRetriesHeader, AmqpValue::Int64(4));
  CHECK(RetriesOf(p) == 4);
  SetHeader(&p, kRetriesHeader, AmqpValue::String("5"));
  CHECK(RetriesOf(p) == 5);
  SetHeader(&p, kRetriesHeader, AmqpValue::String("five"));
  CHECK(RetriesOf(p) == 0);
  SetHeader(&p, kRetriesHeader, AmqpValue::Int32(-2));
  CHECK(RetriesOf(p) == 0);
}

TEST_CASE("AttemptsBefore adds RabbitMQ's x-delivery-count to the retries") {
  AmqpProperties p;
  CHECK(DeliveryCountOf(p) == 0);
  CHECK(AttemptsBefore(p) == 0);
  SetHeader(&p, kDeliveryCountHeader, AmqpValue::Int64(2));
  CHECK(DeliveryCountOf(p) == 2);
  CHECK(AttemptsBefore(p) == 2);
  SetHeader(&p, kRetriesHeader, AmqpValue::Int32(3));
  CHECK(AttemptsBefore(p) == 5);
  SetHeader(&p, kDeliveryCountHeader, AmqpValue::String("lots"));
  CHECK(AttemptsBefore(p) == 3);
  SetHeader(&p, kDeliveryCountHeader, AmqpValue::Int64(-1));
  CHECK(DeliveryCountOf(p) == 0);
  SetHeader(&p, kRetriesHeader, AmqpValue::Int64(999999));
  SetHeader(&p, kDeliveryCountHeader, AmqpValue::Int64(999999));
  CHECK(AttemptsBefore(p) == 1000000);
}

TEST_CASE("Copies drop x-delivery-count: their count starts again") {
  AmqpProperties original = Sample();
  SetHeader(&original, kDeliveryCountHeader, AmqpValue::Int64(3));
  CHECK(FindHeader(RetryProperties(original, 4, "timeout: slow"),
                   kDeliveryCountHeader) == nullptr);
  CHECK(FindHeader(DeadLetterProperties(original, 4, "slow", "timeout", "q"),
                   kDeliveryCountHeader) == nullptr);
}

TEST_CASE("SetHeader replaces, RemoveHeader removes") {
  AmqpProperties p = Sample();
  SetHeader(&p, "tenant", AmqpValue::String("other"));
  REQUIRE(p.headers->size() == 1);
  CHECK(FindHeader(p, "tenant")->bytes == "other");
  RemoveHeader(&p, "tenant");
  CHECK(FindHeader(p, "tenant") == nullptr);
}

TEST_CASE("RetryProperties keeps the original and counts the retry") {
  AmqpProperties p = RetryProperties(Sample(), 2, "handler_error: boom");
  CHECK(RetriesOf(p) == 2);
  CHECK(FindHeader(p, kLastErrorHeader)->bytes == "handler_error: boom");
  CHECK(FindHeader(p, "tenant")->bytes == "acme");
  CHECK(p.message_id == "m-1");
  CHECK(p.reply_to == "replies");
}

TEST_CASE("DeadLetterProperties: reason, count, queue; no expiry") {
  AmqpProperties original = Sample();
  SetHeader(&original, kLastErrorHeader, AmqpValue::String("old"));
  original.delivery_mode = 1;
  AmqpProperties p =
      DeadLetterProperties(original, 5, "boom", "handler_error", "tasks");
  CHECK(FindHeader(p, kErrorHeader)->bytes == "boom");
  CHECK(FindHeader(p, kErrorCodeHeader)->bytes == "handler_error");
  CHECK(RetriesOf(p) == 5);
  CHECK(FindHeader(p, kQueueHeader)->bytes == "tasks");
  CHECK(FindHeader(p, kLastErrorHeader) == nullptr);
  CHECK_FALSE(p.expiration.has_value());
  CHECK(FindHeader(p, kOriginalExpirationHeader)->bytes == "60000");
  CHECK(p.delivery_mode == 2);
  CHECK(p.correlation_id == "c-1");
}

TEST_CASE("DeadLetterProperties clips a long error text") {
  AmqpProperties p = DeadLetterProperties(AmqpProperties{}, 0,
                                          std::string(100000, 'e'), "x", "q");
  CHECK(FindHeader(p, kErrorHeader)->bytes.size() < 5000);
}

TEST_CASE("ReplyProperties carries the correlation id and a status") {
  AmqpProperties p = ReplyProperties(Sample(), "ok");
  CHECK(p.correlation_id == "c-1");
  CHECK(FindHeader(p, kStatusHeader)->bytes == "ok");
  CHECK_FALSE(p.reply_to.has_value());
  CHECK_FALSE(p.message_id.has_value());
  CHECK(FindHeader(p, "tenant") == nullptr);
}

TEST_CASE("RequestMeta is JSON with the delivery and its properties") {
  json meta = json::parse(RequestMeta("tasks", "ex", "rk", true, 2, Sample()));
  CHECK(meta["queue"] == "tasks");
  CHECK(meta["exchange"] == "ex");
  CHECK(meta["routing_key"] == "rk");
  CHECK(meta["redelivered"] == true);
  CHECK(meta["retries"] == 2);
  CHECK(meta["properties"]["message_id"] == "m-1");
  CHECK(meta["properties"]["delivery_mode"] == 2);
  CHECK(meta["properties"]["headers"]["tenant"] == "acme");
}

TEST_CASE("RequestMeta survives bytes that are not UTF-8") {
  AmqpProperties p;
  p.message_id = std::string("\xff\xfe", 2);
  SetHeader(&p, "bin", AmqpValue::String(std::string("\x80", 1)));
  json meta = json::parse(RequestMeta("q", "", "q", false, 0, p));
  CHECK(meta["properties"]["message_id"].is_string());
}

TEST_CASE("ToJson maps AMQP field kinds") {
  AmqpValue table;
  table.kind = 'F';
  table.table.push_back({"n", AmqpValue::Int32(7)});
  table.table.push_back({"b", AmqpValue::Bool(true)});
  table.table.push_back({"d", AmqpValue::Double(0.5)});
  AmqpValue array;
  array.kind = 'A';
  array.array.push_back(AmqpValue::String("x"));
  table.table.push_back({"a", array});
  AmqpValue decimal;
  decimal.kind = 'D';
  decimal.decimals = 2;
  decimal.integer = 150;
  table.table.push_back({"dec", decimal});
  json out = ToJson(table);
  CHECK(out == json::parse(R"({"n":7,"b":true,"d":0.5,"a":["x"],"dec":1.5})"));
}

}  // namespace
}  // namespace workerpool
