// The target side of a route: the peers of one group this process sends
// to, its limits and queue (a Balancer), and how long its requests took.
// Data only, plus the pure latency histogram; the sender (sender.h) runs
// it. On the client's loop thread.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "client/balancer.h"

namespace workerpool::client {

struct Link;
struct OutRequest;

// Upper bounds (ms) of the request latency histogram reported in stats; the
// Watcher sums them per target group for the metrics endpoint.
inline constexpr std::array<std::uint64_t, 14> kLatencyBoundsMs = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000};

// Answered requests by latency. Pure; one Record() per answer.
struct LatencyHistogram {
  // counts[i]: answers in (bound[i-1], bound[i]] ms; the last is +Inf.
  std::array<std::uint64_t, kLatencyBoundsMs.size() + 1> counts{};
  std::uint64_t sum_ms = 0;

  void Record(std::uint64_t elapsed_ms) {
    std::size_t bucket = 0;
    while (bucket < kLatencyBoundsMs.size() &&
           elapsed_ms > kLatencyBoundsMs[bucket]) {
      ++bucket;
    }
    ++counts[bucket];
    sum_ms += elapsed_ms;
  }
  std::uint64_t total() const {
    std::uint64_t answered = 0;
    for (std::uint64_t count : counts) answered += count;
    return answered;
  }
};

struct Route {
  // Opening until the pool answers route_open; refused routes fail every
  // request with the pool's reason.
  enum class State { kOpening, kOpen, kRefused } state = State::kOpening;
  std::string group;
  std::string refusal;  // why, when refused
  std::chrono::milliseconds request_timeout{30000};
  Balancer<Link, OutRequest> balancer;
  LatencyHistogram latency;
};

}  // namespace workerpool::client
