#include "core/proc_stat.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

using workerpool::ProcStatProcessor;

namespace {

// A stat line with COMM and PROCESSOR in field 39, other fields made up.
std::string StatLine(const std::string& comm, const std::string& processor) {
  std::string line = "4242 (" + comm + ") S";
  for (int field = 4; field <= 38; ++field) line += " " + std::to_string(field);
  line += " " + processor;
  for (int field = 40; field <= 52; ++field) line += " 0";
  return line + "\n";
}

}  // namespace

TEST_CASE("ProcStatProcessor reads field 39") {
  CHECK(ProcStatProcessor(StatLine("echo-job", "1")) == 1);
  CHECK(ProcStatProcessor(StatLine("echo-job", "0")) == 0);
  CHECK(ProcStatProcessor(StatLine("echo-job", "127")) == 127);
}

TEST_CASE("ProcStatProcessor counts from the last parenthesis") {
  // A command name may hold spaces and parentheses.
  CHECK(ProcStatProcessor(StatLine("a) b (c) d", "3")) == 3);
  CHECK(ProcStatProcessor(StatLine("", "5")) == 5);
}

TEST_CASE("ProcStatProcessor refuses what is not a stat line") {
  CHECK_FALSE(ProcStatProcessor(""));
  CHECK_FALSE(ProcStatProcessor("garbage"));
  CHECK_FALSE(ProcStatProcessor("1 (x) S 2 3"));  // truncated
  CHECK_FALSE(ProcStatProcessor(StatLine("x", "-1")));
  CHECK_FALSE(ProcStatProcessor(StatLine("x", "1x")));
  CHECK_FALSE(ProcStatProcessor(StatLine("x", "99999999999")));
  // Cut right before field 39, then right after it.
  std::string cut = StatLine("x", "77");
  const size_t field_39 = cut.find(" 77 ") + 1;
  CHECK_FALSE(ProcStatProcessor(cut.substr(0, field_39)));
  CHECK(ProcStatProcessor(cut.substr(0, field_39 + 2)) == 77);
}

TEST_CASE("ProcStatProcessor reads this process's own stat") {
  std::ifstream file("/proc/self/stat");
  if (!file) return;  // no /proc here
  std::stringstream text;
  text << file.rdbuf();
  auto cpu = ProcStatProcessor(text.str());
  REQUIRE(cpu.has_value());
  CHECK(*cpu >= 0);
  CHECK(*cpu < sysconf(_SC_NPROCESSORS_CONF) + 1024);
}

namespace {

// A stat line with utime (14), stime (15) and rss (24) set, others made up.
std::string UsageLine(const std::string& comm, const std::string& utime,
                      const std::string& stime, const std::string& rss) {
  std::string line = "4242 (" + comm + ") S";
  for (int field = 4; field <= 52; ++field) {
    std::string value = std::to_string(field * 1000);
    if (field == 14) value = utime;
    if (field == 15) value = stime;
    if (field == 24) value = rss;
    line += " " + value;
  }
  return line + "\n";
}

}  // namespace

TEST_CASE("ProcStatUsageOf adds utime and stime and reads rss") {
  auto usage =
      workerpool::ProcStatUsageOf(UsageLine("echo-job", "7", "5", "321"));
  REQUIRE(usage.has_value());
  CHECK(usage->cpu_ticks == 12);
  CHECK(usage->rss_pages == 321);
  // Spaces and parentheses in the command name do not shift the fields.
  usage = workerpool::ProcStatUsageOf(UsageLine("a) b (c", "1", "2", "3"));
  REQUIRE(usage.has_value());
  CHECK(usage->cpu_ticks == 3);
  CHECK(usage->rss_pages == 3);
}

TEST_CASE("ProcStatUsageOf refuses what is not a stat line") {
  using workerpool::ProcStatUsageOf;
  CHECK_FALSE(ProcStatUsageOf(""));
  CHECK_FALSE(ProcStatUsageOf("1 (x) S 2 3"));
  CHECK_FALSE(ProcStatUsageOf(UsageLine("x", "-1", "0", "0")));
  CHECK_FALSE(ProcStatUsageOf(UsageLine("x", "0", "1x", "0")));
  CHECK_FALSE(ProcStatUsageOf(UsageLine("x", "0", "0", "-5")));
  std::string cut = UsageLine("x", "1", "2", "98765");
  CHECK_FALSE(ProcStatUsageOf(cut.substr(0, cut.find(" 98765"))));
}

TEST_CASE("ProcStatUsageOf reads this process's own stat") {
  std::ifstream file("/proc/self/stat");
  if (!file) return;  // no /proc here
  std::stringstream text;
  text << file.rdbuf();
  auto usage = workerpool::ProcStatUsageOf(text.str());
  REQUIRE(usage.has_value());
  CHECK(usage->rss_pages > 0);
}

TEST_CASE("ProcStatParent reads field 4, the ppid") {
  CHECK(workerpool::ProcStatParent(StatLine("sh", "0")) == 4);
  CHECK(workerpool::ProcStatParent("77 (a) b) c) S 12 77 77 0") == 12);
  CHECK(workerpool::ProcStatParent("1 (init) S 0 1 1") == std::nullopt);
  CHECK(workerpool::ProcStatParent("1 (x) S -3 1") == std::nullopt);
  CHECK(workerpool::ProcStatParent("1 (x) S") == std::nullopt);
  CHECK(workerpool::ProcStatParent("garbage") == std::nullopt);
  CHECK(workerpool::ProcStatParent("") == std::nullopt);
  // This process's own line names its parent.
  std::ifstream self("/proc/self/stat");
  std::stringstream text;
  text << self.rdbuf();
  CHECK(workerpool::ProcStatParent(text.str()) == getppid());
}
