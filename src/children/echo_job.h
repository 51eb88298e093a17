// `workerpool builtin echo-job`: the test kit job (DESIGN.md).
//   payload          -> reply with the payload
//   "fail..."        -> error reply with the payload as the message
//   "crash"          -> SIGABRT mid-request
//   "sleep:N"        -> reply after N ms (the loop keeps running); a cancel
//                       answers error 7 (cancelled) at once
//   "block:N"        -> block the whole process N ms, then reply (a hung
//                       loop, for heartbeat tests)
//   "progress:N"     -> N progress updates 1 ms apart, then reply; a cancel
//                       answers error 7 at once
#pragma once

#include <string>
#include <vector>

namespace workerpool {

int RunEchoJob(const std::vector<std::string>& args);

}  // namespace workerpool
