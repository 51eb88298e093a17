// The terminal side of `workerpool top`: raw keys, the alternate screen,
// signals, and the refresh loop. What is shown is cli/top_view.cc's.
#include "cli/top.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "cli/top_view.h"
#include "core/units.h"

namespace workerpool {
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

constexpr int kExitOk = 0;
constexpr int kExitBadInput = 1;
constexpr int kExitRuntime = 2;
constexpr Duration kMinInterval{100};
constexpr Duration kMaxInterval{3600 * 1000};
// Rates are taken over at least this long: children report their counters
// once a second, so over a shorter window a rate would swing between 0 and
// twice its value from one refresh to the next.
constexpr Duration kMinRateWindow{2000};

// Set by the signal handlers; each also writes a byte to the wake pipe so
// that the loop's poll() returns at once.
volatile sig_atomic_t quit_requested = 0;
volatile sig_atomic_t resized = 0;
volatile sig_atomic_t suspend_requested = 0;
int wake_pipe[2] = {-1, -1};

void OnSignal(int signal_number) {
  const int saved_errno = errno;
  if (signal_number == SIGWINCH) {
    resized = 1;
  } else if (signal_number == SIGTSTP) {
    suspend_requested = 1;
  } else {
    quit_requested = 1;
  }
  char byte = 0;
  if (write(wake_pipe[1], &byte, 1) < 0) {
    // Full pipe: the loop is awake already.
  }
  errno = saved_errno;
}

void HandleSignals() {
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  // No SA_RESTART: poll() returns EINTR, the loop looks at the flags.
  for (int signal_number :
       {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, SIGTSTP}) {
    sigaction(signal_number, &action, nullptr);
  }
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// The terminal in the state `top` needs: keys one at a time and not echoed
// (signals still on, so Ctrl-C is SIGINT), the alternate screen, no cursor.
// Leave() puts everything back; it is safe to call twice.
class Terminal {
 public:
  ~Terminal() { Leave(); }

  bool Enter() {
    if (tcgetattr(STDIN_FILENO, &saved_) != 0) return false;
    termios raw = saved_;
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) != 0) return false;
    active_ = true;
    WriteAll(STDOUT_FILENO, "\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J");
    return true;
  }

  void Leave() {
    if (!active_) return;
    active_ = false;
    WriteAll(STDOUT_FILENO, "\x1b[0m\x1b[?25h\x1b[?1049l");
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
  }

 private:
  termios saved_{};
  bool active_ = false;
};

void TerminalSize(int* width, int* height) {
  winsize size{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0 &&
      size.ws_row > 0) {
    *width = size.ws_col;
    *height = size.ws_row;
    return;
  }
  *width = 80;
  *height = 24;
}

// One status answer and when it came.
struct Snapshot {
  json status;
  SteadyClock::time_point at;
};

// Asks for the status. False with ERROR when there is no usable answer.
bool FetchStatus(const std::string& path, Snapshot* snapshot,
                 ControlError* error) {
  ControlRequest request;
  request.command = ControlRequest::Command::kStatus;
  json answer;
  if (!ExchangeControl(path, request, &answer, error)) return false;
  if (!answer["ok"].get<bool>()) {
    const json* reason = answer.contains("error") && answer["error"].is_string()
                             ? &answer["error"]
                             : nullptr;
    std::string text = reason != nullptr ? reason->get<std::string>()
                                         : "refused (no reason given)";
    if (text == "permission denied") {
      text += " (only root and the pool's user may use " + path + ")";
    }
    *error = {kExitRuntime, text};
    return false;
  }
  snapshot->status = answer.contains("status") ? answer["status"] : json();
  snapshot->at = SteadyClock::now();
  return true;
}

double Seconds(SteadyClock::duration duration) {
  return std::chrono::duration<double>(duration).count();
}

std::string Frame(const TopScreen& screen, int width) {
  std::string frame = "\x1b[H";
  for (std::size_t i = 0; i < screen.lines.size(); ++i) {
    const std::string& line = screen.lines[i];
    if (static_cast<int>(i) == screen.selected_line) {
      std::string padded = line;
      if (padded.size() < static_cast<std::size_t>(width)) {
        padded.resize(static_cast<std::size_t>(width), ' ');
      }
      frame += "\x1b[7m" + padded + "\x1b[0m";
    } else if (static_cast<int>(i) == screen.header_line) {
      frame += "\x1b[1m" + line + "\x1b[0m\x1b[K";
    } else {
      frame += line + "\x1b[K";
    }
    if (i + 1 < screen.lines.size()) frame += "\r\n";
  }
  return frame + "\x1b[J";
}

// What the keys did to the view; QUIT when it is time to go.
void HandleKeys(std::string_view keys, std::size_t groups,
                const TopFigures& figures, TopViewState* view, bool* quit) {
  auto move = [&](int step) {
    if (groups == 0) return;
    if (step < 0 && view->selected > 0) --view->selected;
    if (step > 0 && view->selected + 1 < groups) ++view->selected;
  };
  for (std::size_t i = 0; i < keys.size(); ++i) {
    char key = keys[i];
    // Arrows: ESC [ A/B, or ESC O A/B in the application cursor mode.
    if (key == '\x1b' && i + 2 < keys.size() &&
        (keys[i + 1] == '[' || keys[i + 1] == 'O')) {
      char code = keys[i + 2];
      i += 2;
      if (code == 'A') move(-1);
      if (code == 'B') move(+1);
      continue;
    }
    switch (key) {
      case 'q':
      case 'Q':
        *quit = true;
        return;
      case 'k':
        move(-1);
        break;
      case 'j':
        move(+1);
        break;
      case '\r':
      case '\n':
      case ' ':
      case 'e': {
        if (view->selected >= groups) break;
        const std::string& name = figures.groups[view->selected].name;
        if (view->expanded.erase(name) == 0) view->expanded.insert(name);
        break;
      }
      case 'a':
        if (view->expanded.size() < groups) {
          for (const TopGroup& group : figures.groups) {
            view->expanded.insert(group.name);
          }
        } else {
          view->expanded.clear();
        }
        break;
      default:
        break;
    }
  }
}

int Fail(const std::string& message, int code) {
  std::fprintf(stderr, "workerpool top: %s\n", message.c_str());
  return code;
}

// Not a terminal: one screen, with rates over one interval.
int PrintOnce(const std::string& path, const Snapshot& first, Duration interval,
              TopViewState view) {
  usleep(static_cast<useconds_t>(interval.count()) * 1000);
  Snapshot second;
  ControlError error;
  if (!FetchStatus(path, &second, &error)) {
    return Fail(error.message, error.exit_code);
  }
  int width = 80;
  if (const char* columns = std::getenv("COLUMNS")) {
    int value = std::atoi(columns);
    if (value > 0 && value < 10000) width = value;
  }
  view.now_unix = static_cast<std::int64_t>(std::time(nullptr));
  TopFigures figures = ComputeTopFigures(second.status, &first.status,
                                         Seconds(second.at - first.at));
  view.selected = figures.groups.size();  // nothing selected
  TopScreen screen = LayOutTop(figures, view, width, 0);
  std::string text;
  for (const std::string& line : screen.lines) text += line + "\n";
  return WriteAll(STDOUT_FILENO, text) ? kExitOk : kExitRuntime;
}

}  // namespace

int RunTop(const ControlOptions& options, const std::string& interval_text) {
  Result<Duration> interval = ParseDuration(interval_text);
  if (!interval.ok()) {
    return Fail("--interval: " + interval.status().message(), kExitBadInput);
  }
  if (*interval < kMinInterval || *interval > kMaxInterval) {
    return Fail(
        "--interval must be from 100ms to 1h, got '" + interval_text + "'",
        kExitBadInput);
  }
  std::string path;
  ControlError error;
  if (!FindControlSocket(options, &path, &error)) {
    return Fail(error.message, error.exit_code);
  }
  Snapshot current;
  if (!FetchStatus(path, &current, &error)) {
    return Fail(error.message, error.exit_code);
  }
  TopViewState view;
  view.interval_ms = interval->count();
  if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
    return PrintOnce(path, current, *interval, view);
  }

  if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    return Fail("cannot create a pipe", kExitRuntime);
  }
  HandleSignals();
  Terminal terminal;
  if (!terminal.Enter()) {
    return Fail("cannot set up the terminal", kExitRuntime);
  }
  // Answers of the last rate window: the front is the newest one at least
  // a window old (or the oldest there is), the back the current one.
  const auto window =
      std::max<SteadyClock::duration>(*interval, kMinRateWindow);
  std::deque<Snapshot> history;
  history.push_back(current);
  TopFigures figures = ComputeTopFigures(current.status, nullptr, 0);
  auto draw = [&] {
    int width = 80, height = 24;
    TerminalSize(&width, &height);
    if (view.selected >= figures.groups.size() && !figures.groups.empty()) {
      view.selected = figures.groups.size() - 1;
    }
    view.now_unix = static_cast<std::int64_t>(std::time(nullptr));
    WriteAll(STDOUT_FILENO,
             Frame(LayOutTop(figures, view, width, height), width));
  };
  draw();
  auto next = SteadyClock::now() + *interval;
  for (;;) {
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(
        next - SteadyClock::now());
    pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {wake_pipe[0], POLLIN, 0}};
    int ready =
        poll(fds, 2, wait.count() > 0 ? static_cast<int>(wait.count()) : 0);
    if (ready < 0 && errno != EINTR) break;
    char drained[64];
    while (read(wake_pipe[0], drained, sizeof(drained)) > 0) {
    }
    if (quit_requested) break;
    if (suspend_requested) {
      // Ctrl-Z: give the shell its terminal back, stop, and on SIGCONT
      // take it again.
      suspend_requested = 0;
      terminal.Leave();
      signal(SIGTSTP, SIG_DFL);
      raise(SIGTSTP);
      HandleSignals();
      if (!terminal.Enter()) break;
      draw();
    }
    if (resized) {
      resized = 0;
      draw();
    }
    if (ready > 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      char keys[64];
      ssize_t n = read(STDIN_FILENO, keys, sizeof(keys));
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
      if (n > 0) {
        bool quit = false;
        HandleKeys(std::string_view(keys, static_cast<std::size_t>(n)),
                   figures.groups.size(), figures, &view, &quit);
        if (quit) break;
        draw();
      }
    }
    if (SteadyClock::now() < next) continue;
    Snapshot fresh;
    if (FetchStatus(path, &fresh, &error)) {
      const auto fresh_at = fresh.at;
      history.push_back(std::move(fresh));
      while (history.size() > 2 && history[1].at <= fresh_at - window) {
        history.pop_front();
      }
      const Snapshot* base = history.size() > 1 ? &history.front() : nullptr;
      figures = ComputeTopFigures(
          history.back().status, base != nullptr ? &base->status : nullptr,
          base != nullptr ? Seconds(fresh_at - base->at) : 0.0);
      view.message.clear();
    } else {
      // Keep the last screen; rates start over once the pool answers.
      history.clear();
      view.message = "no answer: " + error.message + " (retrying every " +
                     FormatTopUptime(interval->count()) + "; q quits)";
    }
    draw();
    next += *interval;
    if (next < SteadyClock::now()) next = SteadyClock::now() + *interval;
  }
  terminal.Leave();
  return kExitOk;
}

}  // namespace workerpool
