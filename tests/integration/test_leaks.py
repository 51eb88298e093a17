"""The Watcher leaks nothing over a long life: start, 100 child restarts,
10 reloads (counts up and down, a command change, one invalid file), stop.

A plain build runs the Watcher under valgrind (memcheck, full leak check):
the test fails on any error or any definitely/indirectly lost byte. In the
ASan build (scripts/test's build-asan/) valgrind cannot run; there
LeakSanitizer checks the same run at the Watcher's exit (the harness fails
on any sanitizer report in the log). The children run natively either way
(valgrind does not follow exec)."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest

import wp

RESTARTS = 100
RELOADS = 10


def binary_has_asan(path):
    """True when PATH was built with -fsanitize=address."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def valgrind_wrapper(directory, log_path):
    """A script that runs the real binary under valgrind; wp starts it as
    the Watcher. Exit code 99 means valgrind found errors."""
    path = os.path.join(directory, "valgrind-workerpool")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --quiet --tool=memcheck "
                "--leak-check=full --show-leak-kinds=definite,indirect "
                "--errors-for-leak-kinds=definite,indirect "
                "--error-exitcode=99 --track-fds=no --num-callers=30 "
                "--log-file=%s %s \"$@\"\n" % (log_path, wp.BIN))
    os.chmod(path, 0o755)
    return path


def pool_yaml(sleepers, echoes, generation):
    # Short backoff: the restarts come one after another.
    restart = ("restart: {backoff: {initial: 10ms, max: 50ms}, "
               "intensity: {max_restarts: 100000, period: 60s}}")
    return """
pool: {name: leaks, stop_timeout: 5s}
groups:
  - name: sleepers
    type: job
    processes: %d
    command: [sleep, "1000", "%d"]
    %s
  - name: echo
    type: job
    processes: %d
    command: [%s, builtin, echo-job]
    %s
""" % (sleepers, 1000 + generation, restart, echoes, wp.BIN, restart)


class LeakTest(wp.TestCase):

    def test_start_restarts_reloads_stop(self):
        asan = binary_has_asan(wp.BIN)
        scratch = tempfile.mkdtemp(prefix="wp-leaks-")
        self.addCleanup(shutil.rmtree, scratch, True)
        valgrind_log = os.path.join(scratch, "valgrind.log")
        real_bin = wp.BIN
        if not asan:
            if subprocess.run(["which", "valgrind"],
                              capture_output=True).returncode != 0:
                self.skipTest("valgrind is not installed")
            wp.BIN = valgrind_wrapper(scratch, valgrind_log)
        try:
            pool = self.pool(pool_yaml(2, 1, 0))
        finally:
            wp.BIN = real_bin
        # Valgrind makes the Watcher slow to start.
        pool.wait_for_children(3, timeout=120)

        for n in range(RESTARTS):
            group = "sleepers" if n % 2 == 0 else "echo"
            # The previous round's restart of this group may still be
            # between fork and exec (slow under ASan): wait for it.
            victim = wp.wait_until(lambda: (pool.children(group) or [None])[0],
                                   timeout=60, what="a child of " + group,
                                   on_timeout=pool.log_tail)
            os.kill(victim.pid, signal.SIGKILL)
            wp.wait_until(
                lambda: victim.pid not in [c.pid for c in pool.children()]
                and len(pool.children(group)) == (2 if group == "sleepers"
                                                  else 1),
                timeout=60, what="restart %d of %s" % (n + 1, group),
                on_timeout=pool.log_tail)

        shapes = [(3, 2), (1, 1), (2, 1)]
        for n in range(RELOADS):
            mark = pool.mark()
            if n == 4:
                pool.reload(pool_yaml(0, 0, 0).replace("processes: 0",
                                                       "processes: -1"))
                pool.wait_for_log(r"reload failed", since=mark, timeout=60)
                continue
            sleepers, echoes = shapes[n % len(shapes)]
            pool.reload(pool_yaml(sleepers, echoes, n))
            pool.wait_for_log(r"reload finished", since=mark, timeout=60)
            pool.wait_for_children(sleepers + echoes, timeout=60)

        code = pool.stop(timeout=120)
        self.assertEqual(pool.leftovers(), [])
        if asan:
            # LeakSanitizer's report, if any, also fails the log check.
            self.assertEqual(code, 0, pool.log_tail())
            return
        self.assertTrue(os.path.exists(valgrind_log),
                        "valgrind wrote no log: did the Watcher run under it?")
        with open(valgrind_log) as f:
            report = f.read()
        # --quiet: the log holds only errors and leak records.
        problems = [line for line in report.splitlines()
                    if re.search(r"==\d+== \S", line)]
        self.assertEqual(problems, [], "valgrind found errors or leaks:\n"
                         + "\n".join(problems[:80]))
        self.assertEqual(code, 0, pool.log_tail())


if __name__ == "__main__":
    wp.main()
