// What every fuzz target asserts with: a failed check aborts, which
// libFuzzer reports as a crash and keeps the input.
#pragma once

#include <cstdlib>

namespace workerpool::fuzz {

inline void Check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace workerpool::fuzz
