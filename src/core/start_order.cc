#include "core/start_order.h"

#include <algorithm>
#include <map>
#include <set>

namespace workerpool {
namespace {

const GroupNode* Find(const std::vector<GroupNode>& nodes,
                      const std::string& name) {
  for (const GroupNode& node : nodes) {
    if (node.name == name) return &node;
  }
  return nullptr;
}

// Every group NAME depends on, directly or not (NAME excluded).
std::set<std::string> DependenciesOf(const std::string& name,
                                     const std::vector<GroupNode>& nodes) {
  std::set<std::string> seen;
  std::vector<std::string> todo{name};
  while (!todo.empty()) {
    const GroupNode* node = Find(nodes, todo.back());
    todo.pop_back();
    if (node == nullptr) continue;
    for (const std::string& dependency : node->depends_on) {
      if (dependency != name && seen.insert(dependency).second) {
        todo.push_back(dependency);
      }
    }
  }
  return seen;
}

}  // namespace

std::vector<GroupNode> NodesOf(const std::vector<GroupConfig>& groups) {
  std::vector<GroupNode> nodes;
  nodes.reserve(groups.size());
  for (const GroupConfig& group : groups) {
    nodes.push_back(
        {group.name, group.depends_on, group.type != GroupType::kJob, false});
  }
  return nodes;
}

std::vector<DependencyProblem> CheckDependencies(
    const std::vector<GroupConfig>& groups) {
  std::vector<DependencyProblem> problems;
  std::map<std::string, std::size_t> index_of;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    index_of.emplace(groups[i].name, i);
  }
  // Edges that are well formed, for the cycle search.
  std::vector<std::vector<std::pair<std::size_t, std::size_t>>> edges(
      groups.size());  // (target group, entry)
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const std::vector<std::string>& list = groups[i].depends_on;
    for (std::size_t j = 0; j < list.size(); ++j) {
      const std::string& name = list[j];
      if (name == groups[i].name) {
        problems.push_back({i, j,
                            "group '" + name +
                                "' depends on itself; remove it from its "
                                "own depends_on"});
        continue;
      }
      if (std::find(list.begin(), list.begin() + j, name) != list.begin() + j) {
        problems.push_back({i, j, "group '" + name + "' is listed twice"});
        continue;
      }
      auto found = index_of.find(name);
      if (found == index_of.end()) {
        std::string known;
        for (const GroupConfig& group : groups) {
          known += (known.empty() ? "" : ", ") + group.name;
        }
        problems.push_back(
            {i, j, "unknown group '" + name + "'; groups are: " + known});
        continue;
      }
      edges[i].emplace_back(found->second, j);
    }
  }
  // Depth first; an edge to a group on the current path closes a cycle.
  enum class Mark { kNew, kOnPath, kDone };
  std::vector<Mark> marks(groups.size(), Mark::kNew);
  std::vector<std::size_t> path;
  std::function<void(std::size_t)> visit = [&](std::size_t at) {
    marks[at] = Mark::kOnPath;
    path.push_back(at);
    for (auto [target, entry] : edges[at]) {
      if (marks[target] == Mark::kOnPath) {
        std::string loop;
        auto start = std::find(path.begin(), path.end(), target);
        for (auto step = start; step != path.end(); ++step) {
          loop += groups[*step].name + " -> ";
        }
        loop += groups[target].name;
        problems.push_back({at, entry,
                            "dependency cycle: " + loop +
                                "; no group of it could ever start"});
      } else if (marks[target] == Mark::kNew) {
        visit(target);
      }
    }
    path.pop_back();
    marks[at] = Mark::kDone;
  };
  for (std::size_t i = 0; i < groups.size(); ++i) {
    if (marks[i] == Mark::kNew) visit(i);
  }
  std::stable_sort(problems.begin(), problems.end(),
                   [](const DependencyProblem& a, const DependencyProblem& b) {
                     return std::pair(a.group, a.entry) <
                            std::pair(b.group, b.entry);
                   });
  return problems;
}

std::vector<std::string> UnreadyDependencies(
    const GroupNode& group,
    const std::function<bool(const std::string&)>& ready) {
  std::vector<std::string> unready;
  for (const std::string& dependency : group.depends_on) {
    if (!ready(dependency)) unready.push_back(dependency);
  }
  return unready;
}

std::string FailedDependency(
    const std::string& group, const std::vector<GroupNode>& nodes,
    const std::function<bool(const std::string&)>& failed) {
  std::set<std::string> seen;
  std::vector<std::string> todo{group};
  while (!todo.empty()) {
    const GroupNode* node = Find(nodes, todo.back());
    todo.pop_back();
    if (node == nullptr) continue;
    for (const std::string& dependency : node->depends_on) {
      if (!seen.insert(dependency).second) continue;
      if (failed(dependency)) return dependency;
      todo.push_back(dependency);
    }
  }
  return "";
}

std::vector<std::string> DependentsInStartOrder(
    const std::string& group, const std::vector<GroupNode>& nodes) {
  // The dependents: every node whose dependencies include GROUP.
  std::vector<const GroupNode*> dependents;
  for (const GroupNode& node : nodes) {
    if (node.name == group) continue;
    if (DependenciesOf(node.name, nodes).count(group) != 0) {
      dependents.push_back(&node);
    }
  }
  // Kahn's order among them: a node goes once none of its dependencies is
  // still waiting to go.
  std::vector<std::string> order;
  std::set<std::string> pending;
  for (const GroupNode* node : dependents) pending.insert(node->name);
  while (!pending.empty()) {
    bool progressed = false;
    for (const GroupNode* node : dependents) {
      if (pending.count(node->name) == 0) continue;
      const bool blocked = std::any_of(
          node->depends_on.begin(), node->depends_on.end(),
          [&pending](const std::string& d) { return pending.count(d) != 0; });
      if (blocked) continue;
      order.push_back(node->name);
      pending.erase(node->name);
      progressed = true;
    }
    if (!progressed) break;  // a cycle: refused by CheckDependencies
  }
  return order;
}

std::vector<bool> MayStopNow(const std::vector<GroupNode>& nodes) {
  std::vector<bool> may(nodes.size(), true);
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const GroupNode& node = nodes[i];
    // Dependents first.
    for (const GroupNode& other : nodes) {
      if (!other.running) continue;
      if (std::find(other.depends_on.begin(), other.depends_on.end(),
                    node.name) != other.depends_on.end()) {
        may[i] = false;
      }
    }
    if (!may[i] || node.intake) continue;
    // A job waits for the intake that could still send it work; not for
    // intake it depends on itself, which waits for it.
    const std::set<std::string> dependencies = DependenciesOf(node.name, nodes);
    for (const GroupNode& other : nodes) {
      if (other.intake && other.running &&
          dependencies.count(other.name) == 0) {
        may[i] = false;
      }
    }
  }
  return may;
}

}  // namespace workerpool
