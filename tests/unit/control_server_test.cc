// The control socket's server (src/watcher/control_server.cc) over a real
// Unix socket, with a fake Watcher (control_test_support.h).
#include <sys/stat.h>

#include <fstream>

#include "control_test_support.h"

namespace workerpool::testing {
namespace {

using nlohmann::json;

struct Fixture {
  Fixture() : path(dir.path + "/pool.sock") {
    auto started = ControlServer::Start(&loop.loop, path, &target);
    REQUIRE_MESSAGE(started.ok(), started.status().message());
    server = std::move(*started);
    loop.Run();
  }
  ~Fixture() { Finish(); }
  void Finish() {
    if (server) loop.Finish([this] { server.reset(); });
  }

  QuietLog quiet;
  TempDir dir;
  std::string path;
  FakeTarget target;
  LoopThread loop;
  std::unique_ptr<ControlServer> server;
};

TEST_CASE("control server: the socket is mode 0600") {
  Fixture f;
  struct stat info;
  REQUIRE(stat(f.path.c_str(), &info) == 0);
  CHECK(S_ISSOCK(info.st_mode));
  CHECK((info.st_mode & 0777) == 0600);
}

TEST_CASE("control server: status answers the target's document") {
  Fixture f;
  json answer = Ask(f.path, "{\"command\":\"status\"}\n");
  REQUIRE(answer.is_object());
  CHECK(answer["ok"] == true);
  CHECK(answer["status"] == f.target.status);
  CHECK(f.target.last_status_usage);
  answer = Ask(f.path, "{\"command\":\"status\",\"usage\":false}\n");
  CHECK(answer["ok"] == true);
  CHECK_FALSE(f.target.last_status_usage);
}

TEST_CASE("control server: scale, restart and reload reach the target") {
  Fixture f;
  json scaled = Ask(
      f.path, "{\"command\":\"scale\",\"group\":\"web\",\"processes\":5}\n");
  CHECK(scaled["ok"] == true);
  CHECK(scaled["group"] == "web");
  CHECK(scaled["processes"] == 5);
  CHECK(scaled["until_reload"] == true);
  CHECK(Ask(f.path,
            "{\"command\":\"restart\",\"group\":\"compute\"}\n")["ok"] == true);
  CHECK(Ask(f.path, "{\"command\":\"reload\"}\n")["ok"] == true);
  CHECK(f.target.Calls() ==
        std::vector<std::string>{"scale web 5", "restart compute", "reload"});
}

TEST_CASE("control server: the target's errors come back as answers") {
  Fixture f;
  json unknown = Ask(
      f.path, "{\"command\":\"scale\",\"group\":\"nope\",\"processes\":1}\n");
  CHECK(unknown["ok"] == false);
  CHECK(unknown["error"] == "unknown group 'nope'");
  {
    std::lock_guard<std::mutex> lock(f.target.mutex);
    f.target.reload_result =
        Status::Error("/etc/workerpool/demo.yaml:3:5: unknown key 'procs'");
  }
  json reload = Ask(f.path, "{\"command\":\"reload\"}\n");
  CHECK(reload["ok"] == false);
  CHECK(reload["error"] ==
        "/etc/workerpool/demo.yaml:3:5: unknown key 'procs'");
}

TEST_CASE("control server: garbage gets an error and the server carries on") {
  Fixture f;
  for (const std::string& garbage :
       {std::string("hello\n"), std::string("\x00\x01\x02\n", 4),
        std::string("{\"command\":\"scale\",\"group\":\"web\",\"processes\":-3}"
                    "\n"),
        std::string("[]\n"), std::string("\n"),
        std::string("{\"command\":\"rm -rf\"}\n")}) {
    json answer = Ask(f.path, garbage);
    REQUIRE(answer.is_object());
    CHECK(answer["ok"] == false);
    CHECK(answer["error"].is_string());
    CHECK(!answer["error"].get<std::string>().empty());
  }
  // No scale reached the target, and the next client is served.
  CHECK(f.target.Calls().empty());
  CHECK(Ask(f.path, "{\"command\":\"status\"}\n")["ok"] == true);
}

TEST_CASE("control server: a request without its newline is read at EOF") {
  Fixture f;
  int fd = ConnectTo(f.path);
  REQUIRE(fd >= 0);
  SendText(fd, "{\"command\":\"status\"}");
  shutdown(fd, SHUT_WR);
  json answer = json::parse(ReadAll(fd), nullptr, false);
  close(fd);
  CHECK(answer["ok"] == true);
}

TEST_CASE("control server: a request in many small pieces") {
  Fixture f;
  int fd = ConnectTo(f.path);
  REQUIRE(fd >= 0);
  std::string request = "{\"command\":\"restart\",\"group\":\"web\"}\n";
  for (char c : request) SendText(fd, std::string(1, c));
  json answer = json::parse(ReadAll(fd), nullptr, false);
  close(fd);
  CHECK(answer["ok"] == true);
  CHECK(f.target.Calls() == std::vector<std::string>{"restart web"});
}

TEST_CASE("control server: only the first line of a connection counts") {
  Fixture f;
  std::string answer =
      Exchange(f.path, "{\"command\":\"reload\"}\n{\"command\":\"stop\"}\n");
  CHECK(answer.find('\n') == answer.size() - 1);
  CHECK(f.target.Calls() == std::vector<std::string>{"reload"});
}

TEST_CASE("control server: a request that is too long is refused") {
  Fixture f;
  std::string huge(200 * 1024, 'x');
  json answer = Ask(f.path, huge);
  CHECK(answer["ok"] == false);
  CHECK(answer["error"].get<std::string>().find("too long") !=
        std::string::npos);
  CHECK(Ask(f.path, "{\"command\":\"status\"}\n")["ok"] == true);
}

TEST_CASE("control server: a client that leaves at once does no harm") {
  Fixture f;
  for (int i = 0; i < 50; ++i) {
    int fd = ConnectTo(f.path);
    REQUIRE(fd >= 0);
    if (i % 2 == 0) SendText(fd, "{\"command\":");
    close(fd);
  }
  CHECK(Ask(f.path, "{\"command\":\"status\"}\n")["ok"] == true);
}

TEST_CASE("control server: stop answers first, then stops the target") {
  Fixture f;
  {
    // The Watcher closes its control server when it has stopped.
    std::lock_guard<std::mutex> lock(f.target.mutex);
    f.target.on_stop = [&f] { f.server->Close(); };
  }
  int fd = ConnectTo(f.path);
  REQUIRE(fd >= 0);
  SendText(fd, "{\"command\":\"stop\"}\n");
  // The answer line, then EOF once the server closed.
  std::string answer = ReadAll(fd);
  close(fd);
  CHECK(json::parse(answer, nullptr, false)["ok"] == true);
  CHECK(f.target.Calls() == std::vector<std::string>{"stop"});
  // Close() removed the socket file.
  struct stat info;
  CHECK(stat(f.path.c_str(), &info) != 0);
}

TEST_CASE("control server: a stale socket file is replaced") {
  QuietLog quiet;
  TempDir dir;
  std::string path = dir.path + "/stale.sock";
  {
    // Bound and closed without unlinking: what a killed Watcher leaves.
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
            0);
    close(fd);
  }
  FakeTarget target;
  LoopThread loop;
  auto started = ControlServer::Start(&loop.loop, path, &target);
  REQUIRE_MESSAGE(started.ok(), started.status().message());
  std::unique_ptr<ControlServer> server = std::move(*started);
  loop.Run();
  CHECK(Ask(path, "{\"command\":\"status\"}\n")["ok"] == true);
  loop.Finish([&server] { server.reset(); });
}

TEST_CASE("control server: a second Watcher on a live socket is refused") {
  Fixture f;
  FakeTarget other;
  uv_loop_t loop;
  uv_loop_init(&loop);
  auto second = ControlServer::Start(&loop, f.path, &other);
  REQUIRE(!second.ok());
  CHECK(second.status().message().find("another workerpool is running at " +
                                       f.path) != std::string::npos);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  // The first one still answers.
  CHECK(Ask(f.path, "{\"command\":\"status\"}\n")["ok"] == true);
}

TEST_CASE("control server: a path that is a regular file is refused") {
  QuietLog quiet;
  TempDir dir;
  std::string path = dir.path + "/file.sock";
  std::ofstream(path) << "not a socket";
  FakeTarget target;
  uv_loop_t loop;
  uv_loop_init(&loop);
  auto started = ControlServer::Start(&loop, path, &target);
  REQUIRE(!started.ok());
  CHECK(started.status().message().find("exists and is not a socket") !=
        std::string::npos);
  uv_loop_close(&loop);
}

TEST_CASE("control server: missing directories are created") {
  QuietLog quiet;
  TempDir dir;
  std::string path = dir.path + "/a/b/pool.sock";
  FakeTarget target;
  LoopThread loop;
  auto started = ControlServer::Start(&loop.loop, path, &target);
  REQUIRE_MESSAGE(started.ok(), started.status().message());
  std::unique_ptr<ControlServer> server = std::move(*started);
  loop.Run();
  CHECK(Ask(path, "{\"command\":\"status\"}\n")["ok"] == true);
  loop.Finish([&server] { server.reset(); });
}

TEST_CASE("control server: a path too long for a Unix socket is an error") {
  FakeTarget target;
  uv_loop_t loop;
  uv_loop_init(&loop);
  auto started =
      ControlServer::Start(&loop, "/tmp/" + std::string(200, 'x'), &target);
  REQUIRE(!started.ok());
  CHECK(started.status().message().find("too long") != std::string::npos);
  uv_loop_close(&loop);
}

}  // namespace
}  // namespace workerpool::testing
