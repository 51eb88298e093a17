/* The one child every benchmarked supervisor runs.
 *
 * On start it sends its pid (decimal text, one datagram) to the Unix datagram
 * socket named by argv[1] (or $BENCH_SOCKET when argv[1] is absent), then
 * sleeps in pause() until a signal ends it. Built static: the least work
 * between exec and the first byte, so what a supervisor adds stands out.
 *
 * A missing or unreachable socket is not an error: the child still pauses
 * (the idle benchmark does not always listen). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : getenv("BENCH_SOCKET");
  if (path != NULL && path[0] != '\0') {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
      struct sockaddr_un addr;
      memset(&addr, 0, sizeof(addr));
      addr.sun_family = AF_UNIX;
      strncpy(addr.sun_path, path, sizeof(addr.sun_path) - 1);
      char text[24];
      int n = snprintf(text, sizeof(text), "%ld", (long)getpid());
      (void)sendto(fd, text, (size_t)n, 0, (struct sockaddr*)&addr,
                   sizeof(addr));
      close(fd);
    }
  }
  for (;;) pause();
}
