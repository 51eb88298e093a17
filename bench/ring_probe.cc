// A design probe, not part of scripts/bench: what could a transport between
// two processes reach on the machine at hand, without any workerpool code?
// Two processes exchange 1 KiB frames (24-byte header + body), WINDOW in
// flight, in three forms that alternate within each round:
//   socketpair  ipc_bench's raw pair: blocking reads, one write per batch
//   busy-poll   the same, but a reader first tries up to SPIN non-blocking
//               reads (recv MSG_DONTWAIT) before it blocks: what the client
//               library does on a link whose peer runs on another CPU
//   ring        one single-producer single-consumer ring per direction in
//               shared memory; a reader that finds its ring empty checks it
//               SPIN more times (a pause between), then sleeps on an
//               eventfd, and a writer wakes it only then: once after EARLY
//               frames of a turn (so a reader on another CPU starts early)
//               and at the end of the turn
// (docs/BENCHMARKS.md, "Where the time goes").
//
//   ring_probe [--pin any|same|split] [--seconds S] [--rounds N] [--early K]
//              [--spin N]
//     same: both processes on CPU 0; split: the sender on CPU 0, the echo
//     side on CPU 1. Defaults: any, 2 s, 3 rounds, early wake-up after 4
//     frames (0: only at the end of a turn), spin 100 (0: busy-poll is the
//     socketpair again, and the ring sleeps at once).
//
// Prints one line per round: requests/s of each form and their ratios to
// the socketpair. Exit 0, 1 on bad arguments, 2 when a system call fails.
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kFrame = 24 + 1024;
constexpr size_t kRingBytes = 256 * 1024;  // a power of two
constexpr int kWindow = 64;

// --spin: non-blocking tries before a reader sleeps (busy-poll, ring).
int g_spin = 0;

[[noreturn]] void Fail(const char* what) {
  std::perror(what);
  std::exit(2);
}

void PinToCpu(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) Fail("sched_setaffinity");
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ------------------------------------------------------------ socketpair

void WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n <= 0) Fail("write");
    data += n;
    size -= static_cast<size_t>(n);
  }
}

// Reads what is there (blocking for at least one byte); returns the number
// of whole frames it completed. HAVE carries a partial frame over.
// SPIN: non-blocking tries first.
int ReadFrames(int fd, std::vector<char>* buffer, size_t* have, int spin) {
  ssize_t n = -1;
  for (int i = 0; i < spin && n < 0; ++i) {
    n = recv(fd, buffer->data() + *have, buffer->size() - *have, MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN) Fail("recv");
  }
  if (n < 0) n = read(fd, buffer->data() + *have, buffer->size() - *have);
  if (n <= 0) return -1;
  *have += static_cast<size_t>(n);
  const size_t frames = *have / kFrame;
  std::memmove(buffer->data(), buffer->data() + frames * kFrame,
               *have - frames * kFrame);
  *have -= frames * kFrame;
  return static_cast<int>(frames);
}

// SPIN: the readers' non-blocking tries (0: plain blocking reads).
double SocketpairRate(int echo_cpu, double seconds, int spin) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    Fail("socketpair");
  }
  const pid_t pid = fork();
  if (pid < 0) Fail("fork");
  if (pid == 0) {
    PinToCpu(echo_cpu);
    close(fds[0]);
    std::vector<char> buffer(256 * 1024);
    std::string replies;
    size_t have = 0;
    for (;;) {
      const int frames = ReadFrames(fds[1], &buffer, &have, spin);
      if (frames < 0) _exit(0);
      replies.clear();  // a reply per request, built in user space
      for (int i = 0; i < frames; ++i) replies.append(kFrame, 'y');
      WriteAll(fds[1], replies.data(), replies.size());
    }
  }
  close(fds[1]);
  std::vector<char> buffer(256 * 1024);
  std::string batch;
  size_t have = 0;
  auto send = [&](int frames) {
    batch.assign(static_cast<size_t>(frames) * kFrame, 'x');
    WriteAll(fds[0], batch.data(), batch.size());
  };
  send(kWindow);
  long answered = 0;
  const auto start = Clock::now();
  while (SecondsSince(start) < seconds) {
    const int frames = ReadFrames(fds[0], &buffer, &have, spin);
    if (frames < 0) Fail("read");
    answered += frames;
    send(frames);
  }
  const double rate = static_cast<double>(answered) / SecondsSince(start);
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  return rate;
}

// ------------------------------------------------------------------ ring

struct Ring {
  alignas(64) std::atomic<uint64_t> head{0};  // bytes published
  alignas(64) std::atomic<uint64_t> tail{0};  // bytes consumed
  alignas(64) std::atomic<int> reader_sleeps{0};
  alignas(64) char data[kRingBytes];
};

// One side's ends: it writes OUT and reads IN.
class RingEnd {
 public:
  RingEnd(Ring* in, int in_event, Ring* out, int out_event, int early)
      : in_(in),
        out_(out),
        in_event_(in_event),
        out_event_(out_event),
        early_(early) {}

  // Appends one frame; false when OUT is full.
  bool Send(const char* frame) {
    const uint64_t tail = out_->tail.load(std::memory_order_acquire);
    if (head_ + kFrame - tail > kRingBytes) return false;
    const size_t at = head_ & (kRingBytes - 1);
    const size_t first = std::min(kFrame, kRingBytes - at);
    std::memcpy(out_->data + at, frame, first);
    std::memcpy(out_->data, frame + first, kFrame - first);
    head_ += kFrame;
    out_->head.store(head_, std::memory_order_release);
    if (early_ > 0 && ++sent_in_turn_ == early_) WakeReader();
    return true;
  }

  void EndTurn() {
    sent_in_turn_ = 0;
    WakeReader();
  }

  // Blocks until IN holds a frame; returns how many frames it holds and
  // copies each to FRAME (the reader's own copy, as a server's).
  int ReceiveAll(char* frame) {
    uint64_t tail = in_->tail.load(std::memory_order_relaxed);
    for (int i = 0;
         i < g_spin && in_->head.load(std::memory_order_acquire) == tail; ++i) {
      __builtin_ia32_pause();
    }
    if (in_->head.load(std::memory_order_acquire) == tail) {
      in_->reader_sleeps.store(1, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      while (in_->head.load(std::memory_order_acquire) == tail) {
        uint64_t count;
        if (read(in_event_, &count, sizeof(count)) < 0) Fail("read eventfd");
      }
      in_->reader_sleeps.store(0, std::memory_order_relaxed);
    }
    const uint64_t head = in_->head.load(std::memory_order_acquire);
    int frames = 0;
    for (; tail != head; tail += kFrame, ++frames) {
      const size_t at = tail & (kRingBytes - 1);
      const size_t first = std::min(kFrame, kRingBytes - at);
      std::memcpy(frame, in_->data + at, first);
      std::memcpy(frame + first, in_->data, kFrame - first);
    }
    in_->tail.store(tail, std::memory_order_release);
    return frames;
  }

 private:
  void WakeReader() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (out_->reader_sleeps.load(std::memory_order_relaxed) != 0) {
      const uint64_t one = 1;
      if (write(out_event_, &one, sizeof(one)) < 0) Fail("write eventfd");
    }
  }

  Ring* in_;
  Ring* out_;
  int in_event_;
  int out_event_;
  int early_;
  uint64_t head_ = 0;
  int sent_in_turn_ = 0;
};

double RingRate(int echo_cpu, double seconds, int early) {
  void* memory = mmap(nullptr, 2 * sizeof(Ring), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) Fail("mmap");
  Ring* requests = new (memory) Ring;
  Ring* replies = new (static_cast<char*>(memory) + sizeof(Ring)) Ring;
  const int request_event = eventfd(0, EFD_CLOEXEC);
  const int reply_event = eventfd(0, EFD_CLOEXEC);
  if (request_event < 0 || reply_event < 0) Fail("eventfd");
  std::vector<char> frame(kFrame, 'x');
  const pid_t pid = fork();
  if (pid < 0) Fail("fork");
  if (pid == 0) {
    PinToCpu(echo_cpu);
    RingEnd echo(requests, request_event, replies, reply_event, early);
    for (;;) {
      const int frames = echo.ReceiveAll(frame.data());
      if (frame[0] == 'q') _exit(0);
      for (int i = 0; i < frames; ++i) {
        // The window (64 frames) always fits: Send cannot fail here.
        if (!echo.Send(frame.data())) _exit(3);
      }
      echo.EndTurn();
    }
  }
  RingEnd sender(replies, reply_event, requests, request_event, early);
  for (int i = 0; i < kWindow; ++i) sender.Send(frame.data());
  sender.EndTurn();
  long answered = 0;
  const auto start = Clock::now();
  while (SecondsSince(start) < seconds) {
    const int frames = sender.ReceiveAll(frame.data());
    answered += frames;
    frame[0] = 'x';
    for (int i = 0; i < frames; ++i) sender.Send(frame.data());
    sender.EndTurn();
  }
  const double rate = static_cast<double>(answered) / SecondsSince(start);
  // Stop the echo side: drain the window, then a frame starting with 'q'.
  long inflight = kWindow;
  while (inflight > 0) inflight -= sender.ReceiveAll(frame.data());
  frame[0] = 'q';
  sender.Send(frame.data());
  sender.EndTurn();
  waitpid(pid, nullptr, 0);
  close(request_event);
  close(reply_event);
  munmap(memory, 2 * sizeof(Ring));
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  std::string pin = "any";
  double seconds = 2;
  int rounds = 3;
  int early = 4;
  g_spin = 100;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "ring_probe: %s needs a value\n", arg.c_str());
      return 1;
    }
    const char* value = argv[++i];
    if (arg == "--pin") {
      pin = value;
    } else if (arg == "--seconds") {
      seconds = std::atof(value);
    } else if (arg == "--rounds") {
      rounds = std::atoi(value);
    } else if (arg == "--spin") {
      g_spin = std::atoi(value);
    } else if (arg == "--early") {
      early = std::atoi(value);
    } else {
      std::fprintf(stderr, "ring_probe: unknown option %s\n", arg.c_str());
      return 1;
    }
  }
  if ((pin != "any" && pin != "same" && pin != "split") || !(seconds > 0) ||
      rounds < 1 || early < 0 || early > kWindow || g_spin < 0) {
    std::fprintf(stderr,
                 "usage: ring_probe [--pin any|same|split] [--seconds S] "
                 "[--rounds N] [--early K] [--spin N]\n");
    return 1;
  }
  const int echo_cpu = pin == "same" ? 0 : pin == "split" ? 1 : -1;
  PinToCpu(pin == "any" ? -1 : 0);
  for (int round = 1; round <= rounds; ++round) {
    const double socketpair = SocketpairRate(echo_cpu, seconds, 0);
    const double busy_poll = SocketpairRate(echo_cpu, seconds, g_spin);
    const double ring = RingRate(echo_cpu, seconds, early);
    std::printf(
        "pin %s round %d: socketpair %.0f req/s, busy-poll %.0f req/s, ring "
        "%.0f req/s; busy-poll/socketpair %.2f, ring/socketpair %.2f\n",
        pin.c_str(), round, socketpair, busy_poll, ring, busy_poll / socketpair,
        ring / socketpair);
    std::fflush(stdout);
  }
  return 0;
}
