// Durations ("100ms", "10s", "5m", "1h") and sizes ("512KB", "1MB", "2GB")
// as written in the pool YAML. Pure functions, no exceptions.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace workerpool {

using Duration = std::chrono::milliseconds;

// Accepts a non-negative integer followed by ms, s, m or h (no spaces, no
// fractions). A bare "0" is accepted as zero. Error names the text and the
// accepted units.
Result<Duration> ParseDuration(std::string_view text);

// Accepts a non-negative integer followed by B, KB, MB or GB (powers of 1024).
Result<std::int64_t> ParseSize(std::string_view text);

// "1500ms" -> "1.5s" style for logs and status.
std::string FormatDuration(Duration d);

}  // namespace workerpool
