// The pool definition's parser: YAML -> PoolConfig (the model is in
// src/core/pool_model.h). This module is the only user of yaml-cpp. Loading
// never throws and never touches processes; it does look up `user` in the
// passwd database (an unknown user is a config error).
//
// Every error is one line: "FILE:LINE:COL: KEY: what is wrong", where KEY is a
// path like "groups[1].processes" (1-based line and column, as editors show).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/pool_model.h"

namespace workerpool {

struct ConfigError {
  std::string file;
  int line = 0;    // 1-based; 0 when the error has no position
  int column = 0;  // 1-based
  std::string key;
  std::string message;
  // "FILE:LINE:COL: KEY: MESSAGE" (position and key omitted when absent).
  std::string ToString() const;
};

struct ConfigLoad {
  std::optional<PoolConfig> config;  // set iff errors is empty
  std::vector<ConfigError> errors;
  bool ok() const { return errors.empty(); }
  // Every error, one per line.
  std::string ErrorText() const;
};

// Reads and validates FILE. A missing file, a directory, an empty file and
// binary garbage each give one clear error.
ConfigLoad LoadConfigFile(const std::string& path);

// Parses TEXT as if read from FILE_NAME (for tests and fuzzing).
ConfigLoad ParseConfig(const std::string& text, const std::string& file_name);

// The default control socket for a pool: $RUNTIME_DIRECTORY/<name>.sock when
// RUNTIME_DIRECTORY is set, else /tmp/workerpool-<name>.sock.
std::string DefaultControlSocket(const std::string& pool_name);

}  // namespace workerpool
