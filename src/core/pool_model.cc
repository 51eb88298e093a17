#include "core/pool_model.h"

namespace workerpool {

const char* GroupTypeName(GroupType type) {
  switch (type) {
    case GroupType::kReactor:
      return "reactor";
    case GroupType::kJob:
      return "job";
    case GroupType::kService:
      return "service";
  }
  return "unknown";
}

std::optional<GroupType> GroupTypeFromName(std::string_view name) {
  if (name == "reactor") return GroupType::kReactor;
  if (name == "job") return GroupType::kJob;
  if (name == "service") return GroupType::kService;
  return std::nullopt;
}

const char* RestartModeName(RestartMode mode) {
  switch (mode) {
    case RestartMode::kAlways:
      return "always";
    case RestartMode::kOnFailure:
      return "on-failure";
    case RestartMode::kNever:
      return "never";
  }
  return "unknown";
}

const char* ProbeKindName(ProbeConfig::Kind kind) {
  switch (kind) {
    case ProbeConfig::Kind::kTcp:
      return "tcp";
    case ProbeConfig::Kind::kHttp:
      return "http";
    case ProbeConfig::Kind::kExec:
      return "exec";
    case ProbeConfig::Kind::kAfter:
      return "after";
  }
  return "unknown";
}

const GroupConfig* PoolConfig::FindGroup(const std::string& group_name) const {
  for (const GroupConfig& group : groups) {
    if (group.name == group_name) return &group;
  }
  return nullptr;
}

}  // namespace workerpool
