#include "children/http_codec.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace workerpool::http {
namespace {

using Outcome = RequestParser::Outcome;

// Feeds TEXT in pieces of CHUNK bytes (0: at once); collects every request
// until the input ends or an error. *ERROR_STATUS gets the error, if any.
std::vector<Request> ParseAll(std::string_view text, std::size_t chunk = 0,
                              ParserLimits limits = {},
                              int* error_status = nullptr) {
  RequestParser parser(limits);
  std::vector<Request> requests;
  std::string pending;
  std::size_t offset = 0;
  if (error_status != nullptr) *error_status = 0;
  while (offset < text.size() || !pending.empty()) {
    if (offset < text.size()) {
      std::size_t take = chunk == 0 ? text.size() - offset
                                    : std::min(chunk, text.size() - offset);
      pending.append(text.substr(offset, take));
      offset += take;
    }
    while (!pending.empty()) {
      std::size_t used = 0;
      Outcome result = parser.Feed(pending, &used);
      pending.erase(0, used);
      if (result == Outcome::kError) {
        if (error_status != nullptr) *error_status = parser.error_status();
        return requests;
      }
      if (result == Outcome::kNeedMore) break;
      requests.push_back(parser.TakeRequest());
    }
    if (offset >= text.size() && !pending.empty()) break;  // stuck: no more
  }
  return requests;
}

int ErrorOf(std::string_view text, ParserLimits limits = {}) {
  int status = 0;
  ParseAll(text, 0, limits, &status);
  return status;
}

TEST_CASE("a POST with a body is one request with its parts") {
  auto requests = ParseAll(
      "POST /jobs/echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
      "Content-Type: text/plain\r\nCookie: s\r\n\r\nhello");
  REQUIRE(requests.size() == 1);
  const Request& request = requests[0];
  CHECK(request.method == "POST");
  CHECK(request.target == "/jobs/echo?x=1");
  CHECK(request.path == "/jobs/echo");
  CHECK(request.query == "x=1");
  CHECK(request.body == "hello");
  CHECK(request.keep_alive);
  CHECK(request.http_minor == 1);
  REQUIRE(request.Header("content-type") != nullptr);
  CHECK(*request.Header("content-type") == "text/plain");
  CHECK(request.Header("cookie") == nullptr);  // not kept
}

TEST_CASE("pipelined requests come out one at a time, in order") {
  const std::string two =
      "POST /jobs/a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
      "POST /jobs/b HTTP/1.1\r\nContent-Length: 1\r\n\r\n2";
  RequestParser parser({});
  std::size_t used = 0;
  REQUIRE(parser.Feed(two, &used) == Outcome::kRequest);
  CHECK(used < two.size());  // stopped after the first request
  CHECK(parser.TakeRequest().body == "1");
  std::size_t rest = 0;
  REQUIRE(parser.Feed(std::string_view(two).substr(used), &rest) ==
          Outcome::kRequest);
  CHECK(used + rest == two.size());
  CHECK(parser.TakeRequest().body == "2");
}

TEST_CASE("a request fed one byte at a time parses the same") {
  const std::string text =
      "POST /jobs/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
      "GET /healthz HTTP/1.1\r\n\r\n";
  auto requests = ParseAll(text, 1);
  REQUIRE(requests.size() == 2);
  CHECK(requests[0].body == "abcde");
  CHECK(requests[1].method == "GET");
  CHECK(requests[1].path == "/healthz");
}

TEST_CASE("keep-alive follows the version and the Connection header") {
  auto http10 = ParseAll("GET /healthz HTTP/1.0\r\n\r\n");
  REQUIRE(http10.size() == 1);
  CHECK_FALSE(http10[0].keep_alive);
  auto http10_kept =
      ParseAll("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  REQUIRE(http10_kept.size() == 1);
  CHECK(http10_kept[0].keep_alive);
  auto closed = ParseAll("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
  REQUIRE(closed.size() == 1);
  CHECK_FALSE(closed[0].keep_alive);
}

TEST_CASE("a body over the limit is a 413, announced or chunked") {
  ParserLimits limits;
  limits.max_body = 4;
  CHECK(ErrorOf("POST /jobs/a HTTP/1.1\r\nContent-Length: 5\r\n\r\n", limits) ==
        413);
  CHECK(ErrorOf("POST /jobs/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
                limits) == 413);
  CHECK(ParseAll("POST /jobs/a HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", 0,
                 limits)
            .size() == 1);
}

TEST_CASE("malformed requests are 400s, other limits their own codes") {
  CHECK(ErrorOf("this is not http\r\n\r\n") == 400);
  CHECK(ErrorOf("POST /jobs/a HTTP/1.1\r\nContent-Length: x\r\n\r\n") == 400);
  CHECK(ErrorOf("GET /a HTTP/1.1\r\nBad Header\r\n\r\n") == 400);
  CHECK(ErrorOf("POST /a HTTP/1.1\r\nContent-Length: 1\r\n"
                "Content-Length: 2\r\n\r\nab") == 400);
  ParserLimits limits;
  limits.max_url = 10;
  CHECK(ErrorOf("GET /aaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n", limits) == 414);
  limits = {};
  limits.max_headers = 2;
  CHECK(ErrorOf("GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n", limits) ==
        431);
  CHECK(ErrorOf("GET / HTTP/2.0\r\n\r\n") == 505);
}

TEST_CASE("after an error nothing more parses") {
  RequestParser parser({});
  std::size_t used = 0;
  REQUIRE(parser.Feed("garbage\r\n\r\n", &used) == Outcome::kError);
  CHECK(parser.Feed("GET / HTTP/1.1\r\n\r\n", &used) == Outcome::kError);
  CHECK(used == 0);
}

TEST_CASE("Expect: 100-continue is reported once") {
  RequestParser parser({});
  std::size_t used = 0;
  REQUIRE(parser.Feed("POST /jobs/a HTTP/1.1\r\nContent-Length: 2\r\n"
                      "Expect: 100-continue\r\n\r\n",
                      &used) == Outcome::kNeedMore);
  CHECK(parser.in_request());
  CHECK(parser.TakeContinueWanted());
  CHECK_FALSE(parser.TakeContinueWanted());
  REQUIRE(parser.Feed("ok", &used) == Outcome::kRequest);
  CHECK(parser.TakeRequest().body == "ok");
  CHECK_FALSE(parser.in_request());
}

Request Make(std::string method, std::string path) {
  Request request;
  request.method = std::move(method);
  request.path = std::move(path);
  return request;
}

TEST_CASE("routing: jobs, health, not found, wrong method") {
  Route job = RouteRequest(Make("POST", "/jobs/echo"));
  CHECK(job.kind == Route::Kind::kJob);
  CHECK(job.group == "echo");
  CHECK(RouteRequest(Make("POST", "/jobs/my%2Dgroup")).group == "my-group");
  CHECK(RouteRequest(Make("GET", "/healthz")).kind == Route::Kind::kHealth);
  CHECK(RouteRequest(Make("HEAD", "/healthz")).kind == Route::Kind::kHealth);
  Route wrong = RouteRequest(Make("GET", "/jobs/echo"));
  CHECK(wrong.kind == Route::Kind::kMethodNotAllowed);
  CHECK(wrong.allow == "POST");
  CHECK(RouteRequest(Make("POST", "/healthz")).kind ==
        Route::Kind::kMethodNotAllowed);
  for (const char* path : {"/", "/jobs", "/jobs/", "/jobs/a/b", "/jobs/a%2Fb",
                           "/jobs/%zz", "/jobs/%4", "/other"}) {
    CAPTURE(path);
    CHECK(RouteRequest(Make("POST", path)).kind == Route::Kind::kNotFound);
  }
}

TEST_CASE("group names are what a pool definition allows") {
  CHECK(IsValidGroupName("echo"));
  CHECK(IsValidGroupName("a.b-c_9"));
  CHECK_FALSE(IsValidGroupName(""));
  CHECK_FALSE(IsValidGroupName("a b"));
  CHECK_FALSE(IsValidGroupName(std::string(129, 'a')));
}

TEST_CASE("X-Priority is an optional int32") {
  Request request;
  Result<std::int32_t> priority = ParsePriority(request, 7);
  REQUIRE(priority.ok());
  CHECK(*priority == 7);
  request.headers = {{"x-priority", " -5 "}};
  priority = ParsePriority(request, 7);
  REQUIRE(priority.ok());
  CHECK(*priority == -5);
  for (const char* bad : {"", "x", "1.5", "99999999999", "5x"}) {
    CAPTURE(bad);
    request.headers = {{"x-priority", bad}};
    priority = ParsePriority(request, 7);
    REQUIRE_FALSE(priority.ok());
    CHECK(priority.status().message() == "X-Priority must be a 32-bit integer");
  }
}

TEST_CASE("pool errors map to HTTP statuses") {
  using wire::ErrorCode;
  CHECK(StatusForError(ErrorCode::kHandlerError) == 502);
  CHECK(StatusForError(ErrorCode::kWorkerDied) == 502);
  CHECK(StatusForError(ErrorCode::kTimeout) == 504);
  CHECK(StatusForError(ErrorCode::kRefused) == 404);
  CHECK(StatusForError(ErrorCode::kQueueFull) == 503);
  CHECK(StatusForError(ErrorCode::kNoWorkers) == 503);
  CHECK(StatusForError(ErrorCode::kTooLarge) == 413);
}

TEST_CASE("error bodies are JSON even for bytes that are not UTF-8") {
  CHECK(ErrorJson("boom", 1) == R"({"code":1,"error":"boom"})");
  CHECK(ErrorJson("plain") == R"({"error":"plain"})");
  std::string bad = ErrorJson(std::string("a\xff\"b"));
  CHECK(bad.find("\\\"b") != std::string::npos);
  CHECK(bad.find('\xff') == std::string::npos);
}

TEST_CASE("request meta carries method, path and forwarded headers") {
  Request request = Make("POST", "/jobs/a");
  request.query = "q=1";
  request.headers = {{"content-type", "text/plain"}, {"x-priority", "3"}};
  std::string meta = RequestMeta(request, "127.0.0.1:5");
  CHECK(meta.find(R"("method":"POST")") != std::string::npos);
  CHECK(meta.find(R"("query":"q=1")") != std::string::npos);
  CHECK(meta.find(R"("content-type":"text/plain")") != std::string::npos);
  CHECK(meta.find("x-priority") == std::string::npos);
}

TEST_CASE("request meta forwards X- headers and the allow-list only") {
  std::vector<Request> requests = ParseAll(
      "POST /jobs/a HTTP/1.1\r\nX-Custom: 1\r\nX-Request-Id: r\r\n"
      "Authorization: secret\r\nCookie: c\r\nUser-Agent: ua\r\n"
      "X-Priority: 2\r\nContent-Length: 0\r\n\r\n");
  REQUIRE(requests.size() == 1);
  std::string meta = RequestMeta(requests[0], "r");
  CHECK(meta.find(R"("x-custom":"1")") != std::string::npos);
  CHECK(meta.find(R"("x-request-id":"r")") != std::string::npos);
  CHECK(meta.find(R"("user-agent":"ua")") != std::string::npos);
  CHECK(meta.find("secret") == std::string::npos);
  CHECK(meta.find("cookie") == std::string::npos);
  CHECK(meta.find("x-priority") == std::string::npos);
}

TEST_CASE("reply meta sets status, content type and headers") {
  Result<ReplyHead> empty = ParseReplyMeta("");
  REQUIRE(empty.ok());
  CHECK(empty->status == 200);
  CHECK(empty->headers.empty());
  Result<ReplyHead> head = ParseReplyMeta(
      R"({"http_status":201,"content_type":"application/json",)"
      R"("headers":{"Cache-Control":"no-store","X-A":""},"message_id":"m",)"
      R"("own":[1]})");
  REQUIRE(head.ok());
  CHECK(head->status == 201);
  CHECK(head->content_type == "application/json");
  CHECK(head->headers.size() == 2);
  CHECK(head->message_id == "m");
  for (int status : {200, 202, 400, 500, 599}) {
    Result<ReplyHead> parsed =
        ParseReplyMeta(R"({"http_status":)" + std::to_string(status) + "}");
    REQUIRE(parsed.ok());
    CHECK(parsed->status == status);
  }
}

TEST_CASE("garbage reply meta is an error that says what is wrong") {
  auto error = [](std::string meta) {
    Result<ReplyHead> head = ParseReplyMeta(meta);
    return head.ok() ? std::string("accepted") : head.status().message();
  };
  CHECK(error("not json") == "reply meta is not a JSON object");
  CHECK(error("[]") == "reply meta is not a JSON object");
  CHECK(error(R"({"http_status":199})").starts_with("http_status 199 "));
  CHECK(error(R"({"http_status":600})").starts_with("http_status 600 "));
  CHECK(error(R"({"http_status":-200})").starts_with("http_status -200 "));
  CHECK(error(R"({"http_status":"200"})").starts_with("http_status \"200\""));
  CHECK(error(R"({"http_status":200.5})").starts_with("http_status 200.5"));
  CHECK(error(R"({"http_status":304})").find("not 204, 205 or 304") !=
        std::string::npos);
  CHECK(error(R"({"content_type":"a\r\nb"})").starts_with("content_type"));
  CHECK(error(R"({"content-type":""})").starts_with("content-type"));
  CHECK(error(R"({"headers":"x"})") ==
        "headers must be an object of name: value");
  CHECK(error(R"({"headers":{"a b":"x"}})").starts_with("header name \"a b\""));
  CHECK(error(R"({"headers":{"a:b":"x"}})").starts_with("header name"));
  CHECK(error(R"({"headers":{"X-A":"1\n2"}})").starts_with("header \"X-A\""));
  CHECK(error(R"({"headers":{"X-A":"\u0000"}})").starts_with("header"));
  CHECK(error(R"({"headers":{"X-A":null}})").starts_with("header \"X-A\""));
  CHECK(error(R"({"headers":{"CONTENT-LENGTH":"1"}})")
            .find("the reactor's to write") != std::string::npos);
  CHECK(
      error(R"({"headers":{"Content-Type":"a/b"}})").find("use content_type") !=
      std::string::npos);
  CHECK(error(R"({"headers":{"Transfer-Encoding":"x"}})")
            .find("the reactor's to write") != std::string::npos);
  std::string many = R"({"headers":{)";
  for (std::size_t i = 0; i <= kMaxReplyHeaders; ++i) {
    many += (i ? "," : "") + ("\"X-" + std::to_string(i) + "\":\"v\"");
  }
  CHECK(error(many + "}}") == "more than 64 headers");
  std::string long_name(kMaxReplyHeaderName + 1, 'a');
  CHECK(error(R"({"headers":{")" + long_name + R"(":"v"}})")
            .starts_with("header name"));
  std::string long_value(kMaxReplyHeaderValue + 1, 'v');
  CHECK(error(R"({"headers":{"X-A":")" + long_value + R"("}})")
            .starts_with("header \"X-A\""));
  // Not UTF-8 in a name: still an error, not an exception.
  CHECK(error("{\"headers\":{\"\xff\":\"v\"}}") != "accepted");
}

TEST_CASE("event stream: head, progress, reply and error events, chunks") {
  CHECK(EventStreamHead(true) ==
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n");
  CHECK(EventStreamHead(false).find("Connection: close\r\n") !=
        std::string::npos);
  CHECK(ProgressEvent(0.5, "half\nway") ==
        "event: progress\ndata: {\"fraction\":0.5,\"text\":\"half\\nway\"}"
        "\n\n");
  CHECK(ReplyEvent(201, "text/plain", "ok") ==
        "event: reply\ndata: {\"body\":\"ok\",\"content_type\":"
        "\"text/plain\",\"status\":201}\n\n");
  CHECK(ReplyEvent(200, "", std::string("\xff\xfe\x00", 3)) ==
        "event: reply\ndata: {\"body_base64\":\"//4A\",\"status\":200}\n\n");
  CHECK(ReplyEvent(200, "", "\xc3\xa9").find("\"body\":") != std::string::npos);
  CHECK(ReplyEvent(200, "", "\xc3").find("body_base64") != std::string::npos);
  CHECK(ReplyEvent(200, "", "\xed\xa0\x80").find("body_base64") !=
        std::string::npos);  // a surrogate
  CHECK(ErrorEvent(504, "late", 3) ==
        "event: error\ndata: {\"code\":3,\"error\":\"late\",\"status\":504}"
        "\n\n");
  CHECK(Chunk("hello") == "5\r\nhello\r\n");
  CHECK(Chunk(std::string(26, 'x')).starts_with("1a\r\n"));
  CHECK(Chunk("") == "0\r\n\r\n");
}

TEST_CASE("a client asks for events with Accept: text/event-stream") {
  Request request = Make("POST", "/jobs/a");
  CHECK_FALSE(WantsEventStream(request));
  request.headers = {{"accept", "application/json"}};
  CHECK_FALSE(WantsEventStream(request));
  request.headers = {{"accept", "application/json, Text/Event-Stream"}};
  CHECK(WantsEventStream(request));
}

TEST_CASE("a reply's content type is taken only when safe") {
  CHECK(ReplyContentType(R"({"content_type":"application/json"})") ==
        "application/json");
  CHECK(ReplyContentType(R"({"content-type":"text/html"})") == "text/html");
  CHECK(ReplyContentType(R"({"content_type":"a\r\nSet-Cookie: x"})").empty());
  CHECK(ReplyContentType("not json").empty());
  CHECK(ReplyContentType("").empty());
  CHECK(ReplyContentType(R"({"content_type":5})").empty());
}

TEST_CASE("responses: status line, length, connection, HEAD") {
  Response response;
  response.body = "hello";
  response.headers = {{"Retry-After", "1"}};
  CHECK(FormatResponse(response, true, false, false) ==
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 5\r\nRetry-After: 1\r\n\r\nhello");
  std::string closing = FormatResponse(response, false, false, false);
  CHECK(closing.find("Connection: close\r\n") != std::string::npos);
  std::string http10 = FormatResponse(response, true, true, false);
  CHECK(http10.find("Connection: keep-alive\r\n") != std::string::npos);
  std::string head = FormatResponse(response, true, false, true);
  CHECK(head.ends_with("Content-Length: 5\r\nRetry-After: 1\r\n\r\n"));
  response.status = 503;
  CHECK(FormatResponse(response, true, false, false)
            .starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
}

}  // namespace
}  // namespace workerpool::http
