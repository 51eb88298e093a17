// The RabbitMQ service's publishing side (the outbox): the YAML's
// rabbitmq.publish section, the JSON the Watcher passes on, and the pure
// message policies (core/amqp_outbox.h).
#include "core/amqp_outbox.h"

#include <doctest/doctest.h>

#include <optional>
#include <string>

#include "children/http_codec.h"
#include "core/amqp_publish_config.h"
#include "core/amqp_service_config.h"
#include "core/config.h"

namespace workerpool {
namespace {

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

ConfigLoad Parse(std::string text) {
  if (!text.empty() && text.front() == '\n') text.erase(0, 1);
  ConfigEnvironment environment{
      [](const std::string&) -> Result<std::optional<UserIds>> {
        return std::optional<UserIds>();
      },
      ""};
  return ParseConfig(text, "test.yaml", environment);
}

// A pool whose group 0 (line 3) is a service with the rabbitmq section
// SECTION (written from line 6 on) and group lines EXTRA before it.
ConfigLoad ParseService(const std::string& section,
                        const std::string& extra = "") {
  return Parse(
      "pool: {name: t}\n"
      "groups:\n"
      "  - name: outbox\n"
      "    type: service\n" +
      extra + "    rabbitmq:\n" + section);
}

std::string Errors(const ConfigLoad& load) { return load.ErrorText(); }

// DESIGN.md's outbox group, as written there.
TEST_CASE("outbox: DESIGN.md's publish section parses, with its defaults") {
  ConfigLoad load = Parse(R"(
pool: {name: demo}
groups:
  - name: web
    type: reactor
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:8080"]
    routes_to: [outbox]
  - name: outbox                  # a service that reactors send to: it publishes to RabbitMQ
    type: service
    rabbitmq:
      url: amqp://guest:guest@127.0.0.1:5672
      publish: {exchange: "", routing_key: tasks, mode: rpc, timeout: 30s, persistent: true}   # mode: rpc | enqueue
)");
  INFO(Errors(load));
  REQUIRE(load.ok());
  const GroupConfig& outbox = load.config->groups[1];
  CHECK(outbox.command ==
        std::vector<std::string>{"workerpool", "builtin", "rabbitmq-service"});
  REQUIRE(outbox.rabbitmq);
  CHECK(outbox.rabbitmq->queues.empty());
  REQUIRE(outbox.rabbitmq->publish);
  const RabbitmqPublishConfig& publish = *outbox.rabbitmq->publish;
  CHECK(publish.exchange.empty());
  CHECK(publish.routing_key == "tasks");
  CHECK(publish.mode == "rpc");
  CHECK(publish.timeout == Duration(30000));
  CHECK(publish.persistent);
  CHECK(publish.max_pending == 1000);
  // Senders hand it every request; it answers before they would kill it.
  CHECK(outbox.max_inflight == kPublishingServiceMaxInflight);
  CHECK(outbox.request_timeout == Duration(35000));
}

TEST_CASE("outbox: every key, consuming and publishing in one service") {
  ConfigLoad load = ParseService(
      "      url: amqp://h\n"
      "      queues: [in]\n"
      "      publish:\n"
      "        exchange: jobs\n"
      "        routing_key: \"\"\n"
      "        mode: enqueue\n"
      "        timeout: 2s\n"
      "        persistent: false\n"
      "        max_pending: 7\n",
      "    routes_to: [w]\n"
      "    max_inflight: 3\n"
      "    request_timeout: 10s\n");
  // routes_to names a group that does not exist: only that error.
  INFO(Errors(load));
  CHECK(load.errors.size() == 1);
  CHECK(Contains(Errors(load), "routes_to"));
  load = Parse(
      "pool: {name: t}\n"
      "groups:\n"
      "  - {name: w, type: job, command: [x]}\n"
      "  - name: outbox\n"
      "    type: service\n"
      "    routes_to: [w]\n"
      "    max_inflight: 3\n"
      "    request_timeout: 10s\n"
      "    rabbitmq:\n"
      "      url: amqp://h\n"
      "      queues: [in]\n"
      "      publish: {exchange: jobs, routing_key: \"\", mode: enqueue,\n"
      "                timeout: 2s, persistent: false, max_pending: 7}\n");
  INFO(Errors(load));
  REQUIRE(load.ok());
  const GroupConfig& group = load.config->groups[1];
  CHECK(group.max_inflight == 3);
  CHECK(group.request_timeout == Duration(10000));
  const RabbitmqPublishConfig& publish = *group.rabbitmq->publish;
  CHECK(publish.exchange == "jobs");
  CHECK(publish.routing_key.empty());
  CHECK(publish.mode == "enqueue");
  CHECK(publish.timeout == Duration(2000));
  CHECK_FALSE(publish.persistent);
  CHECK(publish.max_pending == 7);

  // What the Watcher passes on reads back as the same settings.
  PoolConfig pool;
  pool.groups.push_back(group);
  std::string text = AmqpServiceEnvironment(pool, group);
  Result<AmqpServiceConfig> service = ParseAmqpServiceConfig(text);
  INFO(text);
  REQUIRE(service.ok());
  CHECK(service->queues == std::vector<std::string>{"in"});
  CHECK(service->target == "w");
  REQUIRE(service->publish);
  CHECK(service->publish->exchange == "jobs");
  CHECK(service->publish->routing_key.empty());
  CHECK(service->publish->mode == AmqpPublishMode::kEnqueue);
  CHECK(service->publish->timeout == Duration(2000));
  CHECK_FALSE(service->publish->persistent);
  CHECK(service->publish->max_pending == 7);
}

TEST_CASE("outbox: bad publish sections are errors at file:line:col") {
  struct Case {
    std::string section;
    std::string says;
  } cases[] = {
      {"      url: amqp://h\n      publish: {exchange: x}\n",
       "test.yaml:7:16: groups[0].rabbitmq.publish.routing_key: missing "
       "required key 'routing_key'"},
      {"      url: amqp://h\n      publish: {routing_key: q, mode: rcp}\n",
       "test.yaml:7:39: groups[0].rabbitmq.publish.mode: must be rpc or "
       "enqueue, got 'rcp'"},
      {"      url: amqp://h\n      publish: {routing_key: q, timeout: -1s}\n",
       "test.yaml:7:42: groups[0].rabbitmq.publish.timeout: invalid duration "
       "'-1s'"},
      {"      url: amqp://h\n      publish: {routing_key: q, timeout: 0s}\n",
       "groups[0].rabbitmq.publish.timeout: must be longer than 0"},
      {"      url: amqp://h\n      publish: {routing_key: q, timout: 1s}\n",
       "test.yaml:7:33: groups[0].rabbitmq.publish.timout: unknown key"},
      {"      url: amqp://h\n      publish: {routing_key: \"\"}\n",
       "groups[0].rabbitmq.publish.routing_key: must name a queue"},
      {"      url: amqp://h\n      publish: {routing_key: q, max_pending: 0}\n",
       "groups[0].rabbitmq.publish.max_pending"},
      {"      url: amqp://h\n      publish: {routing_key: q, persistent: 1}\n",
       "groups[0].rabbitmq.publish.persistent"},
      {"      url: amqp://h\n      publish: tasks\n",
       "groups[0].rabbitmq.publish"},
      {"      url: amqp://h\n",
       "groups[0].rabbitmq.queues: missing required key 'queues'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.section);
    ConfigLoad load = ParseService(c.section);
    CHECK_FALSE(load.ok());
    CHECK(Contains(Errors(load), c.says));
  }
  ConfigLoad load = ParseService(
      "      url: amqp://h\n      publish: {routing_key: q, timeout: 30s}\n",
      "    request_timeout: 30s\n");
  CHECK(Contains(Errors(load),
                 "test.yaml:5:22: groups[0].request_timeout: 30s must be "
                 "longer than rabbitmq.publish.timeout (30s)"));
}

TEST_CASE("outbox: ParseAmqpPublishSettings names the key") {
  struct Case {
    const char* text;
    const char* says;
  } cases[] = {
      {R"({"exchange":"x"})", "publish.routing_key: missing"},
      {R"({"routing_key":""})", "publish.routing_key: empty"},
      {R"({"routing_key":"q","mode":"fast"})", "publish.mode: expected"},
      {R"({"routing_key":"q","timeout_ms":0})", "publish.timeout_ms: 0 is out"},
      {R"({"routing_key":"q","timeout_ms":-5})", "publish.timeout_ms: -5 is"},
      {R"({"routing_key":"q","max_pending":"9"})",
       "publish.max_pending: expected an integer"},
      {R"({"routing_key":"q","persistent":"yes"})",
       "publish.persistent: expected true or false"},
      {R"({"routing_key":7})", "publish.routing_key: expected a string"},
      {R"([])", "publish: expected an object"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    Result<AmqpPublishSettings> settings =
        ParseAmqpPublishSettings(nlohmann::json::parse(c.text));
    REQUIRE_FALSE(settings.ok());
    CHECK(Contains(settings.status().message(), c.says));
  }
  // A publishing service needs neither queues nor routes_to.
  Result<AmqpServiceConfig> config = ParseAmqpServiceConfig(
      R"({"url":"amqp://h","queues":[],"routes_to":[],
          "publish":{"routing_key":"tasks"}})");
  REQUIRE(config.ok());
  CHECK(config->queues.empty());
  REQUIRE(config->publish);
  CHECK(config->publish->mode == AmqpPublishMode::kRpc);
  CHECK(config->publish->timeout == Duration(30000));
  CHECK(config->publish->max_pending == 1000);
  CHECK_FALSE(ParseAmqpServiceConfig(
                  R"({"url":"amqp://h","queues":[],"routes_to":["w"]})")
                  .ok());
}

TEST_CASE("outbox: message ids are this process's, and parse back") {
  AmqpOutboxIds ids(0x0123456789abcdefULL);
  CHECK(ids.Make(42) == "wp-0123456789abcdef-42");
  CHECK(ids.Parse("wp-0123456789abcdef-42") ==
        std::optional<std::uint64_t>(42));
  CHECK_FALSE(ids.Parse("wp-0123456789abcdee-42"));  // another process's
  CHECK_FALSE(ids.Parse("wp-0123456789abcdef-"));
  CHECK_FALSE(ids.Parse("wp-0123456789abcdef-4x"));
  CHECK_FALSE(ids.Parse("wp-0123456789abcdef-99999999999999999999999"));
  CHECK_FALSE(ids.Parse(""));
  CHECK(AmqpOutboxIds(1).prefix() != AmqpOutboxIds(2).prefix());
}

TEST_CASE("outbox: the pool's priority as AMQP priority") {
  CHECK_FALSE(AmqpPriorityFor(0));
  CHECK_FALSE(AmqpPriorityFor(5));  // less urgent than default: AMQP 0
  CHECK(AmqpPriorityFor(-1) == std::optional<std::uint8_t>(1));
  CHECK(AmqpPriorityFor(-9) == std::optional<std::uint8_t>(9));
  CHECK(AmqpPriorityFor(-1000) == std::optional<std::uint8_t>(255));
  CHECK(AmqpPriorityFor(INT32_MIN) == std::optional<std::uint8_t>(255));
}

TEST_CASE("outbox: a request's message properties") {
  AmqpPublishSettings rpc;
  rpc.routing_key = "tasks";
  rpc.timeout = Duration(1500);
  const std::string meta =
      R"({"http":{"method":"POST","path":"/jobs/outbox","headers":)"
      R"({"Content-Type":"text/plain","x-request-id":"abc","n":3}}})";
  AmqpProperties p = OutboxRequestProperties(rpc, "wp-1-7", -3, meta, 1234);
  CHECK(p.message_id == std::optional<std::string>("wp-1-7"));
  CHECK(p.correlation_id == std::optional<std::string>("wp-1-7"));
  CHECK(p.reply_to == std::optional<std::string>("amq.rabbitmq.reply-to"));
  CHECK(p.expiration == std::optional<std::string>("1500"));
  CHECK(p.delivery_mode == std::optional<std::uint8_t>(2));
  CHECK(p.priority == std::optional<std::uint8_t>(3));
  CHECK(p.timestamp == std::optional<std::uint64_t>(1234));
  CHECK(p.content_type == std::optional<std::string>("text/plain"));
  const AmqpValue* id = FindHeader(p, "x-workerpool-header-x-request-id");
  REQUIRE(id != nullptr);
  CHECK(id->bytes == "abc");
  CHECK(FindHeader(p, "x-workerpool-header-content-type") != nullptr);
  CHECK(FindHeader(p, "x-workerpool-header-n") == nullptr);  // not a string

  AmqpPublishSettings enqueue = rpc;
  enqueue.mode = AmqpPublishMode::kEnqueue;
  enqueue.persistent = false;
  p = OutboxRequestProperties(enqueue, "wp-1-8", 0,
                              R"({"headers":{"x-a":"1"}})", 1);
  CHECK_FALSE(p.correlation_id);
  CHECK_FALSE(p.reply_to);
  CHECK_FALSE(p.expiration);
  CHECK_FALSE(p.priority);
  CHECK(p.delivery_mode == std::optional<std::uint8_t>(1));
  CHECK(FindHeader(p, "x-workerpool-header-x-a") != nullptr);
  // Meta that is not a JSON object adds nothing, and does not throw.
  for (const char* bad : {"", "[1]", "{", "{\"headers\":7}", "\"x\""}) {
    CAPTURE(bad);
    p = OutboxRequestProperties(enqueue, "wp-1-9", 0, bad, 1);
    CHECK_FALSE(p.headers);
  }
}

AmqpProperties WithStatus(const char* status) {
  AmqpProperties p;
  SetHeader(&p, kStatusHeader, AmqpValue::String(status));
  return p;
}

TEST_CASE("outbox: replies as rabbitmq-service (or any client) sends them") {
  CHECK(ReadOutboxReply(AmqpProperties{}).kind == OutboxReply::Kind::kAnswer);
  CHECK(ReadOutboxReply(WithStatus("ok")).kind == OutboxReply::Kind::kAnswer);

  AmqpProperties progress = WithStatus("progress");
  SetHeader(&progress, kProgressHeader, AmqpValue::Double(0.25));
  OutboxReply reply = ReadOutboxReply(progress);
  CHECK(reply.kind == OutboxReply::Kind::kProgress);
  CHECK(reply.fraction == doctest::Approx(0.25));
  SetHeader(&progress, kProgressHeader, AmqpValue::Double(7));
  CHECK(ReadOutboxReply(progress).fraction == doctest::Approx(1));

  // rabbitmq-service's error reply: "CODE: text".
  AmqpProperties error = WithStatus("error");
  SetHeader(&error, kErrorHeader, AmqpValue::String("worker_died: it died"));
  reply = ReadOutboxReply(error);
  CHECK(reply.kind == OutboxReply::Kind::kError);
  CHECK(reply.code == wire::ErrorCode::kWorkerDied);
  CHECK(reply.text == "it died");
  // The code apart too, and the text keeps a colon of its own.
  SetHeader(&error, kErrorHeader, AmqpValue::String("timeout: a: b"));
  SetHeader(&error, kErrorCodeHeader, AmqpValue::String("timeout"));
  reply = ReadOutboxReply(error);
  CHECK(reply.code == wire::ErrorCode::kTimeout);
  CHECK(reply.text == "a: b");
  // A text that does not start with a code is kept whole.
  error = WithStatus("error");
  SetHeader(&error, kErrorHeader, AmqpValue::String("bad input: x"));
  reply = ReadOutboxReply(error);
  CHECK(reply.code == wire::ErrorCode::kHandlerError);
  CHECK(reply.text == "bad input: x");
  // No text at all: the caller uses the body.
  CHECK(ReadOutboxReply(WithStatus("error")).text.empty());

  for (wire::ErrorCode code :
       {wire::ErrorCode::kHandlerError, wire::ErrorCode::kQueueFull,
        wire::ErrorCode::kShuttingDown, wire::ErrorCode::kTooLarge}) {
    CHECK(ErrorCodeFromName(ErrorCodeName(code)) ==
          std::optional<wire::ErrorCode>(code));
  }
  CHECK_FALSE(ErrorCodeFromName("nope"));
}

TEST_CASE("http-reactor: a reply's status and message id from its meta") {
  CHECK(http::ReplyStatus("") == 200);
  CHECK(http::ReplyStatus(R"({"http_status":202})") == 202);
  CHECK(http::ReplyStatus(R"({"http_status":201})") == 201);
  CHECK(http::ReplyStatus(R"({"http_status":500})") == 200);
  CHECK(http::ReplyStatus(R"({"http_status":"202"})") == 200);
  CHECK(http::ReplyStatus("not json") == 200);
  CHECK(http::ReplyMessageId(R"({"message_id":"wp-1-2"})") == "wp-1-2");
  CHECK(http::ReplyMessageId(R"({"message_id":"a\r\nX: y"})").empty());
  CHECK(http::ReplyMessageId(R"({"message_id":5})").empty());
  CHECK(http::ReplyMessageId("").empty());
}

TEST_CASE("outbox: a reactor routed to a consume-only rabbitmq-service") {
  // Without publish the built-in service refuses every request: the route
  // is an error at file:line:col, not a 404 at run time.
  ConfigLoad load = Parse(
      "pool: {name: t}\n"
      "groups:\n"
      "  - {name: w, type: job, command: [x]}\n"
      "  - name: web\n"
      "    type: reactor\n"
      "    command: [x]\n"
      "    routes_to: [intake]\n"
      "  - name: intake\n"
      "    type: service\n"
      "    routes_to: [w]\n"
      "    rabbitmq: {url: amqp://h, queues: [in]}\n");
  INFO(Errors(load));
  CHECK(load.errors.size() == 1);
  CHECK(Contains(Errors(load),
                 "test.yaml:7:17: groups[1].routes_to[0]: group 'intake' runs "
                 "rabbitmq-service without rabbitmq.publish"));
}

}  // namespace
}  // namespace workerpool
