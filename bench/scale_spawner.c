/* The bare baseline of the scale benchmark (bench/scale_bench.py): starts N
 * copies of CHILD SOCKET with posix_spawn, keeps no descriptor per child,
 * restarts a child that dies, and on SIGTERM stops them all (SIGTERM, then
 * reaps every one) and exits. What a supervisor of N children cannot do
 * with less work.
 *
 * usage: scale_spawner N CHILD SOCKET */
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

static pid_t* pids;
static long count;

static pid_t start_child(char** argv) {
  pid_t pid = -1;
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  if (posix_spawn(&pid, argv[0], NULL, &attr, argv, environ) != 0) pid = -1;
  posix_spawnattr_destroy(&attr);
  return pid;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: scale_spawner N CHILD SOCKET\n");
    return 1;
  }
  count = atol(argv[1]);
  char* child_argv[] = {argv[2], argv[3], NULL};
  pids = calloc((size_t)count, sizeof(pid_t));
  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGCHLD);
  sigaddset(&wanted, SIGTERM);
  sigprocmask(SIG_BLOCK, &wanted, NULL);
  for (long i = 0; i < count; ++i) pids[i] = start_child(child_argv);
  for (;;) {
    int sig = sigwaitinfo(&wanted, NULL);
    if (sig == SIGTERM) break;
    if (sig != SIGCHLD) continue;
    for (;;) {
      pid_t dead = waitpid(-1, NULL, WNOHANG);
      if (dead <= 0) break;
      for (long i = 0; i < count; ++i) {
        if (pids[i] == dead) {
          pids[i] = start_child(child_argv);
          break;
        }
      }
    }
  }
  for (long i = 0; i < count; ++i) {
    if (pids[i] > 0) kill(pids[i], SIGTERM);
  }
  while (wait(NULL) > 0) {
  }
  return 0;
}
