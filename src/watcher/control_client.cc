#include "watcher/control_client.h"

#include <cstdio>

namespace workerpool {

int RunControlCommand(const ControlOptions& options) {
  std::fprintf(stderr, "workerpool %s: the control socket is not built yet\n",
               options.command.c_str());
  return 2;
}

}  // namespace workerpool
