"""Restarting http-reactors loses no request, even on keep-alive connections
(issue 23): keep-alive clients (several connections, a request loop each,
POST bodies, some pipelined) against two reactors while the reactor group
is restarted ten times by reload and five times by `workerpool restart`;
every request is answered 200 with its own body, no connection is reset,
and no pipelined request goes unanswered. The drain's defined behaviours
one by one: an idle connection gets "Connection: close" on its next
request, or is closed at --drain-timeout; HTTP/1.0 and "Connection: close"
requests; a body still being received when the drain starts; a client
slower than the drain (503, not a reset). A scale-down drains the same way.
max_requests on a reactor group is refused with the reason."""

import http.client
import json
import os
import shutil
import tempfile
import threading

import wp
import wp_ipc
from test_http import RawConnection, free_port, post_request

POOL = """
pool: {name: drain, stop_timeout: 10s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: web
    type: reactor
    processes: %(reactors)d
    command: %(command)s
    listen: ["127.0.0.1:%(port)d"]
    routes_to: [echo]
    env: {GENERATION: "%(generation)d"}
  - name: echo
    type: job
    processes: 2
    command: [workerpool, builtin, echo-job]
"""


class KeepAliveClient(threading.Thread):
    """One keep-alive connection in a request loop; PIPELINE requests are
    written at once and their answers read in order. A "Connection: close"
    answer makes it reconnect; a reset, an EOF before an answer, an answer
    other than 200 with the request's own body is an error."""

    def __init__(self, test, name, pipeline=1, body_size=0):
        super().__init__(daemon=True)
        self.test, self.name = test, name
        self.pipeline, self.body_size = pipeline, body_size
        self.stop = threading.Event()
        self.answered = 0
        self.reconnects = 0
        self.errors = []
        self.conn = None

    def body(self, n):
        text = "%s-%d-" % (self.name, n)
        return (text + "x" * max(0, self.body_size - len(text))).encode()

    def run(self):
        n = 0
        while not self.stop.is_set():
            if self.conn is None:
                try:
                    self.conn = RawConnection(("127.0.0.1", self.test.port))
                except OSError as e:
                    self.errors.append("connect: %r" % e)
                    self.stop.wait(0.1)
                    continue
            bodies = []
            for _ in range(self.pipeline):
                n += 1
                bodies.append(self.body(n))
            try:
                self.conn.send(b"".join(post_request("echo", b)
                                        for b in bodies))
                closed = False
                for i, body in enumerate(bodies):
                    status, headers, got = self.conn.response()
                    if (status, got) != (200, body):
                        self.errors.append("%s: %d %r" % (body, status,
                                                          got[:80]))
                    self.answered += 1
                    if headers.get("connection") == "close":
                        closed = True
                        if i != len(bodies) - 1:
                            self.errors.append(
                                "%d pipelined requests left unanswered"
                                % (len(bodies) - 1 - i))
                        break
                if closed:
                    self.reconnects += 1
                    self.conn.close()
                    self.conn = None
            except Exception as e:  # a reset, an EOF, a bad answer
                self.errors.append("%s: %r" % (bodies[0][:20], e))
                self.conn.close()
                self.conn = None
        if self.conn is not None:
            self.conn.close()


class HttpDrainTest(wp.TestCase):

    def make_pool(self, reactors=2, reactor_args=()):
        self.port = free_port()
        self.reactors = reactors
        self.command = wp_ipc.yaml_list(
            ["workerpool", "builtin", "http-reactor"] + list(reactor_args))
        pool = self.pool(self.yaml(0))
        pool.socket = os.path.join(pool.tmp, "ctl.sock")
        self.wait_ready()
        return pool

    def yaml(self, generation):
        return POOL % {"reactors": self.reactors, "command": self.command,
                       "port": self.port, "generation": generation}

    def raw(self):
        c = RawConnection(("127.0.0.1", self.port))
        self.addCleanup(c.close)
        return c

    def wait_ready(self):
        def ready():
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                c.request("POST", "/jobs/echo", body=b"ready?")
                return c.getresponse().status == 200
            except (OSError, http.client.HTTPException):
                return False
            finally:
                c.close()
        wp.wait_until(ready, what="the reactors answering")

    def web_pids(self, pool):
        return {c.pid for c in pool.children("web")}

    def web_ready(self, pool):
        """How many of web's reactors are up (said hello) per status."""
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     pool.socket])
        self.assertEqual(code, 0, err)
        (web,) = [g for g in json.loads(out)["groups"] if g["name"] == "web"]
        return web["ready"]

    def wait_replaced(self, pool, old):
        wp.wait_until(lambda: len(self.web_pids(pool)) == self.reactors and
                      not (self.web_pids(pool) & old),
                      what="every reactor replaced")

    def restart_by_cli(self, pool):
        code, out, err = wp.run_cli(["restart", "web", "--socket",
                                     pool.socket])
        self.assertEqual(code, 0, err)

    # -- the test

    def test_restarts_under_keep_alive_load_lose_no_request(self):
        pool = self.make_pool()
        clients = [KeepAliveClient(self, "a%d" % i) for i in range(4)]
        clients += [KeepAliveClient(self, "p%d" % i, pipeline=3)
                    for i in range(2)]
        clients += [KeepAliveClient(self, "b%d" % i, body_size=20000)
                    for i in range(2)]
        for c in clients:
            c.start()
        try:
            for round in range(15):
                old = self.web_pids(pool)
                before = sum(c.answered for c in clients)
                if round < 10:
                    pool.reload(self.yaml(round + 1))
                else:
                    self.restart_by_cli(pool)
                self.wait_replaced(pool, old)
                wp.wait_until(
                    lambda: sum(c.answered for c in clients) > before + 20,
                    what="answers after restart %d" % round)
        finally:
            for c in clients:
                c.stop.set()
            for c in clients:
                c.join(wp.deadline())
        errors = [e for c in clients for e in c.errors]
        self.assertEqual(errors, [])
        # Each restart told keep-alive clients to reconnect.
        self.assertGreater(sum(c.reconnects for c in clients), 15)
        self.assertTrue(pool.find_log(r"drained \d+ connections in \d+ms"))

    def test_scale_down_under_keep_alive_load_loses_no_request(self):
        pool = self.make_pool()
        wp.wait_until(lambda: self.web_ready(pool) == 2,
                      what="both reactors up")
        clients = [KeepAliveClient(self, "s%d" % i) for i in range(4)]
        clients.append(KeepAliveClient(self, "q", pipeline=3))
        for c in clients:
            c.start()
        try:
            for count in (1, 2, 1):
                before = sum(c.answered for c in clients)
                code, out, err = wp.run_cli(["scale", "web", str(count),
                                             "--socket", pool.socket])
                self.assertEqual(code, 0, err)
                pool.wait_for_children(count, "web")
                wp.wait_until(lambda: len(self.web_pids(pool)) == count,
                              what="%d reactors" % count)
                # Up, not only started: a reactor stopped before its hello
                # is not drained (it has no connection yet) but SIGTERMed,
                # and the scale-down after this one must drain one.
                wp.wait_until(lambda: self.web_ready(pool) == count,
                              what="%d reactors up" % count)
                wp.wait_until(
                    lambda: sum(c.answered for c in clients) > before + 20,
                    what="answers with %d reactors" % count)
        finally:
            for c in clients:
                c.stop.set()
            for c in clients:
                c.join(wp.deadline())
        self.assertEqual([e for c in clients for e in c.errors], [])
        # The reactors' own lines reach the log through the Watcher's read
        # of their output, which may lag their exit: wait for both.
        draining = (r"web\[\d\] \d+: http-reactor: draining: no longer "
                    r"accepting")
        wp.wait_until(lambda: len(pool.find_log(draining)) >= 2,
                      what="both reactors' draining lines",
                      on_timeout=lambda: "\n".join(
                          l for l in pool.log_lines() if "draining" in l))
        self.assertEqual(len(pool.find_log(draining)), 2)

    def test_max_requests_on_a_reactor_group_is_refused_with_the_reason(self):
        tmp = tempfile.mkdtemp(prefix="wp-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "reactor.yaml")
        with open(path, "w") as f:
            f.write("""
groups:
  - name: web
    type: reactor
    processes: 2
    max_requests: 1000
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:1"]
""")
        code, out, err = wp.run_cli(["check", path])
        self.assertEqual(code, 1)
        self.assertIn("max_requests", err)
        self.assertIn("a reactor does not serve requests", err)

    # -- defined behaviours, one reactor

    def drain_one(self, pool):
        """Restarts the one reactor; returns once the new one answers and
        the old one is draining (not yet gone: it waits for our clients)."""
        old = self.web_pids(pool)
        mark = pool.mark()
        self.restart_by_cli(pool)
        wp.wait_until(lambda: len(self.web_pids(pool) - old) == 1,
                      what="the new reactor")
        pid = old.pop()
        pool.wait_for_log(r"web\[0\] %d: http-reactor: draining" % pid,
                          since=mark)
        return pid

    def test_idle_connection_gets_close_on_its_next_request(self):
        pool = self.make_pool(reactors=1)
        c = self.raw()
        c.send(post_request("echo", "before"))
        status, headers, body = c.response()
        self.assertEqual((status, body), (200, b"before"))
        self.assertNotEqual(headers.get("connection"), "close")
        old = self.drain_one(pool)
        self.assertTrue(wp.alive(old))
        c.send(post_request("echo", "after"))
        status, headers, body = c.response()
        self.assertEqual((status, body, headers.get("connection")),
                         (200, b"after", "close"))
        self.assertTrue(c.at_eof())
        pool.wait_for_log(r"pid %d exited with code 0" % old)

    def test_pipelined_requests_read_before_the_drain_are_all_answered(self):
        pool = self.make_pool(reactors=1)
        c = self.raw()
        c.send(post_request("echo", "warm"))
        c.response()
        old = self.drain_one(pool)
        # One write: the reactor reads all three before the first answer.
        c.send(post_request("echo", "sleep:200") + post_request("echo", "2")
               + post_request("echo", "3"))
        answers = [c.response() for _ in range(3)]
        self.assertEqual([(s, b) for s, _, b in answers],
                         [(200, b"sleep:200"), (200, b"2"), (200, b"3")])
        self.assertEqual([h.get("connection") for _, h, _ in answers],
                         [None, None, "close"])
        self.assertTrue(c.at_eof())
        pool.wait_for_log(r"pid %d exited with code 0" % old)

    def test_idle_connection_is_closed_at_the_drain_timeout(self):
        pool = self.make_pool(reactors=1, reactor_args=["--drain-timeout",
                                                        "1s"])
        c = self.raw()
        c.send(post_request("echo", "once"))
        self.assertEqual(c.response()[0], 200)
        old = self.drain_one(pool)
        # Nothing sent: closed (not reset) when the drain times out.
        self.assertTrue(c.at_eof())
        pool.wait_for_log(r"drained 1 connections in \d+ms: 0 ended with "
                          r"Connection: close, 1 idle")
        pool.wait_for_log(r"pid %d exited with code 0" % old)

    def test_http10_and_connection_close_requests_end_as_always(self):
        pool = self.make_pool(reactors=1)
        ten, close = self.raw(), self.raw()
        ten.send(b"POST /jobs/echo HTTP/1.0\r\nConnection: keep-alive\r\n"
                 b"Content-Length: 2\r\n\r\nv0")
        self.assertEqual(ten.response()[::2], (200, b"v0"))
        close.send(post_request("echo", "warm"))
        close.response()
        self.drain_one(pool)
        ten.send(b"POST /jobs/echo HTTP/1.0\r\nConnection: keep-alive\r\n"
                 b"Content-Length: 2\r\n\r\nv1")
        status, headers, body = ten.response()
        self.assertEqual((status, body, headers.get("connection")),
                         (200, b"v1", "close"))
        close.send(post_request("echo", "bye", "Connection: close\r\n"))
        status, headers, body = close.response()
        self.assertEqual((status, body, headers.get("connection")),
                         (200, b"bye", "close"))
        self.assertTrue(ten.at_eof())
        self.assertTrue(close.at_eof())

    def test_body_being_received_when_the_drain_starts_is_answered(self):
        pool = self.make_pool(reactors=1)
        c = self.raw()
        body = b"y" * 1000
        request = post_request("echo", body)
        c.send(request[:-500])  # headers and half the body
        self.drain_one(pool)
        c.send(request[-500:])
        status, headers, got = c.response()
        self.assertEqual((status, got, headers.get("connection")),
                         (200, body, "close"))
        self.assertTrue(c.at_eof())

    def test_client_slower_than_the_drain_gets_503_not_a_reset(self):
        pool = self.make_pool(reactors=1, reactor_args=["--drain-timeout",
                                                        "1s"])
        c = self.raw()
        request = post_request("echo", b"z" * 1000)
        c.send(request[:-500])
        old = self.drain_one(pool)
        status, headers, got = c.response()
        self.assertEqual((status, headers.get("connection")), (503, "close"))
        self.assertIn(b"--drain-timeout", got)
        pool.wait_for_log(r"pid %d exited with code 0" % old)

    def test_bad_drain_timeout_is_refused(self):
        for value in ("0", "-1s", "soon", ""):
            code, out, err = wp.run_cli(["builtin", "http-reactor",
                                         "--drain-timeout", value])
            self.assertEqual(code, 1, value)
            self.assertIn("--drain-timeout", err)


if __name__ == "__main__":
    wp.main()
