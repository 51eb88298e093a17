#include "core/listen_address.h"

#include <charconv>

namespace workerpool {
namespace {

bool ParseNumber(std::string_view text, int base, int* out) {
  if (text.empty()) return false;
  auto [end, error] =
      std::from_chars(text.data(), text.data() + text.size(), *out, base);
  return error == std::errc() && end == text.data() + text.size();
}

}  // namespace

std::string ListenAddress::FdName() const {
  std::string name =
      kind == Kind::kUnix ? "unix-" + path : host + "-" + std::to_string(port);
  for (char& c : name) {
    if (c == ':' || c == '/' || c == ' ') c = '_';
  }
  return name;
}

Result<ListenAddress> ParseListenAddress(const std::string& text) {
  ListenAddress address;
  if (text.starts_with("unix:")) {
    address.kind = ListenAddress::Kind::kUnix;
    std::string rest = text.substr(5);
    size_t comma = rest.find(',');
    address.path = rest.substr(0, comma);
    if (address.path.empty() || address.path[0] != '/') {
      return Status::Error("'" + text +
                           "': a unix listen address needs an absolute path, "
                           "e.g. unix:/run/app.sock");
    }
    if (address.path.size() >= 108) {
      return Status::Error("'" + text + "': unix socket path is too long");
    }
    if (comma != std::string::npos) {
      std::string option = rest.substr(comma + 1);
      if (!option.starts_with("mode=") ||
          !ParseNumber(std::string_view(option).substr(5), 8, &address.mode) ||
          address.mode < 0 || address.mode > 0777) {
        return Status::Error("'" + text +
                             "': the only option is mode=OCTAL, e.g. "
                             "unix:/run/app.sock,mode=0660");
      }
    }
    return address;
  }
  std::string port_text;
  if (text.starts_with("[")) {
    size_t close = text.find("]:");
    if (close == std::string::npos) {
      return Status::Error("'" + text + "': expected [IPv6]:PORT");
    }
    address.host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return Status::Error("'" + text +
                           "': expected HOST:PORT, [IPv6]:PORT or unix:/PATH");
    }
    address.host = text.substr(0, colon);
    if (address.host.find(':') != std::string::npos) {
      return Status::Error("'" + text +
                           "': put an IPv6 address in brackets: [::1]:8080");
    }
    port_text = text.substr(colon + 1);
  }
  if (!ParseNumber(port_text, 10, &address.port) || address.port < 1 ||
      address.port > 65535) {
    return Status::Error("'" + text + "': port must be 1..65535, got '" +
                         port_text + "'");
  }
  if (address.host.empty()) {
    return Status::Error("'" + text + "': missing host (use 0.0.0.0 for all)");
  }
  return address;
}

}  // namespace workerpool
