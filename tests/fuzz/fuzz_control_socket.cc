// Fuzzes the control socket's request handling (src/watcher/
// control_server.cc) end to end: each input is what one client writes on
// the socket before closing its side; the server, on a real libuv loop with
// a stand-in Watcher, must answer with one JSON line (or close), never
// crash, hang or throw. Slower than a pure parser, but it covers the read
// path (newlines, the size limit, EOF) as well as the request parsing.
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_check.h"
#include "watcher/control.h"

namespace {

using workerpool::fuzz::Check;

// A Watcher with one group "web" that accepts everything it understands.
class FakeTarget : public workerpool::ControlTarget {
 public:
  nlohmann::json StatusJson(bool /*with_usage*/) override {
    return {{"pool", "fuzz"}, {"groups", nlohmann::json::array()}};
  }
  workerpool::Status Scale(const std::string& group, int processes) override {
    if (group != "web") return workerpool::Status::Error("unknown group");
    if (processes > 1000) return workerpool::Status::Error("too many");
    return workerpool::Status::Ok();
  }
  workerpool::Status RestartGroup(const std::string& group) override {
    if (group != "web") return workerpool::Status::Error("unknown group");
    return workerpool::Status::Ok();
  }
  workerpool::Status Reload() override { return workerpool::Status::Ok(); }
  void Stop() override { stopped = true; }
  bool stopped = false;
};

struct Harness {
  uv_loop_t loop;
  std::string path;
  FakeTarget target;
  std::unique_ptr<workerpool::ControlServer> server;

  Harness() {
    uv_loop_init(&loop);
    path = "/tmp/wp-fuzz-control-" + std::to_string(getpid()) + ".sock";
    StartServer();
  }
  void StartServer() {
    auto started = workerpool::ControlServer::Start(&loop, path, &target);
    Check(started.ok());
    server = std::move(*started);
  }
  // Closes the server (as the Watcher does on stop) and starts a new one.
  void RestartServer() {
    server->Close();
    server.reset();
    uv_run(&loop, UV_RUN_NOWAIT);
    target.stopped = false;
    StartServer();
  }
};

Harness* harness = nullptr;

int Connect(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  Check(fd >= 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  Check(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
        0);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  harness = new Harness;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  int fd = Connect(harness->path);
  // The socket buffer holds far more than libFuzzer's inputs: the write
  // completes before the server reads.
  std::size_t written = 0;
  while (written < size) {
    ssize_t n = send(fd, data + written, size - written, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server answered early and closed
    written += static_cast<std::size_t>(n);
  }
  shutdown(fd, SHUT_WR);

  std::string answer;
  for (;;) {
    char buffer[4096];
    ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n > 0) {
      answer.append(buffer, static_cast<std::size_t>(n));
      if (answer.back() == '\n') break;
      continue;
    }
    if (n == 0) break;  // closed without (more) answer
    if (errno != EAGAIN && errno != EINTR) break;
    uv_run(&harness->loop, UV_RUN_ONCE);
  }
  close(fd);
  uv_run(&harness->loop, UV_RUN_NOWAIT);

  if (!answer.empty()) {
    // One JSON object on one line, with "ok".
    Check(answer.back() == '\n');
    Check(answer.find('\n') == answer.size() - 1);
    nlohmann::json parsed = nlohmann::json::parse(
        answer.substr(0, answer.size() - 1), nullptr, false);
    Check(parsed.is_object() && parsed.contains("ok"));
    Check(parsed["ok"].is_boolean());
    if (!parsed["ok"].get<bool>()) Check(parsed.contains("error"));
  }
  if (harness->target.stopped) harness->RestartServer();
  return 0;
}
