#include "core/config_group.h"

#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "core/config_text.h"
#include "core/config_values.h"
#include "core/control_request.h"  // kMaxScaleProcesses
#include "core/probe_spec.h"
#include "core/routing.h"
#include "workerpool/wire.h"

namespace workerpool::config_parser {
namespace {

// What a service with a rabbitmq section and no command runs.
constexpr std::string_view kBuiltinRabbitmqCommand[] = {"workerpool", "builtin",
                                                        "rabbitmq-service"};

constexpr std::string_view kGroupTypeNames[] = {"reactor", "job", "service"};
constexpr std::string_view kQueueTypeNames[] = {"classic", "quorum"};
constexpr std::string_view kRestartModes[] = {"always", "on-failure", "never"};

void ReadRestart(MapReader& restart, RestartConfig* config) {
  if (std::optional<MapReader> backoff = restart.Map("backoff")) {
    bool initial_ok =
        backoff->DurationValue("initial", &config->backoff.initial);
    bool max_ok = backoff->DurationValue("max", &config->backoff.max);
    backoff->DurationValue("reset_after", &config->backoff.reset_after);
    backoff->Finish();
    bool both_valid = (initial_ok || !backoff->Has("initial")) &&
                      (max_ok || !backoff->Has("max"));
    if (both_valid && config->backoff.initial > config->backoff.max) {
      std::string message =
          "initial backoff " + FormatDuration(config->backoff.initial) +
          " is longer than max " + FormatDuration(config->backoff.max) +
          (max_ok ? "" : " (the default)") + "; initial must be <= max";
      if (initial_ok) {
        backoff->ValueError("initial", std::move(message));
      } else {
        backoff->ValueError("max", std::move(message));
      }
    }
  }
  if (std::optional<MapReader> intensity = restart.Map("intensity")) {
    intensity->Int("max_restarts", &config->intensity.max_restarts);
    intensity->DurationValue("period", &config->intensity.period);
    intensity->Finish();
  }
  std::string mode;
  if (restart.OneOf("policy", &mode, kRestartModes)) {
    config->policy = mode == "never"        ? RestartMode::kNever
                     : mode == "on-failure" ? RestartMode::kOnFailure
                                            : RestartMode::kAlways;
  }
  restart.Finish();
}

// A probe's host:port or URL is checked as index 0 would expand it; each
// process's own is parsed again when its probe runs.
Status CheckTcpProbe(std::string_view text) {
  return ParseTcpProbe(ExpandIndex(text, 0)).status();
}
Status CheckHttpProbe(std::string_view text) {
  return ParseHttpProbe(ExpandIndex(text, 0)).status();
}

// groups[].ready (HEALTH false) or groups[].health: one probe kind of tcp,
// http, exec (and after, for ready), with its bounds.
void ReadProbe(MapReader& probe, bool health, ProbeConfig* config) {
  const std::string_view kinds[] = {"tcp", "http", "exec", "after"};
  const std::size_t kind_count = health ? 3 : 4;
  std::vector<std::string_view> given;
  for (std::size_t i = 0; i < kind_count; ++i) {
    if (probe.Has(kinds[i])) given.push_back(kinds[i]);
  }
  if (probe.Has("tcp")) {
    config->kind = ProbeConfig::Kind::kTcp;
    probe.Text("tcp", &config->target, Need::kRequired, CheckTcpProbe);
  }
  if (probe.Has("http")) {
    config->kind = ProbeConfig::Kind::kHttp;
    probe.Text("http", &config->target, Need::kRequired, CheckHttpProbe);
  }
  if (probe.Has("exec")) {
    config->kind = ProbeConfig::Kind::kExec;
    if (probe.TextList(
            "exec", &config->argv,
            {.allow_empty = false, .example = "[./probe, \"{index}\"]"}) &&
        config->argv[0].empty()) {
      probe.ValueError("exec", "the program to run must not be empty");
    }
  }
  if (!health && probe.Has("after")) {
    config->kind = ProbeConfig::Kind::kAfter;
    probe.DurationValue("after", &config->after);
  }
  if (health && probe.Lookup("after") != nullptr) {
    probe.KeyError("after",
                   "only a ready probe waits a fixed time; health probes tcp, "
                   "http or exec");
  }
  if (health) {
    config->timeout = Duration(5000);
    probe.DurationValue("every", &config->every);
    probe.Int("failures", &config->failures, {.min = 1, .max = 1000});
    if (config->every.count() <= 0) {
      probe.ValueError("every", "must be longer than 0 (e.g. 10s)");
    }
  }
  probe.DurationValue("timeout", &config->timeout);
  if (config->timeout.count() <= 0) {
    probe.ValueError("timeout", "must be longer than 0 (e.g. " +
                                    std::string(health ? "5s" : "30s") + ")");
  }
  probe.Finish();
  const std::string choices =
      health ? "tcp, http or exec" : "tcp, http, exec or after";
  if (given.empty() && !(health && probe.Has("after"))) {
    probe.errors().Add(probe.node().Position(), probe.path(),
                       "says nothing to probe: give one of " + choices +
                           ", e.g. tcp: \"127.0.0.1:7000\"");
  } else if (given.size() > 1) {
    probe.KeyError(given[1], "one probe only: " + std::string(given[0]) +
                                 " is given already (choose one of " + choices +
                                 ")");
  }
}

constexpr std::string_view kPublishModes[] = {"rpc", "enqueue"};

// AMQP names (exchange, routing key) are short strings: 255 bytes at most.
Status CheckAmqpShortString(std::string_view text) {
  if (text.size() > 255) {
    return Status::Error("longer than 255 bytes (" +
                         std::to_string(text.size()) + ")");
  }
  return Status::Ok();
}

void ReadPublish(MapReader& publish, RabbitmqPublishConfig* config) {
  publish.Text("exchange", &config->exchange, Need::kOptional,
               CheckAmqpShortString);
  bool key_ok = publish.Text("routing_key", &config->routing_key,
                             Need::kRequired, CheckAmqpShortString);
  publish.OneOf("mode", &config->mode, kPublishModes);
  if (publish.DurationValue("timeout", &config->timeout) &&
      config->timeout.count() <= 0) {
    publish.ValueError("timeout",
                       "must be longer than 0 (e.g. 30s): a request waits "
                       "this long for its reply");
    config->timeout = RabbitmqPublishConfig{}.timeout;
  }
  publish.Bool("persistent", &config->persistent);
  publish.Int("max_pending", &config->max_pending, {.min = 1, .max = 1000000});
  publish.Finish();
  if (key_ok && config->routing_key.empty() && config->exchange.empty()) {
    publish.ValueError("routing_key",
                       "must name a queue when the exchange is the default "
                       "one (\"\"); e.g. routing_key: tasks");
  }
}

void ReadRabbitmq(MapReader& rabbitmq, RabbitmqConfig* config) {
  rabbitmq.Text("url", &config->url, Need::kRequired, CheckAmqpUrl);
  // A service may consume (queues), publish, or both.
  const bool publishes = rabbitmq.Has("publish");
  rabbitmq.TextList("queues", &config->queues,
                    {.need = publishes ? Need::kOptional : Need::kRequired,
                     .allow_empty = publishes,
                     .example = "[tasks]",
                     .check = CheckNotEmpty});
  if (std::optional<MapReader> publish = rabbitmq.Map("publish")) {
    ReadPublish(*publish, &config->publish.emplace());
  }
  rabbitmq.Bool("declare", &config->declare);
  rabbitmq.Int("prefetch", &config->prefetch, {.min = 1, .max = 65535});
  rabbitmq.Int("max_retries", &config->max_retries);
  rabbitmq.Text("dead_letter_queue", &config->dead_letter_queue,
                Need::kOptional, CheckNotEmpty);
  rabbitmq.OneOf("queue_type", &config->queue_type, kQueueTypeNames);
  rabbitmq.Int("delivery_limit", &config->delivery_limit,
               {.min = 1, .max = 1000000});
  if (rabbitmq.DurationValue("consumer_timeout", &config->consumer_timeout) &&
      config->consumer_timeout > Duration(3650L * 86400000L)) {
    rabbitmq.ValueError("consumer_timeout",
                        "longer than ten years; 0s says the broker has none");
  }
  rabbitmq.Finish();
  if (config->queue_type == "quorum" && !config->declare) {
    rabbitmq.KeyError("queue_type",
                      "only declare: true declares queues; with declare: "
                      "false they are used as they exist (set declare: true, "
                      "or remove queue_type)");
  }
  if (rabbitmq.Has("delivery_limit") && config->queue_type != "quorum") {
    rabbitmq.KeyError("delivery_limit",
                      "only quorum queues have a delivery limit (add "
                      "queue_type: quorum, or remove delivery_limit)");
  }
}

// groups[].autoscale. Returns true when min and max were both read; the
// rules that need the group's type and processes are ReadGroup's.
bool ReadAutoscale(MapReader& autoscale, AutoscaleConfig* config) {
  // The same ceiling as `workerpool scale` (core/control_request.h).
  bool min_ok =
      autoscale.Int("min", &config->min, {.min = 0, .max = kMaxScaleProcesses});
  bool max_ok =
      autoscale.Int("max", &config->max, {.min = 1, .max = kMaxScaleProcesses});
  autoscale.DurationValue("up_after", &config->up_after);
  autoscale.DurationValue("down_after", &config->down_after);
  autoscale.Finish();
  for (std::string_view key : {"min", "max"}) {
    if (autoscale.Has(key)) continue;
    autoscale.ValueError(
        key, "missing required key " + Quote(key) +
                 ": autoscale needs both bounds, e.g. autoscale: {min: 1, "
                 "max: 16}");
  }
  if (min_ok && max_ok && config->min > config->max) {
    autoscale.ValueError(
        "max", "max " + std::to_string(config->max) + " is below min " +
                   std::to_string(config->min) + "; min must be <= max");
    return false;
  }
  return min_ok && max_ok;
}

}  // namespace

void ReadGroup(ErrorList* errors, const YamlNode& node, std::size_t index,
               const ConfigEnvironment& environment, GroupConfig* group,
               GroupSource* source) {
  MapReader reader(errors, node, "groups[" + std::to_string(index) + "]");
  TextPosition position = node.Position();
  group->line = position.line;
  group->column = position.column;
  if (!reader.is_map()) {
    errors->Add(
        position, reader.path(),
        "must be a mapping with name, type and command, got " + Describe(node));
    return;
  }

  source->name_ok =
      reader.Text("name", &group->name, Need::kRequired, CheckName);
  if (source->name_ok)
    source->name_position = reader.Lookup("name")->value.Position();
  std::string type_name;
  source->type_ok =
      reader.OneOf("type", &type_name, kGroupTypeNames, Need::kRequired);
  if (source->type_ok) group->type = *GroupTypeFromName(type_name);
  bool processes_ok = reader.Int("processes", &group->processes);
  bool command_ok =
      reader.TextList("command", &group->command,
                      {.allow_empty = false, .example = "[./my_job, --flag]"});
  reader.TextMap("env", &group->env, CheckReservedEnvName);
  reader.Text("cwd", &group->cwd, Need::kOptional, CheckNotEmpty);
  bool user_ok =
      reader.Text("user", &group->user, Need::kOptional, CheckNotEmpty);
  if (reader.TextList(
          "listen", &group->listen,
          {.example = "[\"127.0.0.1:8080\"]", .check = CheckListenAddress})) {
    source->listen = reader.Lookup("listen")->value;
  }
  if (reader.TextList("routes_to", &group->routes_to,
                      {.example = "[compute]"})) {
    source->routes_to = reader.Lookup("routes_to")->value;
  }
  reader.Int("max_inflight", &group->max_inflight, {.min = 1});
  reader.Int("queue_limit", &group->queue_limit);
  reader.DurationValue("request_timeout", &group->request_timeout);
  reader.DurationValue("heartbeat_timeout", &group->heartbeat_timeout);
  reader.Int64("max_requests", &group->max_requests,
               {.max = std::numeric_limits<std::int64_t>::max()});
  reader.Size("max_rss", &group->max_rss);
  reader.Int("busy_poll_us", &group->busy_poll_us,
             {.max = wire::kMaxBusyPollUs});
  if (std::optional<MapReader> restart = reader.Map("restart")) {
    ReadRestart(*restart, &group->restart);
  }
  if (reader.TextList("depends_on", &group->depends_on,
                      {.example = "[migrate, cache]", .check = CheckName})) {
    source->depends_on = reader.Lookup("depends_on")->value;
  }
  if (std::optional<MapReader> ready = reader.Map("ready")) {
    ReadProbe(*ready, /*health=*/false, &group->ready.emplace());
  }
  if (std::optional<MapReader> health = reader.Map("health")) {
    ReadProbe(*health, /*health=*/true, &group->health.emplace());
  }
  if (std::optional<MapReader> rabbitmq = reader.Map("rabbitmq")) {
    ReadRabbitmq(*rabbitmq, &group->rabbitmq.emplace());
  }
  bool autoscale_ok = false;
  if (std::optional<MapReader> autoscale = reader.Map("autoscale")) {
    autoscale_ok = ReadAutoscale(*autoscale, &group->autoscale.emplace());
    if (autoscale_ok) source->autoscale_min = autoscale->Lookup("min")->value;
  }
  reader.Finish();
  // A publishing service takes every request it is sent and answers "queue
  // full" itself beyond publish.max_pending: senders must not hold
  // requests back for it (max_inflight), nor its client library queue them.
  // A sender kills a process that answers later than request_timeout: the
  // service must answer (its own "timeout") first.
  if (group->rabbitmq && group->rabbitmq->publish) {
    const RabbitmqPublishConfig& publish = *group->rabbitmq->publish;
    if (!reader.Has("max_inflight")) {
      group->max_inflight = kPublishingServiceMaxInflight;
    }
    if (!reader.Has("request_timeout")) {
      group->request_timeout = publish.timeout + kPublishTimeoutMargin;
    } else if (group->request_timeout <= publish.timeout) {
      reader.ValueError(
          "request_timeout",
          FormatDuration(group->request_timeout) +
              " must be longer than rabbitmq.publish.timeout (" +
              FormatDuration(publish.timeout) +
              "): a sender kills a process that answers later than "
              "request_timeout; leave it out to get the timeout plus " +
              FormatDuration(kPublishTimeoutMargin));
    }
  }

  if (command_ok && group->command[0].empty()) {
    errors->Add(reader.Lookup("command")->value[0].Position(),
                reader.PathOf("command") + "[0]",
                "the program to run must not be empty");
  }
  if (!reader.Has("command") && !reader.Has("rabbitmq")) {
    errors->Add(position, reader.PathOf("command"),
                "missing command: give the program to run as a list, e.g. "
                "command: [./my_job, --flag]");
  }
  // A service given only a rabbitmq section runs the built-in consumer. The
  // check below refuses rabbitmq on other types, so no second error here.
  if (!reader.Has("command") && reader.Has("rabbitmq")) {
    group->command.assign(std::begin(kBuiltinRabbitmqCommand),
                          std::end(kBuiltinRabbitmqCommand));
  }

  if (user_ok) {
    Result<UserIds> ids = ResolveUser(environment, group->user);
    if (ids.ok()) {
      group->uid = ids->uid;
      group->gid = ids->gid;
    } else {
      reader.ValueError("user", ids.status().message());
    }
  }

  if (!source->type_ok) return;  // the rules below depend on the type
  const char* type = GroupTypeName(group->type);
  if (reader.Has("listen") && group->type != GroupType::kReactor) {
    reader.KeyError("listen", std::string("only reactor groups listen; this "
                                          "group is a ") +
                                  type +
                                  " (remove listen, or make it a "
                                  "reactor)");
  }
  if (reader.Has("max_requests") && group->type == GroupType::kReactor) {
    reader.KeyError("max_requests",
                    "a reactor does not serve requests, so it is never "
                    "recycled by count; use max_rss, or move max_requests to "
                    "the job group it sends to");
  }
  if (reader.Has("rabbitmq") && group->type != GroupType::kService) {
    reader.KeyError("rabbitmq",
                    std::string("only service groups consume from RabbitMQ; "
                                "this group is a ") +
                        type + " (use type: service)");
  }
  if (reader.Has("autoscale") && group->type == GroupType::kReactor) {
    reader.KeyError(
        "autoscale",
        "a reactor is not autoscaled: no signal fits it (its load is the "
        "connections waiting in the kernel's accept queue, which the pool "
        "does not see, and what it sends waits on the job groups it routes "
        "to); put autoscale on those job groups, and give the reactor a "
        "fixed processes count");
    source->autoscale_min = YamlNode();
  } else if (reader.Has("autoscale") && group->type == GroupType::kService) {
    reader.KeyError(
        "autoscale",
        "a service is not autoscaled: its processes only hand RabbitMQ "
        "deliveries to the job groups it routes to, and more consumers "
        "would hold more messages without running more of them; put "
        "autoscale on the job group it routes to (the services' RabbitMQ "
        "backlog counts towards that group's load)");
    source->autoscale_min = YamlNode();
  } else if (autoscale_ok) {
    const AutoscaleConfig& bounds = *group->autoscale;
    if (!reader.Has("processes")) {
      group->processes = bounds.min;  // the starting count
    } else if (processes_ok && (group->processes < bounds.min ||
                                group->processes > bounds.max)) {
      reader.ValueError(
          "processes",
          "processes " + std::to_string(group->processes) +
              " is outside autoscale's bounds [" + std::to_string(bounds.min) +
              ", " + std::to_string(bounds.max) +
              "]: with autoscale, processes is the count the group starts "
              "with (min when absent)");
    }
  }
  if (reader.Has("routes_to") && group->type == GroupType::kJob) {
    reader.KeyError("routes_to",
                    RuleViolation(GroupType::kJob, GroupType::kJob) +
                        "; remove routes_to from this job group");
    source->routes_to = YamlNode();  // none: one error is enough
  }
}

}  // namespace workerpool::config_parser
