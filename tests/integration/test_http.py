"""The built-in HTTP reactor (`workerpool builtin http-reactor`) on sockets
the Watcher binds: POST /jobs/<group> answered through the pool (200, 502,
504, 404, 503 with Retry-After), keep-alive and pipelining in order, 413,
400 and the connection closed, slow clients timed out without holding
others, /healthz, one access log line per request, graceful stop finishing
in-flight requests, every reactor SIGKILLed while clients keep connecting
(the backlog waits for the restarted reactors: no connection refused), a
unix: listen address, a Python job group behind HTTP, and config/demo.yaml.
Clients are the standard library's http.client and raw sockets."""

import http.client
import io
import json
import os
import signal
import socket
import threading
import unittest

import wp
import wp_ipc

DEMO = os.path.join(wp.TOP, "config", "demo.yaml")
EXAMPLE = os.path.join(wp_ipc.EXAMPLES_DIR, "python_job.py")
# The C++ example job (src/examples/example_job.cc), built beside the binary.
CXX_EXAMPLE = os.environ.get("WORKERPOOL_EXAMPLE_JOB") or os.path.join(
    os.path.dirname(wp.BIN), "src", "examples", "example_job")

# A job that says when it starts a request, then takes its time.
SLOW_JOB = r"""
import sys, time
sys.path.insert(0, %(pydir)r)
import workerpool

def handler(body, meta):
    if body != b"warm":
        print("started", body.decode(), flush=True)
        time.sleep(1.5)
    return b"done " + body

workerpool.serve(handler)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class _KeepOpen(io.BufferedIOBase):
    """A file http.client.HTTPResponse may "close" after each response,
    so that one buffered reader serves several responses in a row."""

    def __init__(self, f):
        self.f = f

    def readline(self, *args):
        return self.f.readline(*args)

    def read(self, *args):
        return self.f.read(*args)

    def read1(self, *args):
        return self.f.read1(*args)

    def peek(self, *args):
        return self.f.peek(*args)

    def readinto(self, b):
        return self.f.readinto(b)

    def close(self):
        pass


class _SharedFile:
    def __init__(self, f):
        self.f = _KeepOpen(f)

    def makefile(self, *args, **kwargs):
        return self.f


class RawConnection:
    """A socket to send exact bytes on and read answers from, in order."""

    def __init__(self, address, timeout=None):
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(wp.deadline(timeout))
        self.sock.connect(address)
        self.file = self.sock.makefile("rb")
        self.shared = _SharedFile(self.file)

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def response(self, method="POST"):
        """The next answer: (status, headers dict lowercased, body bytes)."""
        r = http.client.HTTPResponse(self.shared, method=method)
        r.begin()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body

    def at_eof(self):
        """True when the server closed the connection (nothing more came)."""
        try:
            return self.file.read(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False

    def close(self):
        self.file.close()
        self.sock.close()


def post_request(group, body, extra=""):
    if isinstance(body, str):
        body = body.encode()
    return (("POST /jobs/%s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s"
             "\r\n" % (group, len(body), extra)).encode() + body)


class HttpTest(wp.TestCase):

    def make_pool(self, reactor_args=(), reactors=1, jobs=1, echo="",
                  listen=None,
                  extra_groups="", routes=("echo",), start=True, **kw):
        self.port = free_port()
        listen = listen or "127.0.0.1:%d" % self.port
        command = wp_ipc.yaml_list(["workerpool", "builtin", "http-reactor"] +
                                   list(reactor_args))
        return self.pool("""
pool: {name: http, stop_timeout: 5s}
groups:
  - name: web
    type: reactor
    processes: %d
    command: %s
    listen: ["%s"]
    routes_to: [%s]
%s
  - name: echo
    type: job
    processes: %d
    command: [workerpool, builtin, echo-job]
%s
  - name: other
    type: job
    processes: 1
    command: [workerpool, builtin, echo-job]
%s""" % (reactors, command, listen, ", ".join(routes), kw.get("web", ""),
         jobs, echo, extra_groups), start=start)

    def conn(self, timeout=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port,
                                       timeout=wp.deadline(timeout))
        self.addCleanup(c.close)
        return c

    def raw(self, timeout=None):
        c = RawConnection(("127.0.0.1", self.port), timeout)
        self.addCleanup(c.close)
        return c

    def post(self, group, body, headers=None, conn=None):
        c = conn or self.conn()
        c.request("POST", "/jobs/" + group, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def wait_ready(self, group="echo", body="ready?"):
        """Polls POST /jobs/GROUP until it answers 200: the reactor is up and
        the group's processes are linked to it."""
        def ready():
            try:
                status, _, reply = self.post(group, body)
            except OSError:
                return None
            return reply if status == 200 else None
        return wp.wait_until(ready, what="%s answering over HTTP" % group)

    def reactor_pids(self, pool):
        return sorted(c.pid for c in pool.children("web"))

    # -- answers

    def test_post_is_answered_with_the_reply_body(self):
        pool = self.make_pool()
        self.wait_ready()
        status, headers, body = self.post("echo", "hello")
        self.assertEqual((status, body), (200, b"hello"))
        self.assertEqual(headers["content-length"], "5")
        # Binary bodies go through untouched.
        payload = bytes(range(256)) * 40
        self.assertEqual(self.post("echo", payload)[2], payload)
        # An empty body is a request too.
        self.assertEqual(self.post("echo", b"")[:1], (200,))
        pool.wait_for_log(r"web\[0\] \d+: POST /jobs/echo 200 5 \d+us ")

    def test_access_log_line_per_request(self):
        pool = self.make_pool()
        self.wait_ready()
        mark = pool.mark()
        c = self.conn()
        self.post("echo", "abc", conn=c)
        c.request("GET", "/healthz")
        c.getresponse().read()
        self.post("nope", "x", conn=c)
        # method, path, status, bytes, microseconds, remote address
        pool.wait_for_log(r"web\[0\] \d+: POST /jobs/echo 200 3 \d+us "
                          r"127\.0\.0\.1:\d+$", since=mark)
        pool.wait_for_log(r"web\[0\] \d+: GET /healthz 200 3 \d+us ",
                          since=mark)
        pool.wait_for_log(r"web\[0\] \d+: POST /jobs/nope 404 \d+ \d+us ",
                          since=mark)

    def test_error_reply_is_502_with_json(self):
        self.make_pool()
        self.wait_ready()
        status, headers, body = self.post("echo", "fail: no luck")
        self.assertEqual(status, 502)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(json.loads(body),
                         {"error": "fail: no luck", "code": 1})
        # A job that dies with the request is a 502 too; the reactor stays.
        status, _, body = self.post("echo", "crash")
        self.assertEqual(status, 502)
        self.assertIn("error", json.loads(body))
        self.wait_ready()

    def test_timeout_is_504(self):
        pool = self.make_pool(echo="    request_timeout: 300ms")
        self.wait_ready()
        reactors = self.reactor_pids(pool)
        status, _, body = self.post("echo", "sleep:10000")
        self.assertEqual(status, 504)
        self.assertEqual(json.loads(body)["code"], 3)
        self.assertEqual(self.wait_ready(body="after"), b"after")
        self.assertEqual(self.reactor_pids(pool), reactors)

    def test_unknown_or_forbidden_group_is_404(self):
        pool = self.make_pool()
        self.wait_ready()
        reactors = self.reactor_pids(pool)
        for group in ("other", "nope", "no%20such", "a.b"):
            status, headers, body = self.post(group, "x")
            self.assertEqual(status, 404, group)
            self.assertEqual(headers["content-type"], "application/json")
            self.assertIn("error", json.loads(body))
        c = self.conn()
        for method, path, want in (("GET", "/jobs/echo", 405),
                                   ("POST", "/healthz", 405),
                                   ("GET", "/", 404),
                                   ("POST", "/jobs/", 404),
                                   ("POST", "/jobs/a/b", 404)):
            c.request(method, path, body=b"x" if method == "POST" else None)
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, want, (method, path))
        self.assertEqual(self.post("echo", "still here")[2], b"still here")
        self.assertEqual(self.reactor_pids(pool), reactors)

    def test_queue_full_is_503_with_retry_after(self):
        self.make_pool(echo="    max_inflight: 1\n    queue_limit: 1")
        self.wait_ready()
        results = []
        lock = threading.Lock()

        def one():
            outcome = self.post("echo", "sleep:1500")
            with lock:
                results.append(outcome)
        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r[0] for r in results)
        self.assertIn(503, statuses)
        self.assertIn(200, statuses)
        self.assertEqual(set(statuses), {200, 503})
        for status, headers, body in results:
            if status == 503:
                self.assertEqual(headers.get("retry-after"), "1")
                self.assertEqual(json.loads(body)["code"], 4)

    def test_healthz(self):
        self.make_pool()
        self.wait_ready()
        c = self.conn()
        c.request("GET", "/healthz")
        r = c.getresponse()
        self.assertEqual((r.status, r.read()), (200, b"ok\n"))
        c.request("HEAD", "/healthz")
        r = c.getresponse()
        self.assertEqual((r.status, r.read()), (200, b""))

    # -- connections

    def test_keep_alive_serves_many_requests_on_one_connection(self):
        self.make_pool()
        self.wait_ready()
        raw = self.raw()
        for n in range(20):
            raw.send(post_request("echo", "n%d" % n))
            status, headers, body = raw.response()
            self.assertEqual((status, body), (200, b"n%d" % n))
            self.assertNotIn("connection", headers)
        raw.send(post_request("echo", "last", "Connection: close\r\n"))
        status, headers, body = raw.response()
        self.assertEqual((status, body, headers.get("connection")),
                         (200, b"last", "close"))
        self.assertTrue(raw.at_eof())

    def test_pipelined_requests_are_answered_in_order(self):
        # Two jobs: a slow first request must not let the quick ones behind
        # it overtake on the connection.
        pool = self.make_pool(reactor_args=["--max-pipeline=4"], jobs=2)
        pool.wait_for_children(2, "echo")
        self.wait_ready()
        raw = self.raw()
        bodies = ["sleep:500"] + ["quick %d" % n for n in range(9)] + ["fail x"]
        raw.send(b"".join(post_request("echo", b) for b in bodies) +
                 b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        answers = [raw.response() for _ in bodies]
        self.assertEqual([a[0] for a in answers], [200] * 10 + [502])
        self.assertEqual([a[2] for a in answers[:10]],
                         [b.encode() for b in bodies[:10]])
        self.assertEqual(raw.response("GET")[:1], (200,))

    def test_body_over_the_limit_is_413(self):
        pool = self.make_pool(reactor_args=["--max-body=1024"])
        self.wait_ready()
        reactors = self.reactor_pids(pool)
        self.assertEqual(self.post("echo", b"x" * 1024)[0], 200)
        # Announced by Content-Length: refused before the body is sent.
        raw = self.raw()
        raw.send("POST /jobs/echo HTTP/1.1\r\nHost: t\r\n"
                 "Content-Length: 10000000\r\n\r\n")
        status, headers, body = raw.response()
        self.assertEqual(status, 413)
        self.assertEqual(headers.get("connection"), "close")
        self.assertIn("error", json.loads(body))
        self.assertTrue(raw.at_eof())
        # Chunked: found while reading.
        raw = self.raw()
        raw.send("POST /jobs/echo HTTP/1.1\r\nHost: t\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n" +
                 ("200\r\n" + "y" * 512 + "\r\n") * 3 + "0\r\n\r\n")
        self.assertEqual(raw.response()[0], 413)
        self.assertTrue(raw.at_eof())
        self.assertEqual(self.post("echo", "fine")[2], b"fine")
        self.assertEqual(self.reactor_pids(pool), reactors)

    def test_malformed_requests_are_400_and_close_the_connection(self):
        pool = self.make_pool()
        self.wait_ready()
        reactors = self.reactor_pids(pool)
        bad = [
            b"garbage\r\n\r\n",
            b"POST /jobs/echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"POST /jobs/echo HTTP/1.1\r\nBad Header Line\r\n\r\n",
            b"POST /jobs/echo HTTP/1.1\r\nContent-Length: 1\r\n"
            b"Content-Length: 2\r\n\r\nab",
            b"POST /jobs/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS hello
        ]
        for data in bad:
            raw = self.raw()
            raw.send(data)
            status, headers, body = raw.response()
            self.assertEqual(status, 400, data)
            self.assertEqual(headers.get("connection"), "close", data)
            self.assertIn("error", json.loads(body))
            self.assertTrue(raw.at_eof(), data)
        # A good request first, then garbage on the same connection: the
        # good one is answered, then the 400, then the end.
        raw = self.raw()
        raw.send(post_request("echo", "good") + b"junk junk\r\n\r\n")
        self.assertEqual(raw.response()[::2], (200, b"good"))
        self.assertEqual(raw.response()[0], 400)
        self.assertTrue(raw.at_eof())
        self.assertEqual(self.post("echo", "fine")[2], b"fine")
        self.assertEqual(self.reactor_pids(pool), reactors)

    def test_slow_client_is_timed_out_without_holding_others(self):
        pool = self.make_pool(reactor_args=["--read-timeout=1s"])
        self.wait_ready()
        reactors = self.reactor_pids(pool)
        slow = self.raw()
        slow.send("POST /jobs/echo HTTP/1.1\r\nHost: t\r\n")
        quiet = self.raw()  # connected, never sends a byte
        # Other clients are served while the slow ones hang on.
        for n in range(5):
            self.assertEqual(self.post("echo", "other %d" % n)[2],
                             b"other %d" % n)
        slow.send("X-Dribble: 1\r\n")  # a trickle does not extend the deadline
        status, headers, body = slow.response()
        self.assertEqual(status, 408)
        self.assertEqual(headers.get("connection"), "close")
        self.assertTrue(slow.at_eof())
        self.assertTrue(quiet.at_eof())  # closed with no answer owed
        self.assertEqual(self.post("echo", "after")[2], b"after")
        self.assertEqual(self.reactor_pids(pool), reactors)

    def test_unix_listen_address(self):
        path = "{tmp}/web.sock"
        pool = self.make_pool(listen="unix:%s,mode=0600" % path)
        real = pool.expand(path)
        wp.wait_until(lambda: os.path.exists(real), what="the unix socket")
        self.assertEqual(os.stat(real).st_mode & 0o777, 0o600)

        def ready():
            c = UnixHTTPConnection(real, wp.deadline())
            try:
                c.request("POST", "/jobs/echo", body=b"over unix")
                r = c.getresponse()
                return r.read() if r.status == 200 else None
            except OSError:
                return None
            finally:
                c.close()
        self.assertEqual(wp.wait_until(ready, what="HTTP over unix socket"),
                         b"over unix")
        pool.wait_for_log(r"web\[0\] \d+: POST /jobs/echo 200 9 \d+us unix")

    # -- lifecycle

    def test_graceful_stop_finishes_in_flight_requests(self):
        pool = self.make_pool(routes=("echo", "slow"), start=False,
                              extra_groups="""
  - name: slow
    type: job
    processes: 1
    command: %s
""" % wp_ipc.python_command("{tmp}/slow.py"))
        pool.write("slow.py", SLOW_JOB % {"pydir": wp_ipc.PYTHON_DIR})
        pool.start()
        self.wait_ready("slow", "warm")
        mark = pool.mark()
        results = []
        c = self.conn()
        t = threading.Thread(
            target=lambda: results.append(self.post("slow", "x", conn=c)))
        t.start()
        pool.wait_for_log(r"slow\[0\] \d+: started x", since=mark)
        pool.signal(signal.SIGTERM)
        t.join(wp.deadline())
        self.assertEqual(pool.wait_exit(), 0)
        self.assertEqual(len(results), 1)
        status, headers, body = results[0]
        self.assertEqual((status, body), (200, b"done x"))
        # The stop closes the kept-alive connection after this answer.
        self.assertEqual(headers.get("connection"), "close")
        self.assertTrue(pool.find_log(r"web\[0\] \d+: POST /jobs/slow 200 6 ",
                                      since=mark))

    def test_reactors_killed_while_clients_connect_lose_no_connection(self):
        pool = self.make_pool(
            reactors=2,
            web="    restart:\n      backoff: {initial: 1s, max: 2s}\n")
        self.wait_ready()
        stop = threading.Event()
        counts = {"ok": 0, "refused": 0, "cut": 0, "other": 0, "backlog": 0}
        errors = []

        def client():
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    status, _, body = self.post("echo", "c%d" % n)
                    if status == 200 and body == b"c%d" % n:
                        counts["ok"] += 1
                    elif status == 503:
                        counts["cut"] += 1  # reactor up, job link not yet
                    else:
                        counts["other"] += 1
                        errors.append((status, body))
                except ConnectionRefusedError:
                    counts["refused"] += 1
                except (ConnectionResetError, http.client.RemoteDisconnected,
                        BrokenPipeError):
                    counts["cut"] += 1  # in the reactor that was killed
        t = threading.Thread(target=client)
        t.start()
        try:
            for _ in range(2):
                old = self.reactor_pids(pool)
                for pid in old:
                    os.kill(pid, signal.SIGKILL)
                # Quick deaths: the second round waits out the backoff, so
                # clients find no reactor at all for a while.
                for pid in old:
                    pool.wait_for_log(r"web\[\d\] pid %d killed by signal "
                                      r"SIGKILL" % pid)
                if not pool.children("web"):
                    # Nobody accepts now: this connection waits in the
                    # backlog for a reactor not started yet.
                    waiting = self.raw()
                    waiting.send(post_request("echo", "from the backlog"))
                    self.assertEqual(waiting.response()[::2],
                                     (200, b"from the backlog"))
                    counts["backlog"] += 1
                pool.wait_for_children(2, "web")
                before = counts["ok"]
                wp.wait_until(lambda: counts["ok"] > before + 5,
                              what="requests served by new reactors")
        finally:
            stop.set()
            t.join(wp.deadline())
        self.assertEqual(counts["refused"], 0, counts)
        self.assertEqual(errors, [])

    # -- other children

    def test_python_job_group_answers_over_http(self):
        self.make_pool(routes=("echo", "py"), extra_groups="""
  - name: py
    type: job
    processes: 2
    command: %s
""" % wp_ipc.python_command(EXAMPLE))
        self.assertEqual(self.wait_ready("py", "hello"), b"HELLO")
        c = self.conn()
        for n in range(10):
            self.assertEqual(self.post("py", "req %d" % n, conn=c)[2],
                             b"REQ %d" % n)
        # Not UTF-8: the handler raises; an error reply, a 502.
        status, _, body = self.post("py", b"\xff\xfe")
        self.assertEqual(status, 502)
        self.assertEqual(json.loads(body)["code"], 1)

    @unittest.skipUnless(os.access(CXX_EXAMPLE, os.X_OK),
                         "src/examples/example_job not built: " + CXX_EXAMPLE)
    def test_cxx_example_job_answers_over_http(self):
        self.make_pool(routes=("echo", "wc"), extra_groups="""
  - name: wc
    type: job
    processes: 1
    command: ["%s"]
""" % CXX_EXAMPLE)
        self.assertEqual(json.loads(self.wait_ready("wc", "one two\nthree")),
                         {"lines": 1, "words": 3, "bytes": 13})
        status, headers, _ = self.post("wc", "x")
        self.assertEqual((status, headers["content-type"]),
                         (200, "application/json"))
        status, _, body = self.post("wc", "")
        self.assertEqual(status, 502)
        self.assertIn("empty body", json.loads(body)["error"])

    def test_demo_config(self):
        self.assertEqual(wp.run_cli(["check", DEMO])[0], 0)
        self.port = free_port()
        with open(DEMO) as f:
            text = f.read()
        self.assertIn("127.0.0.1:8080", text)
        text = text.replace("127.0.0.1:8080", "127.0.0.1:%d" % self.port)
        text = text.replace("src/examples/python_job.py", EXAMPLE)
        text = text.replace("[python3,", "[%s," % wp_ipc.PYTHON)
        text = text.replace("src/node/", os.path.join(wp.TOP, "src/node/"))
        self.pool(text)
        self.assertEqual(self.wait_ready("echo", "hello"), b"hello")
        self.assertEqual(self.wait_ready("py", "hello"), b"HELLO")
        self.assertEqual(self.wait_ready("js", "hello"), b"HELLO")
        # A Node.js sender reaches echo (once echo is up).
        wp.wait_until(lambda: json.loads(self.wait_ready("jsrelay", "echo hi"))
                      == {"ok": True, "code": None, "text": "hi"},
                      what="jsrelay reaching echo")


if __name__ == "__main__":
    wp.main()
