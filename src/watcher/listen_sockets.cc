#include "watcher/listen_sockets.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include "core/listen_address.h"
#include "os/listen_socket.h"

namespace workerpool {

Status ListenSockets::Bind(const PoolConfig& config) {
  for (const GroupConfig& group : config.groups) {
    if (group.type != GroupType::kReactor) continue;
    for (const std::string& text : group.listen) {
      if (fds_.count(text) != 0) continue;
      Result<ListenAddress> address = ParseListenAddress(text);
      if (!address.ok()) {
        return Status::Error("group " + group.name + ": listen " +
                             address.status().message());
      }
      Result<int> fd = BindListenSocket(*address);
      if (!fd.ok()) {
        return Status::Error("group " + group.name + ": " +
                             fd.status().message());
      }
      fds_[text] = *fd;
      spdlog::info("listening on {} for group {}", text, group.name);
    }
  }
  return Status::Ok();
}

void ListenSockets::CloseUnused(const PoolConfig& config) {
  for (auto it = fds_.begin(); it != fds_.end();) {
    bool used = false;
    for (const GroupConfig& group : config.groups) {
      for (const std::string& address : group.listen) {
        used |= address == it->first;
      }
    }
    if (used) {
      ++it;
      continue;
    }
    spdlog::info("closing listen socket {}", it->first);
    close(it->second);
    // Our socket file: nothing listens on it any more.
    Result<ListenAddress> address = ParseListenAddress(it->first);
    if (address.ok() && address->kind == ListenAddress::Kind::kUnix) {
      unlink(address->path.c_str());
    }
    it = fds_.erase(it);
  }
}

int ListenSockets::Fd(const std::string& address) const {
  auto found = fds_.find(address);
  return found == fds_.end() ? -1 : found->second;
}

}  // namespace workerpool
