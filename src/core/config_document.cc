#include "core/config_document.h"

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config_group.h"
#include "core/config_text.h"
#include "core/config_values.h"
#include "core/listen_address.h"
#include "core/routing.h"
#include "core/start_order.h"

namespace workerpool::config_parser {
namespace {

constexpr std::string_view kLogLevels[] = {"trace", "debug",    "info", "warn",
                                           "error", "critical", "off"};
constexpr std::string_view kLogFormats[] = {"text", "json"};

void ReadPool(MapReader& pool, const ConfigEnvironment& environment,
              PoolConfig* config) {
  bool name_ok = pool.Text("name", &config->name, Need::kRequired, CheckName);
  pool.Text("control_socket", &config->control_socket, Need::kOptional,
            CheckSocketPath);
  pool.DurationValue("stop_timeout", &config->stop_timeout);
  pool.Text("metrics", &config->metrics, Need::kOptional, CheckHostPort);
  if (std::optional<MapReader> log = pool.Map("log")) {
    log->OneOf("level", &config->log.level, kLogLevels);
    log->OneOf("format", &config->log.format, kLogFormats);
    log->Finish();
  }
  pool.Finish();

  if (name_ok && !pool.Has("control_socket")) {
    config->control_socket =
        DefaultControlSocket(config->name, environment.runtime_directory);
    Status fits = CheckSocketPath(config->control_socket);
    if (!fits.ok()) {
      pool.ValueError(
          "name", "the default control socket does not fit: " + fits.message() +
                      "; set pool.control_socket to a shorter "
                      "path");
    }
  }
}

void CheckGroupNames(ErrorList* errors, const std::vector<GroupConfig>& groups,
                     const std::vector<GroupSource>& sources) {
  for (std::size_t i = 0; i < groups.size(); ++i) {
    if (!sources[i].name_ok) continue;
    for (std::size_t first = 0; first < i; ++first) {
      if (!sources[first].name_ok || groups[first].name != groups[i].name) {
        continue;
      }
      errors->Add(sources[i].name_position,
                  "groups[" + std::to_string(i) + "].name",
                  "duplicate group name " + Quote(groups[i].name) +
                      ": already used by groups[" + std::to_string(first) +
                      "] at line " + std::to_string(groups[first].line));
      break;
    }
  }
}

bool IsWildcardHost(const std::string& host) {
  return host == "0.0.0.0" || host == "::" || host == "*";
}

// A reactor's listen address must not be the pool's own control socket or
// metrics endpoint: the Watcher binds all three, and the second bind would
// fail at start (or, for a unix path, replace the first).
void CheckListenClashes(ErrorList* errors, const PoolConfig& pool,
                        const std::vector<GroupSource>& sources) {
  std::optional<ListenAddress> metrics;
  if (!pool.metrics.empty()) {
    Result<ListenAddress> parsed = ParseListenAddress(pool.metrics);
    if (parsed.ok()) metrics = *parsed;
  }
  for (std::size_t i = 0; i < pool.groups.size(); ++i) {
    const GroupConfig& group = pool.groups[i];
    if (!sources[i].listen.IsList()) {
      continue;
    }
    for (std::size_t j = 0; j < group.listen.size(); ++j) {
      Result<ListenAddress> address = ParseListenAddress(group.listen[j]);
      if (!address.ok()) continue;
      std::string clash;
      if (address->kind == ListenAddress::Kind::kUnix &&
          address->path == pool.control_socket) {
        clash = "is the pool's control socket (pool.control_socket)";
      } else if (metrics && address->kind == ListenAddress::Kind::kTcp &&
                 address->port == metrics->port &&
                 (address->host == metrics->host ||
                  IsWildcardHost(address->host) ||
                  IsWildcardHost(metrics->host))) {
        clash =
            "takes the port of the pool's metrics endpoint (pool.metrics: " +
            pool.metrics + ")";
      }
      if (clash.empty()) continue;
      const YamlNode entry = j < sources[i].listen.size() ? sources[i].listen[j]
                                                          : sources[i].listen;
      errors->Add(
          entry.Position(),
          "groups[" + std::to_string(i) + "].listen[" + std::to_string(j) + "]",
          Quote(group.listen[j]) + " " + clash + "; choose another address");
    }
  }
}

void CheckRoutes(ErrorList* errors, const PoolConfig& pool,
                 const std::vector<GroupSource>& sources) {
  std::vector<std::string_view> names;
  for (std::size_t i = 0; i < pool.groups.size(); ++i) {
    bool listed = std::find(names.begin(), names.end(), pool.groups[i].name) !=
                  names.end();
    if (sources[i].name_ok && !listed) names.push_back(pool.groups[i].name);
  }
  for (std::size_t i = 0; i < pool.groups.size(); ++i) {
    const GroupConfig& from = pool.groups[i];
    const YamlNode& list = sources[i].routes_to;
    if (!list.IsList()) continue;
    for (std::size_t j = 0; j < from.routes_to.size() && j < list.size(); ++j) {
      const std::string& target = from.routes_to[j];
      std::string path = "groups[" + std::to_string(i) + "].routes_to[" +
                         std::to_string(j) + "]";
      TextPosition position = list[j].Position();
      auto earlier =
          std::find(from.routes_to.begin(), from.routes_to.begin() + j, target);
      if (earlier != from.routes_to.begin() + j) {
        errors->Add(position, path,
                    "group " + Quote(target) + " is listed twice");
        continue;
      }
      std::size_t target_index = 0;
      while (target_index < pool.groups.size() &&
             !(sources[target_index].name_ok &&
               pool.groups[target_index].name == target)) {
        ++target_index;
      }
      if (target_index == pool.groups.size()) {
        std::string message = "unknown group " + Quote(target);
        std::string_view nearest = NearestOf(target, names);
        if (!nearest.empty()) {
          message += " (did you mean " + Quote(nearest) + "?)";
        } else if (names.empty()) {
          message += "; the pool has no groups";
        } else {
          message += "; groups are: " + Join(names, ", ");
        }
        errors->Add(position, path, std::move(message));
        continue;
      }
      const GroupConfig& to = pool.groups[target_index];
      if (!sources[i].type_ok || !sources[target_index].type_ok) continue;
      if (!TypeMayRequest(from.type, to.type)) {
        errors->Add(
            position, path,
            "route " + Quote(from.name) + " -> " + Quote(to.name) +
                " is not allowed: " + RuleViolation(from.type, to.type));
      } else if (to.rabbitmq && !to.rabbitmq->publish) {
        // The built-in rabbitmq-service serves requests only as an outbox;
        // without publish every request would be refused at run time.
        errors->Add(position, path,
                    "group " + Quote(to.name) +
                        " runs rabbitmq-service without rabbitmq.publish: it "
                        "only consumes and serves no requests; add "
                        "rabbitmq.publish (routing_key, mode) to it or route "
                        "to a job group");
      }
    }
  }
}

// autoscale.min 0 leaves a job group without a process while it is idle.
// That suits only a group fed by services alone: a RabbitMQ message waits
// in its queue (and the services report the backlog) while the first
// process starts. A reactor's HTTP client would wait on an open connection
// instead, and a group nothing routes to would never get work to start it.
void CheckAutoscaleFromZero(ErrorList* errors, const PoolConfig& pool,
                            const std::vector<GroupSource>& sources) {
  for (std::size_t i = 0; i < pool.groups.size(); ++i) {
    const GroupConfig& group = pool.groups[i];
    if (!sources[i].autoscale_min.IsScalar() || !group.autoscale ||
        group.autoscale->min != 0 || !sources[i].name_ok) {
      continue;
    }
    std::string service, other;
    for (std::size_t j = 0; j < pool.groups.size(); ++j) {
      const GroupConfig& from = pool.groups[j];
      if (!sources[j].type_ok || !sources[j].routes_to.IsList() ||
          std::find(from.routes_to.begin(), from.routes_to.end(), group.name) ==
              from.routes_to.end()) {
        continue;
      }
      std::string& found = from.type == GroupType::kService ? service : other;
      if (found.empty()) found = from.name;
    }
    if (!service.empty() && other.empty()) continue;
    std::string message =
        "min 0 is only for a job group fed by services alone (a service "
        "group lists it in routes_to): their RabbitMQ messages wait in the "
        "queue while the first process starts; ";
    if (!other.empty()) {
      message += "group " + Quote(other) + " also routes to " +
                 Quote(group.name) +
                 " and its requests would fail while no process runs";
    } else {
      message += "no service routes to " + Quote(group.name) +
                 ", so nothing would ever start its first process";
    }
    errors->Add(sources[i].autoscale_min.Position(),
                "groups[" + std::to_string(i) + "].autoscale.min",
                message + "; use min: 1");
  }
}

// depends_on across groups: known names, no self, no cycle. Only entries
// whose list was read are checked (a bad list has its own error).
void CheckDependsOn(ErrorList* errors, const PoolConfig& pool,
                    const std::vector<GroupSource>& sources) {
  for (const DependencyProblem& problem : CheckDependencies(pool.groups)) {
    const YamlNode& list = sources[problem.group].depends_on;
    if (!list.IsList() || problem.entry >= list.size()) continue;
    errors->Add(list[problem.entry].Position(),
                "groups[" + std::to_string(problem.group) + "].depends_on[" +
                    std::to_string(problem.entry) + "]",
                problem.message);
  }
}

}  // namespace

void ReadDocument(ErrorList* errors, const YamlNode& document,
                  const ConfigEnvironment& environment, PoolConfig* config) {
  MapReader root(errors, document, "");
  if (!root.is_map()) {
    errors->Add(document.Position(), "",
                "the pool definition must be a mapping with keys 'pool' and "
                "'groups', got " +
                    Describe(document));
    return;
  }
  if (std::optional<MapReader> pool = root.Map("pool", Need::kRequired)) {
    ReadPool(*pool, environment, config);
  }

  std::vector<GroupSource> sources;
  const MapReader::Entry* groups = root.Lookup("groups");
  if (groups == nullptr) {
    errors->Add(document.Position(), "groups",
                "missing required key 'groups'; list the groups, or write "
                "'groups: []' for a pool without any");
  } else if (groups->value.IsNull()) {
    errors->Add(groups->key_node.Position(), "groups",
                "has no value; list the groups, or write 'groups: []' for a "
                "pool without any");
  } else if (!groups->value.IsList()) {
    errors->Add(groups->value.Position(), "groups",
                "must be a list of groups (each '- name: ...'), got " +
                    Describe(groups->value));
  } else {
    config->groups.resize(groups->value.size());
    sources.resize(groups->value.size());
    for (std::size_t i = 0; i < groups->value.size(); ++i) {
      ReadGroup(errors, groups->value[i], i, environment, &config->groups[i],
                &sources[i]);
    }
  }
  root.Finish();

  CheckGroupNames(errors, config->groups, sources);
  CheckRoutes(errors, *config, sources);
  CheckListenClashes(errors, *config, sources);
  CheckAutoscaleFromZero(errors, *config, sources);
  CheckDependsOn(errors, *config, sources);
}

}  // namespace workerpool::config_parser
