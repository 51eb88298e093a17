#include "core/amqp_retry.h"

#include <algorithm>
#include <cmath>

namespace workerpool {

Duration AmqpBackoff::Delay(int attempt, double random01) const {
  double base = static_cast<double>(initial.count());
  double cap = static_cast<double>(std::max(initial, max).count());
  double value = base;
  for (int i = 0; i < attempt && value < cap; ++i) value *= factor;
  value = std::min(value, cap);
  random01 = std::clamp(random01, 0.0, 1.0);
  double spread = std::clamp(jitter, 0.0, 1.0);
  value *= 1.0 + spread * (2.0 * random01 - 1.0);
  return Duration(
      static_cast<Duration::rep>(std::llround(std::max(0.0, value))));
}

AmqpFailureAction DecideOnFailure(wire::ErrorCode code, int retries,
                                  int max_retries) {
  using wire::ErrorCode;
  switch (code) {
    case ErrorCode::kQueueFull:
    case ErrorCode::kNoWorkers:
    case ErrorCode::kRefused:
      return AmqpFailureAction::kResend;
    case ErrorCode::kShuttingDown:
      return AmqpFailureAction::kAbandon;
    case ErrorCode::kTooLarge:
      // Sending it again cannot make it fit.
      return AmqpFailureAction::kDeadLetter;
    case ErrorCode::kHandlerError:
    case ErrorCode::kWorkerDied:
    case ErrorCode::kTimeout:
    case ErrorCode::kCancelled:
    case ErrorCode::kProtocol:
    default:
      return retries < max_retries ? AmqpFailureAction::kRetry
                                   : AmqpFailureAction::kDeadLetter;
  }
}

const char* ErrorCodeName(wire::ErrorCode code) {
  using wire::ErrorCode;
  switch (code) {
    case ErrorCode::kHandlerError:
      return "handler_error";
    case ErrorCode::kWorkerDied:
      return "worker_died";
    case ErrorCode::kTimeout:
      return "timeout";
    case ErrorCode::kQueueFull:
      return "queue_full";
    case ErrorCode::kNoWorkers:
      return "no_workers";
    case ErrorCode::kRefused:
      return "refused";
    case ErrorCode::kCancelled:
      return "cancelled";
    case ErrorCode::kTooLarge:
      return "too_large";
    case ErrorCode::kProtocol:
      return "protocol";
    case ErrorCode::kShuttingDown:
      return "shutting_down";
  }
  return "unknown";
}

bool AmqpRepeatFilter::ShouldLog(const std::string& message,
                                 Clock::time_point now, int* held_back) {
  *held_back = 0;
  if (!has_last_ || message != last_ || now - last_logged_ >= interval_) {
    *held_back = has_last_ && message == last_ ? held_back_ : 0;
    has_last_ = true;
    last_ = message;
    last_logged_ = now;
    held_back_ = 0;
    return true;
  }
  ++held_back_;
  return false;
}

void AmqpRepeatFilter::Reset() {
  has_last_ = false;
  last_.clear();
  held_back_ = 0;
}

}  // namespace workerpool
