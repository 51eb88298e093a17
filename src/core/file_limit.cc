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

std::uint64_t ComfortableLimit(std::uint64_t children) {
  return kReservedFds + children * (kFdsPerChild + kHeldFdsPerChild);
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

std::string DescribeFileLimit(std::uint64_t limit, std::uint64_t children) {
  std::string text = "RLIMIT_NOFILE " + std::to_string(limit) + " allows " +
                     std::to_string(ChildrenAllowed(limit)) +
                     " children; the pool has up to " +
                     std::to_string(children);
  if (children > ChildrenAllowed(limit)) {
    text += ": too many (each child needs " + std::to_string(kFdsPerChild) +
            " descriptors in the Watcher, plus " +
            std::to_string(kReservedFds) + "; raise LimitNOFILE= or `ulimit " +
            "-Hn` to at least " +
            std::to_string(kReservedFds + children * kFdsPerChild) +
            ", or run the Watcher as root)";
  }
  return text;
}

}  // namespace workerpool
