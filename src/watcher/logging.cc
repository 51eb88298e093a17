#include "watcher/logging.h"

#include <errno.h>
#include <spdlog/details/null_mutex.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace workerpool {
namespace {

// "%*" in the JSON pattern: the message as a JSON string body.
class JsonEscapedMessage : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    // Children write arbitrary bytes: invalid UTF-8 becomes U+FFFD so every
    // line stays one valid JSON object.
    std::string quoted =
        nlohmann::json(std::string(msg.payload.data(), msg.payload.size()))
            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(quoted.data() + 1, quoted.data() + quoted.size() - 1);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonEscapedMessage>();
  }
};

// Formatted lines wait in a buffer until the logger flushes (after every line
// unless a LogBatch holds the flushes back), then go out in one write(2).
// spdlog's stderr sink flushes every line whatever the flush level.
class BufferedStderrSink final
    : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  ~BufferedStderrSink() override { flush_(); }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    pending_.append(formatted.data(), formatted.size());
    if (pending_.size() >= kFlushAt) flush_();
  }

  void flush_() override {
    size_t done = 0;
    while (done < pending_.size()) {
      ssize_t n = ::write(STDERR_FILENO, pending_.data() + done,
                          pending_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // nowhere to log to: drop, as stdio would
      done += static_cast<size_t>(n);
    }
    pending_.clear();
    if (pending_.capacity() > kFlushAt * 2) pending_.shrink_to_fit();
  }

 private:
  static constexpr size_t kFlushAt = 64 * 1024;
  std::string pending_;
};

}  // namespace

LogBatch::LogBatch()
    : saved_flush_level_(
          static_cast<int>(spdlog::default_logger_raw()->flush_level())) {
  spdlog::default_logger_raw()->flush_on(spdlog::level::off);
}

LogBatch::~LogBatch() {
  spdlog::logger* logger = spdlog::default_logger_raw();
  logger->flush_on(static_cast<spdlog::level::level_enum>(saved_flush_level_));
  logger->flush();
}

void SetupLogging(const LogConfig& log) {
  auto logger = spdlog::default_logger();
  if (logger->sinks().empty() || logger->name() != "workerpool") {
    logger = std::make_shared<spdlog::logger>(
        "workerpool", std::make_shared<BufferedStderrSink>());
    spdlog::set_default_logger(logger);
  }
  logger->set_level(spdlog::level::from_str(log.level));
  logger->flush_on(spdlog::level::trace);
  if (log.format == "json") {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<JsonEscapedMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","pid":%P,"msg":"%*"})");
    logger->set_formatter(std::move(formatter));
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e [%l] %v");
  }
}

}  // namespace workerpool
