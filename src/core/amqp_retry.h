// The RabbitMQ service's policies, pure: what to do with a delivery whose
// request failed, how long to wait before a retry or a reconnect, and when
// to repeat a log line. The caller passes clock readings and random numbers.
//
// Ideas from Alsek (retries counted on the message, exponential backoff with
// a ceiling, a dead-letter queue once max_retries is spent), mapped onto
// AMQP: the count travels in the x-workerpool-retries header.
#pragma once

#include <chrono>
#include <string>

#include "core/units.h"
#include "workerpool/wire.h"

namespace workerpool {

// Exponential backoff: initial, initial*factor, ... capped at max, each
// spread by +-jitter (a fraction) so that many consumers retrying or
// reconnecting at once do not move in step.
struct AmqpBackoff {
  Duration initial{100};
  Duration max{5000};
  double factor = 2.0;
  double jitter = 0.2;

  // The wait before attempt ATTEMPT (0 = the first retry). RANDOM01 is a
  // number in [0, 1); 0.5 gives the exact, unjittered value.
  Duration Delay(int attempt, double random01) const;
};

// What to do with a delivery whose request came back with an error.
enum class AmqpFailureAction {
  // Publish a copy with x-workerpool-retries + 1 after a backoff, then ack.
  kRetry,
  // Publish to the dead-letter queue with the reason, then ack.
  kDeadLetter,
  // Not the message's fault (no live job, queue full, route refused): send
  // it again after a pause, keeping it unacked; retries are not counted.
  kResend,
  // This process is stopping: leave it unacked; RabbitMQ redelivers it once
  // the connection closes.
  kAbandon,
};

// RETRIES is how many retries the message had before this attempt.
AmqpFailureAction DecideOnFailure(wire::ErrorCode code, int retries,
                                  int max_retries);

// "handler_error", "worker_died", "timeout", ... (for headers and logs).
const char* ErrorCodeName(wire::ErrorCode code);

// Lets a repeating message (e.g. "cannot connect: connection refused")
// through the first time, when it changes, and then at most once per
// interval, counting what it held back.
class AmqpRepeatFilter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit AmqpRepeatFilter(Duration interval) : interval_(interval) {}

  // True when MESSAGE should be logged at NOW; *held_back is then the number
  // of identical messages not logged since the last one that was.
  bool ShouldLog(const std::string& message, Clock::time_point now,
                 int* held_back);
  // Forget the last message (e.g. once the condition cleared).
  void Reset();

 private:
  Duration interval_;
  std::string last_;
  Clock::time_point last_logged_{};
  int held_back_ = 0;
  bool has_last_ = false;
};

}  // namespace workerpool
