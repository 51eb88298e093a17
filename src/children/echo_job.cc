#include "children/echo_job.h"

#include <unistd.h>
#include <uv.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string_view>

#include "workerpool/client.h"

namespace workerpool {
namespace {

// The number after PREFIX in BODY, when BODY is PREFIX and a number.
std::optional<long> NumberAfter(std::string_view body,
                                std::string_view prefix) {
  if (!body.starts_with(prefix)) return std::nullopt;
  long value = 0;
  std::string_view digits = body.substr(prefix.size());
  auto [end, error] =
      std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error != std::errc() || end != digits.data() + digits.size()) {
    return std::nullopt;
  }
  return value;
}

struct DelayedReply {
  uv_timer_t timer;
  std::shared_ptr<IncomingRequest> request;
  long remaining_progress = 0;
  long total_progress = 0;
};

void ReplyAfter(uv_loop_t* loop, std::shared_ptr<IncomingRequest> request,
                long delay_ms, long progress_steps) {
  auto* delayed = new DelayedReply;
  delayed->request = std::move(request);
  delayed->remaining_progress = progress_steps;
  delayed->total_progress = progress_steps;
  uv_timer_init(loop, &delayed->timer);
  delayed->timer.data = delayed;
  uint64_t every = progress_steps > 0 ? 1 : static_cast<uint64_t>(delay_ms);
  uv_timer_start(
      &delayed->timer,
      [](uv_timer_t* timer) {
        auto* self = static_cast<DelayedReply*>(timer->data);
        if (self->remaining_progress > 0) {
          long done = self->total_progress - --self->remaining_progress;
          self->request->SendProgress(
              static_cast<double>(done) /
                  static_cast<double>(self->total_progress),
              "step " + std::to_string(done));
          if (self->remaining_progress > 0) return;
        }
        self->request->Reply(self->request->body());
        uv_timer_stop(timer);
        uv_close(reinterpret_cast<uv_handle_t*>(timer),
                 [](uv_handle_t* handle) {
                   delete static_cast<DelayedReply*>(handle->data);
                 });
      },
      every, every);
}

}  // namespace

int RunEchoJob(const std::vector<std::string>&) {
  std::string error;  // the client library's convention
  std::unique_ptr<PoolClient> client =
      PoolClient::FromEnvironment(nullptr, &error);
  if (!client) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  uv_loop_t* loop = client->loop();
  client->Serve([loop](std::shared_ptr<IncomingRequest> request) {
    std::string_view body = request->body();
    if (body.starts_with("fail")) {
      request->Fail(body);
    } else if (body == "crash") {
      std::abort();
    } else if (auto ms = NumberAfter(body, "sleep:"); ms && *ms >= 0) {
      ReplyAfter(loop, std::move(request), *ms, 0);
    } else if (auto ms = NumberAfter(body, "block:"); ms && *ms >= 0) {
      usleep(static_cast<useconds_t>(*ms) * 1000);
      request->Reply(body);
    } else if (auto steps = NumberAfter(body, "progress:");
               steps && *steps > 0) {
      ReplyAfter(loop, std::move(request), 1, *steps);
    } else {
      request->Reply(body);
    }
  });
  return client->Run();
}

}  // namespace workerpool
