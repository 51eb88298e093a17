// What every fuzz target asserts with: a failed check aborts, which
// libFuzzer reports as a crash and keeps the input. The line of the failed
// check goes to stderr first (an inlined abort has none in its stack).
#pragma once

#include <cstdio>
#include <cstdlib>

namespace workerpool::fuzz {

// __builtin_FILE/LINE as defaults: the caller's position (clang 14's
// libstdc++ has no std::source_location).
inline void Check(bool condition, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  if (!condition) {
    std::fprintf(stderr, "fuzz check failed: %s:%d\n", file, line);
    std::abort();
  }
}

}  // namespace workerpool::fuzz
