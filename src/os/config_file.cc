#include "os/config_file.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <system_error>
#include <utility>
#include <vector>

namespace workerpool {
namespace {

// A pool definition is a few kilobytes; anything this big is the wrong file.
constexpr std::size_t kMaxConfigBytes = 16 << 20;

std::string ErrnoText(int error) {
  return std::error_code(error, std::generic_category()).message();
}

bool IsDecimal(const std::string& text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

ConfigLoad FileError(const std::string& path, std::string message) {
  ConfigLoad load;
  load.errors.push_back(ConfigError{path, 0, 0, "", std::move(message)});
  return load;
}

}  // namespace

Result<std::optional<UserIds>> LookUpSystemUser(const std::string& name) {
  long suggested = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buffer(suggested > 0 ? suggested : 1024);
  constexpr std::size_t kMaxBuffer = 1 << 20;
  bool by_uid = false;
  while (true) {
    passwd entry{};
    passwd* found = nullptr;
    int error = 0;
    if (!by_uid) {
      error = getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(),
                         &found);
    } else {
      uid_t uid = 0;
      std::from_chars(name.data(), name.data() + name.size(), uid);
      error = getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found);
    }
    if (error == ERANGE && buffer.size() < kMaxBuffer) {
      buffer.resize(buffer.size() * 2);
      continue;
    }
    if (found != nullptr) {
      return std::optional<UserIds>(UserIds{entry.pw_uid, entry.pw_gid});
    }
    // getpwnam_r(3): these also mean "no such user".
    bool not_found = error == 0 || error == ENOENT || error == ESRCH ||
                     error == EBADF || error == EPERM;
    if (!not_found) return Status::Error(ErrnoText(error));
    if (!by_uid && IsDecimal(name) && name.size() < 10) {
      by_uid = true;
      continue;
    }
    return std::optional<UserIds>();
  }
}

ConfigEnvironment SystemConfigEnvironment() {
  ConfigEnvironment environment;
  environment.look_up_user = LookUpSystemUser;
  if (const char* runtime = std::getenv("RUNTIME_DIRECTORY")) {
    environment.runtime_directory = runtime;
  }
  return environment;
}

ConfigLoad LoadConfigFile(const std::string& path) {
  return LoadConfigFile(path, nullptr);
}

ConfigLoad LoadConfigFile(const std::string& path, std::string* content) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int error = errno;
    return FileError(path,
                     "cannot open the pool definition: " + ErrnoText(error));
  }
  struct stat info {};
  if (fstat(fd, &info) != 0) {
    int error = errno;
    close(fd);
    return FileError(path,
                     "cannot stat the pool definition: " + ErrnoText(error));
  }
  if (S_ISDIR(info.st_mode)) {
    close(fd);
    return FileError(path,
                     "is a directory; expected a YAML pool definition "
                     "file");
  }
  if (!S_ISREG(info.st_mode)) {
    // A FIFO or device could block the Watcher or never end.
    close(fd);
    return FileError(path,
                     "is not a regular file; expected a YAML pool "
                     "definition file");
  }

  std::string text;
  char chunk[64 * 1024];
  while (true) {
    ssize_t got = read(fd, chunk, sizeof(chunk));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      int error = errno;
      close(fd);
      return FileError(path,
                       "cannot read the pool definition: " + ErrnoText(error));
    }
    if (got == 0) break;
    text.append(chunk, static_cast<std::size_t>(got));
    if (text.size() > kMaxConfigBytes) {
      close(fd);
      return FileError(path, "is larger than " +
                                 std::to_string(kMaxConfigBytes >> 20) +
                                 " MiB; that is not a pool definition");
    }
  }
  close(fd);
  ConfigLoad load = ParseConfig(text, path, SystemConfigEnvironment());
  if (content != nullptr) *content = std::move(text);
  return load;
}

}  // namespace workerpool
