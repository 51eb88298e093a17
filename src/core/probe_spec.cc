#include "core/probe_spec.h"

#include <arpa/inet.h>

#include <charconv>

namespace workerpool {
namespace {

constexpr std::string_view kPlaceholder = "{index}";

std::string Quoted(std::string_view text) {
  return "'" + std::string(text) + "'";
}

// HOST:PORT into ADDRESS; WHAT names the whole value in errors.
Status ParseHostPort(std::string_view text, std::string_view what,
                     ProbeAddress* address) {
  const std::string expected =
      "expected HOST:PORT such as 127.0.0.1:7000, [::1]:7000 or "
      "localhost:7000";
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    return Status::Error(Quoted(what) + " has no port: " + expected);
  }
  std::string_view host = text.substr(0, colon);
  std::string_view port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    unsigned char buffer[16];
    if (inet_pton(AF_INET6, std::string(host).c_str(), buffer) != 1) {
      return Status::Error(Quoted(what) + ": " + Quoted(host) +
                           " is not an IPv6 address");
    }
  } else if (host == "localhost") {
    host = "127.0.0.1";
  } else {
    unsigned char buffer[4];
    if (host.empty() ||
        inet_pton(AF_INET, std::string(host).c_str(), buffer) != 1) {
      return Status::Error(
          Quoted(what) + ": the host must be an IP address or localhost, got " +
          Quoted(host) + " (a probe does not wait on name resolution)");
    }
  }
  int number = 0;
  auto [end, error] =
      std::from_chars(port.data(), port.data() + port.size(), number);
  if (port.empty() || error != std::errc() ||
      end != port.data() + port.size() || number < 1 || number > 65535) {
    return Status::Error(Quoted(what) + ": invalid port " + Quoted(port) +
                         ", expected a number from 1 to 65535");
  }
  address->host = std::string(host);
  address->port = number;
  return Status::Ok();
}

}  // namespace

std::string ExpandIndex(std::string_view text, int index) {
  std::string out;
  const std::string number = std::to_string(index);
  std::size_t from = 0;
  for (;;) {
    const std::size_t found = text.find(kPlaceholder, from);
    if (found == std::string_view::npos) break;
    out.append(text.substr(from, found - from));
    out += number;
    from = found + kPlaceholder.size();
  }
  out.append(text.substr(from));
  return out;
}

Result<ProbeAddress> ParseTcpProbe(std::string_view text) {
  ProbeAddress address;
  if (Status parsed = ParseHostPort(text, text, &address); !parsed.ok()) {
    return parsed;
  }
  return address;
}

Result<ProbeAddress> ParseHttpProbe(std::string_view text) {
  constexpr std::string_view kScheme = "http://";
  if (text.starts_with("https://")) {
    return Status::Error(Quoted(text) +
                         ": https is not supported; probe the plain http "
                         "port (http://127.0.0.1:PORT/PATH)");
  }
  if (!text.starts_with(kScheme)) {
    return Status::Error(Quoted(text) +
                         " is not an http URL; expected "
                         "http://HOST[:PORT]/PATH such as "
                         "http://127.0.0.1:7000/healthz");
  }
  std::string_view rest = text.substr(kScheme.size());
  const std::size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  ProbeAddress address;
  address.path =
      slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  for (char c : address.path) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      return Status::Error(Quoted(text) +
                           ": the path must not hold spaces or control "
                           "characters");
    }
  }
  address.authority = std::string(authority);
  // No port: 80, unless the host is a bracketed IPv6 address alone.
  const bool has_port = !authority.empty() && authority.back() != ']' &&
                        authority.find(':') != std::string_view::npos;
  std::string host_port =
      has_port ? std::string(authority) : std::string(authority) + ":80";
  if (Status parsed = ParseHostPort(host_port, text, &address); !parsed.ok()) {
    return parsed;
  }
  return address;
}

Result<int> ParseHttpStatusLine(std::string_view line) {
  // "HTTP/1.1 200 OK": a version, one space, three digits.
  if (!line.starts_with("HTTP/") || line.size() < 12) {
    return Status::Error("not an HTTP status line");
  }
  const std::size_t space = line.find(' ');
  if (space == std::string_view::npos || line.size() < space + 4) {
    return Status::Error("not an HTTP status line");
  }
  int status = 0;
  for (std::size_t i = space + 1; i < space + 4; ++i) {
    if (line[i] < '0' || line[i] > '9') {
      return Status::Error("not an HTTP status line");
    }
    status = status * 10 + (line[i] - '0');
  }
  if (line.size() > space + 4 && line[space + 4] != ' ' &&
      line[space + 4] != '\r' && line[space + 4] != '\n') {
    return Status::Error("not an HTTP status line");
  }
  return status;
}

}  // namespace workerpool
