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
  // The start of a line not ended yet (handed over by an in-place upgrade).
  const std::string& partial() const { return partial_; }

 private:
  size_t max_line_;
  std::string partial_;
};

// A line may start with a syslog priority, as systemd reads a service's
// stderr (sd-daemon(3): "<3>disk full" is an error, "<4>" a warning, "<7>"
// debug). Returns that priority (0-7) and removes it from LINE, or -1 with
// LINE untouched when the line has none.
int TakeLinePriority(std::string_view* line);

}  // namespace workerpool
