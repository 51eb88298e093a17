// The HTTP/1.1 side of `workerpool builtin http-reactor`, without sockets:
// an incremental request parser over Debian's http-parser, the routing of a
// request to what the reactor does with it, and response formatting. Pure:
// no loop, no I/O, no exceptions; every function is safe on any client
// input. Runs in the http-reactor process, on its loop thread.
#pragma once

#include <http_parser.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "workerpool/wire.h"

namespace workerpool::http {

struct ParserLimits {
  std::size_t max_body = 1024 * 1024;  // a bigger body is a 413
  std::size_t max_url = 8 * 1024;      // a longer request target is a 414
  std::size_t max_headers = 100;       // more header lines are a 431
};

// One parsed request. Only the headers the reactor uses or forwards are kept
// (names lowercased); the rest are parsed and dropped.
struct Request {
  std::string method;  // "POST", "GET", ...
  bool head = false;   // HEAD: answer without a body
  std::string target;  // as sent: "/jobs/x?y=1"
  std::string path;    // "/jobs/x" (not decoded)
  std::string query;   // "y=1", without the '?'
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool keep_alive = true;  // the connection may carry another request
  bool upgrade = false;    // CONNECT or Upgrade: nothing follows this one
  unsigned short http_major = 1, http_minor = 1;

  // The value of header NAME (lowercase), or null.
  const std::string* Header(std::string_view name) const;
};

// Feeds bytes of one connection through http_parser and hands out complete
// requests one at a time: Feed() stops right after the end of a request, so
// the caller decides when to read the next one (pipelining caps).
class RequestParser {
 public:
  // Not a Status: a stream has three states, and an error carries the HTTP
  // status to answer with (error_status()).
  enum class Outcome {
    kNeedMore,  // every byte was consumed; no complete request yet
    kRequest,   // a request is complete: TakeRequest(); bytes may remain
    kError,     // the input is not acceptable: error_status()
  };

  explicit RequestParser(ParserLimits limits);
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  // Parses from DATA; sets *CONSUMED to the bytes used. After kRequest feed
  // the rest (and anything later) again; after kError nothing more parses.
  Outcome Feed(std::string_view data, std::size_t* consumed);
  Request TakeRequest();

  // True between the first byte of a request and its end.
  bool in_request() const { return in_request_; }
  // True once (then false) when a request asked for "Expect: 100-continue"
  // and its body is acceptable: the caller may send "100 Continue".
  bool TakeContinueWanted();

  // After kError: the status to answer (400, 413, 414, 431, 505) and why.
  int error_status() const { return error_status_; }
  const std::string& error_text() const { return error_text_; }

 private:
  static int OnMessageBegin(http_parser* parser);
  static int OnUrl(http_parser* parser, const char* at, std::size_t length);
  static int OnHeaderField(http_parser* parser, const char* at,
                           std::size_t length);
  static int OnHeaderValue(http_parser* parser, const char* at,
                           std::size_t length);
  static int OnHeadersComplete(http_parser* parser);
  static int OnBody(http_parser* parser, const char* at, std::size_t length);
  static int OnMessageComplete(http_parser* parser);
  int Fail(int status, std::string text);
  void EndHeader();

  ParserLimits limits_;
  http_parser parser_;
  http_parser_settings settings_;
  Request current_;
  std::optional<Request> complete_;
  std::string field_, value_;
  bool in_value_ = false;
  std::size_t header_count_ = 0;
  bool in_request_ = false;
  bool continue_wanted_ = false;
  bool failed_ = false;
  int error_status_ = 0;
  std::string error_text_;
};

// What the reactor does with a request.
struct Route {
  enum class Kind {
    kJob,               // POST /jobs/<group>: a pool request to GROUP
    kHealth,            // GET or HEAD /healthz
    kNotFound,          // 404
    kMethodNotAllowed,  // 405, with ALLOW
  } kind = Kind::kNotFound;
  std::string group;
  std::string allow;
};
Route RouteRequest(const Request& request);

// A group name as the pool definition allows it: [A-Za-z0-9_.-], 1..128.
bool IsValidGroupName(std::string_view name);

// X-Priority, an int32 ("-5", "10"), or ABSENT when the request has no such
// header. An error (the text for the 400 answer) for a malformed or
// out-of-range value.
Result<std::int32_t> ParsePriority(const Request& request, std::int32_t absent);

// The SendOptions.meta the reactor forwards with a job request: a JSON
// object {"http": {"method","path","query","remote","headers":{...}}} with
// the request headers a job may care about: Content-Type, Content-Encoding,
// Accept, User-Agent, and every header whose name starts with "X-" but
// X-Priority (names lowercased; the first of repeated ones).
std::string RequestMeta(const Request& request, std::string_view remote);

// The HTTP status for a failed pool request.
int StatusForError(wire::ErrorCode code);

// {"error": TEXT, "code": CODE} (the pool's ErrorCode; left out when CODE is
// 0, for errors of the HTTP layer). Invalid UTF-8 in TEXT is replaced.
std::string ErrorJson(std::string_view text, int code = 0);

// A reply's Content-Type from its meta ({"content_type": ...} or
// {"content-type": ...}), when present and safe to put in a header.
std::string ReplyContentType(std::string_view reply_meta);

// A reply's HTTP status from its meta ({"http_status": N}) when N is 200,
// 201 or 202 (a RabbitMQ service in enqueue mode answers 202 Accepted);
// 200 otherwise: an answer can only say which success it is.
int ReplyStatus(std::string_view reply_meta);

// A reply's {"message_id": ...} from its meta, when present and safe to put
// in a header (the reactor sends it as X-Message-Id); "" otherwise.
std::string ReplyMessageId(std::string_view reply_meta);

// What a job's reply meta says about the HTTP answer (docs/HTTP.md):
//   {"http_status": 201, "content_type": "application/json",
//    "headers": {"Cache-Control": "no-store"}, "message_id": "..."}
// Every key is optional; keys it does not know are the job's own.
struct ReplyHead {
  int status = 200;
  std::string content_type;  // "" when the meta has none
  std::vector<std::pair<std::string, std::string>> headers;
  std::string message_id;  // for X-Message-Id; "" when absent or unsafe
};

// The limits on a reply meta's "headers".
inline constexpr std::size_t kMaxReplyHeaders = 64;
inline constexpr std::size_t kMaxReplyHeaderName = 128;
inline constexpr std::size_t kMaxReplyHeaderValue = 8192;

// REPLY_META parsed, or an error that says what is wrong with it (the
// reactor answers 502 with that text): meta that is not a JSON object; an
// http_status that is not an integer from 200 to 599 or is 204, 205 or 304
// (an answer always carries a body); a content_type or header value that is
// not a string, is too long or holds control characters; a header name that
// is not an HTTP token, or one the reactor writes itself (Content-Length,
// Content-Type: use content_type, Transfer-Encoding, Connection, Keep-Alive,
// Upgrade, TE, Trailer, Proxy-Connection); more than kMaxReplyHeaders.
// Empty meta is the default head (200).
Result<ReplyHead> ParseReplyMeta(std::string_view reply_meta);

// True when the request asks for server-sent events (its Accept header
// names text/event-stream): progress then reaches it as events.
bool WantsEventStream(const Request& request);

// Server-sent events of one job request (docs/HTTP.md): the head of the
// 200 text/event-stream answer (chunked, so HTTP/1.1 only), a progress
// event, and the last event, "reply" or "error", whose data is a JSON
// object with the answer's status (and body: "body" when it is UTF-8,
// "body_base64" otherwise; or "error" and "code").
std::string EventStreamHead(bool keep_alive);
std::string ProgressEvent(double fraction, std::string_view text);
std::string ReplyEvent(int status, std::string_view content_type,
                       std::string_view body);
std::string ErrorEvent(int status, std::string_view text, int code);
// BYTES as one chunk of a chunked body; the last chunk when BYTES is empty.
std::string Chunk(std::string_view bytes);

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::vector<std::pair<std::string, std::string>> headers;  // extra
  std::string body;
};

// The bytes of RESPONSE. KEEP_ALIVE false adds "Connection: close";
// HTTP/1.0 keep-alive adds "Connection: keep-alive"; HEAD_ONLY leaves the
// body out (Content-Length still counts it).
std::string FormatResponse(const Response& response, bool keep_alive,
                           bool http10, bool head_only);

const char* ReasonPhrase(int status);

}  // namespace workerpool::http
