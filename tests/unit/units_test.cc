#include "core/units.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace workerpool {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_CASE("ParseDuration accepts every unit") {
  CHECK(ParseDuration("100ms").value() == milliseconds(100));
  CHECK(ParseDuration("10s").value() == seconds(10));
  CHECK(ParseDuration("5m").value() == minutes(5));
  CHECK(ParseDuration("1h").value() == hours(1));
  CHECK(ParseDuration("0ms").value() == milliseconds(0));
  CHECK(ParseDuration("0s").value() == milliseconds(0));
}

TEST_CASE("ParseDuration accepts a bare zero and nothing else bare") {
  CHECK(ParseDuration("0").value() == milliseconds(0));
  Result<Duration> bare = ParseDuration("10");
  REQUIRE_FALSE(bare.ok());
  CHECK(Contains(bare.status().message(), "'10'"));
  CHECK(Contains(bare.status().message(), "no unit"));
}

TEST_CASE("ParseDuration refuses what is not a whole number and a unit") {
  for (const char* text :
       {"", "ms", "s", "-1s", "+1s", "1.5s", "1,5s", "10 s", " 10s", "10s ",
        "10sec", "10S", "1d", "abc", "0x10s", "1e3ms", "10ms5"}) {
    CAPTURE(text);
    Result<Duration> parsed = ParseDuration(text);
    REQUIRE_FALSE(parsed.ok());
    // Names what was given and what is accepted.
    CHECK(Contains(parsed.status().message(), "'" + std::string(text) + "'"));
  }
  CHECK(Contains(ParseDuration("10x").status().message(), "ms, s, m or h"));
  CHECK(Contains(ParseDuration("1.5s").status().message(), "fractions"));
}

TEST_CASE("ParseDuration reports overflow instead of wrapping") {
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  CHECK(ParseDuration(std::to_string(kMax) + "ms").value().count() == kMax);
  const std::vector<std::string> too_large = {
      std::to_string(kMax) + "s", std::to_string(kMax / 1000 + 1) + "s",
      std::to_string(kMax / 3600000 + 1) + "h", "99999999999999999999999ms"};
  for (const std::string& text : too_large) {
    CAPTURE(text);
    Result<Duration> parsed = ParseDuration(text);
    REQUIRE_FALSE(parsed.ok());
    CHECK(Contains(parsed.status().message(), "too large"));
  }
  CHECK(ParseDuration(std::to_string(kMax / 1000) + "s").ok());
  // Without a unit, the missing unit is the thing to fix first.
  CHECK(Contains(ParseDuration("99999999999999999999999").status().message(),
                 "no unit"));
}

TEST_CASE("ParseSize takes powers of 1024") {
  CHECK(ParseSize("100B").value() == 100);
  CHECK(ParseSize("512KB").value() == 512 * 1024);
  CHECK(ParseSize("1MB").value() == 1024 * 1024);
  CHECK(ParseSize("2GB").value() == std::int64_t{2} * 1024 * 1024 * 1024);
  CHECK(ParseSize("0").value() == 0);
  CHECK(ParseSize("0MB").value() == 0);
}

TEST_CASE("ParseSize accepts a bare byte count") {
  CHECK(ParseSize("4096").value() == 4096);
}

TEST_CASE("ParseSize refuses other spellings") {
  for (const char* text : {"", "MB", "-1MB", "1.5MB", "512mb", "512kb", "1 MB",
                           "1TB", "1KiB", "1M", "abc"}) {
    CAPTURE(text);
    Result<std::int64_t> parsed = ParseSize(text);
    REQUIRE_FALSE(parsed.ok());
    CHECK(Contains(parsed.status().message(), "'" + std::string(text) + "'"));
    CHECK(Contains(parsed.status().message(), "KB, MB or GB"));
  }
}

TEST_CASE("ParseSize reports overflow instead of wrapping") {
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  CHECK(ParseSize(std::to_string(kMax)).value() == kMax);
  CHECK(ParseSize(std::to_string(kMax >> 30) + "GB").ok());
  for (std::string text : {std::to_string((kMax >> 30) + 1) + "GB",
                           std::to_string((kMax >> 10) + 1) + "KB",
                           std::string("99999999999999999999999B")}) {
    CAPTURE(text);
    Result<std::int64_t> parsed = ParseSize(text);
    REQUIRE_FALSE(parsed.ok());
    CHECK(Contains(parsed.status().message(), "too large"));
  }
}

TEST_CASE("FormatDuration picks readable units") {
  CHECK(FormatDuration(milliseconds(0)) == "0ms");
  CHECK(FormatDuration(milliseconds(250)) == "250ms");
  CHECK(FormatDuration(milliseconds(1000)) == "1s");
  CHECK(FormatDuration(milliseconds(1500)) == "1.5s");
  CHECK(FormatDuration(milliseconds(1234)) == "1.234s");
  CHECK(FormatDuration(milliseconds(1050)) == "1.05s");
  CHECK(FormatDuration(seconds(30)) == "30s");
  CHECK(FormatDuration(minutes(5)) == "5m");
  CHECK(FormatDuration(seconds(90)) == "1m30s");
  CHECK(FormatDuration(milliseconds(61500)) == "1m1.5s");
  CHECK(FormatDuration(hours(1)) == "1h");
  CHECK(FormatDuration(minutes(90)) == "1h30m");
  CHECK(FormatDuration(hours(2) + seconds(5)) == "2h5s");
  CHECK(FormatDuration(milliseconds(-1500)) == "-1.5s");
}

TEST_CASE("FormatDuration survives the extremes") {
  CHECK_FALSE(FormatDuration(Duration::max()).empty());
  CHECK(FormatDuration(Duration::min()).front() == '-');
}

TEST_CASE("FormatDuration output of a whole unit parses back") {
  for (Duration d : {Duration(0), Duration(250), Duration(seconds(10)),
                     Duration(minutes(5)), Duration(hours(3))}) {
    CAPTURE(d.count());
    CHECK(ParseDuration(FormatDuration(d)).value() == d);
  }
}

}  // namespace
}  // namespace workerpool
