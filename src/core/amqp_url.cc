#include "core/amqp_url.h"

#include <charconv>

namespace workerpool {
namespace {

constexpr char kExpected[] =
    "expected amqp://USER:PASSWORD@HOST[:PORT][/VHOST] (or amqps://)";

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes TEXT; false on a malformed escape.
bool Decode(std::string_view text, std::string* out) {
  out->clear();
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out->push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size()) return false;
    int high = HexDigit(text[i + 1]);
    int low = HexDigit(text[i + 2]);
    if (high < 0 || low < 0) return false;
    out->push_back(static_cast<char>(high * 16 + low));
    i += 2;
  }
  return true;
}

// Percent-encodes what would not survive in a URL's path or userinfo.
std::string Encode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
                 c == '~';
    if (plain) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

bool ParseNumber(std::string_view text, long max, long* value) {
  if (text.empty()) return false;
  long parsed = 0;
  auto [end, error] =
      std::from_chars(text.data(), text.data() + text.size(), parsed);
  if (error != std::errc() || end != text.data() + text.size()) return false;
  if (parsed < 0 || parsed > max) return false;
  *value = parsed;
  return true;
}

Status Error(std::string_view shown, const std::string& what) {
  return Status::Error("invalid RabbitMQ URL '" + std::string(shown) +
                       "': " + what);
}

// The URL with any password hidden, for error messages.
std::string HidePassword(std::string_view url) {
  std::size_t scheme = url.find("://");
  if (scheme == std::string_view::npos) return std::string(url);
  std::size_t begin = scheme + 3;
  std::size_t end = url.find_first_of("/?#", begin);
  std::string_view authority =
      url.substr(begin, end == std::string_view::npos ? std::string_view::npos
                                                      : end - begin);
  std::size_t at = authority.rfind('@');
  if (at == std::string_view::npos) return std::string(url);
  std::size_t colon = authority.substr(0, at).find(':');
  if (colon == std::string_view::npos) return std::string(url);
  return std::string(url.substr(0, begin + colon + 1)) + "***" +
         std::string(url.substr(begin + at));
}

}  // namespace

std::string AmqpUrl::Redacted() const {
  // Appended piece by piece: GCC 12 at -O3 warns (-Wrestrict, a false
  // positive) about `out += "[" + host + "]"`.
  std::string out = tls ? "amqps://" : "amqp://";
  out.append(Encode(user)).append(":***@");
  const bool ipv6 = host.find(':') != std::string::npos;
  if (ipv6) out.push_back('[');
  out.append(host);
  if (ipv6) out.push_back(']');
  out.push_back(':');
  out.append(std::to_string(port));
  // The default vhost "/" is written as no path at all.
  if (vhost != "/") out.append("/").append(Encode(vhost));
  return out;
}

std::string AmqpUrl::Describe() const {
  std::string shown_host =
      host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return shown_host + ":" + std::to_string(port) + " vhost '" + vhost + "'";
}

Result<AmqpUrl> ParseAmqpUrl(std::string_view text) {
  const std::string shown = HidePassword(text);
  AmqpUrl url;
  std::string_view rest;
  if (text.starts_with("amqp://")) {
    rest = text.substr(7);
  } else if (text.starts_with("amqps://")) {
    rest = text.substr(8);
    url.tls = true;
    url.port = 5671;
  } else {
    return Error(shown, std::string("must start with amqp:// or amqps://; ") +
                            kExpected);
  }
  if (text.find_first_of(" \t\r\n") != std::string_view::npos) {
    return Error(shown, std::string("contains white space; ") + kExpected);
  }
  if (std::size_t hash = rest.find('#'); hash != std::string_view::npos) {
    return Error(shown, "a fragment ('#...') has no meaning here");
  }

  std::string_view query;
  if (std::size_t question = rest.find('?');
      question != std::string_view::npos) {
    query = rest.substr(question + 1);
    rest = rest.substr(0, question);
  }
  std::string_view authority = rest;
  std::string_view path;
  bool has_path = false;
  if (std::size_t slash = rest.find('/'); slash != std::string_view::npos) {
    authority = rest.substr(0, slash);
    path = rest.substr(slash + 1);
    has_path = true;
  }

  std::string_view host_port = authority;
  if (std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    host_port = authority.substr(at + 1);
    std::string_view user = userinfo;
    std::string_view password;
    bool has_password = false;
    if (std::size_t colon = userinfo.find(':');
        colon != std::string_view::npos) {
      user = userinfo.substr(0, colon);
      password = userinfo.substr(colon + 1);
      has_password = true;
    }
    if (!Decode(user, &url.user)) {
      return Error(shown, "bad %-escape in the user name");
    }
    if (has_password && !Decode(password, &url.password)) {
      return Error(shown, "bad %-escape in the password");
    }
  }

  std::string_view port;
  bool has_port = false;
  if (host_port.starts_with('[')) {
    std::size_t close = host_port.find(']');
    if (close == std::string_view::npos) {
      return Error(shown,
                   std::string("unclosed '[' in the host; ") + kExpected);
    }
    url.host = std::string(host_port.substr(1, close - 1));
    std::string_view after = host_port.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        return Error(
            shown, std::string("unexpected text after the host; ") + kExpected);
      }
      port = after.substr(1);
      has_port = true;
    }
  } else if (std::size_t colon = host_port.find(':');
             colon != std::string_view::npos) {
    url.host = std::string(host_port.substr(0, colon));
    port = host_port.substr(colon + 1);
    has_port = true;
  } else {
    url.host = std::string(host_port);
  }
  if (url.host.empty()) {
    return Error(shown, std::string("no host; ") + kExpected);
  }
  if (has_port) {
    long value = 0;
    if (!ParseNumber(port, 65535, &value) || value == 0) {
      return Error(shown, "port '" + std::string(port) +
                              "' is not a number from 1 to 65535");
    }
    url.port = static_cast<int>(value);
  }

  if (has_path) {
    if (path.find('/') != std::string_view::npos) {
      return Error(shown,
                   "the vhost may not contain '/': write it as %2F (the "
                   "default vhost '/' is the URL with no path at all)");
    }
    if (!Decode(path, &url.vhost)) {
      return Error(shown, "bad %-escape in the vhost");
    }
  }

  while (!query.empty()) {
    std::size_t amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view()
                                          : query.substr(amp + 1);
    if (item.empty()) continue;
    std::size_t equals = item.find('=');
    std::string_view key = item.substr(0, equals);
    std::string_view value =
        equals == std::string_view::npos ? "" : item.substr(equals + 1);
    long number = 0;
    if (key == "heartbeat") {
      if (!ParseNumber(value, 65535, &number)) {
        return Error(shown, "heartbeat '" + std::string(value) +
                                "' is not a number of seconds (0..65535)");
      }
      url.heartbeat_s = static_cast<int>(number);
    } else if (key == "connection_timeout") {
      if (!ParseNumber(value, 3600000, &number) || number == 0) {
        return Error(shown, "connection_timeout '" + std::string(value) +
                                "' is not a number of milliseconds");
      }
      url.connection_timeout_ms = static_cast<int>(number);
    } else {
      return Error(shown, "unknown query parameter '" + std::string(key) +
                              "' (known: heartbeat, connection_timeout)");
    }
  }
  return url;
}

}  // namespace workerpool
