// The reactors' listen sockets: bound once by the Watcher and inherited by
// every reactor that lists them (systemd's socket activation protocol), so
// that a reactor restarting never closes a port. A reload binds the new
// addresses before it changes anything and closes the dropped ones once
// their reactors are gone. Runs on the Watcher's loop thread.
#pragma once

#include <map>
#include <string>

#include "core/config.h"
#include "core/status.h"

namespace workerpool {

class ListenSockets {
 public:
  // Binds every address of CONFIG's reactors not bound yet. On error the
  // ones bound before stay bound (CloseUnused drops them).
  Status Bind(const PoolConfig& config);
  // Closes the sockets no reactor of CONFIG lists (and unlinks their Unix
  // socket files).
  void CloseUnused(const PoolConfig& config);
  // The fd bound for ADDRESS as written in the file; -1 when none.
  int Fd(const std::string& address) const;
  // Every socket, for an in-place upgrade (kept across exec), and the next
  // Watcher taking them over.
  const std::map<std::string, int>& fds() const { return fds_; }
  void Adopt(std::map<std::string, int> fds) { fds_ = std::move(fds); }

 private:
  std::map<std::string, int> fds_;  // by the address as written
};

}  // namespace workerpool
