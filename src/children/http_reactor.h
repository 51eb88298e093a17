// `workerpool builtin http-reactor`: HTTP/1.1 on the listen sockets the
// Watcher passes (LISTEN_FDS), turning `POST /jobs/<group>` into requests.
#pragma once

#include <string>
#include <vector>

namespace workerpool {

int RunHttpReactor(const std::vector<std::string>& args);

}  // namespace workerpool
