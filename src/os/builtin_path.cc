#include "os/builtin_path.h"

#include <limits.h>
#include <unistd.h>

namespace workerpool {

std::string SelfExecutable(const char* fallback) {
  char path[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n > 0) return std::string(path, static_cast<std::size_t>(n));
  return fallback;
}

std::string BuiltinExecutable(const std::string& self_exe) {
  return HelperExecutable(self_exe, "workerpool-builtin");
}

std::string HelperExecutable(const std::string& self_exe,
                             const std::string& name) {
  std::string::size_type slash = self_exe.rfind('/');
  std::string dir =
      slash == std::string::npos ? std::string(".") : self_exe.substr(0, slash);
  for (const std::string& candidate :
       {dir + "/" + name, dir + "/../libexec/workerpool/" + name}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

}  // namespace workerpool
