#include "core/units.h"

#include <charconv>
#include <cstdint>
#include <limits>
#include <span>
#include <system_error>

namespace workerpool {
namespace {

constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();

struct Unit {
  std::string_view name;
  std::int64_t factor;  // base units (ms, bytes) per one of this unit
};

constexpr Unit kDurationUnits[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 60 * 60 * 1000}};
constexpr Unit kSizeUnits[] = {{"B", 1},
                               {"KB", std::int64_t{1} << 10},
                               {"MB", std::int64_t{1} << 20},
                               {"GB", std::int64_t{1} << 30}};

// How one kind of amount is written, for parsing and for messages.
struct AmountSyntax {
  std::string_view kind;  // "duration", "size"
  std::span<const Unit> units;
  // Whether a number without a unit is in base units (sizes: bytes) or an
  // error (durations, except 0: "10" could mean anything).
  bool bare_number_is_base_unit;
  std::string_view accepted;          // the end of every syntax error
  std::string_view fraction_example;  // how to avoid a fraction
};

constexpr AmountSyntax kDurationSyntax = {
    "duration", kDurationUnits, false,
    "expected a whole number followed by ms, s, m or h (e.g. 100ms, 10s, 5m, "
    "1h), or 0",
    "1500ms, not 1.5s"};
constexpr AmountSyntax kSizeSyntax = {
    "size", kSizeUnits, true,
    "expected a whole number of bytes, optionally followed by B, KB, MB or GB "
    "(e.g. 512KB, 1MB, 2GB)",
    "1536KB, not 1.5MB"};

std::string Quote(std::string_view text) {
  return "'" + std::string(text) + "'";
}

const Unit* FindUnit(std::span<const Unit> units, std::string_view name) {
  for (const Unit& unit : units) {
    if (unit.name == name) return &unit;
  }
  return nullptr;
}

// TEXT as a count of SYNTAX's base unit. A non-negative whole number and a
// unit, nothing else: no sign, no fraction, no exponent, no spaces.
Result<std::int64_t> ParseAmount(std::string_view text,
                                 const AmountSyntax& syntax) {
  std::string invalid =
      "invalid " + std::string(syntax.kind) + " " + Quote(text) + ": ";
  std::string accepted(syntax.accepted);
  // from_chars alone would accept a leading '-'.
  if (text.empty() || text.front() < '0' || text.front() > '9') {
    return Status::Error(invalid + accepted);
  }
  std::int64_t number = 0;
  auto [end, error] =
      std::from_chars(text.data(), text.data() + text.size(), number);
  bool too_large = error == std::errc::result_out_of_range;
  std::string_view unit_name(end, text.data() + text.size() - end);

  std::int64_t factor = 1;
  if (unit_name.empty()) {
    if (!syntax.bare_number_is_base_unit && (number != 0 || too_large)) {
      return Status::Error(std::string(syntax.kind) + " " + Quote(text) +
                           " has no unit: add ms, s, m or h (e.g. " +
                           std::string(text) + "s)");
    }
  } else if (const Unit* unit = FindUnit(syntax.units, unit_name)) {
    factor = unit->factor;
  } else if (unit_name.front() == '.' || unit_name.front() == ',') {
    return Status::Error(
        invalid + "fractions are not accepted; use a smaller unit (" +
        std::string(syntax.fraction_example) + "); " + accepted);
  } else {
    std::string_view trimmed = unit_name;
    while (!trimmed.empty() &&
           (trimmed.front() == ' ' || trimmed.front() == '\t')) {
      trimmed.remove_prefix(1);
    }
    if (trimmed != unit_name && FindUnit(syntax.units, trimmed) != nullptr) {
      return Status::Error(
          invalid + "write the number and unit without a space; " + accepted);
    }
    return Status::Error(invalid + "unknown unit " + Quote(unit_name) + "; " +
                         accepted);
  }
  if (too_large || number > kInt64Max / factor) {
    return Status::Error(std::string(syntax.kind) + " " + Quote(text) +
                         " is too large");
  }
  return number * factor;
}

}  // namespace

Result<Duration> ParseDuration(std::string_view text) {
  Result<std::int64_t> millis = ParseAmount(text, kDurationSyntax);
  if (!millis.ok()) return millis.status();
  return Duration(*millis);
}

Result<std::int64_t> ParseSize(std::string_view text) {
  return ParseAmount(text, kSizeSyntax);
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
