// Shared by control_server_test.cc and control_client_test.cc: a fake
// ControlTarget, a libuv loop on its own thread, a temp directory and raw
// socket helpers. Real Unix sockets in a temp dir; no Watcher, no children.
#pragma once

#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "watcher/control.h"

namespace workerpool::testing {

// Records what the control server asked; answers like a small Watcher with
// groups "web" (2 processes) and "compute" (4). Called on the loop thread.
class FakeTarget : public ControlTarget {
 public:
  nlohmann::json StatusJson(bool with_usage) override {
    std::lock_guard<std::mutex> lock(mutex);
    ++status_calls;
    last_status_usage = with_usage;
    return status;
  }
  Status Scale(const std::string& group, int processes) override {
    std::lock_guard<std::mutex> lock(mutex);
    calls.push_back("scale " + group + " " + std::to_string(processes));
    if (group != "web" && group != "compute") {
      return Status::Error("unknown group '" + group + "'");
    }
    return Status::Ok();
  }
  Status RestartGroup(const std::string& group) override {
    std::lock_guard<std::mutex> lock(mutex);
    calls.push_back("restart " + group);
    if (group != "web" && group != "compute") {
      return Status::Error("unknown group '" + group + "'");
    }
    return Status::Ok();
  }
  Status Reload() override {
    std::lock_guard<std::mutex> lock(mutex);
    calls.push_back("reload");
    return reload_result;
  }
  void Stop() override {
    {
      std::lock_guard<std::mutex> lock(mutex);
      calls.push_back("stop");
    }
    if (on_stop) on_stop();
  }
  std::vector<std::string> Calls() {
    std::lock_guard<std::mutex> lock(mutex);
    return calls;
  }

  std::mutex mutex;
  nlohmann::json status = nlohmann::json::parse(R"({
    "pool": "demo", "config": "/etc/workerpool/demo.yaml", "pid": 4242,
    "state": "running", "started_unix": 1700000000,
    "last_reload": {"ok": true, "error": "", "unix": 1700000100},
    "refused_routes": 0,
    "groups": [
      {"name": "web", "type": "reactor", "desired": 2, "live": 2, "ready": 2,
       "restarts": 1, "state": "running", "scaled_until_reload": false,
       "inflight": 3, "queued": 0, "requests": {}, "recycled": 0, "app": [],
       "children": []},
      {"name": "compute", "type": "job", "desired": 6, "live": 5, "ready": 5,
       "restarts": 12, "state": "failed", "scaled_until_reload": true,
       "inflight": 1, "queued": 9, "requests": {}, "recycled": 0, "app": [],
       "children": []}]})");
  Status reload_result = Status::Ok();
  std::vector<std::string> calls;
  int status_calls = 0;
  bool last_status_usage = false;  // what the last status asked for
  std::function<void()> on_stop;   // runs on the loop thread
};

// A private temp directory, removed at the end.
struct TempDir {
  TempDir() {
    char pattern[] = "/tmp/wp-control-test-XXXXXX";
    path = mkdtemp(pattern);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string path;
};

// A loop running on its own thread. Start servers on it before Run();
// Finish() runs CLOSE on the loop thread, then waits for the loop to end.
class LoopThread {
 public:
  LoopThread() {
    // As in the Watcher (RunWatcher): a client that hangs up before its
    // answer must cost an EPIPE, not the process.
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    uv_async_init(&loop, &async_, [](uv_async_t* handle) {
      auto* self = static_cast<LoopThread*>(handle->data);
      if (self->on_finish_) self->on_finish_();
      uv_close(reinterpret_cast<uv_handle_t*>(handle), nullptr);
    });
    async_.data = this;
  }
  ~LoopThread() {
    if (!finished_) Finish([] {});
    uv_loop_close(&loop);
  }
  void Run() {
    thread_ = std::thread([this] { uv_run(&loop, UV_RUN_DEFAULT); });
  }
  void Finish(std::function<void()> close) {
    finished_ = true;
    on_finish_ = std::move(close);
    if (!thread_.joinable()) Run();
    uv_async_send(&async_);
    thread_.join();
  }

  uv_loop_t loop;

 private:
  uv_async_t async_;
  std::thread thread_;
  std::function<void()> on_finish_;
  bool finished_ = false;
};

inline int ConnectTo(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return -1;
  }
  return fd;
}

inline void SendText(int fd, const std::string& text) {
  size_t sent = 0;
  while (sent < text.size()) {
    ssize_t n = send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

// Everything until EOF (or TIMEOUT_MS without data).
inline std::string ReadAll(int fd, int timeout_ms = 10000) {
  std::string out;
  char buffer[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return out;
    ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) return out;
    out.append(buffer, static_cast<size_t>(n));
  }
}

// Sends TEXT on a new connection and returns everything the server said.
inline std::string Exchange(const std::string& path, const std::string& text) {
  int fd = ConnectTo(path);
  if (fd < 0) return "<connect failed: " + std::string(strerror(errno)) + ">";
  SendText(fd, text);
  std::string answer = ReadAll(fd);
  close(fd);
  return answer;
}

// The answer as JSON (one line expected), or a discarded value.
inline nlohmann::json Ask(const std::string& path, const std::string& text) {
  std::string answer = Exchange(path, text);
  CHECK_MESSAGE(!answer.empty(), "no answer to ", text.substr(0, 80));
  if (!answer.empty()) {
    CHECK_MESSAGE(answer.back() == '\n', "answer without newline: ", answer);
    CHECK_MESSAGE(answer.find('\n') == answer.size() - 1,
                  "more than one line: ", answer);
  }
  return nlohmann::json::parse(answer, nullptr, false);
}

// Keeps the servers' log lines out of the test output.
struct QuietLog {
  QuietLog() : level(spdlog::get_level()) {
    spdlog::set_level(spdlog::level::off);
  }
  ~QuietLog() { spdlog::set_level(level); }
  spdlog::level::level_enum level;
};

}  // namespace workerpool::testing
