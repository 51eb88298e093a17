// The operator's side of the control socket. Plain blocking sockets: this
// runs in the short-lived CLI process, never in the Watcher.
#include "cli/control_client.h"

#include <errno.h>
#include <glob.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <vector>

#include "core/config.h"
#include "core/control_request.h"
#include "os/config_file.h"

namespace workerpool {
namespace {

using nlohmann::json;

constexpr int kExitOk = 0;
constexpr int kExitBadInput = 1;
constexpr int kExitRuntime = 2;

// How long the Watcher gets to answer (reload parses and applies at once).
constexpr int kAnswerTimeoutMs = 30000;
constexpr std::size_t kMaxAnswerBytes = 64 * 1024 * 1024;

struct Failure {
  int code;
  std::string message;
};

std::string Errno(int error) { return std::strerror(error); }

int Fail(const ControlOptions& options, int code, const std::string& message) {
  std::fprintf(stderr, "workerpool %s: %s\n", options.command.c_str(),
               message.c_str());
  return code;
}

bool IsSocket(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISSOCK(info.st_mode);
}

std::vector<std::string> Glob(const std::string& pattern) {
  std::vector<std::string> found;
  glob_t matches{};
  if (glob(pattern.c_str(), 0, nullptr, &matches) == 0) {
    for (std::size_t i = 0; i < matches.gl_pathc; ++i) {
      found.push_back(matches.gl_pathv[i]);
    }
  }
  globfree(&matches);
  return found;
}

// A connected socket to PATH, or why not.
int Connect(const std::string& path, Failure* failure) {
  sockaddr_un address{};
  if (path.size() >= sizeof(address.sun_path)) {
    *failure = {kExitBadInput,
                "the control socket path " + path + " is too long (at most " +
                    std::to_string(sizeof(address.sun_path) - 1) + " bytes)"};
    return -1;
  }
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *failure = {kExitRuntime, "cannot create a socket: " + Errno(errno)};
    return -1;
  }
  // A Watcher too busy to accept must not hang the CLI forever.
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
      0) {
    return fd;
  }
  int error = errno;
  close(fd);
  switch (error) {
    case ECONNREFUSED:
      *failure = {kExitRuntime, "no workerpool is running at " + path +
                                    " (connection refused)"};
      break;
    case ENOENT:
      *failure = {kExitRuntime,
                  "no workerpool is running at " + path + " (no such socket)"};
      break;
    case EACCES:
    case EPERM:
      *failure = {kExitRuntime,
                  "cannot connect to " + path +
                      ": permission denied (only root and the pool's user "
                      "may use its control socket)"};
      break;
    case EAGAIN:
    case EINPROGRESS:
      *failure = {kExitRuntime, "the workerpool at " + path +
                                    " did not accept the connection within "
                                    "10 s"};
      break;
    default:
      *failure = {kExitRuntime,
                  "cannot connect to " + path + ": " + Errno(error)};
  }
  return -1;
}

bool Answers(const std::string& path) {
  Failure ignored;
  int fd = Connect(path, &ignored);
  if (fd < 0) return false;
  close(fd);
  return true;
}

// The control socket: --socket, else --config's pool.control_socket, else
// the one live pool in the first default place that has one.
bool ResolveSocket(const ControlOptions& options, std::string* path,
                   Failure* failure) {
  if (!options.socket_path.empty()) {
    *path = options.socket_path;
    return true;
  }
  if (!options.config_path.empty()) {
    ConfigLoad load = LoadConfigFile(options.config_path);
    if (!load.ok()) {
      std::string text = load.ErrorText();
      while (!text.empty() && text.back() == '\n') text.pop_back();
      *failure = {kExitBadInput, text};
      return false;
    }
    *path = load.config->control_socket;
    return true;
  }
  std::vector<std::string> patterns;
  if (const char* runtime = std::getenv("RUNTIME_DIRECTORY");
      runtime != nullptr && *runtime != '\0') {
    // systemd may list several directories, separated by colons.
    std::string_view list(runtime);
    while (!list.empty()) {
      std::size_t colon = list.find(':');
      std::string dir(list.substr(0, colon));
      if (!dir.empty()) patterns.push_back(dir + "/*.sock");
      if (colon == std::string_view::npos) break;
      list.remove_prefix(colon + 1);
    }
  }
  patterns.push_back("/run/workerpool/*.sock");
  patterns.push_back("/tmp/workerpool-*.sock");
  // The first place holding a live pool wins, so a pool run by systemd
  // ($RUNTIME_DIRECTORY) is found even while test pools sit in /tmp; stale
  // sockets of killed pools never count.
  std::set<std::string> seen;
  std::vector<std::string> stale;
  for (const std::string& pattern : patterns) {
    std::vector<std::string> live;
    for (const std::string& candidate : Glob(pattern)) {
      if (!IsSocket(candidate) || !seen.insert(candidate).second) continue;
      if (Answers(candidate)) {
        live.push_back(candidate);
      } else {
        stale.push_back(candidate);
      }
    }
    if (live.size() == 1) {
      *path = live.front();
      return true;
    }
    if (live.size() > 1) {
      std::string list;
      for (const std::string& candidate : live) {
        list += (list.empty() ? "" : ", ") + candidate;
      }
      *failure = {kExitBadInput,
                  std::to_string(live.size()) + " pools are running (" + list +
                      "); say which with --socket PATH or --config FILE"};
      return false;
    }
  }
  std::string looked;
  for (const std::string& pattern : patterns) {
    looked += (looked.empty() ? "" : ", ") + pattern;
  }
  std::string message =
      "no workerpool is running: no live control socket in " + looked;
  if (!stale.empty()) {
    message +=
        " (stale: " + stale.front() +
        (stale.size() > 1 ? " and " + std::to_string(stale.size() - 1) + " more"
                          : std::string()) +
        ")";
  }
  *failure = {kExitRuntime, message + "; pass --socket PATH or --config FILE"};
  return false;
}

bool SendAll(int fd, std::string_view data, Failure* failure,
             const std::string& path) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      *failure = {kExitRuntime,
                  "cannot send the request to " + path + ": " + Errno(errno)};
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads one answer line within the timeout.
bool ReadAnswer(int fd, const std::string& path, std::string* line,
                Failure* failure) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(kAnswerTimeoutMs);
  char buffer[16 * 1024];
  for (;;) {
    std::size_t newline = line->find('\n');
    if (newline != std::string::npos) {
      line->resize(newline);
      return true;
    }
    if (line->size() > kMaxAnswerBytes) {
      *failure = {kExitRuntime, "the answer from " + path + " is too long"};
      return false;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd poll_fd{fd, POLLIN, 0};
    int ready = left.count() > 0
                    ? poll(&poll_fd, 1, static_cast<int>(left.count()))
                    : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      *failure = {kExitRuntime,
                  "no answer from the workerpool at " + path + " within " +
                      std::to_string(kAnswerTimeoutMs / 1000) + " s"};
      return false;
    }
    ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *failure = {kExitRuntime,
                  "cannot read the answer from " + path + ": " + Errno(errno)};
      return false;
    }
    if (n == 0) {
      if (!line->empty()) return true;
      *failure = {kExitRuntime, "the workerpool at " + path +
                                    " closed the connection without an "
                                    "answer"};
      return false;
    }
    line->append(buffer, static_cast<std::size_t>(n));
  }
}

// Waits until the Watcher closes the connection: it does so when it has
// stopped (or when it exits).
void WaitForClose(int fd) {
  char buffer[4096];
  for (;;) {
    ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    return;
  }
}

// --- status ------------------------------------------------------------

std::string Text(const json& object, const char* key) {
  if (!object.is_object()) return "-";
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return "-";
  if (found->is_string()) return found->get<std::string>();
  if (found->is_boolean()) return found->get<bool>() ? "yes" : "no";
  if (found->is_number()) return found->dump();
  return "-";
}

bool Flag(const json& object, const char* key) {
  if (!object.is_object()) return false;
  auto found = object.find(key);
  if (found == object.end()) return false;
  if (found->is_boolean()) return found->get<bool>();
  if (found->is_number()) return found->get<double>() != 0;
  return false;
}

// What a group's children say is wrong in their app figures: a non-empty
// "problem" (the RabbitMQ service's: a queue not consumed, the connection
// down or blocked), as "GROUP[INDEX]: TEXT" each.
std::vector<std::string> AppProblems(const json& group) {
  std::vector<std::string> problems;
  if (!group.is_object()) return problems;
  auto app = group.find("app");
  if (app == group.end() || !app->is_array()) return problems;
  for (const json& child : *app) {
    if (!child.is_object()) continue;
    auto problem = child.find("problem");
    if (problem == child.end()) continue;
    const std::string* text = problem->get_ptr<const std::string*>();
    if (text == nullptr || text->empty()) continue;
    problems.push_back(Text(group, "name") + "[" + Text(child, "index") +
                       "]: " + *text);
  }
  return problems;
}

std::string FormatUptime(long long seconds) {
  if (seconds < 0) return "-";
  long long days = seconds / 86400, hours = seconds / 3600 % 24,
            minutes = seconds / 60 % 60, secs = seconds % 60;
  char text[64];
  if (days > 0) {
    std::snprintf(text, sizeof(text), "%lldd%02lldh%02lldm", days, hours,
                  minutes);
  } else if (hours > 0) {
    std::snprintf(text, sizeof(text), "%lldh%02lldm%02llds", hours, minutes,
                  secs);
  } else if (minutes > 0) {
    std::snprintf(text, sizeof(text), "%lldm%02llds", minutes, secs);
  } else {
    std::snprintf(text, sizeof(text), "%llds", secs);
  }
  return text;
}

// GROUP's "autoscale" object (docs/OPERATIONS.md, "Autoscaling"), or
// nullptr when it has none (null, absent, or not an object).
const json* AutoscaleOf(const json& group) {
  if (!group.is_object()) return nullptr;
  auto found = group.find("autoscale");
  if (found == group.end() || !found->is_object()) return nullptr;
  return &*found;
}

void PrintStatusTable(const json& status) {
  std::string header = "pool " + Text(status, "pool");
  std::vector<std::string> facts;
  if (Text(status, "pid") != "-") facts.push_back("pid " + Text(status, "pid"));
  if (Text(status, "state") != "-") facts.push_back(Text(status, "state"));
  if (status.is_object() && status.contains("started_unix") &&
      status["started_unix"].is_number()) {
    long long started = status["started_unix"].get<long long>();
    facts.push_back(
        "up " +
        FormatUptime(static_cast<long long>(std::time(nullptr)) - started));
  } else if (status.is_object() && status.contains("uptime_ms") &&
             status["uptime_ms"].is_number()) {
    facts.push_back("up " +
                    FormatUptime(status["uptime_ms"].get<long long>() / 1000));
  }
  if (Text(status, "config") != "-") {
    facts.push_back("config " + Text(status, "config"));
  }
  for (std::size_t i = 0; i < facts.size(); ++i) {
    header += (i == 0 ? " (" : ", ") + facts[i];
  }
  if (!facts.empty()) header += ")";
  std::printf("%s\n", header.c_str());
  if (status.is_object() && status.contains("last_reload") &&
      status["last_reload"].is_object()) {
    const json& reload = status["last_reload"];
    if (reload.contains("ok") && reload["ok"].is_boolean() &&
        !reload["ok"].get<bool>()) {
      std::printf("last reload failed (running the previous config): %s\n",
                  Text(reload, "error").c_str());
    }
  }

  std::vector<std::vector<std::string>> rows = {{"GROUP", "TYPE", "DESIRED",
                                                 "LIVE", "RESTARTS", "STATE",
                                                 "IN-FLIGHT", "QUEUED"}};
  bool any_scaled = false;
  const json empty = json::array();
  const json& groups = status.is_object() && status.contains("groups") &&
                               status["groups"].is_array()
                           ? status["groups"]
                           : empty;
  // The AUTOSCALE column and the last decisions appear only when some group
  // is autoscaled, so the table of a pool without autoscale stays as it was.
  std::vector<std::string> decisions;
  for (const json& group : groups) {
    const json* autoscale = AutoscaleOf(group);
    if (autoscale == nullptr) continue;
    if (rows.front().size() == 8) rows.front().push_back("AUTOSCALE");
    const json* last = autoscale->contains("last_decision")
                           ? &(*autoscale)["last_decision"]
                           : nullptr;
    std::string reason = last != nullptr ? Text(*last, "reason") : "-";
    if (reason == "-") continue;
    std::string line = Text(group, "name") + ": " + reason;
    if (last->contains("unix") && (*last)["unix"].is_number()) {
      long long ago = static_cast<long long>(std::time(nullptr)) -
                      (*last)["unix"].get<long long>();
      line += " (" + FormatUptime(ago) + " ago)";
    }
    decisions.push_back(std::move(line));
  }
  const bool any_autoscaled = rows.front().size() == 9;
  std::vector<std::string> problems;
  for (const json& group : groups) {
    std::string desired = Text(group, "desired");
    if (Flag(group, "scaled_until_reload")) {
      desired += "*";
      any_scaled = true;
    }
    // "waiting for cache", "failed: migrate exited with code 1", ...
    std::string state = Text(group, "state_detail");
    if (state == "-") state = Text(group, "state");
    std::vector<std::string> group_problems = AppProblems(group);
    if (!group_problems.empty()) state += "!";
    problems.insert(problems.end(), group_problems.begin(),
                    group_problems.end());
    rows.push_back({Text(group, "name"), Text(group, "type"), desired,
                    Text(group, "live"), Text(group, "restarts"), state,
                    Text(group, "inflight"), Text(group, "queued")});
    if (any_autoscaled) {
      const json* autoscale = AutoscaleOf(group);
      rows.back().push_back(autoscale == nullptr
                                ? "-"
                                : Text(*autoscale, "min") + ".." +
                                      Text(*autoscale, "max"));
    }
  }
  std::vector<std::size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size())
        line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
  if (groups.empty()) std::printf("(no groups)\n");
  if (any_scaled) {
    std::printf(
        "* scaled with `workerpool scale`: lasts until the next reload; "
        "edit the YAML to keep it\n");
    if (any_autoscaled) {
      std::printf(
          "  (an autoscaled group: or until `workerpool scale GROUP "
          "auto`)\n");
    }
  }
  if (!decisions.empty()) std::printf("last autoscale decisions:\n");
  for (const std::string& line : decisions) {
    std::printf("  %s\n", line.c_str());
  }
  for (const std::string& problem : problems) {
    std::printf("! %s\n", problem.c_str());
  }
  // Last, after a blank line, so that the table stays where scripts look for
  // it and ends where they expect (bash completion reads up to a blank).
  if (status.is_object() && status.contains("version")) {
    std::string line = "workerpool " + Text(status, "version");
    const json* upgrade =
        status.contains("upgrade") && status["upgrade"].is_object()
            ? &status["upgrade"]
            : nullptr;
    if (upgrade != nullptr && upgrade->contains("last_unix") &&
        (*upgrade)["last_unix"].is_number()) {
      long long ago = static_cast<long long>(std::time(nullptr)) -
                      (*upgrade)["last_unix"].get<long long>();
      line += Text(*upgrade, "last_error") == "-"
                  ? "; upgraded from " + Text(*upgrade, "previous_version") +
                        " " + FormatUptime(ago) + " ago"
                  : "; last upgrade failed " + FormatUptime(ago) +
                        " ago: " + Text(*upgrade, "last_error");
    }
    std::printf("\n%s\n", line.c_str());
  }
}

}  // namespace

// After the Watcher accepted `upgrade`: asks `status` until the attempt is
// over (the new Watcher, or the old one taking the pool back, answers it),
// then says how it went.
static int WaitForUpgrade(const ControlOptions& options,
                          const std::string& path, const json& started) {
  std::uint64_t before = 0;
  if (started.contains("attempts") &&
      started["attempts"].is_number_unsigned()) {
    before = started["attempts"].get<std::uint64_t>();
  }
  ControlRequest status_request;
  status_request.command = ControlRequest::Command::kStatus;
  status_request.usage = false;  // asked every 2 ms: no /proc reads
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::string last_problem = "no answer";
  while (std::chrono::steady_clock::now() < deadline) {
    json answer;
    ControlError error;
    if (!ExchangeControl(path, status_request, &answer, &error)) {
      last_problem = error.message;
      usleep(2000);
      continue;
    }
    const json& status =
        answer.contains("status") ? answer["status"] : json::object();
    const json* upgrade = status.is_object() && status.contains("upgrade") &&
                                  status["upgrade"].is_object()
                              ? &status["upgrade"]
                              : nullptr;
    std::uint64_t attempts = 0;
    if (upgrade != nullptr && upgrade->contains("attempts") &&
        (*upgrade)["attempts"].is_number_unsigned()) {
      attempts = (*upgrade)["attempts"].get<std::uint64_t>();
    }
    if (upgrade == nullptr || attempts <= before ||
        Flag(*upgrade, "in_progress")) {
      usleep(2000);
      continue;
    }
    if ((*upgrade)["last_error"].is_string()) {
      // Refused by the checks: the binary given is at fault (1); taken
      // back after it could not adopt the pool: a runtime failure (2).
      const bool refused = Flag(*upgrade, "last_refused");
      return Fail(options, refused ? kExitBadInput : kExitRuntime,
                  std::string(refused ? "upgrade refused" : "upgrade failed") +
                      ", the pool runs on with workerpool " +
                      Text(status, "version") + ": " +
                      Text(*upgrade, "last_error"));
    }
    std::printf("upgraded: workerpool %s -> %s (pid %s unchanged)\n",
                Text(*upgrade, "previous_version").c_str(),
                Text(status, "version").c_str(), Text(status, "pid").c_str());
    return kExitOk;
  }
  return Fail(
      options, kExitRuntime,
      "no answer from the upgraded Watcher within 60 s (" + last_problem + ")");
}

bool FindControlSocket(const ControlOptions& options, std::string* path,
                       ControlError* error) {
  Failure failure{kExitOk, ""};
  if (ResolveSocket(options, path, &failure)) return true;
  *error = {failure.code, failure.message};
  return false;
}

bool ExchangeControl(const std::string& path, const ControlRequest& request,
                     json* answer, ControlError* error) {
  Failure failure{kExitOk, ""};
  int fd = Connect(path, &failure);
  std::string line;
  bool ok = fd >= 0 &&
            SendAll(fd, FormatControlRequest(request) + "\n", &failure, path) &&
            ReadAnswer(fd, path, &line, &failure);
  if (fd >= 0) close(fd);
  if (!ok) {
    *error = {failure.code, failure.message};
    return false;
  }
  *answer = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!answer->is_object() || !answer->contains("ok") ||
      !(*answer)["ok"].is_boolean()) {
    *error = {kExitRuntime,
              "unexpected answer from " + path + ": " + line.substr(0, 200)};
    return false;
  }
  return true;
}

int RunControlCommand(const ControlOptions& options) {
  ControlRequest request;
  if (options.command == "status") {
    request.command = ControlRequest::Command::kStatus;
    // The table shows no figures per process; --json shows them all.
    request.usage = options.json;
  } else if (options.command == "reload") {
    request.command = ControlRequest::Command::kReload;
  } else if (options.command == "stop") {
    request.command = ControlRequest::Command::kStop;
  } else if (options.command == "upgrade") {
    request.command = ControlRequest::Command::kUpgrade;
    request.binary = options.binary;
  } else if (options.command == "restart" || options.command == "scale") {
    if (options.group.empty()) {
      return Fail(options, kExitBadInput, "GROUP must not be empty");
    }
    request.group = options.group;
    request.command = ControlRequest::Command::kRestart;
    request.with_dependents = options.with_dependents;
    if (options.command == "scale") {
      request.command = ControlRequest::Command::kScale;
      Result<int> count = ParseScaleTarget(options.count_text);
      if (!count.ok()) {
        return Fail(options, kExitBadInput, count.status().message());
      }
      request.processes = *count;
    }
  } else {
    return Fail(options, kExitBadInput, "unknown control command");
  }

  std::string path;
  Failure failure{kExitOk, ""};
  if (!ResolveSocket(options, &path, &failure)) {
    return Fail(options, failure.code, failure.message);
  }
  int fd = Connect(path, &failure);
  if (fd < 0) return Fail(options, failure.code, failure.message);
  std::string line;
  bool ok = SendAll(fd, FormatControlRequest(request) + "\n", &failure, path) &&
            ReadAnswer(fd, path, &line, &failure);
  if (!ok) {
    close(fd);
    return Fail(options, failure.code, failure.message);
  }
  json answer = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!answer.is_object() || !answer.contains("ok") ||
      !answer["ok"].is_boolean()) {
    close(fd);
    return Fail(options, kExitRuntime,
                "unexpected answer from " + path + ": " + line.substr(0, 200));
  }
  if (!answer["ok"].get<bool>()) {
    close(fd);
    std::string error = answer.contains("error") && answer["error"].is_string()
                            ? answer["error"].get<std::string>()
                            : std::string("failed (no reason given)");
    // Refused by the Watcher's peer check: not the operator's input.
    int code = error == "permission denied" ? kExitRuntime : kExitBadInput;
    if (code == kExitRuntime) {
      error += " (only root and the pool's user may use " + path + ")";
    }
    return Fail(options, code, error);
  }

  const auto dump = [](const json& value) {
    return value.dump(2, ' ', false, json::error_handler_t::replace);
  };
  if (options.command == "status") {
    const json& status =
        answer.contains("status") ? answer["status"] : json::object();
    if (options.json) {
      std::printf("%s\n", dump(status).c_str());
    } else {
      PrintStatusTable(status);
    }
  } else if (options.command == "scale" && request.processes == kScaleAuto) {
    std::printf(
        "group %s: autoscaling again between its autoscale bounds "
        "(`workerpool status` shows its target)\n",
        options.group.c_str());
  } else if (options.command == "scale") {
    std::printf(
        "group %s: scaled to %s processes (until the next reload; edit the "
        "YAML to keep it; an autoscaled group stays there until `workerpool "
        "scale %s auto`)\n",
        options.group.c_str(), options.count_text.c_str(),
        options.group.c_str());
  } else if (options.command == "restart") {
    std::printf("group %s: rolling restart started%s\n", options.group.c_str(),
                options.with_dependents
                    ? ", then of the groups that depend on it"
                    : "");
  } else if (options.command == "upgrade") {
    close(fd);
    return WaitForUpgrade(options, path, answer);
  } else if (options.command == "reload") {
    std::printf("reloaded\n");
  } else if (options.command == "stop") {
    std::fflush(stdout);
    WaitForClose(fd);
    std::printf("stopped\n");
  }
  close(fd);
  return kExitOk;
}

}  // namespace workerpool
