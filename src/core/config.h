// The pool definition's parser: the bytes of a YAML file -> PoolConfig (the
// model is in src/core/pool_model.h). Pure: it opens no file, reads no
// environment variable and no passwd database; what it needs from outside
// the file comes in a ConfigEnvironment. src/os/config_file.h reads the file
// and gives the real environment. Parsing never throws.
//
// Every error is one line: "FILE:LINE:COL: KEY: what is wrong", where KEY is a
// path like "groups[1].processes" (1-based line and column, as editors show).
//
// The parser's rooms, from the text up (namespace config_parser):
//   yaml_node.h        the YAML tree with positions; the only yaml-cpp user
//   config_reader.h    typed reads from a mapping, each error positioned
//   config_values.h    checks on single values (names, addresses, URLs, user)
//   config_text.h      quoting, "did you mean", the is-it-text check
//   config_group.h     one entry of `groups`
//   config_document.h  the root, `pool`, and the checks across groups
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/pool_model.h"
#include "core/status.h"

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

// The ids a group's `user` names.
struct UserIds {
  std::int64_t uid = -1;
  std::int64_t gid = -1;
};

// What reading a pool definition needs from outside its file.
struct ConfigEnvironment {
  // Resolves a group's `user`: its ids; nullopt when there is no such user
  // (a config error); an error saying why when the lookup itself failed
  // (e.g. "Input/output error"). Unset: every user is unknown.
  std::function<Result<std::optional<UserIds>>(const std::string& user)>
      look_up_user;
  // $RUNTIME_DIRECTORY as systemd sets it (several directories are joined by
  // ':'); empty when unset. Decides the default control socket.
  std::string runtime_directory;
};

// Parses TEXT, the bytes of the file FILE_NAME (named in every error), and
// validates it against ENVIRONMENT. Binary garbage and an empty file each
// give one clear error.
ConfigLoad ParseConfig(const std::string& text, const std::string& file_name,
                       const ConfigEnvironment& environment);

// The default control socket for a pool: <dir>/<name>.sock for the first
// directory in RUNTIME_DIRECTORY when there is one, else
// /tmp/workerpool-<name>.sock.
std::string DefaultControlSocket(const std::string& pool_name,
                                 std::string_view runtime_directory);

}  // namespace workerpool
