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

// A reply that waits on a timer (sleep:N, progress:N). A cancel from the
// sender stops the timer and answers error 7 (cancelled) at once, the way a
// job that notices a hang-up should: the test kit shows a client that
// disconnects cancelling its request end to end.
struct DelayedReply {
  uv_timer_t timer;
  std::shared_ptr<IncomingRequest> request;
  long remaining_progress = 0;
  long total_progress = 0;
  // Cleared when the timer is closed: the cancel callback lives in the
  // request, which the library may keep longer than this object.
  std::shared_ptr<DelayedReply*> alive;
};

void Finish(DelayedReply* self) {
  *self->alive = nullptr;
  uv_timer_stop(&self->timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&self->timer),
           [](uv_handle_t* handle) {
             delete static_cast<DelayedReply*>(handle->data);
           });
}

void ReplyAfter(uv_loop_t* loop, std::shared_ptr<IncomingRequest> request,
                long delay_ms, long progress_steps) {
  auto* delayed = new DelayedReply;
  delayed->request = std::move(request);
  delayed->remaining_progress = progress_steps;
  delayed->total_progress = progress_steps;
  delayed->alive = std::make_shared<DelayedReply*>(delayed);
  uv_timer_init(loop, &delayed->timer);
  delayed->timer.data = delayed;
  delayed->request->OnCancel([alive = delayed->alive] {
    DelayedReply* self = *alive;
    if (self == nullptr) return;
    self->request->Fail("cancelled", wire::ErrorCode::kCancelled);
    Finish(self);
  });
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
        Finish(self);
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
