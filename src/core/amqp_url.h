// RabbitMQ connection URLs, as written in a service group's `rabbitmq.url`:
//
//   amqp://USER:PASSWORD@HOST[:PORT][/VHOST][?heartbeat=S&connection_timeout=MS]
//   amqps://...                                  (TLS; default port 5671)
//
// The vhost follows the RabbitMQ URI spec and amqp_parse_url: no path means
// the default vhost "/"; a lone "/" names the empty vhost ""; "/%2f" is "/".
// User, password and vhost are percent-decoded. Missing user and password
// default to guest/guest, as in librabbitmq. Pure: no sockets, no lookups.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace workerpool {

struct AmqpUrl {
  bool tls = false;
  std::string user = "guest";
  std::string password = "guest";
  std::string host;
  int port = 5672;
  std::string vhost = "/";
  int heartbeat_s = -1;            // from ?heartbeat=; -1: the caller's default
  int connection_timeout_ms = -1;  // from ?connection_timeout=; -1: default

  // The URL with the password replaced by "***", for logs.
  std::string Redacted() const;
  // "HOST:PORT vhost 'V'", for messages about this broker.
  std::string Describe() const;
};

// Parses TEXT; the error names what is wrong (never the password).
Result<AmqpUrl> ParseAmqpUrl(std::string_view text);

}  // namespace workerpool
