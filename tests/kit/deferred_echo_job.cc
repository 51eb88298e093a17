// Test kit job: an echo job whose requests outlive the read that brought
// them. The client library borrows a request's bytes from its read buffer
// while the handler runs and copies them only when the request outlives
// the handler; this job checks that copy.
//
//   any body      answered with the body on a later loop turn
//   "now:..."     answered with the body at once, but the request is kept
//                 until a later turn and its body compared then with a
//                 copy taken on arrival: a difference aborts the job (the
//                 test sees "worker died")
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "workerpool/client.h"

namespace {

using workerpool::IncomingRequest;

struct Kept {
  std::shared_ptr<IncomingRequest> request;
  std::string body_on_arrival;
};

std::vector<std::shared_ptr<IncomingRequest>> g_unanswered;
std::vector<Kept> g_answered;
uv_timer_t g_later;

void OnLater(uv_timer_t*) {
  for (const Kept& kept : g_answered) {
    if (kept.request->body() != kept.body_on_arrival) {
      std::fprintf(stderr, "deferred_echo_job: request %llu changed\n",
                   static_cast<unsigned long long>(kept.request->id()));
      std::abort();
    }
  }
  g_answered.clear();
  auto batch = std::move(g_unanswered);
  g_unanswered.clear();
  for (auto& request : batch) request->Reply(request->body());
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
  uv_timer_init(client->loop(), &g_later);
  client->Serve([](std::shared_ptr<IncomingRequest> request) {
    if (request->body().starts_with("now:")) {
      request->Reply(request->body());
      g_answered.push_back({request, std::string(request->body())});
    } else {
      g_unanswered.push_back(std::move(request));
    }
    if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&g_later))) {
      uv_timer_start(&g_later, OnLater, 1, 0);
    }
  });
  client->OnStop([] {
    OnLater(&g_later);  // what is still open is answered before the stop
    uv_close(reinterpret_cast<uv_handle_t*>(&g_later), nullptr);
  });
  return client->Run();
}
