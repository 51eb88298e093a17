// How many children a file-descriptor limit allows, and what limit a pool
// asks for. Pure arithmetic: the OS layer (os/spawn.h, RaiseFileLimit) reads
// and sets RLIMIT_NOFILE, `workerpool check` and the Watcher's start-up ask
// the same questions here so that they give the same answer.
#pragma once

#include <cstdint>
#include <string>

#include "core/pool_model.h"

namespace workerpool {

// What the Watcher keeps open per child, counted from the code that opens
// them (watcher/child_table.cc Spawn, child_channels.cc, output_capture.cc):
// its end of the child's pool channel (a socketpair) and the read end of the
// child's output pipe. Nothing else is per child: the spawner's socket and
// the listen sockets are per pool, and a spawn's two child ends are closed
// as soon as the child has them.
inline constexpr std::uint64_t kFdsPerChild = 2;
// A pidfd per child when the limit leaves room after the descriptors above
// (os/exit_watch.h): its death is then reaped alone, not by waitpid(-1),
// which walks every child in the kernel. Children without one are reaped
// on SIGCHLD as before; a pool never fails for want of pidfds.
inline constexpr std::uint64_t kPidfdsPerChild = 1;
// While the limit leaves room for those and for pidfds, the Watcher also
// holds the child's ends of both (a death then closes no pipe or channel
// in it: one wake-up less per death).
inline constexpr std::uint64_t kHeldFdsPerChild = 2;
// Descriptors that are not per child: stdio, the log, epoll and libuv's
// own, the control and metrics sockets and their connections, listen
// sockets, the spawner's socket, a spawn in flight, a rolling restart's
// successors.
inline constexpr std::uint64_t kReservedFds = 256;

// How children's stdout and stderr reach the Watcher. A pipe per child
// (two fds in the Watcher per child) unless the limit cannot hold the pool
// so: then one Unix stream socket per group that every child of the group
// writes to (one fd per child, two per group: the Watcher's end and the
// children's end it keeps to hand to spawns), the writer named by the
// credentials the kernel attaches (watcher/output_capture.h). Measured
// under the default hard limit of 20,000 (no CAP_SYS_RESOURCE): 10,000
// children start with 10,016 descriptors open in the Watcher (before
// pidfds, which now take what is left: 9,742 of them), and 1,000 of them
// killed at once all come back.
enum class OutputMode { kPipePerChild, kSocketPerGroup };

// Descriptors per group in OutputMode::kSocketPerGroup.
inline constexpr std::uint64_t kFdsPerGroupSocket = 2;
// Descriptors per child in OutputMode::kSocketPerGroup: the pool channel.
inline constexpr std::uint64_t kFdsPerChildSharedOutput = 1;

// The most children the pool may have at once: every group at its
// `processes`, or at its autoscale `max` when that is higher.
std::uint64_t PoolChildren(const PoolConfig& config);

// How many children a soft RLIMIT_NOFILE of LIMIT allows with a pipe each.
std::uint64_t ChildrenAllowed(std::uint64_t limit);
// How many children of GROUPS groups LIMIT allows with one output socket
// per group.
std::uint64_t ChildrenAllowedSharedOutput(std::uint64_t limit,
                                          std::uint64_t groups);

// The output mode for CHILDREN children in GROUPS groups under LIMIT: a
// pipe per child whenever they fit so (no change for a pool that fits),
// else a socket per group (whether that fits is FitsFileLimit's question).
OutputMode ChooseOutputMode(std::uint64_t limit, std::uint64_t children,
                            std::uint64_t groups);

// Whether CHILDREN children in GROUPS groups fit LIMIT in either mode.
bool FitsFileLimit(std::uint64_t limit, std::uint64_t children,
                   std::uint64_t groups);

// How many of CHILDREN children in GROUPS groups may have a pidfd under
// LIMIT: what is left after the reserve and the output mode
// ChooseOutputMode picks (kPidfdsPerChild each), at most CHILDREN; 0 when
// the pool does not fit at all.
std::uint64_t PidfdsAllowed(std::uint64_t limit, std::uint64_t children,
                            std::uint64_t groups);

// How the Watcher reaps a pool of CHILDREN in GROUPS groups under LIMIT
// (for the start-up log and `check`, a line of its own): "children reaped
// by pidfd, one each", or how many have one and what limit gives every
// child one; PIDFDS_WANTED false (WORKERPOOL_REAP=waitpid): on SIGCHLD
// by waitpid only.
std::string DescribeReaping(std::uint64_t limit, std::uint64_t children,
                            std::uint64_t groups, bool pidfds_wanted);

// The limit with which CHILDREN children leave the Watcher room for a
// pidfd each and to hold every child's ends too.
std::uint64_t ComfortableLimit(std::uint64_t children);

struct FileLimits {
  std::uint64_t soft = 0;
  std::uint64_t hard = 0;
};

// What the Watcher sets for a pool of CHILDREN: the soft limit at the hard
// one, and, when it MAY_RAISE_HARD (root, CAP_SYS_RESOURCE), a hard limit
// raised to ComfortableLimit(CHILDREN), bounded by NR_OPEN (fs.nr_open).
// Never lowers a limit.
FileLimits PlanFileLimits(FileLimits current, std::uint64_t nr_open,
                          bool may_raise_hard, std::uint64_t children);

// "RLIMIT_NOFILE 20000 allows 9872 children" with what to do when the pool
// needs more (for the start-up log, `check` and the error at start); when
// the pool of GROUPS groups fits only with a socket per group, says so:
// "output of N children through one socket per group: RLIMIT_NOFILE ...".
std::string DescribeFileLimit(std::uint64_t limit, std::uint64_t children,
                              std::uint64_t groups = 1);

}  // namespace workerpool
