#include "core/line_splitter.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace workerpool {
namespace {

std::vector<std::string> Split(LineSplitter& splitter,
                               const std::vector<std::string>& chunks,
                               bool finish = true) {
  std::vector<std::string> lines;
  auto sink = [&](std::string_view line) { lines.emplace_back(line); };
  for (const std::string& chunk : chunks) splitter.Feed(chunk, sink);
  if (finish) splitter.Finish(sink);
  return lines;
}

TEST_CASE("lines split on newlines, across chunks, without CR") {
  LineSplitter splitter;
  auto lines = Split(splitter, {"one\ntw", "o\r\nthree"});
  CHECK(lines == std::vector<std::string>{"one", "two", "three"});
}

TEST_CASE("a line longer than the limit is split, not lost") {
  LineSplitter splitter(4);
  auto lines = Split(splitter, {"abcdefghij\nxy\n"});
  CHECK(lines == std::vector<std::string>{"abcd", "efgh", "ij", "xy"});
}

TEST_CASE("a line of exactly the limit is one line") {
  LineSplitter splitter(4);
  auto lines = Split(splitter, {"abcd\nefgh\n"});
  CHECK(lines == std::vector<std::string>{"abcd", "efgh"});
}

TEST_CASE("empty lines are kept and nothing is emitted for no data") {
  LineSplitter splitter;
  CHECK(Split(splitter, {"\n\n"}) == std::vector<std::string>{"", ""});
  LineSplitter empty;
  CHECK(Split(empty, {""}).empty());
}

TEST_CASE("every byte of a large stream arrives") {
  LineSplitter splitter(100);
  std::string stream;
  for (int i = 0; i < 10000; ++i) stream += std::to_string(i) + "\n";
  std::vector<std::string> chunks;
  for (size_t at = 0; at < stream.size(); at += 777) {
    chunks.push_back(stream.substr(at, 777));
  }
  auto lines = Split(splitter, chunks);
  REQUIRE(lines.size() == 10000);
  for (int i = 0; i < 10000; ++i) CHECK(lines[i] == std::to_string(i));
}

TEST_CASE("a syslog priority prefix is taken off the line") {
  std::string_view line = "<3>disk full";
  CHECK(TakeLinePriority(&line) == 3);
  CHECK(line == "disk full");
  line = "<7>";
  CHECK(TakeLinePriority(&line) == 7);
  CHECK(line.empty());
  line = "<0><4>twice";
  CHECK(TakeLinePriority(&line) == 0);
  CHECK(line == "<4>twice");  // only the first is a priority
}

TEST_CASE("anything else is no priority and the line stays as it is") {
  for (std::string text : {"", "<", "<3", "<8>eight", "<33>x", "<>x", "<a>x",
                           " <3>space first", "plain", "3>x"}) {
    std::string_view line = text;
    CAPTURE(text);
    CHECK(TakeLinePriority(&line) == -1);
    CHECK(line == text);
  }
}

}  // namespace
}  // namespace workerpool
