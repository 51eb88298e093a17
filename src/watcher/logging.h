// The Watcher's log: spdlog to stderr (journald takes it from there), as
// text or one JSON object per line. Call once, before the loop starts.
#pragma once

#include "core/config.h"

namespace workerpool {

// Sets the default spdlog logger's level and format from LOG.
void SetupLogging(const LogConfig& log);

}  // namespace workerpool
