// A reactor group's `listen` entry: "host:port", "[v6]:port", or
// "unix:/path" with an optional ",mode=0660". Pure parsing; binding is in
// src/os/listen_socket.h.
#pragma once

#include <string>

#include "core/status.h"

namespace workerpool {

struct ListenAddress {
  enum class Kind { kTcp, kUnix } kind = Kind::kTcp;
  std::string host;  // kTcp: numeric address or name, without brackets
  int port = 0;      // kTcp: 1..65535
  std::string path;  // kUnix
  int mode = 0660;   // kUnix: permissions of the socket file
  // The name passed in LISTEN_FDNAMES (no ':' allowed there).
  std::string FdName() const;
};

Result<ListenAddress> ParseListenAddress(const std::string& text);

}  // namespace workerpool
