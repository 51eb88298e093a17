// What a ready or health probe (groups[].ready, groups[].health) aims at,
// and {index}, the one placeholder of a group's command, env, cwd and probes
// (supervisord's %(process_num)d). Pure: parsing and text only; the probes
// themselves run in the Watcher (watcher/probes.h).
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace workerpool {

// TEXT with every "{index}" replaced by INDEX. Any other brace is left as
// it is (shell scripts write ${VAR}).
std::string ExpandIndex(std::string_view text, int index);

// Where a tcp or http probe connects, and what an http probe asks for.
struct ProbeAddress {
  std::string host;  // a numeric IPv4 or IPv6 address, without brackets
  int port = 0;      // 1..65535
  std::string path;  // http: from the URL, "/" when it has none
  // http: the Host header, as the URL wrote it ("localhost:7000").
  std::string authority;
};

// A tcp probe's "HOST:PORT": an IPv4 address, [an IPv6 address] or
// localhost (127.0.0.1), and a port. Names are refused: a probe must not
// wait on a resolver.
Result<ProbeAddress> ParseTcpProbe(std::string_view text);

// An http probe's "http://HOST[:PORT][/PATH]", HOST as for tcp; PORT 80
// when absent. https is refused (a probe does not speak TLS).
Result<ProbeAddress> ParseHttpProbe(std::string_view text);

// The status code of an HTTP response's first line ("HTTP/1.1 200 OK");
// an error when LINE is not one.
Result<int> ParseHttpStatusLine(std::string_view line);

// An http probe passes on 2xx and 3xx.
inline bool HttpProbePasses(int status) {
  return status >= 200 && status < 400;
}

}  // namespace workerpool
