// Links by connect (docs/PROTOCOL.md, "Links by connect"): the Watcher's
// side of a link for a child that cannot receive fds. The Watcher listens on
// a Unix socket path in a private directory, the child connects, and the
// Watcher checks with SO_PEERCRED that the connection comes from that
// child's pid before it hands the accepted socket to the other end of the
// link (by SCM_RIGHTS, as a socketpair end would be). Thin: sockets and
// files only, no loop; the caller polls the listening fd.
#pragma once

#include <sys/types.h>

#include <string>

#include "core/status.h"

namespace workerpool {

// Makes a directory only this user can enter (mode 0700, by mkdtemp), named
// PREFIX and six random characters, in PARENT when it is usable (writable,
// and short enough for the sockets inside to fit sun_path), else in
// $XDG_RUNTIME_DIR when that is, else in /tmp. Returns its path.
Result<std::string> MakePrivateDirectory(const std::string& parent,
                                         const std::string& prefix);

// Removes DIRECTORY and the sockets left in it (best effort: the Watcher is
// stopping).
void RemovePrivateDirectory(const std::string& directory);

// Binds a Unix stream socket to PATH (mode 0600; a stale file is replaced)
// and listens with a small backlog. The fd is non-blocking and close-on-exec.
Result<int> ListenOnPath(const std::string& path);

// One connection taken from a listening socket: the connected fd (blocking,
// close-on-exec, as a socketpair end would be) and who connected, as the
// kernel saw it at connect() time.
struct AcceptedPeer {
  int fd = -1;
  pid_t pid = 0;
  uid_t uid = 0;
};

// Accepts one pending connection on LISTEN_FD. *NONE_PENDING is set (and an
// error returned) when there is none; other errors name the failure.
Result<AcceptedPeer> AcceptPeer(int listen_fd, bool* none_pending);

}  // namespace workerpool
