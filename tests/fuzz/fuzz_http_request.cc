// Fuzzes the HTTP reactor's request path without sockets
// (src/children/http_codec.h): bytes of one client connection, cut into
// reads, go through RequestParser as the reactor feeds it; every request
// that comes out is routed, its priority and meta read, and an answer
// formatted, as the reactor does. Nothing may crash, hang or throw, and the
// parser must keep its contract (bytes consumed, error statuses).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "children/http_codec.h"
#include "fuzz_check.h"

namespace {

using workerpool::fuzz::Check;

namespace http = workerpool::http;

void Answer(const http::Request& request) {
  http::Route route = http::RouteRequest(request);
  if (route.kind == http::Route::Kind::kJob) {
    Check(http::IsValidGroupName(route.group));
  }
  bool priority_ok = http::ParsePriority(request, 0).ok();
  std::string meta = http::RequestMeta(request, "127.0.0.1:1234");
  // The meta goes to a job as JSON: it must parse.
  Check(!nlohmann::json::parse(meta, nullptr, false).is_discarded());
  http::Response response;
  response.status = priority_ok ? 200 : 400;
  response.body = request.body;
  // A reply's meta comes from a job: the request body stands in for it.
  std::string content_type = http::ReplyContentType(request.body);
  if (!content_type.empty()) {
    Check(content_type.find_first_of("\r\n") == std::string::npos);
    response.content_type = content_type;
  }
  std::string bytes = http::FormatResponse(
      response, request.keep_alive,
      request.http_major == 1 && request.http_minor == 0, request.head);
  Check(bytes.starts_with("HTTP/1.1 "));
  Check(!http::ErrorJson(request.target, 502).empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  if (size < 1) return 0;
  // Small limits, so the fuzzer reaches 413, 414 and 431 quickly.
  http::ParserLimits limits;
  limits.max_body = 512;
  limits.max_url = 256;
  limits.max_headers = 16;
  const std::size_t read_size = std::size_t{data[0]} + 1;
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

  http::RequestParser parser(limits);
  std::string pending;
  int requests = 0;
  for (std::size_t offset = 0; offset < input.size(); offset += read_size) {
    pending.append(input.substr(offset, read_size));
    while (!pending.empty()) {
      std::size_t consumed = 0;
      http::RequestParser::Outcome result = parser.Feed(pending, &consumed);
      Check(consumed <= pending.size());
      if (result == http::RequestParser::Outcome::kError) {
        int status = parser.error_status();
        Check(status == 400 || status == 413 || status == 414 ||
              status == 431 || status == 505);
        Check(!parser.error_text().empty());
        // After an error nothing more parses.
        std::size_t again = 0;
        Check(parser.Feed("GET / HTTP/1.1\r\n\r\n", &again) ==
              http::RequestParser::Outcome::kError);
        return 0;
      }
      pending.erase(0, consumed);
      if (result == http::RequestParser::Outcome::kNeedMore) {
        Check(pending.empty());
        break;
      }
      parser.TakeContinueWanted();
      http::Request request = parser.TakeRequest();
      Answer(request);
      // A request that ends the connection (upgrade) ends the input.
      if (request.upgrade || ++requests > 64) return 0;
    }
  }
  return 0;
}
