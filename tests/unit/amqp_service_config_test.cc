#include "core/amqp_service_config.h"

#include <doctest/doctest.h>

#include <string>

namespace workerpool {
namespace {

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

const char kMinimal[] =
    R"({"url":"amqp://u:p@h:5","queues":["a","b"],"routes_to":["work"]})";

TEST_CASE("ParseAmqpServiceConfig: minimal section, defaults") {
  Result<AmqpServiceConfig> config = ParseAmqpServiceConfig(kMinimal);
  REQUIRE(config.ok());
  CHECK(config->url.host == "h");
  CHECK(config->queues == std::vector<std::string>{"a", "b"});
  CHECK(config->target == "work");
  CHECK_FALSE(config->declare);
  CHECK(config->prefetch == 32);
  CHECK(config->max_retries == 5);
  CHECK(config->dead_letter_queue.empty());
  CHECK(config->heartbeat_s == 30);
}

TEST_CASE("ParseAmqpServiceConfig: every key, and the URL's heartbeat wins") {
  Result<AmqpServiceConfig> config = ParseAmqpServiceConfig(
      R"({"url":"amqp://h?heartbeat=7&connection_timeout=900",
          "queues":["q"],"declare":true,"prefetch":1000,"max_retries":0,
          "dead_letter_queue":"q.dead","routes_to":["w"],
          "retry_initial_ms":10,"retry_max_ms":20,"heartbeat_s":60,
          "stats_interval_ms":250})");
  REQUIRE(config.ok());
  CHECK(config->declare);
  CHECK(config->prefetch == 1000);
  CHECK(config->max_retries == 0);
  CHECK(config->dead_letter_queue == "q.dead");
  CHECK(config->retry_backoff.initial == Duration(10));
  CHECK(config->retry_backoff.max == Duration(20));
  CHECK(config->stats_interval == Duration(250));
  CHECK(config->heartbeat_s == 7);
  CHECK(config->connect_timeout == Duration(900));
}

TEST_CASE("ParseAmqpServiceConfig errors name the key") {
  struct Case {
    const char* text;
    const char* says;
  } cases[] = {
      {"not json", "not a JSON object"},
      {R"({"queues":["q"],"routes_to":["w"]})", "url: missing"},
      {R"({"url":"amqp//h","queues":["q"],"routes_to":["w"]})",
       "invalid RabbitMQ URL"},
      {R"({"url":"amqp://h","queues":[],"routes_to":["w"]})",
       "queues: no queue"},
      {R"({"url":"amqp://h","queues":["q","q"],"routes_to":["w"]})",
       "listed twice"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":[]})", "routes_to"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],"prefetch":0})",
       "prefetch: 0 is out of range"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "prefetch":18446744073709551615})",
       "prefetch: 18446744073709551615 is out of range"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "heartbeat_s":-1})",
       "heartbeat_s: -1 is out of range"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "prefetch":1.5})",
       "prefetch: expected an integer"},
      {R"({"url":7,"queues":["q"],"routes_to":["w"]})", "url: missing"},
      {R"({"url":"amqp://h","queues":["q",3],"routes_to":["w"]})",
       "queues: expected non-empty names, got 3"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "dead_letter_queue":{}})",
       "dead_letter_queue: expected a queue name"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "prefetch":"many"})",
       "prefetch: expected an integer"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "dead_letter_queue":"q"})",
       "also consumed"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "declare":"yes"})",
       "declare: expected true or false"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    Result<AmqpServiceConfig> config = ParseAmqpServiceConfig(c.text);
    REQUIRE_FALSE(config.ok());
    CHECK(Contains(config.status().message(), c.says));
  }
}

}  // namespace
}  // namespace workerpool
