#include "core/config_values.h"

#include <sys/un.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <system_error>

#include "core/amqp_url.h"
#include "core/config_text.h"
#include "core/listen_address.h"

namespace workerpool::config_parser {
namespace {

// sun_path holds the path and its terminating NUL.
constexpr std::size_t kMaxSocketPathBytes = sizeof(sockaddr_un::sun_path) - 1;

bool IsValidName(std::string_view name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

Status CheckPort(std::string_view address, std::string_view port) {
  int number = 0;
  auto [end, error] =
      std::from_chars(port.data(), port.data() + port.size(), number);
  bool whole = end == port.data() + port.size();
  if (!IsDecimal(port) || error != std::errc() || !whole || number < 1 ||
      number > 65535) {
    return Status::Error("invalid port " + Quote(port) + " in " +
                         Quote(address) + ": expected a number from 1 to " +
                         "65535");
  }
  return Status::Ok();
}

}  // namespace

Status CheckName(std::string_view name) {
  if (IsValidName(name)) return Status::Ok();
  return Status::Error("invalid name " + Quote(name) +
                       ": use one or more letters, digits, '_', '.' or '-'");
}

Status CheckNotEmpty(std::string_view text) {
  if (!text.empty()) return Status::Ok();
  return Status::Error("must not be empty");
}

Status CheckSocketPath(std::string_view path) {
  if (path.empty()) return Status::Error("must not be empty");
  if (path.size() > kMaxSocketPathBytes) {
    return Status::Error("socket path " + Quote(path) + " is " +
                         std::to_string(path.size()) +
                         " bytes; a Unix socket path may have at most " +
                         std::to_string(kMaxSocketPathBytes));
  }
  return Status::Ok();
}

Status CheckHostPort(std::string_view address) {
  static constexpr char kExpected[] =
      "expected HOST:PORT such as 127.0.0.1:9464 or [::1]:9464";
  std::size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) {
    return Status::Error("address " + Quote(address) +
                         " has no port: " + kExpected);
  }
  std::string_view host = address.substr(0, colon);
  if (!host.empty() && host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') {
      return Status::Error("invalid address " + Quote(address) + ": " +
                           kExpected);
    }
  } else if (host.find(':') != std::string_view::npos) {
    return Status::Error("invalid address " + Quote(address) +
                         ": put an IPv6 host in brackets, as in [::1]:9464");
  }
  if (host.empty()) {
    return Status::Error("address " + Quote(address) + " has no host: " +
                         kExpected + " (0.0.0.0 for every interface)");
  }
  return CheckPort(address, address.substr(colon + 1));
}

Status CheckListenAddress(std::string_view text) {
  return ParseListenAddress(std::string(text)).status();
}

Status CheckAmqpUrl(std::string_view url) { return ParseAmqpUrl(url).status(); }

Status CheckReservedEnvName(std::string_view name) {
  if (name.empty())
    return Status::Error("an environment variable needs a name");
  if (name.find('=') != std::string_view::npos) {
    return Status::Error("environment variable name " + Quote(name) +
                         " must not contain '='");
  }
  if (name.starts_with("WORKERPOOL_") || name == "LISTEN_FDS" ||
      name == "LISTEN_PID" || name == "LISTEN_FDNAMES") {
    return Status::Error(Quote(name) +
                         " is set by the pool for every child and may not be "
                         "overridden");
  }
  return Status::Ok();
}

Result<UserIds> ResolveUser(const ConfigEnvironment& environment,
                            const std::string& name) {
  Result<std::optional<UserIds>> found =
      environment.look_up_user ? environment.look_up_user(name)
                               : Result<std::optional<UserIds>>(std::nullopt);
  if (!found.ok()) {
    return Status::Error("cannot look up user " + Quote(name) + ": " +
                         found.status().message());
  }
  if (!found->has_value()) {
    return Status::Error("unknown user " + Quote(name) +
                         ": not in the passwd database (give a user name "
                         "from /etc/passwd, or remove 'user')");
  }
  return **found;
}

}  // namespace workerpool::config_parser
