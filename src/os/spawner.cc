// The Watcher's side of the spawner (os/spawner.h).
#include "os/spawner.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "os/builtin_path.h"

extern char** environ;

namespace workerpool {
namespace {

// A spawn through the spawner returns once the child has exec'd (vfork):
// this long without an answer means the spawner is stuck (stopped, or an
// exec that hangs), and it is replaced.
constexpr int kReplyTimeoutMs = 5000;
// A spawner that keeps dying is not restarted in a loop.
constexpr std::chrono::seconds kRestartEvery{1};

std::string HowEnded(int status) {
  if (WIFEXITED(status)) {
    return "exited with code " + std::to_string(WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) {
    return "was killed by " + SignalName(WTERMSIG(status));
  }
  return "ended";
}

void AppendString(std::vector<char>* out, const std::string& s) {
  out->insert(out->end(), s.begin(), s.end());
  out->push_back('\0');
}

}  // namespace

std::string SpawnerExecutable(const std::string& self_exe) {
  const char* mode = std::getenv("WORKERPOOL_SPAWN");
  if (mode != nullptr && std::strcmp(mode, "direct") == 0) {
    spdlog::info(
        "WORKERPOOL_SPAWN=direct: the Watcher spawns its children "
        "itself");
    return "";
  }
  std::string found = HelperExecutable(self_exe, "workerpool-spawner");
  if (found.empty()) {
    spdlog::warn(
        "workerpool-spawner is missing (looked beside {} and in its "
        "../libexec/workerpool/): the Watcher spawns its children "
        "itself, each spawn costing O(open descriptors)",
        self_exe);
  }
  return found;
}

bool Spawner::Start() {
  last_start_ = std::chrono::steady_clock::now();
  started_once_ = true;
  int ends[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends) != 0) {
    spdlog::warn("spawner: socketpair: {}; spawning directly",
                 std::strerror(errno));
    return false;
  }
  // A request carries the child's whole environment in one message.
  int buffer = 4 << 20;
  setsockopt(ends[0], SOL_SOCKET, SO_SNDBUF, &buffer, sizeof(buffer));
  SpawnSpec spec;
  spec.argv = {executable_};
  // Its own environment is the Watcher's: execvpe looks a child's command
  // up in the PATH of the process that calls it.
  for (char** each = environ; each != nullptr && *each != nullptr; ++each) {
    spec.env.emplace_back(*each);
  }
  spec.pass_fds = {ends[1], STDERR_FILENO};  // its fds 3 and 4
  Result<SpawnedChild> child = SpawnChild(spec);
  close(ends[1]);
  if (!child.ok()) {
    close(ends[0]);
    spdlog::warn("spawner: cannot start {}: {}; spawning directly", executable_,
                 child.status().message());
    return false;
  }
  // It writes to the Watcher's stderr (its fd 4), not to this pipe.
  close(child->output_fd);
  socket_ = ends[0];
  pid_ = child->pid;
  spdlog::info("spawner pid {} started ({})", pid_, executable_);
  return true;
}

void Spawner::Adopt(int socket, pid_t pid) {
  socket_ = socket;
  pid_ = pid;
  started_once_ = true;
  last_start_ = std::chrono::steady_clock::now();
}

void Spawner::Drop(const char* why) {
  spdlog::warn("spawner pid {} {}; spawning directly until it is restarted",
               pid_, why);
  if (pid_ > 0) kill(pid_, SIGKILL);  // reaped by the caller's waitpid
  Stop();
}

void Spawner::Stop() {
  if (socket_ >= 0) close(socket_);  // EOF: it exits
  socket_ = -1;
}

bool Spawner::Reaped(pid_t pid, int status) {
  if (pid != pid_ || pid <= 0) return false;
  if (socket_ >= 0) {
    spdlog::warn("spawner pid {} {}; spawning directly until it is restarted",
                 pid, HowEnded(status));
    Stop();
  }
  pid_ = 0;
  return true;
}

Result<SpawnedChild> Spawner::Spawn(const SpawnSpec& spec) {
  const auto now = std::chrono::steady_clock::now();
  if (socket_ < 0 && pid_ == 0 && !executable_.empty() &&
      (!started_once_ || now - last_start_ >= kRestartEvery)) {
    Start();
  }
  if (socket_ >= 0) {
    bool retry_direct = false;
    Result<SpawnedChild> child = Request(spec, &retry_direct);
    if (!retry_direct) return child;
  }
  ++direct_spawns_;
  return SpawnChild(spec);
}

Result<SpawnedChild> Spawner::Request(const SpawnSpec& spec,
                                      bool* retry_direct) {
  namespace sw = spawner_wire;
  if (spec.argv.empty()) return Status::Error("empty command");
  if (spec.pass_fds.size() + 1 > sw::kMaxFds) {
    *retry_direct = true;
    return Status::Error("too many fds");
  }
  // With SpawnSpec::shared_output, no pipe: the child gets that fd.
  int output[2] = {-1, -1};
  if (spec.shared_output < 0 && pipe2(output, O_CLOEXEC) != 0) {
    return Status::Error(std::string("pipe: ") + std::strerror(errno));
  }
  auto close_output = [&output] {
    if (output[0] >= 0) close(output[0]);
    if (output[1] >= 0) close(output[1]);
  };

  sw::Request header{};
  header.magic = sw::kMagic;
  header.flags = spec.set_listen_pid ? sw::kSetListenPid : 0;
  header.uid = spec.uid;
  header.gid = spec.gid;
  header.argc = static_cast<std::uint32_t>(spec.argv.size());
  header.envc = static_cast<std::uint32_t>(spec.env.size());
  header.fd_count = static_cast<std::uint32_t>(spec.pass_fds.size() + 1);
  std::vector<char> body(sizeof(header));
  std::memcpy(body.data(), &header, sizeof(header));
  AppendString(&body, spec.cwd);
  for (const std::string& arg : spec.argv) AppendString(&body, arg);
  for (const std::string& var : spec.env) AppendString(&body, var);

  std::vector<int> fds = {spec.shared_output >= 0 ? spec.shared_output
                                                  : output[1]};
  fds.insert(fds.end(), spec.pass_fds.begin(), spec.pass_fds.end());
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  iovec iov{body.data(), body.size()};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control.data();
  message.msg_controllen = control.size();
  cmsghdr* rights = CMSG_FIRSTHDR(&message);
  rights->cmsg_level = SOL_SOCKET;
  rights->cmsg_type = SCM_RIGHTS;
  rights->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(rights), fds.data(), sizeof(int) * fds.size());

  ssize_t sent;
  do {
    sent = sendmsg(socket_, &message, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    const int error = errno;
    close_output();
    *retry_direct = true;
    // Too big for one message: this child goes direct, the spawner stays.
    if (error != EMSGSIZE && error != ENOBUFS) Drop("cannot take requests");
    return Status::Error(std::string("spawner: ") + std::strerror(error));
  }

  pollfd wait{socket_, POLLIN, 0};
  int ready;
  do {
    ready = poll(&wait, 1, kReplyTimeoutMs);
  } while (ready < 0 && errno == EINTR);
  sw::Reply reply{};
  ssize_t got = -1;
  if (ready > 0) {
    do {
      got = recv(socket_, &reply, sizeof(reply), 0);
    } while (got < 0 && errno == EINTR);
  }
  if (got != static_cast<ssize_t>(sizeof(reply))) {
    close_output();
    *retry_direct = true;
    Drop(ready == 0 ? "did not answer" : "is gone");
    return Status::Error("spawner failed");
  }
  if (reply.pid <= 0) {
    close_output();
    reply.error[sizeof(reply.error) - 1] = '\0';
    return Status::Error(reply.error);
  }
  if (!spec.keep_output_write && output[1] >= 0) {
    close(output[1]);
    output[1] = -1;
  }
  if (output[0] >= 0) {
    fcntl(output[0], F_SETFL, fcntl(output[0], F_GETFL) | O_NONBLOCK);
  }
  return SpawnedChild{static_cast<pid_t>(reply.pid), output[0], output[1]};
}

}  // namespace workerpool
