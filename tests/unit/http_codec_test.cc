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
      "Content-Type: text/plain\r\nX-Secret: s\r\n\r\nhello");
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
  CHECK(request.Header("x-secret") == nullptr);  // not kept
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
