// Test kit job: an echo job whose requests outlive the read that brought
// them, with the asynchronous Serve() form. The client library reads the
// bytes of a request where they arrived and copies them for an async
// handler, which may keep the request and the views of its bytes that it
// took inside the handler; this job checks both.
//
//   any body      answered on a later loop turn with the view of the body
//                 taken inside the handler
//   "now:..."     answered at once, but the request and that view are kept
//                 until a later turn and compared then with a copy taken on
//                 arrival: a difference aborts the job (the test sees
//                 "worker died")
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "workerpool/client.h"

namespace {

using workerpool::IncomingRequest;

struct Kept {
  std::shared_ptr<IncomingRequest> request;
  std::string_view view_in_handler;  // request->body() inside the handler
  std::string body_on_arrival;
};

std::vector<Kept> unanswered;
std::vector<Kept> answered;
uv_timer_t later;
bool stopping = false;

void CheckKept(const Kept& kept) {
  if (kept.view_in_handler != kept.body_on_arrival ||
      kept.request->body() != kept.body_on_arrival) {
    std::fprintf(stderr, "deferred_echo_job: request %llu changed\n",
                 static_cast<unsigned long long>(kept.request->id()));
    std::abort();
  }
}

void AnswerKept(uv_timer_t*) {
  for (const Kept& kept : answered) CheckKept(kept);
  answered.clear();
  auto batch = std::move(unanswered);
  unanswered.clear();
  for (const Kept& kept : batch) {
    CheckKept(kept);
    kept.request->Reply(kept.view_in_handler);
  }
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
  uv_timer_init(client->loop(), &later);
  client->Serve([](std::shared_ptr<IncomingRequest> request) {
    std::string_view body = request->body();
    if (stopping) {  // the timer is closed: answer at once
      request->Reply(body);
      return;
    }
    if (body.starts_with("now:")) {
      request->Reply(body);
      answered.push_back({request, body, std::string(body)});
    } else {
      unanswered.push_back({request, body, std::string(body)});
    }
    if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&later))) {
      uv_timer_start(&later, AnswerKept, 1, 0);
    }
  });
  client->OnStop([] {
    stopping = true;
    AnswerKept(&later);  // what is still open is answered before the stop
    uv_close(reinterpret_cast<uv_handle_t*>(&later), nullptr);
  });
  return client->Run();
}
