// A workerpool job in C++, written as a user of the library would: it
// counts the lines, words and bytes of each request body and answers with
// JSON (like `wc`). An empty body gets an error reply.
//
//   groups:
//     - name: wc
//       type: job
//       processes: 2
//       command: [./build/src/examples/example_job]
//
//   $ curl -d 'hello pool' localhost:8080/jobs/wc
//   {"lines":0,"words":2,"bytes":10}
#include <workerpool/client.h>

#include <cctype>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

namespace {

std::string CountAsJson(std::string_view text) {
  std::size_t lines = 0, words = 0;
  bool in_word = false;
  for (char c : text) {
    if (c == '\n') ++lines;
    const bool space = std::isspace(static_cast<unsigned char>(c)) != 0;
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return "{\"lines\":" + std::to_string(lines) +
         ",\"words\":" + std::to_string(words) +
         ",\"bytes\":" + std::to_string(text.size()) + "}";
}

}  // namespace

int main() {
  std::string error;
  std::unique_ptr<workerpool::PoolClient> client =
      workerpool::PoolClient::FromEnvironment(/*loop=*/nullptr, &error);
  if (!client) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  // The asynchronous form lets a reply carry meta: here its content type,
  // which the HTTP reactor passes on as the Content-Type header.
  client->Serve([](std::shared_ptr<workerpool::IncomingRequest> request) {
    if (request->body().empty()) {
      request->Fail("empty body: send some text to count");
      return;
    }
    request->Reply(CountAsJson(request->body()),
                   R"({"content_type":"application/json"})");
  });
  return client->Run();
}
