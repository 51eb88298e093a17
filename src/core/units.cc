#include "core/units.h"

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <system_error>

namespace workerpool {
namespace {

constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();

struct NumberAndUnit {
  std::int64_t number = 0;
  std::string_view unit;
};

// Splits "512KB" into 512 and "KB". Fails on a missing or signed number, on a
// number too large for int64 and on anything that is not a plain run of
// decimal digits (fractions, exponents, spaces).
std::optional<NumberAndUnit> SplitNumberAndUnit(std::string_view text) {
  NumberAndUnit split;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  // from_chars accepts a leading '-'; a negative amount is never meant here.
  if (first == last || *first < '0' || *first > '9') return std::nullopt;
  auto [end, error] = std::from_chars(first, last, split.number);
  if (error != std::errc()) return std::nullopt;
  split.unit = std::string_view(end, static_cast<std::size_t>(last - end));
  return split;
}

// NUMBER * FACTOR, or nullopt when it does not fit in int64.
std::optional<std::int64_t> Scale(std::int64_t number, std::int64_t factor) {
  if (number > kInt64Max / factor) return std::nullopt;
  return number * factor;
}

// Why UNIT is not a unit, when a common slip explains it; "" otherwise.
std::string ExplainBadUnit(std::string_view unit, std::string_view example) {
  if (unit.starts_with('.') || unit.starts_with(',')) {
    return "fractions are not accepted; use a smaller unit (" +
           std::string(example) + ")";
  }
  if (unit.find_first_of(" \t") != std::string_view::npos) {
    return "write the number and unit without a space";
  }
  return "";
}

bool IsAllDigits(std::string_view text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

std::string Quote(std::string_view text) {
  return "'" + std::string(text) + "'";
}

}  // namespace

Result<Duration> ParseDuration(std::string_view text) {
  static constexpr char kAccepted[] =
      "expected a whole number followed by ms, s, m or h (e.g. 100ms, 10s, "
      "5m, 1h), or 0";
  std::optional<NumberAndUnit> split = SplitNumberAndUnit(text);
  if (!split) {
    if (IsAllDigits(text)) {  // digits only, but too many of them
      return Status::Error("duration " + Quote(text) + " is too large");
    }
    return Status::Error("invalid duration " + Quote(text) + ": " + kAccepted);
  }
  if (split->unit.empty()) {
    if (split->number == 0) return Duration(0);
    return Status::Error("duration " + Quote(text) +
                         " has no unit: add ms, s, m or h (e.g. " +
                         std::string(text) + "s)");
  }
  std::int64_t millis_per_unit = 0;
  if (split->unit == "ms") {
    millis_per_unit = 1;
  } else if (split->unit == "s") {
    millis_per_unit = 1000;
  } else if (split->unit == "m") {
    millis_per_unit = 60 * 1000;
  } else if (split->unit == "h") {
    millis_per_unit = 60 * 60 * 1000;
  } else {
    std::string why = ExplainBadUnit(split->unit, "1500ms, not 1.5s");
    if (why.empty()) why = "unknown unit " + Quote(split->unit);
    return Status::Error("invalid duration " + Quote(text) + ": " + why + "; " +
                         kAccepted);
  }
  std::optional<std::int64_t> millis = Scale(split->number, millis_per_unit);
  if (!millis) {
    return Status::Error("duration " + Quote(text) + " is too large");
  }
  return Duration(*millis);
}

Result<std::int64_t> ParseSize(std::string_view text) {
  static constexpr char kAccepted[] =
      "expected a whole number of bytes, optionally followed by B, KB, MB or "
      "GB (e.g. 512KB, 1MB, 2GB)";
  std::optional<NumberAndUnit> split = SplitNumberAndUnit(text);
  if (!split) {
    if (IsAllDigits(text)) {
      return Status::Error("size " + Quote(text) + " is too large");
    }
    return Status::Error("invalid size " + Quote(text) + ": " + kAccepted);
  }
  std::int64_t bytes_per_unit = 0;
  if (split->unit.empty() || split->unit == "B") {
    bytes_per_unit = 1;
  } else if (split->unit == "KB") {
    bytes_per_unit = std::int64_t{1} << 10;
  } else if (split->unit == "MB") {
    bytes_per_unit = std::int64_t{1} << 20;
  } else if (split->unit == "GB") {
    bytes_per_unit = std::int64_t{1} << 30;
  } else {
    std::string why = ExplainBadUnit(split->unit, "1536KB, not 1.5MB");
    if (why.empty()) why = "unknown unit " + Quote(split->unit);
    return Status::Error("invalid size " + Quote(text) + ": " + why + "; " +
                         kAccepted);
  }
  std::optional<std::int64_t> bytes = Scale(split->number, bytes_per_unit);
  if (!bytes) return Status::Error("size " + Quote(text) + " is too large");
  return *bytes;
}

std::string FormatDuration(Duration d) {
  constexpr std::uint64_t kSecond = 1000;
  constexpr std::uint64_t kMinute = 60 * kSecond;
  constexpr std::uint64_t kHour = 60 * kMinute;

  std::int64_t count = d.count();
  std::string out;
  // Through unsigned so that the most negative value negates without UB.
  std::uint64_t millis = static_cast<std::uint64_t>(count);
  if (count < 0) {
    out = "-";
    millis = 0 - millis;
  }
  if (millis < kSecond) return out + std::to_string(millis) + "ms";

  // Largest units first, zero parts left out: "1h", "1h30m", "1m1.5s".
  if (millis >= kHour) {
    out += std::to_string(millis / kHour) + "h";
    millis %= kHour;
  }
  if (millis >= kMinute) {
    out += std::to_string(millis / kMinute) + "m";
    millis %= kMinute;
  }
  if (millis > 0) {
    out += std::to_string(millis / kSecond);
    std::uint64_t fraction = millis % kSecond;
    if (fraction > 0) {
      std::string digits = std::to_string(fraction + kSecond).substr(1);
      while (digits.back() == '0') digits.pop_back();
      out += "." + digits;
    }
    out += "s";
  }
  return out;
}

}  // namespace workerpool
