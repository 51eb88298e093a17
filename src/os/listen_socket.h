// Binds the listening sockets the Watcher owns and hands to reactors.
#pragma once

#include "core/listen_address.h"
#include "core/status.h"

namespace workerpool {

// Binds and listens (backlog SOMAXCONN, SO_REUSEADDR, close-on-exec). A unix
// socket's stale file is replaced; its mode is set. Returns the fd.
Result<int> BindListenSocket(const ListenAddress& address);

}  // namespace workerpool
