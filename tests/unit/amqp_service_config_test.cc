#include "core/amqp_service_config.h"

#include <doctest/doctest.h>

#include <string>

#include "core/config.h"

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
  CHECK(config->queue_type == AmqpQueueType::kClassic);
  CHECK(config->consumer_timeout == kRabbitmqDefaultConsumerTimeout);
  CHECK(config->target_request_timeout == Duration(0));
  CHECK(config->connection_name.empty());
  CHECK(AmqpQueueArguments(*config).empty());
  CHECK(AmqpDeadLetterQueueArguments(*config).empty());
}

const AmqpValue* Argument(const AmqpTable& table, const std::string& name) {
  for (const AmqpField& field : table) {
    if (field.name == name) return &field.value;
  }
  return nullptr;
}

TEST_CASE("ParseAmqpServiceConfig: quorum queues and their arguments") {
  Result<AmqpServiceConfig> config = ParseAmqpServiceConfig(
      R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],"declare":true,
          "queue_type":"quorum","delivery_limit":7,
          "dead_letter_queue":"q.dead","consumer_timeout_ms":60000,
          "target_request_timeout_ms":90000,"connection_name":"p/g/0"})");
  REQUIRE(config.ok());
  CHECK(config->queue_type == AmqpQueueType::kQuorum);
  CHECK(config->delivery_limit == 7);
  CHECK(config->consumer_timeout == Duration(60000));
  CHECK(config->target_request_timeout == Duration(90000));
  CHECK(config->connection_name == "p/g/0");
  AmqpTable arguments = AmqpQueueArguments(*config);
  REQUIRE(Argument(arguments, "x-queue-type") != nullptr);
  CHECK(Argument(arguments, "x-queue-type")->bytes == "quorum");
  CHECK(Argument(arguments, "x-delivery-limit")->AsInteger() == 7);
  CHECK(Argument(arguments, "x-dead-letter-exchange")->bytes.empty());
  CHECK(Argument(arguments, "x-dead-letter-routing-key")->bytes == "q.dead");
  CHECK(Argument(arguments, "x-dead-letter-strategy")->bytes ==
        "at-least-once");
  CHECK(Argument(arguments, "x-overflow")->bytes == "reject-publish");
  AmqpTable dead = AmqpDeadLetterQueueArguments(*config);
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].value.bytes == "quorum");

  // Without a dead-letter queue: the limit, and no dead-lettering.
  config = ParseAmqpServiceConfig(
      R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
          "queue_type":"quorum"})");
  REQUIRE(config.ok());
  arguments = AmqpQueueArguments(*config);
  CHECK(Argument(arguments, "x-delivery-limit")->AsInteger() ==
        kDefaultDeliveryLimit);
  CHECK(Argument(arguments, "x-dead-letter-exchange") == nullptr);
}

TEST_CASE("AmqpConsumerTimeoutCutoff: a tenth earlier, 200ms to 60s") {
  CHECK(AmqpConsumerTimeoutCutoff(Duration(0)) == Duration(0));
  CHECK(AmqpConsumerTimeoutCutoff(Duration(2000)) == Duration(1800));
  CHECK(AmqpConsumerTimeoutCutoff(Duration(1000)) == Duration(800));
  CHECK(AmqpConsumerTimeoutCutoff(Duration(100)) == Duration(1));
  CHECK(AmqpConsumerTimeoutCutoff(Duration(60000)) == Duration(54000));
  CHECK(AmqpConsumerTimeoutCutoff(kRabbitmqDefaultConsumerTimeout) ==
        Duration(29 * 60 * 1000));
}

TEST_CASE("ParseConsumerTimeoutClose: RabbitMQ's close, and only it") {
  CHECK(ParseConsumerTimeoutClose(
            406,
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 "
            "timed out. Timeout value used: 2000 ms. This timeout value can "
            "be configured, see consumers doc guide to learn more") ==
        Duration(2000));
  // Older wordings name no value.
  CHECK(ParseConsumerTimeoutClose(406,
                                  "PRECONDITION_FAILED - consumer ack timed "
                                  "out on channel 1") == std::nullopt);
  CHECK(ParseConsumerTimeoutClose(
            406,
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 "
            "timed out") == Duration(0));
  CHECK(ParseConsumerTimeoutClose(
            406,
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 "
            "timed out. Timeout value used: lots ms") == Duration(0));
  CHECK(ParseConsumerTimeoutClose(
            406, "PRECONDITION_FAILED - unknown delivery tag 5") ==
        std::nullopt);
  CHECK(ParseConsumerTimeoutClose(
            404,
            "delivery acknowledgement on channel 1 timed out. Timeout value "
            "used: 2000 ms") == std::nullopt);
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
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "queue_type":"stream"})",
       "queue_type: expected \"classic\" or \"quorum\""},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "queue_type":3})",
       "queue_type: expected"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "delivery_limit":3})",
       "delivery_limit: only quorum queues"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "queue_type":"quorum","delivery_limit":0})",
       "delivery_limit: 0 is out of range"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "consumer_timeout_ms":-5})",
       "consumer_timeout_ms: -5 is out of range"},
      {R"({"url":"amqp://h","queues":["q"],"routes_to":["w"],
           "connection_name":false})",
       "connection_name: expected a string"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    Result<AmqpServiceConfig> config = ParseAmqpServiceConfig(c.text);
    REQUIRE_FALSE(config.ok());
    CHECK(Contains(config.status().message(), c.says));
  }
}

// --- From the YAML, through the Watcher's WORKERPOOL_RABBITMQ --------------

ConfigLoad ParseYaml(const std::string& rabbitmq_keys,
                     const std::string& work_keys = "") {
  return ParseConfig(
      "pool: {name: p}\n"
      "groups:\n"
      "  - name: intake\n"
      "    type: service\n"
      "    routes_to: [work]\n"
      "    rabbitmq: {url: \"amqp://u:p@h\", queues: [q]" +
          rabbitmq_keys +
          "}\n"
          "  - name: work\n"
          "    type: job\n"
          "    command: [x]\n" +
          work_keys,
      "test.yaml", ConfigEnvironment{});
}

// The service's view of the YAML's intake group.
Result<AmqpServiceConfig> ThroughEnvironment(const ConfigLoad& load) {
  REQUIRE(load.ok());
  return ParseAmqpServiceConfig(
      AmqpServiceEnvironment(*load.config, load.config->groups[0]));
}

TEST_CASE("AmqpServiceEnvironment: the YAML's keys reach the service") {
  ConfigLoad load = ParseYaml(
      ", declare: true, prefetch: 7, max_retries: 2, "
      "dead_letter_queue: q.dead, queue_type: quorum, delivery_limit: 4, "
      "consumer_timeout: 90s",
      "    request_timeout: 2m\n");
  INFO(load.ErrorText());
  Result<AmqpServiceConfig> config = ThroughEnvironment(load);
  REQUIRE(config.ok());
  CHECK(config->url.host == "h");
  CHECK(config->queues == std::vector<std::string>{"q"});
  CHECK(config->declare);
  CHECK(config->prefetch == 7);
  CHECK(config->max_retries == 2);
  CHECK(config->dead_letter_queue == "q.dead");
  CHECK(config->target == "work");
  CHECK(config->queue_type == AmqpQueueType::kQuorum);
  CHECK(config->delivery_limit == 4);
  CHECK(config->consumer_timeout == Duration(90000));
  CHECK(config->target_request_timeout == Duration(120000));
}

TEST_CASE("AmqpServiceEnvironment: defaults, and 0s for no consumer_timeout") {
  ConfigLoad load = ParseYaml("");
  INFO(load.ErrorText());
  Result<AmqpServiceConfig> config = ThroughEnvironment(load);
  REQUIRE(config.ok());
  CHECK(config->queue_type == AmqpQueueType::kClassic);
  CHECK(config->consumer_timeout == kRabbitmqDefaultConsumerTimeout);
  CHECK(config->target_request_timeout == Duration(30000));
  load = ParseYaml(", consumer_timeout: 0s");
  INFO(load.ErrorText());
  config = ThroughEnvironment(load);
  REQUIRE(config.ok());
  CHECK(config->consumer_timeout == Duration(0));
  CHECK(AmqpConsumerTimeoutCutoff(config->consumer_timeout) == Duration(0));
}

TEST_CASE("YAML: queue_type, delivery_limit and consumer_timeout are checked") {
  struct Case {
    const char* keys;
    const char* says;
  } cases[] = {
      {", declare: true, queue_type: stream", "groups[0].rabbitmq.queue_type"},
      {", queue_type: quorum",
       "groups[0].rabbitmq.queue_type: only declare: true declares queues"},
      {", declare: true, delivery_limit: 3",
       "groups[0].rabbitmq.delivery_limit: only quorum queues have a "
       "delivery limit"},
      {", declare: true, queue_type: quorum, delivery_limit: 0",
       "groups[0].rabbitmq.delivery_limit"},
      {", consumer_timeout: soon", "groups[0].rabbitmq.consumer_timeout"},
      {", consumer_timeout: 90000h",
       "groups[0].rabbitmq.consumer_timeout: longer than ten years"},
  };
  for (const Case& c : cases) {
    ConfigLoad load = ParseYaml(c.keys);
    INFO(c.keys, " -> ", load.ErrorText());
    REQUIRE_FALSE(load.ok());
    CHECK(Contains(load.ErrorText(), c.says));
  }
}

TEST_CASE("AmqpServiceEnvironment: a group without rabbitmq gives {}") {
  ConfigLoad load = ParseYaml("");
  REQUIRE(load.ok());
  CHECK(AmqpServiceEnvironment(*load.config, load.config->groups[1]) == "{}");
}

}  // namespace
}  // namespace workerpool
