// The order in which a pool's groups start and stop (groups[].depends_on).
// Pure: it sees group names, their dependencies and what the caller says of
// them (ready, failed, running); the Watcher's child table acts on it.
//
// Start: a group starts once every group it depends on is ready (all its
// processes up, or done for a one-shot); independent groups start at once.
// Stop: dependents first; a group gets SIGTERM once no group that depends
// on it still has a child, and (as before depends_on existed) a job group
// once no reactor or service that could still send it work runs.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "core/pool_model.h"

namespace workerpool {

// One group as the dependency graph sees it.
struct GroupNode {
  std::string name;
  std::vector<std::string> depends_on;
  bool intake = false;   // a reactor or service: sends work to jobs
  bool running = false;  // stop: a child of it still runs
};

// A bad depends_on entry: groups[group].depends_on[entry].
struct DependencyProblem {
  std::size_t group = 0;
  std::size_t entry = 0;
  std::string message;
};

// Checks every depends_on: a known group, not the group itself, not listed
// twice, and no cycle (reported once, at the entry that closes it, naming
// the whole loop: "a -> b -> a").
std::vector<DependencyProblem> CheckDependencies(
    const std::vector<GroupConfig>& groups);

// The nodes of GROUPS.
std::vector<GroupNode> NodesOf(const std::vector<GroupConfig>& groups);

// GROUP's dependencies for which READY is false, in the order written.
std::vector<std::string> UnreadyDependencies(
    const GroupNode& group,
    const std::function<bool(const std::string&)>& ready);

// A group GROUP depends on, directly or not, for which FAILED is true (the
// first found, depth first); "" when none. Such a group cannot start until
// that one is fixed.
std::string FailedDependency(
    const std::string& group, const std::vector<GroupNode>& nodes,
    const std::function<bool(const std::string&)>& failed);

// Every group that depends on GROUP, directly or not, dependencies before
// their dependents (the order of a `restart --with-dependents`); ties in
// the order of NODES.
std::vector<std::string> DependentsInStartOrder(
    const std::string& group, const std::vector<GroupNode>& nodes);

// During the stop: for each node, whether it may be told to stop now (the
// rules in the header comment; `running` says what still runs).
std::vector<bool> MayStopNow(const std::vector<GroupNode>& nodes);

}  // namespace workerpool
