// Links by connect, the OS side: the private directory is 0700 and goes
// away with its sockets; a listener accepts one connection at a time and
// names the connecting process by SO_PEERCRED.
#include "os/link_socket.h"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace workerpool {
namespace {

int ConnectTo(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
          0);
  return fd;
}

TEST_CASE(
    "link socket: private directory, listen, accept with the peer's pid") {
  Result<std::string> directory = MakePrivateDirectory("/tmp", "wp-link-test-");
  REQUIRE(directory.ok());
  struct stat info {};
  REQUIRE(stat(directory->c_str(), &info) == 0);
  CHECK((info.st_mode & 0777) == 0700);
  CHECK(info.st_uid == geteuid());

  const std::string path = *directory + "/1.sock";
  Result<int> listening = ListenOnPath(path);
  REQUIRE(listening.ok());
  REQUIRE(stat(path.c_str(), &info) == 0);
  CHECK((info.st_mode & 0777) == 0600);

  bool none_pending = false;
  CHECK_FALSE(AcceptPeer(*listening, &none_pending).ok());
  CHECK(none_pending);

  int client = ConnectTo(path);
  Result<AcceptedPeer> peer = AcceptPeer(*listening, &none_pending);
  REQUIRE(peer.ok());
  CHECK(peer->pid == getpid());
  CHECK(peer->uid == geteuid());
  // The accepted end and the client's end are one connection.
  CHECK(write(client, "x", 1) == 1);
  char byte = 0;
  CHECK(read(peer->fd, &byte, 1) == 1);
  CHECK(byte == 'x');
  close(client);
  close(peer->fd);
  close(*listening);

  RemovePrivateDirectory(*directory);
  CHECK(access(directory->c_str(), F_OK) != 0);
}

TEST_CASE("link socket: an unusable parent falls back to a usable one") {
  for (const std::string& parent :
       {std::string("/nonexistent-parent"), std::string("relative"),
        "/tmp/" + std::string(60, 'x'), std::string()}) {
    CAPTURE(parent);
    Result<std::string> directory = MakePrivateDirectory(parent, "wp-fb-");
    REQUIRE(directory.ok());
    if (!parent.empty()) CHECK(directory->rfind(parent + "/", 0) != 0);
    CHECK(directory->find("/wp-fb-") != std::string::npos);
    RemovePrivateDirectory(*directory);
  }
}

TEST_CASE("link socket: a path too long for sun_path is an error") {
  Result<int> listening = ListenOnPath("/tmp/" + std::string(200, 'x'));
  REQUIRE_FALSE(listening.ok());
  CHECK(listening.status().message().find("too long") != std::string::npos);
}

}  // namespace
}  // namespace workerpool
