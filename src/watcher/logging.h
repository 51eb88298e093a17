// The Watcher's log: spdlog to stderr (journald takes it from there), as
// text or one JSON object per line. Call once, before the loop starts.
#pragma once

#include "core/pool_model.h"

namespace workerpool {

// Sets the default spdlog logger's level and format from LOG.
void SetupLogging(const LogConfig& log);

// While one is alive, log lines are collected and written to stderr together
// when it ends (or when a large batch fills up), so logging a burst of child
// output costs one write, not one per line. Lines stay whole and in order.
// Batches may nest if they end in reverse order of creation (as scopes do);
// an inner one's end then writes the outer one's lines too.
class LogBatch {
 public:
  LogBatch();
  ~LogBatch();
  LogBatch(const LogBatch&) = delete;
  LogBatch& operator=(const LogBatch&) = delete;

 private:
  int saved_flush_level_;
};

}  // namespace workerpool
