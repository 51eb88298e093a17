#include "os/listen_socket.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace workerpool {
namespace {

Status Fail(const std::string& what, const std::string& target, int error) {
  return Status::Error("cannot " + what + " " + target + ": " +
                       strerror(error));
}

}  // namespace

Result<int> BindListenSocket(const ListenAddress& address) {
  if (address.kind == ListenAddress::Kind::kUnix) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Fail("create a socket for", address.path, errno);
    struct stat info;
    if (lstat(address.path.c_str(), &info) == 0 && S_ISSOCK(info.st_mode)) {
      unlink(address.path.c_str());  // stale socket of an earlier run
    }
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strncpy(sun.sun_path, address.path.c_str(), sizeof(sun.sun_path) - 1);
    if (bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
      int saved = errno;
      close(fd);
      return Fail("bind", "unix:" + address.path, saved);
    }
    chmod(address.path.c_str(), static_cast<mode_t>(address.mode));
    if (listen(fd, SOMAXCONN) != 0) {
      int saved = errno;
      close(fd);
      return Fail("listen on", "unix:" + address.path, saved);
    }
    return fd;
  }
  const std::string target = address.host + ":" + std::to_string(address.port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(address.port);
  int rc = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    return Status::Error("cannot resolve " + target + ": " + gai_strerror(rc));
  }
  int last_error = 0;
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    int fd =
        socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6) {
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        listen(fd, SOMAXCONN) == 0) {
      freeaddrinfo(found);
      return fd;
    }
    last_error = errno;
    close(fd);
  }
  freeaddrinfo(found);
  return Fail("listen on", target, last_error);
}

}  // namespace workerpool
