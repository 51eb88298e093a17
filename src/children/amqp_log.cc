#include "children/amqp_log.h"

#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace workerpool {

void AmqpLog(const std::string& line) {
  // The syslog prefix sets the level the Watcher logs the line at, so that
  // `log.level: warn` still shows the broker's errors.
  const char* priority = line.starts_with("error:")     ? "<3>"
                         : line.starts_with("warning:") ? "<4>"
                                                        : "";
  std::string text = priority + ("rabbitmq-service: " + line + "\n");
  const char* data = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    ssize_t n = write(STDERR_FILENO, data, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace workerpool
