/* The floor under the IPC latency goal: what an event loop's way of waiting
 * costs by itself, with no workerpool code at all.
 *
 *   wakeup_floor [ROUNDS [COUNT]]
 *
 * Two processes on a socketpair(AF_UNIX, SOCK_STREAM) exchange one 88-byte
 * message at a time (the size of a 64 B request in the pool's frame), COUNT
 * round trips per measurement (default 20000, after 200 of warm-up), in two
 * forms that alternate within each of ROUNDS rounds (default 5):
 *   blocking  both sides block in read(): ipc_bench's raw pair
 *   epoll     both sides wait in epoll_wait() on a non-blocking socket, then
 *             read(): the least any epoll loop (libuv included) can do, one
 *             syscall per wake-up more than blocking
 * Prints one line per round: both medians (µs) and epoll / blocking. Since
 * the pool's processes wait in libuv, the pool cannot beat the epoll form;
 * its ratio to the blocking form bounds what ipc_bench's latency ratio can
 * reach on the machine at hand.
 *
 * Exit 0, or 2 when a socket call fails. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { kMessage = 88, kWarmup = 200 };

static double NowMicros(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int CompareDoubles(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

/* Reads one whole message; returns 0 at EOF or on an error. EPOLL_FD < 0:
 * blocking reads. */
static int ReadMessage(int fd, int epoll_fd) {
  char buffer[4096];
  int got = 0;
  while (got < kMessage) {
    if (epoll_fd >= 0) {
      struct epoll_event event;
      if (epoll_wait(epoll_fd, &event, 1, -1) < 0) return 0;
    }
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n == 0) return 0;
    if (n < 0) {
      if (epoll_fd >= 0) continue; /* spurious wake-up: EAGAIN */
      return 0;
    }
    got += (int)n;
  }
  return 1;
}

/* Median round trip in µs, or a negative number when a socket call failed. */
static double Measure(int use_epoll, int count) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  int fd = pid == 0 ? fds[1] : fds[0];
  close(pid == 0 ? fds[0] : fds[1]);
  int epoll_fd = -1;
  if (use_epoll) {
    fcntl(fd, F_SETFL, O_NONBLOCK);
    epoll_fd = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_fd < 0 || epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) != 0) {
      if (pid == 0) _exit(2);
      return -1;
    }
  }
  char message[kMessage];
  memset(message, 'x', sizeof(message));
  if (pid == 0) { /* the echo side */
    while (ReadMessage(fd, epoll_fd)) {
      if (write(fd, message, sizeof(message)) != (ssize_t)sizeof(message)) {
        break;
      }
    }
    _exit(0);
  }
  double* samples = malloc(sizeof(double) * (size_t)count);
  int ok = samples != NULL;
  for (int i = 0; ok && i < count + kWarmup; ++i) {
    double start = NowMicros();
    ok = write(fd, message, sizeof(message)) == (ssize_t)sizeof(message) &&
         ReadMessage(fd, epoll_fd);
    if (i >= kWarmup) samples[i - kWarmup] = NowMicros() - start;
  }
  close(fd);
  if (epoll_fd >= 0) close(epoll_fd);
  waitpid(pid, NULL, 0);
  double median = -1;
  if (ok) {
    qsort(samples, (size_t)count, sizeof(double), CompareDoubles);
    median = samples[count / 2];
  }
  free(samples);
  return median;
}

int main(int argc, char** argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 5;
  int count = argc > 2 ? atoi(argv[2]) : 20000;
  if (rounds <= 0 || count <= 0) {
    fprintf(stderr, "usage: wakeup_floor [ROUNDS [COUNT]]\n");
    return 1;
  }
  for (int round = 1; round <= rounds; ++round) {
    /* Alternate the order: absolute times drift within a minute. */
    int epoll_first = round % 2 == 0;
    double first = Measure(epoll_first, count);
    double second = Measure(!epoll_first, count);
    if (first < 0 || second < 0) {
      fprintf(stderr, "wakeup_floor: socket setup or I/O failed\n");
      return 2;
    }
    double blocking = epoll_first ? second : first;
    double epoll = epoll_first ? first : second;
    printf("round %d: blocking %.2f us, epoll %.2f us, epoll/blocking %.3f\n",
           round, blocking, epoll, epoll / blocking);
    fflush(stdout);
  }
  return 0;
}
