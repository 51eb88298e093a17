// How rabbitmq-service's two threads (children/amqp_session.h) log.
#pragma once

#include <string>

namespace workerpool {

// One line on stderr (the Watcher logs it with the child's name), written
// with a single write(2) so lines of the two threads never interleave. A
// line starting "error:" or "warning:" gets the syslog prefix "<3>" or
// "<4>", so the Watcher logs it at that level. Any thread.
void AmqpLog(const std::string& line);

}  // namespace workerpool
