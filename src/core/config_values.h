// Checks on single values of the pool definition. Each returns why the
// value is wrong, naming what was given and what is accepted; the caller
// adds where it is. Pure: a group's `user` is resolved through the lookup
// the caller injects (src/core/config.h, ConfigEnvironment).
#pragma once

#include <string>
#include <string_view>

#include "core/config.h"
#include "core/status.h"

namespace workerpool::config_parser {

// A pool or group name: one or more letters, digits, '_', '.' or '-'.
Status CheckName(std::string_view name);

Status CheckNotEmpty(std::string_view text);

// A Unix socket path that fits in sockaddr_un's sun_path.
Status CheckSocketPath(std::string_view path);

// HOST:PORT as an endpoint address (pool.metrics); IPv6 hosts in brackets.
Status CheckHostPort(std::string_view address);

// A reactor's listen address (src/core/listen_address.h).
Status CheckListenAddress(std::string_view text);

// A RabbitMQ URL. One grammar for it: the one the rabbitmq-service parses at
// every start (src/core/amqp_url.h), so a URL the pool's check accepts is one
// the service accepts too.
Status CheckAmqpUrl(std::string_view url);

// An env key a group may set: not one the pool sets for every child
// (WORKERPOOL_*, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).
Status CheckReservedEnvName(std::string_view name);

// A group's `user` resolved through ENVIRONMENT's lookup: unknown, and a
// lookup that failed, are errors that say which.
Result<UserIds> ResolveUser(const ConfigEnvironment& environment,
                            const std::string& name);

}  // namespace workerpool::config_parser
