// Fuzzes the control-socket request parser (src/core/control_request.h):
// any line must parse to a request or to a one-line error, never crash or
// throw; a parsed request must format back to a line that parses to the
// same request. The process-count parsers of `workerpool scale` get the
// same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/control_request.h"
#include "fuzz_check.h"

using workerpool::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  using workerpool::ControlRequest;
  std::string_view line(reinterpret_cast<const char*>(data), size);

  auto parsed = workerpool::ParseControlRequest(line);
  if (!parsed.ok()) {
    Check(!parsed.status().message().empty());
    Check(parsed.status().message().find('\n') == std::string::npos);
  } else {
    const ControlRequest& request = *parsed;
    if (request.command == ControlRequest::Command::kScale ||
        request.command == ControlRequest::Command::kRestart) {
      Check(!request.group.empty());
    }
    if (request.command == ControlRequest::Command::kScale) {
      Check((request.processes >= 0 &&
             request.processes <= workerpool::kMaxScaleProcesses) ||
            request.processes == workerpool::kScaleAuto);
    }
    std::string text = workerpool::FormatControlRequest(request);
    Check(text.find('\n') == std::string::npos);
    auto again = workerpool::ParseControlRequest(text);
    Check(again.ok());
    Check(again->command == request.command);
    Check(again->group == request.group);
    Check(again->processes == request.processes);
  }

  auto count = workerpool::ParseProcessCount(line);
  if (count.ok()) {
    Check(*count >= 0 && *count <= workerpool::kMaxScaleProcesses);
  }
  auto target = workerpool::ParseScaleTarget(line);
  if (target.ok()) {
    Check(*target == workerpool::kScaleAuto ||
          (count.ok() && *target == *count));
  } else {
    Check(target.status().message().find('\n') == std::string::npos);
  }
  return 0;
}
