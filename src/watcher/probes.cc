#include "watcher/probes.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "core/probe_spec.h"
#include "os/spawn.h"
#include "os/uv_owner.h"

namespace workerpool {
namespace {

// A ready probe that failed tries again this much later.
constexpr uint64_t kReadyRetryMs = 250;
// An HTTP answer whose status line is longer than this is no answer.
constexpr std::size_t kMaxStatusLine = 4096;

uint64_t Millis(Duration duration) {
  return static_cast<uint64_t>(std::max<int64_t>(0, duration.count()));
}

}  // namespace

struct ProbeConnection;

// One slot's probing: what it probes, a timer (the next try, or the
// deadline of the try in flight) and the try in flight.
struct ProbeRun {
  Probes* owner = nullptr;
  Slot* slot = nullptr;  // nullptr once stopped
  bool health = false;
  ProbeConfig config;  // a copy: a reload may change the group's
  int index = 0;
  SpawnSpec exec_spec;  // an exec probe's, made at Start (the child's pid)
  uv_timer_t timer;
  bool in_flight = false;
  ProbeConnection* connection = nullptr;  // a tcp or http try
  pid_t exec_pid = 0;                     // an exec try
  int exec_output = -1;                   // its output pipe, read by nobody
};

// One tcp or http try. Lives until its socket is closed (libuv may still
// call the connect callback, cancelled, after the try is over).
struct ProbeConnection {
  ProbeRun* run = nullptr;  // nullptr once the try is over
  bool http = false;
  std::string request;
  std::string response;
  char buffer[1024];
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
};

namespace {

// Ends CONNECTION's try (once) and reports it to its run, if any.
void FinishConnection(ProbeConnection* connection, bool passed,
                      const std::string& detail) {
  ProbeRun* run = connection->run;
  if (run == nullptr) return;
  connection->run = nullptr;
  run->connection = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp),
           [](uv_handle_t* handle) {
             delete static_cast<ProbeConnection*>(handle->data);
           });
  if (run->slot != nullptr)
    run->owner->AttemptDoneFromConnection(run, passed, detail);
}

}  // namespace

Probes::Probes(uv_loop_t* loop, Listener* listener, ExecSpecFor exec_spec_for)
    : loop_(loop),
      listener_(listener),
      exec_spec_for_(std::move(exec_spec_for)) {}

Probes::~Probes() = default;

void Probes::StartReady(Slot* slot) { Start(slot, /*health=*/false); }

void Probes::StartHealth(Slot* slot) {
  if (slot->group->config.health) Start(slot, /*health=*/true);
}

void Probes::Start(Slot* slot, bool health) {
  Stop(slot);
  if (closed_) return;
  const GroupConfig& group = slot->group->config;
  auto* run = new ProbeRun;
  run->owner = this;
  run->slot = slot;
  run->health = health;
  run->config = health ? *group.health : *group.ready;
  run->index = slot->index;
  if (run->config.kind == ProbeConfig::Kind::kExec) {
    run->exec_spec = exec_spec_for_(*slot, run->config.argv);
  }
  uv_timer_init(loop_, &run->timer);
  run->timer.data = run;
  slot->probe = run;
  slot->health_failures = 0;
  if (!health) slot->ready_probe_passed = false;
  // Health: the first probe after `every`; ready: at once (after: then).
  uint64_t first = 0;
  if (health) first = Millis(run->config.every);
  if (!health && run->config.kind == ProbeConfig::Kind::kAfter) {
    first = Millis(run->config.after);
  }
  uv_timer_start(
      &run->timer,
      [](uv_timer_t* timer) {
        auto* run = static_cast<ProbeRun*>(timer->data);
        run->owner->OnTimer(run);
      },
      first, 0);
}

void Probes::OnTimer(ProbeRun* run) {
  if (run->slot == nullptr) return;
  if (!run->in_flight) {
    Attempt(run);
    return;
  }
  // The try in flight ran out of time.
  const std::string detail =
      "no answer within " + FormatDuration(run->config.timeout);
  if (run->connection != nullptr) {
    FinishConnection(run->connection, false, detail);
    return;
  }
  if (run->exec_pid > 0) {
    kill(-run->exec_pid, SIGKILL);
    exec_pids_[run->exec_pid] = nullptr;  // reaped later, reported never
    run->exec_pid = 0;
    if (run->exec_output >= 0) close(run->exec_output);
    run->exec_output = -1;
  }
  AttemptDone(run, false, detail);
}

void Probes::Attempt(ProbeRun* run) {
  const ProbeConfig& config = run->config;
  if (config.kind == ProbeConfig::Kind::kAfter) {
    AttemptDone(run, true, "");
    return;
  }
  run->in_flight = true;
  // The try's deadline.
  uv_timer_start(
      &run->timer,
      [](uv_timer_t* timer) {
        auto* run = static_cast<ProbeRun*>(timer->data);
        run->owner->OnTimer(run);
      },
      Millis(config.timeout), 0);
  if (config.kind == ProbeConfig::Kind::kExec) {
    Result<SpawnedChild> child = SpawnChild(run->exec_spec);
    if (!child.ok()) {
      AttemptDone(run, false, child.status().message());
      return;
    }
    run->exec_pid = child->pid;
    run->exec_output = child->output_fd;
    exec_pids_[child->pid] = run;
    return;
  }
  const bool http = config.kind == ProbeConfig::Kind::kHttp;
  const std::string target = ExpandIndex(config.target, run->index);
  Result<ProbeAddress> address =
      http ? ParseHttpProbe(target) : ParseTcpProbe(target);
  if (!address.ok()) {
    AttemptDone(run, false, address.status().message());
    return;
  }
  sockaddr_storage storage{};
  const bool v6 = address->host.find(':') != std::string::npos;
  int parsed = v6 ? uv_ip6_addr(address->host.c_str(), address->port,
                                reinterpret_cast<sockaddr_in6*>(&storage))
                  : uv_ip4_addr(address->host.c_str(), address->port,
                                reinterpret_cast<sockaddr_in*>(&storage));
  if (parsed != 0) {
    AttemptDone(run, false, "bad address " + target);
    return;
  }
  auto* connection = new ProbeConnection;
  connection->run = run;
  connection->http = http;
  if (http) {
    connection->request = "GET " + address->path +
                          " HTTP/1.0\r\nHost: " + address->authority +
                          "\r\nUser-Agent: workerpool-probe\r\n"
                          "Connection: close\r\n\r\n";
  }
  run->connection = connection;
  uv_tcp_init(loop_, &connection->tcp);
  connection->tcp.data = connection;
  connection->connect.data = connection;
  int started = uv_tcp_connect(
      &connection->connect, &connection->tcp,
      reinterpret_cast<const sockaddr*>(&storage),
      [](uv_connect_t* request, int status) {
        auto* connection = static_cast<ProbeConnection*>(request->data);
        if (connection->run == nullptr) return;  // over (cancelled)
        if (status < 0) {
          FinishConnection(connection, false,
                           std::string("connect: ") + uv_strerror(status));
          return;
        }
        if (!connection->http) {
          FinishConnection(connection, true, "");
          return;
        }
        uv_buf_t buffer =
            uv_buf_init(connection->request.data(), connection->request.size());
        connection->write.data = connection;
        uv_write(&connection->write,
                 reinterpret_cast<uv_stream_t*>(&connection->tcp), &buffer, 1,
                 [](uv_write_t*, int) {});
        uv_read_start(
            reinterpret_cast<uv_stream_t*>(&connection->tcp),
            [](uv_handle_t* handle, size_t, uv_buf_t* buffer) {
              auto* connection = static_cast<ProbeConnection*>(handle->data);
              *buffer =
                  uv_buf_init(connection->buffer, sizeof(connection->buffer));
            },
            [](uv_stream_t* stream, ssize_t read, const uv_buf_t* buffer) {
              auto* connection = static_cast<ProbeConnection*>(stream->data);
              if (connection->run == nullptr) return;
              if (read < 0) {
                FinishConnection(connection, false,
                                 "closed before answering an HTTP status");
                return;
              }
              connection->response.append(buffer->base,
                                          static_cast<std::size_t>(read));
              const std::size_t end = connection->response.find('\n');
              if (end == std::string::npos) {
                if (connection->response.size() > kMaxStatusLine) {
                  FinishConnection(connection, false, "not an HTTP answer");
                }
                return;
              }
              Result<int> status = ParseHttpStatusLine(
                  std::string_view(connection->response).substr(0, end));
              if (!status.ok()) {
                FinishConnection(connection, false, "not an HTTP answer");
              } else if (!HttpProbePasses(*status)) {
                FinishConnection(connection, false,
                                 "HTTP status " + std::to_string(*status));
              } else {
                FinishConnection(connection, true, "");
              }
            });
      });
  if (started != 0) {
    FinishConnection(connection, false,
                     std::string("connect: ") + uv_strerror(started));
  }
}

void Probes::AttemptDoneFromConnection(ProbeRun* run, bool passed,
                                       const std::string& detail) {
  AttemptDone(run, passed, detail);
}

void Probes::AttemptDone(ProbeRun* run, bool passed,
                         const std::string& detail) {
  run->in_flight = false;
  uv_timer_stop(&run->timer);
  Slot* slot = run->slot;
  if (slot == nullptr) return;
  auto next = [](uv_timer_t* timer) {
    auto* run = static_cast<ProbeRun*>(timer->data);
    run->owner->OnTimer(run);
  };
  if (!run->health) {
    if (passed) {
      slot->ready_probe_passed = true;
      listener_->OnReadyProbePassed(slot);  // may Stop() this run
    } else {
      spdlog::debug("{}[{}] not ready yet: {}", slot->group->config.name,
                    slot->index, detail);
      uv_timer_start(&run->timer, next, kReadyRetryMs, 0);
    }
    return;
  }
  // Armed first: the listener may Stop() this run, which stops it again.
  uv_timer_start(&run->timer, next, Millis(run->config.every), 0);
  listener_->OnHealthProbe(slot, passed, detail);
}

void Probes::Stop(Slot* slot) {
  ProbeRun* run = slot->probe;
  if (run == nullptr) return;
  slot->probe = nullptr;
  Release(run);
}

void Probes::Release(ProbeRun* run) {
  run->slot = nullptr;
  if (run->connection != nullptr) {
    FinishConnection(run->connection, false, "");  // reports nothing now
  }
  if (run->exec_pid > 0) {
    kill(-run->exec_pid, SIGKILL);
    exec_pids_[run->exec_pid] = nullptr;
    run->exec_pid = 0;
  }
  if (run->exec_output >= 0) close(run->exec_output);
  run->exec_output = -1;
  uv_close(reinterpret_cast<uv_handle_t*>(&run->timer),
           [](uv_handle_t* h) { delete static_cast<ProbeRun*>(h->data); });
}

bool Probes::OnProcessExit(pid_t pid, int status) {
  auto found = exec_pids_.find(pid);
  if (found == exec_pids_.end()) return false;
  ProbeRun* run = found->second;
  exec_pids_.erase(found);
  if (run == nullptr) return true;
  run->exec_pid = 0;
  if (run->exec_output >= 0) close(run->exec_output);
  run->exec_output = -1;
  const bool passed = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::string detail;
  if (WIFEXITED(status)) {
    detail = "exited with code " + std::to_string(WEXITSTATUS(status));
  } else if (WIFSIGNALED(status)) {
    detail = "killed by " + SignalName(WTERMSIG(status));
  }
  AttemptDone(run, passed, detail);
  return true;
}

void Probes::CloseAll() {
  closed_ = true;
  for (auto& [pid, run] : exec_pids_) {
    if (run != nullptr) run->exec_pid = 0;
    kill(-pid, SIGKILL);
  }
}

}  // namespace workerpool
