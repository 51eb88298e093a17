// The pool definition as `workerpool run`, `check`, reload and the control
// CLI load it: the file read from disk, then parsed by the pure
// src/core/config.h against this machine (its passwd database and
// $RUNTIME_DIRECTORY). Blocking file I/O and NSS lookups: call it where
// blocking for a few kilobytes of file is fine (start-up, reload, the CLI).
#pragma once

#include <optional>
#include <string>

#include "core/config.h"
#include "core/status.h"

namespace workerpool {

// Looks NAME up in the passwd database: by name, and for a number that is no
// user's name, by uid. nullopt: no such user; an error: the lookup failed
// (its errno, in words).
Result<std::optional<UserIds>> LookUpSystemUser(const std::string& name);

// This process's environment for ParseConfig: LookUpSystemUser and
// $RUNTIME_DIRECTORY as it is now.
ConfigEnvironment SystemConfigEnvironment();

// Reads and validates the file at PATH. A missing file, a directory, a FIFO
// or device, a file over 16 MiB, an empty file and binary garbage each give
// one clear error naming PATH.
ConfigLoad LoadConfigFile(const std::string& path);
// The same, and with CONTENT set to the bytes read when they were read (an
// in-place upgrade hands the bytes in force to the next Watcher).
ConfigLoad LoadConfigFile(const std::string& path, std::string* content);

}  // namespace workerpool
