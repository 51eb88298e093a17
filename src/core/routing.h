// The routing rules of DESIGN.md, enforced by the pool:
//   reactor -> job, reactor -> service, service -> job; a job only replies.
// A group may only send to groups named in its routes_to.
#pragma once

#include <string>

#include "core/pool_model.h"

namespace workerpool {

// True when a child of type FROM may send a request to a child of type TO.
bool TypeMayRequest(GroupType from, GroupType to);

// Why FROM may not send to TO by type, e.g. "a job only replies: it may not
// send requests"; empty when TypeMayRequest(from, to).
std::string RuleViolation(GroupType from, GroupType to);

// Full check for a request at run time: target must exist, be in the
// sender's routes_to, and be allowed by type. Error message names the rule.
Status CheckRequestRoute(const PoolConfig& pool, const std::string& from_group,
                         const std::string& to_group);

}  // namespace workerpool
