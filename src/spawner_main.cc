// workerpool-spawner: the Watcher starts it before its first child and has
// it create every child (src/os/spawner.h says why). Not for operators: it
// serves the socket it finds on fd 3 and writes errors to fd 4.
#include <unistd.h>

#include "os/spawner.h"

int main() {
  dup2(4, STDOUT_FILENO);
  dup2(4, STDERR_FILENO);
  close(4);
  return workerpool::RunSpawner(3);
}
