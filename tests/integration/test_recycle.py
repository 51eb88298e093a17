"""Recycling: a job is replaced after max_requests answered requests (with
jitter; below 10 the limit is exact) or when its resident memory passes
max_rss; each recycle is logged and counted in status ("recycled"), and no
request is lost to it. max_rss is sampled only where configured.
DESIGN.md: "Pool definition" (max_requests, max_rss); issue 7.

Environment: WORKERPOOL_BIN (the binary), WORKERPOOL_KIT_DIR (the directory
of line_reactor)."""

import json
import os
import sys
import tempfile

import wp
import wp_ipc

ECHO = "[workerpool, builtin, echo-job]"

# Holds about 64 MB and never speaks the protocol.
BIG = "[%s, -c, \"x = bytearray(64 << 20); x[::4096] = b'1' * len(x[::4096]); import time; time.sleep(1000)\"]" % (sys.executable or "python3")


class RecycleTest(wp.TestCase):

    def status(self, pool, name):
        code, out, err = wp.run_cli(
            ["status", "--json", "--socket",
             os.path.join(pool.tmp, name + ".sock")])
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def group(self, doc, name):
        return [g for g in doc["groups"] if g["name"] == name][0]

    def test_max_requests_replaces_the_job_and_loses_nothing(self):
        pool = self.pool("""
pool: {name: rc, stop_timeout: 3s}
groups:
  - name: front
    type: reactor
    processes: 1
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [echo]
  - {name: echo, type: job, processes: 1, max_requests: 5, command: %s}
""" % (wp_ipc.LINE_REACTOR, ECHO))
        c = wp_ipc.LineClient(os.path.join(pool.tmp, "kit.sock"))
        self.addCleanup(c.close)
        c.request_until_ok("echo", "warm")
        (first,) = pool.children("echo")
        for n in range(40):
            a = c.request("echo", "n%d" % n)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "n%d" % n)
        pool.wait_for_log(r"recycling echo\[0\] pid %d: answered \d+ "
                          r"requests \(max_requests 5\)" % first.pid)
        pool.wait_for_log(r"echo\[0\] pid %d exited with code 0" % first.pid)
        wp.wait_until(lambda: [ch.pid for ch in pool.children("echo")]
                      not in ([], [first.pid]), what="a new echo process")
        # A child's counts reach the Watcher in its periodic report, so a
        # recycle may still come after the last request: compare the log
        # with a status that did not change while the log was read.
        def settled():
            before = self.group(self.status(pool, "rc"), "echo")["recycled"]
            lines = len(pool.find_log(r"recycling echo\["))
            after = self.group(self.status(pool, "rc"), "echo")["recycled"]
            return (lines, after) if before == after else None
        recycles, recycled = wp.wait_until(
            settled, what="the recycle count to hold still")
        self.assertGreaterEqual(recycles, 1)
        self.assertEqual(recycled, recycles)
        self.assertEqual(pool.find_log(r"still running|killed by signal"), [])

    def test_max_rss_replaces_a_process_over_it(self):
        pool = self.pool("""
pool: {name: rs, stop_timeout: 2s}
groups:
  - {name: big, type: job, processes: 1, max_rss: 32MB, command: %s}
""" % BIG)
        (first,) = pool.wait_for_children(1, "big")
        pool.wait_for_log(r"recycling big\[0\] pid %d: resident memory "
                          r"[\d.]+MB is over max_rss 32\.0MB" % first.pid)
        pool.wait_for_log(r"big\[0\] pid %d (exited|killed by signal SIGTERM)"
                          % first.pid)
        self.assertGreaterEqual(
            self.group(self.status(pool, "rs"), "big")["recycled"], 1)
        self.assertEqual(pool.stop(), 0)

    def test_max_requests_on_a_reactor_is_a_config_error(self):
        path = os.path.join(tempfile.gettempdir(), "wp-recycle-%d.yaml"
                            % os.getpid())
        with open(path, "w") as f:
            f.write("""pool: {name: x}
groups:
  - {name: web, type: reactor, processes: 1, command: [x], max_requests: 5}
""")
        self.addCleanup(os.unlink, path)
        code, _, err = wp.run_cli(["check", path])
        self.assertEqual(code, 1)
        self.assertRegex(err, r":3:\d+: groups\[0\]\.max_requests: a reactor "
                              r"does not serve requests")


if __name__ == "__main__":
    wp_ipc.require_kit()
    wp.main()
