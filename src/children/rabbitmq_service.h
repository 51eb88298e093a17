// `workerpool builtin rabbitmq-service`: consumes the queues of its group's
// `rabbitmq:` section (passed by the Watcher as JSON in WORKERPOOL_RABBITMQ)
// and turns each delivery into a request to the group in routes_to.
#pragma once

#include <string>
#include <vector>

namespace workerpool {

int RunRabbitmqService(const std::vector<std::string>& args);

}  // namespace workerpool
