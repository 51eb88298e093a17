// Where the built-in children's executable is. `workerpool builtin NAME`
// and the Watcher exec it instead of the `workerpool` binary itself, so the
// Watcher never loads what only the children need (librabbitmq, OpenSSL,
// http-parser).
#pragma once

#include <string>

namespace workerpool {

// The running executable, from /proc/self/exe; FALLBACK when unreadable.
std::string SelfExecutable(const char* fallback);

// The `workerpool-builtin` that belongs to the `workerpool` at SELF_EXE:
// beside it (a build tree), else in ../libexec/workerpool/ (an install).
// Returns the first candidate that is executable, or "" when none is.
std::string BuiltinExecutable(const std::string& self_exe);

// The same lookup for another helper executable NAME (workerpool-spawner).
std::string HelperExecutable(const std::string& self_exe,
                             const std::string& name);

// The built-in children it runs, for help texts and errors.
inline constexpr const char* kBuiltinNames =
    "echo-job, http-reactor, rabbitmq-service";

}  // namespace workerpool
