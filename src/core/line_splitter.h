// Splits a byte stream (a child's output) into lines for the log. A line
// longer than max_line is emitted in pieces of max_line bytes: long lines are
// split, never dropped. Pure; the caller feeds whatever read() returned.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace workerpool {

class LineSplitter {
 public:
  using LineSink = std::function<void(std::string_view line)>;

  explicit LineSplitter(size_t max_line = 16 * 1024) : max_line_(max_line) {}

  // Calls SINK once per complete line (without its '\n' or a trailing '\r').
  void Feed(std::string_view data, const LineSink& sink);
  // At end of stream: emits what is left as a last line, if anything.
  void Finish(const LineSink& sink);

 private:
  size_t max_line_;
  std::string partial_;
};

}  // namespace workerpool
