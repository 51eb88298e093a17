// The OS side of an in-place upgrade (`workerpool upgrade`, SIGUSR2): the
// Watcher checks the new binary, writes its state (core/upgrade_state.h)
// into a sealed memfd, keeps the descriptors the state names open across
// exec and execs the new binary in the same pid, as
//   BINARY run CONFIG --adopt STATE_FD
// The new Watcher adopts the pool from the state. When it cannot (a state
// it does not read, a failure, a crash before it is ready) it execs the old
// binary again, from a descriptor of it opened at start, as
//   /proc/self/fd/N run CONFIG --adopt STATE_FD --upgrade-error REASON
// which takes the pool back as it was. Same pid throughout: the children
// stay children of the Watcher, PR_SET_PDEATHSIG never fires, and systemd's
// main pid does not change. Runs on the Watcher's loop thread; every call
// here blocks (the checks run the new binary for at most a few seconds).
#pragma once

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"

namespace workerpool {

// The version this binary reports (`--version`, status, STATUS=):
// WORKERPOOL_VERSION, or $WORKERPOOL_TEST_VERSION when set (tests upgrade
// between two "builds" that differ only in it).
std::string WorkerpoolVersion();

// This binary, opened read-only and close-on-exec (a fallback for the next
// upgrade: the file may be replaced or deleted by then). -1 when it cannot.
int OpenOwnBinary();

// The path this process was executed from (/proc/self/exe at start).
std::string OwnBinaryPath();

// Checks BINARY before an upgrade to it: it runs and `--version` answers
// (its version is returned), it can adopt a pool (`--upgrade-state-version`
// answers a version >= 1), and `check` accepts CONFIG_CONTENT (the bytes of
// the definition in force, passed as a file of their own). Each run is
// bounded by a few seconds. The error says which step failed and how.
Result<std::string> CheckNewBinary(const std::string& binary,
                                   const std::string& config_content);

// CheckNewBinary on a thread of its own, so that the Watcher's loop goes on
// meanwhile (restarts, heartbeats, status: a new binary that hangs must not
// stall the pool). Created on the loop thread, polled from it; the
// destructor waits for the thread.
class BinaryCheck {
 public:
  BinaryCheck(std::string binary, std::string config_content);
  ~BinaryCheck();
  BinaryCheck(const BinaryCheck&) = delete;
  BinaryCheck& operator=(const BinaryCheck&) = delete;
  bool done() const { return done_.load(std::memory_order_acquire); }
  // REQUIRES: done().
  const Result<std::string>& result() const { return result_; }

 private:
  Result<std::string> result_{Status::Error("not checked yet")};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// TEXT in a new memfd, sealed against any change, not close-on-exec.
Result<int> WriteStateMemfd(const std::string& text);
// The whole content of the state memfd FD (from offset 0).
Result<std::string> ReadStateFd(int fd);

// Execs BINARY (a path; or, when empty, the open file EXE_FD) as
// `run CONFIG_PATH --adopt STATE_FD` (with `--upgrade-error ERROR` when
// ERROR is not empty), with every descriptor of KEEP and STATE_FD kept open
// and the Watcher's signals blocked (the new Watcher unblocks them once its
// handlers are in place, so a SIGTERM during the hand-over waits). When
// FOR_FALLBACK, $WORKERPOOL_TEST_ADOPT_FAULT is dropped from the
// environment. Returns only when exec failed: then everything is as it was.
Status ExecAdopting(const std::string& binary, int exe_fd,
                    const std::string& config_path, int state_fd,
                    const std::vector<int>& keep, const std::string& error,
                    bool for_fallback);

// In the adopting Watcher, until it is ready: a crash (SIGSEGV, SIGBUS,
// SIGILL, SIGFPE, SIGABRT) execs the old binary FALLBACK_EXE_FD with the
// same state and an error naming the signal, instead of ending the process
// (and with it, by PR_SET_PDEATHSIG, every child).
void ArmAdoptionFallback(int fallback_exe_fd, const std::string& config_path,
                         int state_fd, const std::vector<int>& keep);
void DisarmAdoptionFallback();

// The signals ExecAdopting blocks, unblocked (the adopting Watcher, once
// its own handlers are installed; harmless otherwise).
void UnblockUpgradeSignals();

}  // namespace workerpool
