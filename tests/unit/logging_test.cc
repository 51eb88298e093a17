#include "watcher/logging.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <memory>
#include <string>

namespace {

// Points fd 2 at a pipe while alive; Drain() returns what was written.
class CapturedStderr {
 public:
  CapturedStderr() {
    REQUIRE(pipe2(fds_, O_NONBLOCK | O_CLOEXEC) == 0);
    saved_ = dup(STDERR_FILENO);
    captured_ = saved_ >= 0 && dup2(fds_[1], STDERR_FILENO) == STDERR_FILENO;
  }
  ~CapturedStderr() {
    if (captured_) dup2(saved_, STDERR_FILENO);
    if (saved_ >= 0) close(saved_);
    close(fds_[0]);
    close(fds_[1]);
  }
  bool captured() const { return captured_; }
  std::string Drain() {
    std::string text;
    char buffer[4096];
    ssize_t n;
    while ((n = read(fds_[0], buffer, sizeof(buffer))) > 0) {
      text.append(buffer, static_cast<size_t>(n));
    }
    return text;
  }

 private:
  int fds_[2] = {-1, -1};
  int saved_ = -1;
  bool captured_ = false;
};

// Restores the default logger that was in place (other tests share it).
class DefaultLoggerGuard {
 public:
  DefaultLoggerGuard() : saved_(spdlog::default_logger()) {}
  ~DefaultLoggerGuard() { spdlog::set_default_logger(saved_); }

 private:
  std::shared_ptr<spdlog::logger> saved_;
};

}  // namespace

TEST_CASE("a LogBatch holds log lines back until it ends, whole and in order") {
  DefaultLoggerGuard restore;
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("test"));
  workerpool::LogConfig config;
  config.level = "info";
  config.format = "text";
  workerpool::SetupLogging(config);  // installs workerpool's own logger
  CapturedStderr captured;
  REQUIRE(captured.captured());

  spdlog::info("alone");
  CHECK(captured.Drain().find("alone\n") != std::string::npos);

  {
    workerpool::LogBatch batch;
    spdlog::info("first");
    spdlog::warn("second");
    spdlog::info("third");
    CHECK(captured.Drain().empty());
  }
  const std::string text = captured.Drain();
  const size_t first = text.find("first\n");
  const size_t second = text.find("second\n");
  const size_t third = text.find("third\n");
  REQUIRE(first != std::string::npos);
  REQUIRE(second != std::string::npos);
  REQUIRE(third != std::string::npos);
  CHECK(first < second);
  CHECK(second < third);

  // After the batch, every line leaves at once again.
  spdlog::info("after");
  CHECK(captured.Drain().find("after\n") != std::string::npos);
}
