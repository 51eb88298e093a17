#include "core/routing.h"

#include <algorithm>

namespace workerpool {

bool TypeMayRequest(GroupType from, GroupType to) {
  switch (from) {
    case GroupType::kReactor:
      return to == GroupType::kJob || to == GroupType::kService;
    case GroupType::kService:
      return to == GroupType::kJob;
    case GroupType::kJob:
      return false;
  }
  return false;
}

std::string RuleViolation(GroupType from, GroupType to) {
  if (TypeMayRequest(from, to)) return "";
  if (from == GroupType::kJob) {
    return "a job only replies: it may not send requests";
  }
  return std::string("a ") + GroupTypeName(from) + " may not send to a " +
         GroupTypeName(to) + " (allowed: reactor->job, reactor->service, " +
         "service->job)";
}

Status CheckRequestRoute(const PoolConfig& pool, const std::string& from_group,
                         const std::string& to_group) {
  const GroupConfig* from = pool.FindGroup(from_group);
  if (from == nullptr) {
    return Status::Error("unknown sender group '" + from_group + "'");
  }
  if (from->type == GroupType::kJob) {
    return Status::Error("group '" + from_group +
                         "': " + RuleViolation(from->type, GroupType::kJob));
  }
  const GroupConfig* to = pool.FindGroup(to_group);
  if (to == nullptr) {
    return Status::Error("unknown group '" + to_group + "'");
  }
  if (!TypeMayRequest(from->type, to->type)) {
    return Status::Error("group '" + from_group + "' -> '" + to_group +
                         "': " + RuleViolation(from->type, to->type));
  }
  const auto& routes = from->routes_to;
  if (std::find(routes.begin(), routes.end(), to_group) == routes.end()) {
    return Status::Error("group '" + from_group + "' may not send to '" +
                         to_group + "': not in its routes_to");
  }
  return Status::Ok();
}

}  // namespace workerpool
