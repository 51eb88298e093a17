#!/usr/bin/env python3
"""Groups that size themselves (groups[].autoscale), with real processes.

A step of concurrent slow requests through the http-reactor grows an
echo-job group from min towards max and every request is answered with its
own body; once the load is gone the group returns to min after down_after,
and requests still running at that moment finish. `workerpool scale N` pins
the count and `scale GROUP auto` hands it back; a reload changes the bounds
in place without restarting anyone; a group that crash-loops is failed and
not scaled. Tests assert behaviour, not speed: waits poll with deadlines.
"""

import http.client
import json
import os
import socket
import threading

import wp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


POOL = """
pool: {name: auto, stop_timeout: 5s}
groups:
  - name: web
    type: reactor
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:%(port)d"]
    routes_to: [echo]
  - name: echo
    type: job
    command: [workerpool, builtin, echo-job]
    autoscale: {min: %(min)d, max: %(max)d, up_after: 200ms, down_after: %(down)s}
%(extra)s"""


class AutoscaleTest(wp.TestCase):

    def start(self, min_=1, max_=6, down="2s", extra=""):
        self.port = free_port()
        self.values = {"port": self.port, "min": min_, "max": max_,
                       "down": down, "extra": extra}
        pool = self.pool(POOL % self.values)
        pool.socket = os.path.join(pool.tmp, "auto.sock")
        wp.wait_until(lambda: os.path.exists(pool.socket),
                      what="the control socket")
        self.wait_answering()
        return pool

    def cli(self, pool, *args):
        return wp.run_cli(list(args) + ["--socket", pool.socket])

    def status(self, pool):
        code, out, err = self.cli(pool, "status", "--json")
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def group(self, pool, name="echo"):
        for g in self.status(pool)["groups"]:
            if g["name"] == name:
                return g
        self.fail("no group " + name)

    def post(self, body, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port,
                                       timeout=wp.deadline(timeout))
        try:
            c.request("POST", "/jobs/echo", body=body)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def wait_answering(self):
        def ready():
            try:
                return self.post("ready?", timeout=5)[0] == 200 or None
            except OSError:
                return None
        wp.wait_until(ready, what="echo answering over HTTP")

    def load(self, bodies):
        """Posts every body at once, one connection each; returns the
        threads and the list their answers land in."""
        answers = []
        lock = threading.Lock()

        def one(body):
            try:
                answer = self.post(body)
            except OSError as e:
                answer = (0, repr(e))
            with lock:
                answers.append((body, answer))
        threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        return threads, answers

    def wait_live(self, pool, predicate, what):
        return wp.wait_until(
            lambda: (lambda g: g if predicate(g) else None)(self.group(pool)),
            what=what, on_timeout=lambda: json.dumps(self.group(pool)))

    def test_a_step_of_load_grows_the_group_and_idleness_shrinks_it(self):
        pool = self.start()
        g = self.group(pool)
        self.assertEqual(g["autoscale"]["min"], 1)
        self.assertEqual(g["autoscale"]["max"], 6)
        self.assertEqual(g["live"], 1)

        threads, answers = self.load(["sleep:%d" % (1500 + n) for n in range(12)])
        grown = self.wait_live(pool, lambda g: g["autoscale"]["target"] >= 4,
                               "the target to grow")
        self.assertLessEqual(grown["autoscale"]["target"], 6)
        self.assertGreaterEqual(grown["autoscale"]["decisions"]["up"], 1)
        for t in threads:
            t.join()
        for body, (status, reply) in answers:
            self.assertEqual(status, 200, (body, reply))
            self.assertEqual(reply, body)
        pool.wait_for_log(r"group echo: autoscale up")

        # Two long requests keep two processes busy while the group shrinks:
        # they finish, and only then does it go back to min.
        threads, answers = self.load(["sleep:6000", "sleep:6001"])
        self.wait_live(pool, lambda g: g["autoscale"]["target"] <= 3,
                       "the target to shrink while two requests run")
        for t in threads:
            t.join()
        for body, (status, reply) in answers:
            self.assertEqual((status, reply), (200, body))
        self.wait_live(pool, lambda g: g["live"] == 1 and
                       g["autoscale"]["target"] == 1, "the group back at min")
        self.assertEqual(pool.find_log(r"echo\[\d+\] pid \d+ (exited with "
                                       r"code [1-9]|killed by signal)"), [])
        self.assertEqual(pool.stop(), 0)

    def test_scale_pins_and_auto_resumes(self):
        pool = self.start(down="1s")
        code, out, err = self.cli(pool, "scale", "echo", "3")
        self.assertEqual(code, 0, err)
        g = self.wait_live(pool, lambda g: g["live"] == 3, "3 processes")
        self.assertTrue(g["autoscale"]["paused"])
        # Pinned: idleness does not shrink it.
        self.assertEqual(self.post("x")[0], 200)
        pool.wait_for_log(r"scale echo: 1 -> 3")
        code, out, err = self.cli(pool, "scale", "echo", "auto")
        self.assertEqual(code, 0, err)
        g = self.wait_live(pool, lambda g: g["live"] == 1 and
                           not g["autoscale"]["paused"], "back to min")
        self.assertEqual(g["autoscale"]["target"], 1)
        self.assertEqual(pool.stop(), 0)

    def test_reload_changes_the_bounds_in_place(self):
        pool = self.start()
        first = [c.pid for c in pool.children("echo")]
        mark = pool.mark()
        self.values.update({"min": 2, "max": 4})
        pool.reload(POOL % self.values)
        pool.wait_for_log(r"reload finished", since=mark)
        g = self.wait_live(pool, lambda g: g["live"] == 2, "min 2")
        self.assertEqual((g["autoscale"]["min"], g["autoscale"]["max"]), (2, 4))
        self.assertIn(first[0], [c.pid for c in pool.children("echo")])
        self.assertEqual(pool.stop(), 0)

    def test_a_crash_looping_group_is_failed_and_not_scaled(self):
        pool = self.start(extra="""  - name: broken
    type: job
    command: [/bin/false]
    autoscale: {min: 1, max: 8, up_after: 100ms, down_after: 1s}
    restart: {backoff: {initial: 10ms, max: 20ms}, intensity: {max_restarts: 3, period: 60s}}
""")
        pool.wait_for_log(r"group broken failed")
        g = self.group(pool, "broken")
        self.assertEqual(g["state"], "failed")
        self.assertEqual(g["autoscale"]["target"], 1)
        self.assertEqual(pool.find_log(r"group broken: autoscale"), [])
        self.assertEqual(self.post("still")[1], "still")
        self.assertEqual(pool.stop(), 0)


if __name__ == "__main__":
    wp.main()
