#include "core/amqp_retry.h"

#include <doctest/doctest.h>

namespace workerpool {
namespace {

using wire::ErrorCode;
using Clock = AmqpRepeatFilter::Clock;

TEST_CASE("AmqpBackoff doubles up to its ceiling") {
  AmqpBackoff backoff{Duration(500), Duration(30000), 2.0, 0.2};
  CHECK(backoff.Delay(0, 0.5) == Duration(500));
  CHECK(backoff.Delay(1, 0.5) == Duration(1000));
  CHECK(backoff.Delay(2, 0.5) == Duration(2000));
  CHECK(backoff.Delay(6, 0.5) == Duration(30000));
  CHECK(backoff.Delay(1000, 0.5) == Duration(30000));
}

TEST_CASE("AmqpBackoff jitter spreads by +-jitter") {
  AmqpBackoff backoff{Duration(1000), Duration(1000), 2.0, 0.2};
  CHECK(backoff.Delay(0, 0.0) == Duration(800));
  CHECK(backoff.Delay(0, 1.0) == Duration(1200));
  CHECK(backoff.Delay(0, 7.0) == Duration(1200));  // clamped
}

TEST_CASE("DecideOnFailure: the message's fault is retried, then dead") {
  for (ErrorCode code : {ErrorCode::kHandlerError, ErrorCode::kWorkerDied,
                         ErrorCode::kTimeout}) {
    CHECK(DecideOnFailure(code, 0, 3) == AmqpFailureAction::kRetry);
    CHECK(DecideOnFailure(code, 2, 3) == AmqpFailureAction::kRetry);
    CHECK(DecideOnFailure(code, 3, 3) == AmqpFailureAction::kDeadLetter);
  }
  CHECK(DecideOnFailure(ErrorCode::kHandlerError, 0, 0) ==
        AmqpFailureAction::kDeadLetter);
}

TEST_CASE("DecideOnFailure: a too large body is dead at once") {
  CHECK(DecideOnFailure(ErrorCode::kTooLarge, 0, 5) ==
        AmqpFailureAction::kDeadLetter);
}

TEST_CASE("DecideOnFailure: a group that cannot take work costs no retry") {
  for (ErrorCode code :
       {ErrorCode::kQueueFull, ErrorCode::kNoWorkers, ErrorCode::kRefused}) {
    CHECK(DecideOnFailure(code, 100, 3) == AmqpFailureAction::kResend);
  }
  CHECK(DecideOnFailure(ErrorCode::kShuttingDown, 0, 3) ==
        AmqpFailureAction::kAbandon);
}

TEST_CASE("ErrorCodeName names every code") {
  CHECK(std::string(ErrorCodeName(ErrorCode::kHandlerError)) ==
        "handler_error");
  CHECK(std::string(ErrorCodeName(ErrorCode::kWorkerDied)) == "worker_died");
  CHECK(std::string(ErrorCodeName(ErrorCode::kTooLarge)) == "too_large");
}

TEST_CASE("AmqpRepeatFilter logs a repeated line once per interval") {
  AmqpRepeatFilter filter(Duration(1000));
  Clock::time_point t0{};
  int held = -1;
  CHECK(filter.ShouldLog("refused", t0, &held));
  CHECK(held == 0);
  CHECK_FALSE(filter.ShouldLog("refused", t0 + Duration(100), &held));
  CHECK_FALSE(filter.ShouldLog("refused", t0 + Duration(200), &held));
  CHECK(filter.ShouldLog("refused", t0 + Duration(1000), &held));
  CHECK(held == 2);
  // A different message goes through at once.
  CHECK(filter.ShouldLog("timeout", t0 + Duration(1001), &held));
  CHECK(held == 0);
  filter.Reset();
  CHECK(filter.ShouldLog("timeout", t0 + Duration(1002), &held));
}

}  // namespace
}  // namespace workerpool
