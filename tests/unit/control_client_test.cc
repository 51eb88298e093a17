// The CLI side of the control socket (src/cli/control_client.cc)
// against the real control server and a fake Watcher: exit codes, the
// status table, and the error messages an operator reads.
#include "cli/control_client.h"

#include <fcntl.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "control_test_support.h"

namespace workerpool::testing {
namespace {

using nlohmann::json;

// Runs the command with stdout and stderr sent to files; returns the exit
// code and what was printed.
struct Output {
  int code = -1;
  std::string out, err;
};

std::string Slurp(int fd) {
  std::string text;
  lseek(fd, 0, SEEK_SET);
  char buffer[4096];
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n <= 0) return text;
    text.append(buffer, static_cast<size_t>(n));
  }
}

Output Run(const ControlOptions& options) {
  std::fflush(stdout);
  std::fflush(stderr);
  char out_name[] = "/tmp/wp-cli-out-XXXXXX";
  char err_name[] = "/tmp/wp-cli-err-XXXXXX";
  int out_fd = mkstemp(out_name), err_fd = mkstemp(err_name);
  unlink(out_name);
  unlink(err_name);
  int saved_out = dup(1), saved_err = dup(2);
  dup2(out_fd, 1);
  dup2(err_fd, 2);
  Output result;
  result.code = RunControlCommand(options);
  std::fflush(stdout);
  std::fflush(stderr);
  dup2(saved_out, 1);
  dup2(saved_err, 2);
  close(saved_out);
  close(saved_err);
  result.out = Slurp(out_fd);
  result.err = Slurp(err_fd);
  close(out_fd);
  close(err_fd);
  return result;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

struct Fixture {
  Fixture() : path(dir.path + "/pool.sock") {
    auto started = ControlServer::Start(&loop.loop, path, &target);
    REQUIRE_MESSAGE(started.ok(), started.status().message());
    server = std::move(*started);
    loop.Run();
  }
  ~Fixture() {
    loop.Finish([this] { server.reset(); });
  }
  ControlOptions Options(const std::string& command) {
    ControlOptions options;
    options.command = command;
    options.socket_path = path;
    return options;
  }

  QuietLog quiet;
  TempDir dir;
  std::string path;
  FakeTarget target;
  LoopThread loop;
  std::unique_ptr<ControlServer> server;
};

TEST_CASE("control client: status prints a table with every column") {
  Fixture f;
  Output result = Run(f.Options("status"));
  CHECK(result.code == 0);
  CHECK(result.err.empty());
  CHECK(Contains(result.out, "pool demo (pid 4242"));
  // Header and one row per group, columns in order.
  std::vector<std::string> lines;
  std::istringstream in(result.out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  auto find_line = [&](const std::string& start) -> std::string {
    for (const std::string& line : lines) {
      if (line.rfind(start, 0) == 0) return line;
    }
    return "";
  };
  auto words = [](const std::string& line) {
    std::vector<std::string> out;
    std::istringstream in(line);
    for (std::string word; in >> word;) out.push_back(word);
    return out;
  };
  CHECK(words(find_line("GROUP")) ==
        std::vector<std::string>{"GROUP", "TYPE", "DESIRED", "LIVE", "RESTARTS",
                                 "STATE", "IN-FLIGHT", "QUEUED"});
  CHECK(words(find_line("web ")) ==
        std::vector<std::string>{"web", "reactor", "2", "2", "1", "running",
                                 "3", "0"});
  CHECK(words(find_line("compute ")) ==
        std::vector<std::string>{"compute", "job", "6*", "5", "12", "failed",
                                 "1", "9"});
  // The scaled group is explained.
  CHECK(Contains(result.out, "until the next reload"));
}

TEST_CASE("control client: a child's app problem flags its group") {
  Fixture f;
  {
    std::lock_guard<std::mutex> lock(f.target.mutex);
    for (json& group : f.target.status["groups"]) {
      if (group["name"] != "web") continue;
      group["app"] = json::array(
          {{{"index", 0}, {"problem", ""}},
           {{"index", 1},
            {"problem", "queue 'tasks' not consumed: it does not exist"}},
           {{"index", 2}, {"problem", 7}},  // not text: ignored
           "not an object"});
    }
  }
  Output result = Run(f.Options("status"));
  CHECK(result.code == 0);
  CHECK(Contains(result.out, "running!"));
  CHECK(Contains(result.out,
                 "! web[1]: queue 'tasks' not consumed: it does not exist\n"));
  CHECK_FALSE(Contains(result.out, "web[0]"));
  CHECK_FALSE(Contains(result.out, "web[2]"));
}

TEST_CASE("control client: status shows autoscale bounds and decisions") {
  Fixture f;
  {
    std::lock_guard<std::mutex> lock(f.target.mutex);
    f.target.status["groups"][1]["autoscale"] = nlohmann::json::parse(R"({
      "min": 1, "max": 16, "up_after_ms": 1000, "down_after_ms": 30000,
      "target": 6, "paused": true, "decisions": {"up": 1, "down": 0},
      "last_decision": {"reason": "up 2 -> 6: 2 serving, 9 queued need 11 processes for 1s", "unix": 1}})");
    f.target.status["groups"][0]["autoscale"] = nullptr;
  }
  Output result = Run(f.Options("status"));
  CHECK(result.code == 0);
  std::vector<std::string> lines;
  std::istringstream in(result.out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  auto words = [](const std::string& line) {
    std::vector<std::string> out;
    std::istringstream in(line);
    for (std::string word; in >> word;) out.push_back(word);
    return out;
  };
  REQUIRE(lines.size() >= 4);
  CHECK(words(lines[1]) ==
        std::vector<std::string>{"GROUP", "TYPE", "DESIRED", "LIVE", "RESTARTS",
                                 "STATE", "IN-FLIGHT", "QUEUED", "AUTOSCALE"});
  CHECK(words(lines[2]).back() == "-");
  CHECK(words(lines[3]).back() == "1..16");
  CHECK(Contains(result.out, "or until `workerpool scale GROUP auto`"));
  CHECK(Contains(result.out,
                 "last autoscale decisions:\n  compute: up 2 -> 6: 2 "
                 "serving, 9 queued need 11 processes for 1s ("));
  CHECK(Contains(result.out, " ago)\n"));
}

TEST_CASE("control client: status --json prints the status document") {
  Fixture f;
  ControlOptions options = f.Options("status");
  options.json = true;
  Output result = Run(options);
  CHECK(result.code == 0);
  CHECK(json::parse(result.out, nullptr, false) == f.target.status);
}

TEST_CASE("control client: a failed last reload is shown") {
  Fixture f;
  {
    std::lock_guard<std::mutex> lock(f.target.mutex);
    f.target.status["last_reload"] = {
        {"ok", false}, {"error", "pool.yaml:4:3: bad"}, {"unix", 1}};
  }
  Output result = Run(f.Options("status"));
  CHECK(result.code == 0);
  CHECK(Contains(result.out, "last reload failed"));
  CHECK(Contains(result.out, "pool.yaml:4:3: bad"));
}

TEST_CASE("control client: scale, restart, reload succeed with exit 0") {
  Fixture f;
  ControlOptions scale = f.Options("scale");
  scale.group = "web";
  scale.count_text = "3";
  Output scaled = Run(scale);
  CHECK(scaled.code == 0);
  CHECK(Contains(scaled.out, "until the next reload"));

  ControlOptions restart = f.Options("restart");
  restart.group = "compute";
  CHECK(Run(restart).code == 0);
  CHECK(Run(f.Options("reload")).code == 0);
  CHECK(f.target.Calls() ==
        std::vector<std::string>{"scale web 3", "restart compute", "reload"});
}

TEST_CASE("control client: scale GROUP auto sends processes \"auto\"") {
  Fixture f;
  ControlOptions scale = f.Options("scale");
  scale.group = "compute";
  scale.count_text = "auto";
  Output resumed = Run(scale);
  CHECK(resumed.code == 0);
  CHECK(resumed.out ==
        "group compute: autoscaling again between its autoscale bounds "
        "(`workerpool status` shows its target)\n");
  // The control server hands the Watcher kScaleAuto (-1) for "auto".
  CHECK(f.target.Calls() == std::vector<std::string>{"scale compute -1"});
}

TEST_CASE("control client: bad N is refused before connecting") {
  Fixture f;
  for (const char* bad : {"-1", "two", "", "1.5", "100001", "AUTO"}) {
    ControlOptions scale = f.Options("scale");
    scale.group = "web";
    scale.count_text = bad;
    Output result = Run(scale);
    CHECK(result.code == 1);
    CHECK_MESSAGE(Contains(result.err, "workerpool scale: N must be"),
                  result.err);
  }
  CHECK(f.target.Calls().empty());
}

TEST_CASE("control client: an unknown group exits 1 with the Watcher's error") {
  Fixture f;
  ControlOptions scale = f.Options("scale");
  scale.group = "nope";
  scale.count_text = "2";
  Output result = Run(scale);
  CHECK(result.code == 1);
  CHECK(result.err == "workerpool scale: unknown group 'nope'\n");
}

TEST_CASE("control client: a failed reload exits 1 with the error") {
  Fixture f;
  {
    std::lock_guard<std::mutex> lock(f.target.mutex);
    f.target.reload_result = Status::Error("pool.yaml:2:1: unknown key 'x'");
  }
  Output result = Run(f.Options("reload"));
  CHECK(result.code == 1);
  CHECK(result.err == "workerpool reload: pool.yaml:2:1: unknown key 'x'\n");
}

TEST_CASE("control client: no pool at the socket exits 2 and says so") {
  TempDir dir;
  ControlOptions options;
  options.command = "status";
  options.socket_path = dir.path + "/none.sock";
  Output result = Run(options);
  CHECK(result.code == 2);
  CHECK(Contains(result.err,
                 "no workerpool is running at " + options.socket_path));

  // A stale socket file: nobody listens.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, options.socket_path.c_str(),
               sizeof(address.sun_path) - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
          0);
  close(fd);
  result = Run(options);
  CHECK(result.code == 2);
  CHECK(Contains(result.err, "no workerpool is running at " +
                                 options.socket_path +
                                 " (connection refused)"));
}

TEST_CASE("control client: --config takes the socket from the pool file") {
  Fixture f;
  std::string config = f.dir.path + "/pool.yaml";
  {
    std::ofstream out(config);
    out << "pool: {name: demo, control_socket: " << f.path << "}\n"
        << "groups:\n"
        << "  - {name: web, type: job, processes: 1, command: [sleep, '9']}\n";
  }
  ControlOptions options;
  options.command = "status";
  options.config_path = config;
  options.json = true;
  Output result = Run(options);
  CHECK_MESSAGE(result.code == 0, result.err);
  CHECK(json::parse(result.out, nullptr, false)["pool"] == "demo");
}

TEST_CASE("control client: finds the live pool in $RUNTIME_DIRECTORY") {
  Fixture f;
  // A killed Watcher's socket beside the live one does not count.
  std::string stale = f.dir.path + "/old.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, stale.c_str(), sizeof(address.sun_path) - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
          0);
  close(fd);
  const char* saved = std::getenv("RUNTIME_DIRECTORY");
  std::string saved_value = saved ? saved : "";
  setenv("RUNTIME_DIRECTORY", f.dir.path.c_str(), 1);
  ControlOptions options;
  options.command = "status";
  options.json = true;
  Output found = Run(options);
  // Only stale sockets: "no workerpool is running".
  TempDir empty;
  std::string lone = empty.path + "/lone.sock";
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  std::strncpy(address.sun_path, lone.c_str(), sizeof(address.sun_path) - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
          0);
  close(fd);
  setenv("RUNTIME_DIRECTORY", empty.path.c_str(), 1);
  Output none = Run(options);
  if (saved) {
    setenv("RUNTIME_DIRECTORY", saved_value.c_str(), 1);
  } else {
    unsetenv("RUNTIME_DIRECTORY");
  }
  CHECK_MESSAGE(found.code == 0, found.err);
  CHECK(json::parse(found.out, nullptr, false)["pool"] == "demo");
  // Other pools may run on this machine (/run/workerpool, /tmp): only
  // check what this directory contributed.
  if (none.code != 0) {
    const bool explained = Contains(none.err, "no workerpool is running") ||
                           Contains(none.err, "pools are running");
    CHECK_MESSAGE(explained, none.err);
  }
}

TEST_CASE("control client: stop waits until the Watcher closes") {
  Fixture f;
  {
    std::lock_guard<std::mutex> lock(f.target.mutex);
    f.target.on_stop = [&f] { f.server->Close(); };
  }
  Output result = Run(f.Options("stop"));
  CHECK(result.code == 0);
  CHECK(Contains(result.out, "stopped"));
  CHECK(f.target.Calls() == std::vector<std::string>{"stop"});
}

}  // namespace
}  // namespace workerpool::testing
