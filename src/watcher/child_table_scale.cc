// The child table and the file-descriptor limit: how many children it can
// hold (core/file_limit.h), raised at start, on reload and on `scale`.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/file_limit.h"
#include "os/spawn.h"
#include "watcher/child_table.h"

namespace workerpool {

Status ChildTable::FitFileLimit(std::uint64_t children, std::uint64_t groups) {
  if (children > ChildrenAllowed(file_limit_) ||
      ComfortableLimit(children) > file_limit_) {
    const std::uint64_t before = file_limit_;
    file_limit_ = RaiseFileLimit(children);
    if (file_limit_ != before) {
      spdlog::info("{}", DescribeFileLimit(file_limit_, children, groups));
    }
  }
  if (!FitsFileLimit(file_limit_, children, groups)) {
    return Status::Error(DescribeFileLimit(file_limit_, children, groups));
  }
  // Children spawned from now on; those running keep what they have.
  const OutputMode mode = ChooseOutputMode(file_limit_, children, groups);
  if (fitted_ && mode != output_mode_) {
    spdlog::info("{}",
                 mode == OutputMode::kSocketPerGroup
                     ? DescribeFileLimit(file_limit_, children, groups)
                     : "output of children through a pipe each again: " +
                           DescribeFileLimit(file_limit_, children, groups));
  }
  output_mode_ = mode;
  // Pidfds for children watched from now on (os/exit_watch.h); those that
  // have one keep it, a budget lowered by a reload or `scale` is reached as
  // they die.
  const std::uint64_t budget =
      pidfds_wanted_ && exit_watch_.usable()
          ? PidfdsAllowed(file_limit_, children, groups)
          : 0;
  if (!fitted_ || budget != pidfd_budget_) {
    spdlog::info("{}", DescribeReaping(file_limit_, children, groups,
                                       pidfds_wanted_ && exit_watch_.usable()));
  }
  pidfd_budget_ = budget;
  fitted_ = true;
  return Status::Ok();
}

std::uint64_t ChildTable::PlannedGroups() const {
  std::uint64_t count = 0;
  for (const auto& group : groups_) count += group->removing ? 0 : 1;
  return count;
}

std::uint64_t ChildTable::PlannedChildren() const {
  std::uint64_t children = 0;
  for (const auto& group : groups_) {
    if (group->removing) continue;
    int most = group->config.processes;
    if (group->config.autoscale) {
      most = std::max(most, group->config.autoscale->max);
    }
    children += static_cast<std::uint64_t>(std::max(most, 0));
  }
  return children;
}

}  // namespace workerpool
