// `workerpool builtin NAME [ARGS]`: the children that ship with workerpool.
#pragma once

#include <string>
#include <vector>

namespace workerpool {

// Runs built-in child NAME (echo-job, http-reactor, rabbitmq-service) in
// this process. Returns the exit code; 1 for an unknown NAME.
int RunBuiltin(const std::string& name, const std::vector<std::string>& args);

}  // namespace workerpool
