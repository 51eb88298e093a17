#include "core/file_limit.h"

#include <algorithm>

namespace workerpool {

std::uint64_t PoolChildren(const PoolConfig& config) {
  std::uint64_t children = 0;
  for (const GroupConfig& group : config.groups) {
    int most = group.processes;
    if (group.autoscale) most = std::max(most, group.autoscale->max);
    children += static_cast<std::uint64_t>(std::max(most, 0));
  }
  return children;
}

std::uint64_t ChildrenAllowed(std::uint64_t limit) {
  if (limit <= kReservedFds) return 0;
  return (limit - kReservedFds) / kFdsPerChild;
}

std::uint64_t ChildrenAllowedSharedOutput(std::uint64_t limit,
                                          std::uint64_t groups) {
  const std::uint64_t fixed = kReservedFds + groups * kFdsPerGroupSocket;
  if (limit <= fixed) return 0;
  return (limit - fixed) / kFdsPerChildSharedOutput;
}

OutputMode ChooseOutputMode(std::uint64_t limit, std::uint64_t children,
                            std::uint64_t groups) {
  if (children <= ChildrenAllowed(limit)) return OutputMode::kPipePerChild;
  // Only when it helps: a pool that fits neither way keeps its pipes (and
  // is refused at start by FitsFileLimit).
  if (children <= ChildrenAllowedSharedOutput(limit, groups)) {
    return OutputMode::kSocketPerGroup;
  }
  return OutputMode::kPipePerChild;
}

bool FitsFileLimit(std::uint64_t limit, std::uint64_t children,
                   std::uint64_t groups) {
  return children <= ChildrenAllowed(limit) ||
         children <= ChildrenAllowedSharedOutput(limit, groups);
}

namespace {

// Descriptors the pool needs without pidfds in the output mode it gets.
std::uint64_t NeededWithoutPidfds(std::uint64_t limit, std::uint64_t children,
                                  std::uint64_t groups) {
  if (ChooseOutputMode(limit, children, groups) == OutputMode::kPipePerChild) {
    return kReservedFds + children * kFdsPerChild;
  }
  return kReservedFds + groups * kFdsPerGroupSocket +
         children * kFdsPerChildSharedOutput;
}

}  // namespace

std::uint64_t PidfdsAllowed(std::uint64_t limit, std::uint64_t children,
                            std::uint64_t groups) {
  if (!FitsFileLimit(limit, children, groups)) return 0;
  const std::uint64_t needed = NeededWithoutPidfds(limit, children, groups);
  if (limit <= needed) return 0;
  return std::min(children, (limit - needed) / kPidfdsPerChild);
}

std::string DescribeReaping(std::uint64_t limit, std::uint64_t children,
                            std::uint64_t groups, bool pidfds_wanted) {
  if (!pidfds_wanted) {
    return "children reaped on SIGCHLD by waitpid (WORKERPOOL_REAP=waitpid)";
  }
  const std::uint64_t allowed = PidfdsAllowed(limit, children, groups);
  if (allowed >= children) {
    return "children reaped by pidfd, one each";
  }
  return std::to_string(allowed) + " of " + std::to_string(children) +
         " children reaped by pidfd, the rest on SIGCHLD by waitpid (no "
         "room for more under RLIMIT_NOFILE " +
         std::to_string(limit) + "); raise LimitNOFILE= or `ulimit -Hn` " +
         "to at least " +
         std::to_string(NeededWithoutPidfds(limit, children, groups) +
                        children * kPidfdsPerChild) +
         " for a pidfd each";
}

std::uint64_t ComfortableLimit(std::uint64_t children) {
  return kReservedFds +
         children * (kFdsPerChild + kPidfdsPerChild + kHeldFdsPerChild);
}

FileLimits PlanFileLimits(FileLimits current, std::uint64_t nr_open,
                          bool may_raise_hard, std::uint64_t children) {
  FileLimits plan = current;
  const std::uint64_t wanted = ComfortableLimit(children);
  if (may_raise_hard && plan.hard < wanted) {
    plan.hard = std::max(plan.hard, std::min(wanted, nr_open));
  }
  plan.soft = std::max(plan.soft, plan.hard);
  return plan;
}

std::string DescribeFileLimit(std::uint64_t limit, std::uint64_t children,
                              std::uint64_t groups) {
  std::string text = "RLIMIT_NOFILE " + std::to_string(limit) + " allows " +
                     std::to_string(ChildrenAllowed(limit)) +
                     " children; the pool has up to " +
                     std::to_string(children);
  if (children <= ChildrenAllowed(limit)) return text;
  const std::uint64_t shared = ChildrenAllowedSharedOutput(limit, groups);
  if (children <= shared) {
    return "output of " + std::to_string(children) +
           " children through one socket per group: " + text +
           " with a pipe each, " + std::to_string(shared) + " with " +
           std::to_string(kFdsPerChildSharedOutput) +
           " descriptor per child and " + std::to_string(kFdsPerGroupSocket) +
           " per group (" + std::to_string(groups) +
           (groups == 1 ? " group" : " groups") +
           "); raise LimitNOFILE= or `ulimit -Hn` to at least " +
           std::to_string(kReservedFds + children * kFdsPerChild) +
           " for a pipe per child";
  }
  text += ": too many (each child needs " + std::to_string(kFdsPerChild) +
          " descriptors in the Watcher, or " +
          std::to_string(kFdsPerChildSharedOutput) + " and " +
          std::to_string(kFdsPerGroupSocket) +
          " per group with its output through one socket per group, plus " +
          std::to_string(kReservedFds) + "; raise LimitNOFILE= or `ulimit " +
          "-Hn` to at least " +
          std::to_string(kReservedFds + groups * kFdsPerGroupSocket +
                         children * kFdsPerChildSharedOutput) +
          ", or run the Watcher as root)";
  return text;
}

}  // namespace workerpool
