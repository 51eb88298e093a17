#include "children/builtins.h"

#include <cstdio>
#include <map>

#include "children/echo_job.h"
#include "children/http_reactor.h"
#include "children/rabbitmq_service.h"
#include "os/builtin_path.h"

namespace workerpool {

int RunBuiltin(const std::string& name, const std::vector<std::string>& args) {
  static const std::map<std::string, int (*)(const std::vector<std::string>&)>
      kBuiltins = {{"echo-job", RunEchoJob},
                   {"http-reactor", RunHttpReactor},
                   {"rabbitmq-service", RunRabbitmqService}};
  auto found = kBuiltins.find(name);
  if (found == kBuiltins.end()) {
    std::fprintf(stderr, "workerpool builtin: unknown child '%s' (known: %s)\n",
                 name.c_str(), kBuiltinNames);
    return 1;
  }
  return found->second(args);
}

}  // namespace workerpool
