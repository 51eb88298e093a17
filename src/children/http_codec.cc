#include "children/http_codec.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace workerpool::http {
namespace {

using json = nlohmann::json;

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

// Request headers the reactor reads or forwards to jobs; others are dropped.
constexpr std::string_view kKeptHeaders[] = {
    "content-type",    "content-encoding", "accept",
    "user-agent",      "x-request-id",     "x-correlation-id",
    "x-forwarded-for", "x-priority",       "expect",
};
// Of those, the ones a job sees in the request meta, besides every "x-"
// header (kept and forwarded whatever the rest of its name).
constexpr std::string_view kForwardedHeaders[] = {
    "content-type",
    "content-encoding",
    "accept",
    "user-agent",
};
// Headers of the answer that the reactor writes itself; a job may not.
constexpr std::string_view kReservedReplyHeaders[] = {
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
};

// X-Priority is the reactor's (the request's pool priority, which the job
// has as such); every other "x-" header is kept and forwarded.
bool IsXHeader(std::string_view name) {
  return name.starts_with("x-") && name != "x-priority";
}

// RFC 9110 token characters (a header name).
bool IsTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
      (c >= '0' && c <= '9')) {
    return true;
  }
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsValidUtf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    auto c = static_cast<unsigned char>(text[i]);
    std::size_t extra;
    uint32_t value;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1;
      value = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2;
      value = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3;
      value = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false;  // cut short
    for (std::size_t k = 1; k <= extra; ++k) {
      auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xc0) != 0x80) return false;
      value = (value << 6) | (next & 0x3f);
    }
    // Overlong forms, surrogates, beyond U+10FFFF.
    if ((extra == 1 && value < 0x80) || (extra == 2 && value < 0x800) ||
        (extra == 3 && value < 0x10000) || value > 0x10ffff ||
        (value >= 0xd800 && value <= 0xdfff)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string Base64(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t n = (static_cast<unsigned char>(bytes[i]) << 16) |
                 (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                 static_cast<unsigned char>(bytes[i + 2]);
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i < bytes.size()) {
    uint32_t n = static_cast<unsigned char>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) {
      n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    }
    out += kAlphabet[n >> 18];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

template <std::size_t N>
bool IsOneOf(std::string_view name, const std::string_view (&names)[N]) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

// Header values go back out only when they cannot split a header.
bool IsSafeHeaderValue(std::string_view value) {
  return std::none_of(value.begin(), value.end(), [](char c) {
    return (static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f;
  });
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decoding; an error on a broken escape.
Result<std::string> PercentDecode(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size()) return Status::Error("truncated '%' escape");
    int high = HexValue(text[i + 1]);
    int low = HexValue(text[i + 2]);
    if (high < 0 || low < 0) return Status::Error("malformed '%' escape");
    out.push_back(static_cast<char>(high * 16 + low));
    i += 2;
  }
  return out;
}

}  // namespace

const std::string* Request::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return &value;
  }
  return nullptr;
}

// ---------------------------------------------------------------- parser

RequestParser::RequestParser(ParserLimits limits) : limits_(limits) {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
  http_parser_settings_init(&settings_);
  settings_.on_message_begin = &RequestParser::OnMessageBegin;
  settings_.on_url = &RequestParser::OnUrl;
  settings_.on_header_field = &RequestParser::OnHeaderField;
  settings_.on_header_value = &RequestParser::OnHeaderValue;
  settings_.on_headers_complete = &RequestParser::OnHeadersComplete;
  settings_.on_body = &RequestParser::OnBody;
  settings_.on_message_complete = &RequestParser::OnMessageComplete;
}

RequestParser::Outcome RequestParser::Feed(std::string_view data,
                                           std::size_t* consumed) {
  *consumed = 0;
  if (failed_) return Outcome::kError;
  if (complete_) return Outcome::kRequest;
  if (HTTP_PARSER_ERRNO(&parser_) == HPE_PAUSED) {
    http_parser_pause(&parser_, 0);
  }
  if (data.empty()) return Outcome::kNeedMore;
  std::size_t used =
      http_parser_execute(&parser_, &settings_, data.data(), data.size());
  *consumed = std::min(used, data.size());
  if (complete_ && !failed_) return Outcome::kRequest;
  enum http_errno error = HTTP_PARSER_ERRNO(&parser_);
  if (error == HPE_OK && *consumed == data.size()) return Outcome::kNeedMore;
  if (!failed_) {
    failed_ = true;
    switch (error) {
      case HPE_HEADER_OVERFLOW:
        error_status_ = 431;
        break;
      case HPE_INVALID_VERSION:
        error_status_ = 505;
        break;
      default:
        error_status_ = 400;
    }
    error_text_ = error == HPE_OK ? "unexpected data after the request"
                                  : http_errno_description(error);
  }
  in_request_ = false;
  return Outcome::kError;
}

Request RequestParser::TakeRequest() {
  Request request = complete_ ? std::move(*complete_) : Request{};
  complete_.reset();
  return request;
}

bool RequestParser::TakeContinueWanted() {
  bool wanted = continue_wanted_;
  continue_wanted_ = false;
  return wanted;
}

int RequestParser::Fail(int status, std::string text) {
  failed_ = true;
  error_status_ = status;
  error_text_ = std::move(text);
  // Halts http_parser. Not 1: from on_headers_complete, 1 and 2 mean "no
  // body follows" and would let the request through.
  return -1;
}

void RequestParser::EndHeader() {
  if (!in_value_ && field_.empty()) return;
  std::transform(field_.begin(), field_.end(), field_.begin(), Lower);
  if (IsOneOf(field_, kKeptHeaders) || IsXHeader(field_)) {
    current_.headers.emplace_back(std::move(field_), std::move(value_));
  }
  field_.clear();
  value_.clear();
  in_value_ = false;
}

int RequestParser::OnMessageBegin(http_parser* parser) {
  auto* self = static_cast<RequestParser*>(parser->data);
  self->current_ = Request{};
  self->field_.clear();
  self->value_.clear();
  self->in_value_ = false;
  self->header_count_ = 0;
  self->in_request_ = true;
  self->continue_wanted_ = false;
  return 0;
}

int RequestParser::OnUrl(http_parser* parser, const char* at,
                         std::size_t length) {
  auto* self = static_cast<RequestParser*>(parser->data);
  if (self->current_.target.size() + length > self->limits_.max_url) {
    return self->Fail(414, "request target longer than " +
                               std::to_string(self->limits_.max_url) +
                               " bytes");
  }
  self->current_.target.append(at, length);
  return 0;
}

int RequestParser::OnHeaderField(http_parser* parser, const char* at,
                                 std::size_t length) {
  auto* self = static_cast<RequestParser*>(parser->data);
  if (self->in_value_ || self->header_count_ == 0) {
    self->EndHeader();
    if (++self->header_count_ > self->limits_.max_headers) {
      return self->Fail(431, "more than " +
                                 std::to_string(self->limits_.max_headers) +
                                 " header lines");
    }
  }
  self->field_.append(at, length);
  return 0;
}

int RequestParser::OnHeaderValue(http_parser* parser, const char* at,
                                 std::size_t length) {
  auto* self = static_cast<RequestParser*>(parser->data);
  self->in_value_ = true;
  self->value_.append(at, length);
  return 0;
}

int RequestParser::OnHeadersComplete(http_parser* parser) {
  auto* self = static_cast<RequestParser*>(parser->data);
  self->EndHeader();
  Request& request = self->current_;
  request.http_major = parser->http_major;
  request.http_minor = parser->http_minor;
  if (parser->http_major != 1) {
    return self->Fail(
        505, "HTTP version " + std::to_string(parser->http_major) + "." +
                 std::to_string(parser->http_minor) + " is not supported");
  }
  const auto method = static_cast<enum http_method>(parser->method);
  request.method = http_method_str(method);
  request.head = method == HTTP_HEAD;
  if (request.target.empty()) return self->Fail(400, "empty request target");
  http_parser_url url;
  http_parser_url_init(&url);
  if (http_parser_parse_url(request.target.data(), request.target.size(),
                            method == HTTP_CONNECT, &url) != 0) {
    return self->Fail(400, "malformed request target");
  }
  if (url.field_set & (1 << UF_PATH)) {
    request.path = request.target.substr(url.field_data[UF_PATH].off,
                                         url.field_data[UF_PATH].len);
  } else {
    request.path = "/";
  }
  if (url.field_set & (1 << UF_QUERY)) {
    request.query = request.target.substr(url.field_data[UF_QUERY].off,
                                          url.field_data[UF_QUERY].len);
  }
  const bool chunked = (parser->flags & F_CHUNKED) != 0;
  if (!chunked && parser->content_length != ULLONG_MAX &&
      parser->content_length > self->limits_.max_body) {
    return self->Fail(413, "body of " + std::to_string(parser->content_length) +
                               " bytes is over the limit of " +
                               std::to_string(self->limits_.max_body));
  }
  const std::string* expect = request.Header("expect");
  if (expect != nullptr && EqualsIgnoreCase(*expect, "100-continue")) {
    self->continue_wanted_ = true;
  }
  return 0;
}

int RequestParser::OnBody(http_parser* parser, const char* at,
                          std::size_t length) {
  auto* self = static_cast<RequestParser*>(parser->data);
  if (self->current_.body.size() + length > self->limits_.max_body) {
    return self->Fail(413, "body over the limit of " +
                               std::to_string(self->limits_.max_body) +
                               " bytes");
  }
  self->current_.body.append(at, length);
  return 0;
}

int RequestParser::OnMessageComplete(http_parser* parser) {
  auto* self = static_cast<RequestParser*>(parser->data);
  Request& request = self->current_;
  request.upgrade = parser->upgrade != 0;
  request.keep_alive = http_should_keep_alive(parser) != 0 && !request.upgrade;
  self->complete_ = std::move(request);
  self->current_ = Request{};
  self->in_request_ = false;
  self->continue_wanted_ = false;
  // Hand this request out before parsing the next one.
  http_parser_pause(parser, 1);
  return 0;
}

// ---------------------------------------------------------------- routing

bool IsValidGroupName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

Route RouteRequest(const Request& request) {
  Route route;
  constexpr std::string_view kJobs = "/jobs/";
  if (request.path == "/healthz") {
    if (request.method == "GET" || request.method == "HEAD") {
      route.kind = Route::Kind::kHealth;
    } else {
      route.kind = Route::Kind::kMethodNotAllowed;
      route.allow = "GET, HEAD";
    }
    return route;
  }
  if (std::string_view(request.path).starts_with(kJobs)) {
    Result<std::string> group =
        PercentDecode(std::string_view(request.path).substr(kJobs.size()));
    if (!group.ok() || !IsValidGroupName(*group)) {
      route.kind = Route::Kind::kNotFound;
      return route;
    }
    if (request.method != "POST") {
      route.kind = Route::Kind::kMethodNotAllowed;
      route.allow = "POST";
      return route;
    }
    route.kind = Route::Kind::kJob;
    route.group = std::move(*group);
    return route;
  }
  route.kind = Route::Kind::kNotFound;
  return route;
}

Result<std::int32_t> ParsePriority(const Request& request,
                                   std::int32_t absent) {
  const std::string* text = request.Header("x-priority");
  if (text == nullptr) return absent;
  std::string_view digits = *text;
  while (!digits.empty() && (digits.front() == ' ' || digits.front() == '\t')) {
    digits.remove_prefix(1);
  }
  while (!digits.empty() && (digits.back() == ' ' || digits.back() == '\t')) {
    digits.remove_suffix(1);
  }
  if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
  std::int32_t value = 0;
  auto [end, error] =
      std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (digits.empty() || error != std::errc() ||
      end != digits.data() + digits.size()) {
    return Status::Error("X-Priority must be a 32-bit integer");
  }
  return value;
}

std::string RequestMeta(const Request& request, std::string_view remote) {
  json headers = json::object();
  for (const auto& [name, value] : request.headers) {
    if ((IsOneOf(name, kForwardedHeaders) || IsXHeader(name)) &&
        !headers.contains(name)) {
      headers[name] = value;
    }
  }
  json meta = {{"http",
                {{"method", request.method},
                 {"path", request.path},
                 {"query", request.query},
                 {"remote", std::string(remote)},
                 {"headers", std::move(headers)}}}};
  // Header bytes need not be UTF-8: replace, never throw.
  return meta.dump(-1, ' ', false, json::error_handler_t::replace);
}

int StatusForError(wire::ErrorCode code) {
  using wire::ErrorCode;
  switch (code) {
    case ErrorCode::kHandlerError:
    case ErrorCode::kWorkerDied:
    case ErrorCode::kProtocol:
      return 502;
    case ErrorCode::kTimeout:
      return 504;
    case ErrorCode::kRefused:
      return 404;
    case ErrorCode::kQueueFull:
    case ErrorCode::kNoWorkers:
    case ErrorCode::kShuttingDown:
    case ErrorCode::kCancelled:
      return 503;
    case ErrorCode::kTooLarge:
      return 413;
  }
  return 502;
}

std::string ErrorJson(std::string_view text, int code) {
  json body = {{"error", std::string(text)}};
  if (code != 0) body["code"] = code;
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ReplyContentType(std::string_view reply_meta) {
  if (reply_meta.empty()) return "";
  json meta = json::parse(reply_meta, nullptr, /*allow_exceptions=*/false);
  if (!meta.is_object()) return "";
  for (const char* key : {"content_type", "content-type"}) {
    auto found = meta.find(key);
    if (found == meta.end()) continue;
    const std::string* value = found->get_ptr<const std::string*>();
    if (value != nullptr && !value->empty() && value->size() <= 256 &&
        IsSafeHeaderValue(*value)) {
      return *value;
    }
  }
  return "";
}

int ReplyStatus(std::string_view reply_meta) {
  if (reply_meta.empty()) return 200;
  json meta = json::parse(reply_meta, nullptr, /*allow_exceptions=*/false);
  if (!meta.is_object()) return 200;
  auto found = meta.find("http_status");
  if (found == meta.end()) return 200;
  const auto* number = found->get_ptr<const json::number_unsigned_t*>();
  if (number != nullptr && (*number == 201 || *number == 202)) {
    return static_cast<int>(*number);
  }
  return 200;
}

std::string ReplyMessageId(std::string_view reply_meta) {
  if (reply_meta.empty()) return "";
  json meta = json::parse(reply_meta, nullptr, /*allow_exceptions=*/false);
  if (!meta.is_object()) return "";
  auto found = meta.find("message_id");
  if (found == meta.end()) return "";
  const std::string* value = found->get_ptr<const std::string*>();
  if (value == nullptr || value->empty() || value->size() > 256 ||
      !IsSafeHeaderValue(*value)) {
    return "";
  }
  return *value;
}

Result<ReplyHead> ParseReplyMeta(std::string_view reply_meta) {
  ReplyHead head;
  if (reply_meta.empty()) return head;
  json meta = json::parse(reply_meta, nullptr, /*allow_exceptions=*/false);
  if (!meta.is_object()) {
    return Status::Error("reply meta is not a JSON object");
  }
  if (auto found = meta.find("http_status"); found != meta.end()) {
    const auto* number = found->get_ptr<const json::number_unsigned_t*>();
    if (number == nullptr || *number < 200 || *number > 599 || *number == 204 ||
        *number == 205 || *number == 304) {
      return Status::Error(
          "http_status " +
          found->dump(-1, ' ', false, json::error_handler_t::replace)
              .substr(0, 64) +
          " is not a status a job may set (an integer from 200 to 599, "
          "not 204, 205 or 304)");
    }
    head.status = static_cast<int>(*number);
  }
  for (const char* key : {"content_type", "content-type"}) {
    auto found = meta.find(key);
    if (found == meta.end()) continue;
    const std::string* value = found->get_ptr<const std::string*>();
    if (value == nullptr || value->empty() || value->size() > 256 ||
        !IsSafeHeaderValue(*value)) {
      return Status::Error(std::string(key) +
                           " must be a string of 1 to 256 characters "
                           "without control characters");
    }
    head.content_type = *value;
    break;
  }
  if (auto found = meta.find("headers"); found != meta.end()) {
    if (!found->is_object()) {
      return Status::Error("headers must be an object of name: value");
    }
    if (found->size() > kMaxReplyHeaders) {
      return Status::Error("more than " + std::to_string(kMaxReplyHeaders) +
                           " headers");
    }
    for (auto it = found->begin(); it != found->end(); ++it) {
      const std::string& name = it.key();
      std::string shown =
          json(name).dump(-1, ' ', false, json::error_handler_t::replace);
      shown = shown.substr(0, kMaxReplyHeaderName + 2);
      if (name.empty() || name.size() > kMaxReplyHeaderName ||
          !std::all_of(name.begin(), name.end(), IsTokenChar)) {
        return Status::Error(
            "header name " + shown + " is not an HTTP token of at most " +
            std::to_string(kMaxReplyHeaderName) + " characters");
      }
      std::string lower = name;
      std::transform(lower.begin(), lower.end(), lower.begin(), Lower);
      if (IsOneOf(lower, kReservedReplyHeaders)) {
        return Status::Error(
            "header " + shown + " is the reactor's to write" +
            (lower == "content-type" ? " (use content_type)" : ""));
      }
      const std::string* value = it->get_ptr<const std::string*>();
      if (value == nullptr || value->size() > kMaxReplyHeaderValue ||
          !IsSafeHeaderValue(*value)) {
        return Status::Error("header " + shown + ": the value must be a " +
                             "string of at most " +
                             std::to_string(kMaxReplyHeaderValue) +
                             " bytes without control characters");
      }
      head.headers.emplace_back(name, *value);
    }
  }
  head.message_id = ReplyMessageId(reply_meta);
  return head;
}

bool WantsEventStream(const Request& request) {
  const std::string* accept = request.Header("accept");
  if (accept == nullptr) return false;
  std::string lower = *accept;
  std::transform(lower.begin(), lower.end(), lower.begin(), Lower);
  return lower.find("text/event-stream") != std::string::npos;
}

std::string EventStreamHead(bool keep_alive) {
  std::string out =
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
      "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n";
  if (!keep_alive) out += "Connection: close\r\n";
  out += "\r\n";
  return out;
}

namespace {
std::string Event(std::string_view name, const json& data) {
  // dump() writes one line: strings escape their newlines.
  return "event: " + std::string(name) + "\ndata: " +
         data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}
}  // namespace

std::string ProgressEvent(double fraction, std::string_view text) {
  return Event("progress",
               {{"fraction", fraction}, {"text", std::string(text)}});
}

std::string ReplyEvent(int status, std::string_view content_type,
                       std::string_view body) {
  json data = {{"status", status}};
  if (!content_type.empty()) data["content_type"] = std::string(content_type);
  if (IsValidUtf8(body)) {
    data["body"] = std::string(body);
  } else {
    data["body_base64"] = Base64(body);
  }
  return Event("reply", data);
}

std::string ErrorEvent(int status, std::string_view text, int code) {
  json data = {{"status", status}, {"error", std::string(text)}};
  if (code != 0) data["code"] = code;
  return Event("error", data);
}

std::string Chunk(std::string_view bytes) {
  char size[32];
  std::snprintf(size, sizeof(size), "%zx\r\n", bytes.size());
  std::string out = size;
  out += bytes;
  out += "\r\n";
  return out;
}

// ---------------------------------------------------------------- responses

const char* ReasonPhrase(int status) {
  const char* text = http_status_str(static_cast<enum http_status>(status));
  return text != nullptr ? text : "Unknown";
}

std::string FormatResponse(const Response& response, bool keep_alive,
                           bool http10, bool head_only) {
  std::string out;
  out.reserve(160 + (head_only ? 0 : response.body.size()));
  out += "HTTP/1.1 ";
  out += std::to_string(response.status);
  out += ' ';
  out += ReasonPhrase(response.status);
  out += "\r\nContent-Type: ";
  out += response.content_type;
  out += "\r\nContent-Length: ";
  out += std::to_string(response.body.size());
  out += "\r\n";
  for (const auto& [name, value] : response.headers) {
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  if (!keep_alive) {
    out += "Connection: close\r\n";
  } else if (http10) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  if (!head_only) out += response.body;
  return out;
}

}  // namespace workerpool::http
