// Output capture: every child's stdout and stderr arrive on one pipe, read
// on the Watcher's loop and logged line by line with the child's name
// ("web[0] 1234: ..."). Owns the readers; a reader outlives its child until
// the pipe reaches EOF, so that nothing a child wrote before dying is lost.
#pragma once

#include <uv.h>

#include <cstddef>
#include <functional>
#include <set>
#include <string>
#include <string_view>

#include "core/line_splitter.h"

namespace workerpool {

struct Slot;

// Reads one child's output pipe and logs it line by line.
struct OutputReader {
  class OutputCapture* capture = nullptr;
  Slot* slot = nullptr;  // while the child runs
  uv_pipe_t pipe;
  LineSplitter splitter;
  std::string prefix;  // "group[index] pid"
  void Feed(std::string_view bytes);
  void Finish();
  void Log(std::string_view line) const;
};

class OutputCapture {
 public:
  // ON_READER_CLOSED runs each time a pipe reaches EOF (the stop sequence
  // waits for the last one).
  OutputCapture(uv_loop_t* loop, std::function<void()> on_reader_closed)
      : loop_(loop), on_reader_closed_(std::move(on_reader_closed)) {}

  // Starts reading FD (taken over) for SLOT's child; sets slot->output.
  void Start(int fd, Slot* slot);
  // SLOT's child was reaped: log what it wrote before it died, detach the
  // reader from the slot and close the child's ends the Watcher held; the
  // reader too when its pipe is at EOF already (no callback then: the
  // caller reports the change).
  void DrainAfterExit(Slot* slot);
  // Closes the child's ends of its pipes that the Watcher held (if any).
  static void ReleaseChildEnds(Slot* slot);
  // Whether the Watcher should hold the child's ends of a new child's pipes
  // (two more fds per child: only while the file limit leaves room for
  // that in every child, core/file_limit.h).
  bool HoldsChildEnds(std::size_t children, std::uint64_t file_limit) const;
  // Flushes and closes every reader (the pool has stopped).
  void CloseAll();
  bool empty() const { return readers_.empty(); }

 private:
  friend struct OutputReader;
  uv_loop_t* loop_;
  std::function<void()> on_reader_closed_;
  std::set<OutputReader*> readers_;
};

}  // namespace workerpool
