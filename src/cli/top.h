// `workerpool top`: a live view of a running pool in the terminal, over the
// control socket. Runs in the CLI process; the Watcher only answers one
// {"command":"status"} per refresh (it keeps no timer and no state for a
// watcher of its status), and `top` computes rates, latencies and CPU% from
// two answers (cli/top_view.h). Plain ANSI escapes, no curses: it works in
// any terminal and over ssh.
#pragma once

#include <string>

#include "cli/control_client.h"

namespace workerpool {

// Shows the pool OPTIONS name (as every control command finds it),
// refreshed every INTERVAL_TEXT ("1s", "500ms"; 100ms to 1h), with rates
// and CPU% over the last interval or 2 s, whichever is longer, until `q`,
// Ctrl-C, SIGTERM or SIGHUP; the terminal is restored on the way out (and
// around Ctrl-Z). Keys: up/down or k/j select a group, Enter (or e, space)
// shows or hides its processes, a shows or hides every group's.
//
// When stdin or stdout is not a terminal, prints one screen (rates over
// one interval), $COLUMNS wide or 80, and exits.
//
// Returns the exit code: 0; 1 bad input (interval, several pools);
// 2 runtime failure (no pool at the socket, refused), with the same
// one-line error as `workerpool status`. A pool that goes away while `top`
// runs is retried every interval, and said so on the last line.
int RunTop(const ControlOptions& options, const std::string& interval_text);

}  // namespace workerpool
