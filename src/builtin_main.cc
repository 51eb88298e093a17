// workerpool-builtin NAME [ARGS]: the built-in children. Operators write
// `workerpool builtin NAME` (DESIGN.md); the Watcher and that command exec
// this binary, which holds the children and their libraries.
#include <cstdio>
#include <string>
#include <vector>

#include "children/builtins.h"
#include "os/builtin_path.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: workerpool builtin NAME [ARGS] (NAME: %s)\n",
                 workerpool::kBuiltinNames);
    return 1;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  return workerpool::RunBuiltin(argv[1], args);
}
