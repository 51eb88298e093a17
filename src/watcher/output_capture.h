// Output capture: every child's stdout and stderr arrive on one pipe, read
// on the Watcher's loop and logged line by line with the child's name
// ("web[0] 1234: ..."). Owns the readers; a reader outlives its child until
// the pipe reaches EOF, so that nothing a child wrote before dying is lost.
//
// When the pool does not fit RLIMIT_NOFILE with a pipe per child
// (core/file_limit.h OutputMode), a group's children share one Unix stream
// socket instead: one fd per group in the Watcher, not one per child. Its
// Watcher end has SO_PASSCRED, so every read carries the writer's pid
// (SCM_CREDENTIALS), and the kernel never merges two writers' bytes in one
// read (unix_stream_read_generic stops where the credentials change): a
// line splitter per pid keeps lines whole. A pid that is not a child (a
// grandchild) is named after its nearest ancestor that is, found through
// /proc/PID/stat.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/line_splitter.h"

namespace workerpool {

struct Group;
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

// One group's shared output socket (OutputMode::kSocketPerGroup).
struct GroupOutput {
  class OutputCapture* capture = nullptr;
  std::string name;    // the group's, for writers that are no child
  int fd = -1;         // the Watcher's end: SO_PASSCRED, non-blocking
  int child_end = -1;  // every child's stdout and stderr (blocking)
  uv_poll_t poll;
  struct Writer {
    LineSplitter splitter;
    std::string prefix;
    pid_t child = 0;  // the child it descends from (itself for a child)
  };
  std::unordered_map<pid_t, Writer> writers;        // by pid: children, and
                                                    // descendants that wrote
  std::unordered_map<pid_t, std::string> children;  // child pid -> prefix
  // A child's descendants that have a writer, oldest first (bounded).
  std::unordered_map<pid_t, std::vector<pid_t>> descendants;
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
  // OutputMode::kSocketPerGroup: the fd to give GROUP's next child as its
  // stdout and stderr (the socket is made at the first call), or -1 when it
  // cannot be made (the caller falls back to a pipe).
  int SharedOutputFor(const Group* group);
  // SLOT's child (just spawned with SharedOutputFor's fd) writes to its
  // group's socket: its lines are named after it.
  void StartShared(Slot* slot);
  // An in-place upgrade: GROUP's socket, FD (the Watcher's end) and
  // CHILD_END, as the old Watcher had them (SharedFds), kept across exec.
  void AdoptShared(const Group* group, int fd, int child_end);
  // GROUP's socket ends (the Watcher's, the children's), -1 -1 when none.
  std::pair<int, int> SharedFds(const Group* group) const;
  // The start of a line SLOT's child wrote to its group's socket and did
  // not end yet ("" when none, or when it has a pipe), and, after
  // StartShared in the new Watcher, the same bytes put back.
  std::string SharedPartial(const Slot* slot) const;
  void FeedShared(const Slot* slot, std::string_view bytes);
  // GROUP is gone: logs what is left and closes its socket.
  void ForgetGroup(const Group* group);
  // A descendant PID that was no child was reaped: flushes its last line.
  void ForgetDescendant(pid_t pid);
  // Flushes and closes every reader (the pool has stopped).
  void CloseAll();
  bool empty() const { return readers_.empty(); }
  // Whether some group's children write to a shared socket (a hand-over of
  // the pool to another Watcher must carry those sockets too).
  bool shares_output() const { return !shared_.empty(); }

 private:
  friend struct OutputReader;
  friend struct GroupOutput;
  // Reads GROUP's socket until EAGAIN or LIMIT bytes.
  void ReadShared(GroupOutput* group, std::size_t limit);
  // The writer for PID in GROUP, named after PID's nearest ancestor that is
  // a child of GROUP, else "group pid N".
  GroupOutput::Writer& WriterFor(GroupOutput* group, pid_t pid);
  void CloseShared(GroupOutput* group);
  // Makes GROUP's GroupOutput on the ends FD and CHILD_END and reads FD.
  GroupOutput* WatchShared(const Group* group, int fd, int child_end);
  // SLOT's child wrote to its group's socket: logs what it wrote and forgets
  // its pid. False when it had a pipe.
  bool DrainShared(Slot* slot);
  // Logs PID's last partial line in OUTPUT and forgets its splitter.
  static void FinishWriter(GroupOutput* output, pid_t pid);
  uv_loop_t* loop_;
  std::function<void()> on_reader_closed_;
  std::set<OutputReader*> readers_;
  std::map<const Group*, GroupOutput*> shared_;
  std::unordered_map<pid_t, GroupOutput*> shared_children_;  // by pid
};

}  // namespace workerpool
