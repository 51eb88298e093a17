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

const GroupConfig* PoolConfig::FindGroup(const std::string& group_name) const {
  for (const GroupConfig& group : groups) {
    if (group.name == group_name) return &group;
  }
  return nullptr;
}

}  // namespace workerpool
