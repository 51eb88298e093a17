#include "os/link_socket.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace workerpool {
namespace {

std::string Errno(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

// Room left in sun_path (108) for "/<prefix of at most 23>XXXXXX/<n>.sock".
constexpr std::size_t kMaxParentBytes = 48;

bool UsableDirectory(const char* path) {
  struct stat info {};
  return path != nullptr && path[0] == '/' &&
         std::strlen(path) <= kMaxParentBytes && stat(path, &info) == 0 &&
         S_ISDIR(info.st_mode) && access(path, W_OK | X_OK) == 0;
}

}  // namespace

Result<std::string> MakePrivateDirectory(const std::string& parent,
                                         const std::string& prefix) {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  std::string base = UsableDirectory(parent.c_str()) ? parent
                     : UsableDirectory(runtime)      ? runtime
                                                     : "/tmp";
  std::string pattern = base + "/" + prefix + "XXXXXX";
  std::vector<char> path(pattern.begin(), pattern.end());
  path.push_back('\0');
  // mkdtemp creates it with mode 0700, owned by this process's user.
  if (mkdtemp(path.data()) == nullptr) {
    return Status::Error(Errno("cannot make a private directory " + pattern));
  }
  return std::string(path.data());
}

void RemovePrivateDirectory(const std::string& directory) {
  if (directory.empty()) return;
  if (DIR* dir = opendir(directory.c_str())) {
    while (dirent* entry = readdir(dir)) {
      if (std::strcmp(entry->d_name, ".") == 0 ||
          std::strcmp(entry->d_name, "..") == 0) {
        continue;
      }
      unlink((directory + "/" + entry->d_name).c_str());
    }
    closedir(dir);
  }
  rmdir(directory.c_str());
}

Result<int> ListenOnPath(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return Status::Error("link socket path too long: " + path);
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Error(Errno("socket"));
  unlink(path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    Status error = Status::Error(Errno("bind " + path));
    close(fd);
    return error;
  }
  // The directory already keeps other users out; the socket says so too.
  chmod(path.c_str(), 0600);
  // One connection is expected; a few more let wrong ones be refused
  // (accepted, checked, closed) instead of queued.
  if (listen(fd, 4) != 0) {
    Status error = Status::Error(Errno("listen " + path));
    close(fd);
    unlink(path.c_str());
    return error;
  }
  return fd;
}

Result<AcceptedPeer> AcceptPeer(int listen_fd, bool* none_pending) {
  *none_pending = false;
  AcceptedPeer peer;
  peer.fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (peer.fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
        errno == ECONNABORTED) {
      *none_pending = true;
    }
    return Status::Error(Errno("accept"));
  }
  ucred credentials{};
  socklen_t size = sizeof(credentials);
  if (getsockopt(peer.fd, SOL_SOCKET, SO_PEERCRED, &credentials, &size) != 0 ||
      size != sizeof(credentials)) {
    Status error = Status::Error(Errno("SO_PEERCRED"));
    close(peer.fd);
    return error;
  }
  peer.pid = credentials.pid;
  peer.uid = credentials.uid;
  return peer;
}

}  // namespace workerpool
