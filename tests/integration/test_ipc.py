"""Requests between children, from outside (docs/PROTOCOL.md; DESIGN.md,
"Routing rules"): a test-kit reactor (tests/kit/line_reactor, a line
protocol on a Unix socket) sends to echo jobs (`workerpool builtin
echo-job`) and to small Python jobs built on src/python/workerpool.py.

Replies, handler errors, crashes, timeouts, refusals (routes_to and the
routing table, static and at run time), queue limits, balancing, priority,
cancel, progress, dying workers, pipelining, and children that send garbage
on their pool channel.

Environment: WORKERPOOL_BIN (the binary), WORKERPOOL_KIT_DIR (the directory
of line_reactor)."""

import json
import os
import re
import shutil
import signal
import unittest

import wp
import wp_ipc
from wp_ipc import (CANCELLED, HANDLER_ERROR, NO_WORKERS, QUEUE_FULL, REFUSED,
                    TIMEOUT, WORKER_DIED)

ECHO = "[workerpool, builtin, echo-job]"

# A Python job (src/python/workerpool.py): "sleep:N" sleeps N ms, "wait:PATH"
# until PATH exists; the reply is
# "PID SEQ BODY" (SEQ counts the requests this process started, from 1).
# Prints "ready" once the pool sent its configuration (it said hello, so the
# Watcher links it to senders from then on).
PID_JOB = r"""
import os, sys, threading, time
sys.path.insert(0, %(pydir)r)
import workerpool

lock = threading.Lock()
count = [0]

def handler(body, meta):
    with lock:
        count[0] += 1
        seq = count[0]
    text = body.decode()
    if text.startswith("sleep:"):
        time.sleep(int(text[6:]) / 1000.0)
    elif text.startswith("wait:"):  # until the file named exists
        while not os.path.exists(text[5:]):
            time.sleep(0.02)
    return "%%d %%d %%s" %% (os.getpid(), seq, text)

workerpool.serve(handler, on_ready=lambda: print("ready", flush=True))
"""

# A job that tries to send (a job never initiates): it answers with what
# its own send to GROUP (the body) returned, as JSON.
SENDING_JOB = r"""
import json, sys
sys.path.insert(0, %(pydir)r)
import workerpool

def handler(request):
    reply = request.client.send(request.body.decode(), b"from a job",
                                timeout=30)
    return json.dumps({"ok": reply.ok,
                       "code": None if reply.ok else int(reply.code),
                       "text": reply.text})

workerpool.serve(handler, with_request=True)
"""

# A job speaking the protocol by hand: on each request it first sends a
# request of its own back on the same link (where it is the server), then
# answers the original request with what came back.
RAW_REQUESTING_JOB = r"""
import json, os, socket, struct, sys
H = struct.Struct("<IBBHQII")

def frame(t, body=b"", id_=0, aux=0):
    return H.pack(len(body), 1, t, 0, id_, aux, 0) + body

def read_frame(sock, fds=None):
    head = b""
    while len(head) < 24:
        if fds is not None:
            data, got, _, _ = socket.recv_fds(sock, 24 - len(head), 4)
            fds.extend(got)
        else:
            data = sock.recv(24 - len(head))
        if not data:
            sys.exit(0)
        head += data
    length, _, t, _, id_, aux, meta = H.unpack(head)
    payload = b""
    while len(payload) < length:
        data = sock.recv(length - len(payload))
        if not data:
            sys.exit(0)
        payload += data
    return t, id_, aux, payload[meta:]

pool = socket.socket(fileno=int(os.environ["WORKERPOOL_IPC_FD"]))
pool.sendall(frame(16, json.dumps({"pid": os.getpid(), "protocol": 1}).encode()))
fds = []
while True:
    t, _, _, body = read_frame(pool, fds)
    if t == 19:  # peer_added: one fd per frame, in order
        link = socket.socket(fileno=fds.pop(0))
        link.setblocking(True)  # it may arrive non-blocking
        break
while True:
    t, id_, _, body = read_frame(link)
    if t != 1:
        continue
    link.sendall(frame(1, b"a request from a job", id_=999))
    while True:
        t2, id2, aux2, body2 = read_frame(link)
        if id2 == 999:
            break
    link.sendall(frame(2, ("type %%d code %%d %%s" %% (t2, aux2, body2.decode())).encode(), id_=id_))
"""

# A job that breaks the protocol on its pool channel once (the first time
# it runs, while MARK does not exist), waits for the Watcher to close the
# channel, and exits; run again, it is a well-behaved Python job.
BAD_CHANNEL_JOB = r"""
import json, os, socket, struct, sys
sys.path.insert(0, %(pydir)r)
MARK = %(mark)r
H = struct.Struct("<IBBHQII")
if not os.path.exists(MARK):
    open(MARK, "w").close()
    pool = socket.socket(fileno=int(os.environ["WORKERPOOL_IPC_FD"]))
    if %(after_hello)r:
        hello = json.dumps({"pid": os.getpid(), "protocol": 1}).encode()
        pool.sendall(H.pack(len(hello), 1, 16, 0, 0, 0, 0) + hello)
        print("said hello", flush=True)
    pool.sendall(%(bad)r)
    print("sent bad bytes", flush=True)
    pool.settimeout(30)
    while pool.recv(65536):
        pass
    print("the pool closed the channel", flush=True)
    sys.exit(0)
import workerpool
workerpool.serve(lambda body, meta: b"fresh " + body)
"""


def pid_from_text(text):
    m = re.search(r"pid (\d+)", text)
    return int(m.group(1)) if m else None


class IpcTest(wp.TestCase):

    # -- set-up helpers

    def make_pool(self, groups, front_routes, front_type="reactor",
                  start=True):
        """A pool with a line_reactor group "front" routing to FRONT_ROUTES,
        plus GROUPS (YAML list items, already indented)."""
        yaml = """
pool: {name: ipc, stop_timeout: 3s}
groups:
  - name: front
    type: %s
    processes: 1
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [%s]
%s""" % (front_type, wp_ipc.LINE_REACTOR, ", ".join(front_routes), groups)
        return self.pool(yaml, start=start)

    def client(self, pool, name="kit.sock"):
        c = wp_ipc.LineClient(os.path.join(pool.tmp, name))
        self.addCleanup(c.close)
        return c

    def script(self, pool, name, template, **values):
        values.setdefault("pydir", wp_ipc.PYTHON_DIR)
        return pool.write(name, template % values)

    def echo_pool(self, processes=1, **settings):
        lines = "".join("    %s: %s\n" % kv for kv in settings.items())
        pool = self.make_pool("""  - name: echo
    type: job
    processes: %d
    command: %s
%s""" % (processes, ECHO, lines), ["echo"])
        client = self.client(pool)
        client.request_until_ok("echo", "warm-up")  # the route is open
        return pool, client

    def python_pool(self, template, processes=1, with_echo=False,
                    **settings):
        """front -> a Python job group "py" running TEMPLATE ({tmp}/job.py),
        and with WITH_ECHO an echo group too."""
        lines = "".join("    %s: %s\n" % kv for kv in settings.items())
        groups = """  - name: py
    type: job
    processes: %d
    command: %s
%s""" % (processes, wp_ipc.python_command("{tmp}/job.py"), lines)
        routes = ["py"]
        if with_echo:
            groups += "  - {name: echo, type: job, processes: 1, command: %s}\n" \
                % ECHO
            routes.append("echo")
        pool = self.make_pool(groups, routes, start=False)
        self.script(pool, "job.py", template)
        pool.start()
        return pool

    def wait_ready(self, pool, group, count, since=0):
        pool.wait_for_log(r"%s\[\d+\] \d+: ready$" % re.escape(group),
                          count=count, since=since)

    # -- replies and handler errors

    def test_reply_and_handler_error(self):
        pool, c = self.echo_pool()
        a = c.request("echo", "hello world")
        self.assertTrue(a.ok, a)
        self.assertEqual(a.body, "hello world")
        a = c.request("echo", "fail: the handler says no")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, HANDLER_ERROR, a)
        self.assertEqual(a.body, "fail: the handler says no")
        # An error reply is an answer, not a failure of the process.
        self.assertEqual(c.request("echo", "still here").body, "still here")
        self.assertEqual(len(pool.children("echo")), 1)
        self.assertEqual(pool.find_log(r"echo\[0\] pid \d+ (exited|killed)"),
                         [])

    # -- the serving process dies

    def test_crash_is_worker_died_and_replaced(self):
        pool, c = self.echo_pool()
        (old,) = pool.children("echo")
        a = c.request("echo", "crash")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, WORKER_DIED, a)
        self.assertIn("echo[0]", a.body)
        self.assertIn("pid %d" % old.pid, a.body)
        self.assertIn("SIGABRT", a.body)
        pool.wait_for_log(r"echo\[0\] pid %d killed by signal SIGABRT"
                          % old.pid)
        a = c.request_until_ok("echo", "after the crash")
        self.assertEqual(a.body, "after the crash")
        new = pool.child("echo", 0)
        self.assertIsNotNone(new)
        self.assertNotEqual(new.pid, old.pid)

    def test_sigkill_with_requests_in_flight(self):
        pool, c = self.echo_pool(max_inflight=4)
        (old,) = pool.children("echo")
        ids = c.send_many([("echo", "sleep:60000", None)] * 3 +
                          [("echo", "marker", None)])
        # The reactor handles lines in order: once "marker" is answered the
        # three sleeps were sent to the only process.
        self.assertTrue(c.answer(ids[3]).ok)
        os.kill(old.pid, signal.SIGKILL)
        for id_ in ids[:3]:
            a = c.answer(id_)
            self.assertFalse(a.ok, a)
            self.assertEqual(a.code, WORKER_DIED, a)
            self.assertIn("worker died", a.body)
            self.assertIn("echo[0] pid %d" % old.pid, a.body)
            self.assertIn("SIGKILL", a.body)
        self.assertEqual(c.request_until_ok("echo", "next").body, "next")
        self.assertNotEqual(pool.child("echo", 0).pid, old.pid)

    def test_timeout_kills_and_restarts_the_job(self):
        pool, c = self.echo_pool(request_timeout="1s")
        (old,) = pool.children("echo")
        a = c.request("echo", "sleep:60000")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, TIMEOUT, a)
        self.assertIn("timeout", a.body)
        self.assertIn("echo[0] pid %d" % old.pid, a.body)
        pool.wait_for_log(r"killing echo\[0\] pid %d: request timed out"
                          % old.pid)
        pool.wait_for_log(r"echo\[0\] pid %d killed by signal SIGKILL"
                          % old.pid)
        self.assertEqual(c.request_until_ok("echo", "fresh").body, "fresh")
        self.assertNotEqual(pool.child("echo", 0).pid, old.pid)

    # -- refusals: routes_to and the routing table

    def test_not_in_routes_to_is_refused_and_reactor_keeps_working(self):
        pool = self.make_pool("""  - {name: echo, type: job, processes: 1, command: %s}
  - {name: other, type: job, processes: 1, command: %s}
""" % (ECHO, ECHO), ["echo"])
        c = self.client(pool)
        c.request_until_ok("echo", "warm-up")
        (front,) = pool.children("front")
        a = c.request("other", "hello")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, REFUSED, a)
        self.assertIn("routes_to", a.body)
        self.assertIn("'other'", a.body)
        pool.wait_for_log(r"refused front\[0\] pid %d -> other: .*routes_to"
                          % front.pid)
        # Again: still refused, and logged once per route only.
        self.assertEqual(c.request("other", "again").code, REFUSED)
        # An unknown group is refused the same way.
        a = c.request("no-such-group", "hello")
        self.assertEqual(a.code, REFUSED, a)
        self.assertIn("no-such-group", a.body)
        # The sender keeps running and working.
        self.assertEqual(c.request("echo", "still fine").body, "still fine")
        self.assertEqual(pool.children("front")[0].pid, front.pid)
        self.assertEqual(len(pool.find_log(r"refused front\[0\] .* -> other")),
                         1)

    def test_routing_table_at_run_time(self):
        # front (reactor) -> job and -> service; intake (a service, also a
        # line_reactor) -> job. Everything else is refused with the rule.
        pool = self.make_pool("""  - {name: echo, type: job, processes: 1, command: %s}
  - {name: svc, type: service, processes: 1, command: %s}
  - name: intake
    type: service
    processes: 1
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/intake.sock"}
    routes_to: [echo]
""" % (ECHO, ECHO, wp_ipc.LINE_REACTOR), ["echo", "svc"])
        front = self.client(pool)
        intake = self.client(pool, "intake.sock")
        # Allowed: reactor -> job, reactor -> service, service -> job.
        self.assertEqual(front.request_until_ok("echo", "r2j").body, "r2j")
        self.assertEqual(front.request_until_ok("svc", "r2s").body, "r2s")
        self.assertEqual(intake.request_until_ok("echo", "s2j").body, "s2j")
        cases = [
            (front, "front", "a reactor may not send to a reactor"),
            (intake, "front", "a service may not send to a reactor"),
            (intake, "svc", "a service may not send to a service"),
            (intake, "intake", "a service may not send to a service"),
        ]
        for client, target, rule in cases:
            a = client.request(target, "nope")
            self.assertFalse(a.ok, (target, a))
            self.assertEqual(a.code, REFUSED, (target, a))
            self.assertIn(rule, a.body)
        pool.wait_for_log(r"refused intake\[0\] pid \d+ -> front: .*"
                          r"a service may not send to a reactor")
        # Both senders keep working.
        self.assertEqual(front.request("svc", "ok").body, "ok")
        self.assertEqual(intake.request("echo", "ok").body, "ok")

    def test_job_may_not_send(self):
        pool = self.python_pool(SENDING_JOB)
        c = self.client(pool)
        a = c.request_until_ok("py", "front")
        for target in ("front", "py"):
            a = c.request("py", target)
            self.assertTrue(a.ok, a)  # the job answered ...
            result = json.loads(a.body)
            self.assertFalse(result["ok"], result)  # ... its own send failed
            self.assertEqual(result["code"], REFUSED, result)
            self.assertIn("a job only replies", result["text"])
        pool.wait_for_log(r"refused py\[0\] pid \d+ -> front: .*"
                          r"a job only replies")
        # The job keeps serving.
        self.assertTrue(c.request("py", "py").ok)

    def test_request_from_a_job_on_its_link_is_refused(self):
        # A job that skips the pool and sends a request straight back on the
        # link it serves: the reactor's client library refuses it.
        pool = self.python_pool(RAW_REQUESTING_JOB)
        c = self.client(pool)
        a = c.request_until_ok("py", "hello")
        self.assertEqual(a.body, "type 3 code %d refused: py may not send "
                         "requests to front" % REFUSED)
        self.assertEqual(c.request("py", "again").body, a.body)

    def test_static_routes_are_checked(self):
        # What run time refuses, check refuses up front (DESIGN.md's table).
        path = os.path.join(self.pool_dir(), "routes.yaml")
        base = """pool: {name: routes}
groups:
  - {name: web, type: reactor, processes: 1, command: [x], routes_to: [%s]}
  - {name: work, type: job, processes: 1, command: [x]%s}
  - {name: intake, type: service, processes: 1, command: [x], routes_to: [%s]}
"""
        valid = [("work, intake", "", "work")]
        invalid = [("web", "", "work"),           # reactor -> reactor
                   ("work", ", routes_to: [work]", "work"),  # job -> job
                   ("work", ", routes_to: [intake]", "work"),
                   ("work", "", "web"),           # service -> reactor
                   ("work", "", "intake")]        # service -> service
        for web, work, intake in valid + invalid:
            with open(path, "w") as f:
                f.write(base % (web, work, intake))
            code, out, err = wp.run_cli(["check", path])
            expected = 0 if (web, work, intake) in valid else 1
            self.assertEqual(code, expected, (web, work, intake, out, err))

    def pool_dir(self):
        import tempfile
        d = tempfile.mkdtemp(prefix="wp-ipc-")
        self.addCleanup(lambda: __import__("shutil").rmtree(
            d, ignore_errors=True))
        return d

    # -- limits: queue full, no live process

    def test_queue_full(self):
        pool, c = self.echo_pool(max_inflight=1, queue_limit=2)
        ids = c.send_many([("echo", "sleep:2000", None)] * 8)
        answers = [c.answer(i) for i in ids]
        ok = [a for a in answers if a.ok]
        full = [a for a in answers if not a.ok]
        # One running and two queued at most while the burst arrives.
        self.assertGreaterEqual(len(ok), 3, answers)
        self.assertGreaterEqual(len(full), 1, answers)
        for a in full:
            self.assertEqual(a.code, QUEUE_FULL, a)
            self.assertIn("echo", a.body)
            self.assertIn("full", a.body)
        # The first three in line got through.
        for a in answers[:3]:
            self.assertTrue(a.ok, answers)
        self.assertEqual(c.request("echo", "after").body, "after")

    def test_no_live_process(self):
        pool = self.make_pool("""  - {name: echo, type: job, processes: 1, command: %s}
  - {name: empty, type: job, processes: 0, command: %s}
""" % (ECHO, ECHO), ["echo", "empty"])
        c = self.client(pool)
        c.request_until_ok("echo", "warm-up")
        for _ in range(3):
            a = c.request("empty", "anyone?")
            self.assertFalse(a.ok, a)
            self.assertEqual(a.code, NO_WORKERS, a)
            self.assertIn("empty", a.body)
            self.assertIn("no live process", a.body)
        self.assertEqual(c.request("echo", "fine").body, "fine")

    # -- balancing and priority

    def test_balancing_least_in_flight(self):
        pool = self.python_pool(PID_JOB, processes=3, max_inflight=1)
        self.wait_ready(pool, "py", 3)
        pids = {c.pid for c in pool.wait_for_children(3, "py")}
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        for _ in range(2):
            ids = c.send_many([("py", "sleep:300", None)] * 3)
            served_by = {int(c.answer(i).body.split()[0]) for i in ids}
            self.assertEqual(served_by, pids,
                             "3 concurrent requests, 3 processes with "
                             "max_inflight 1: one each")

    def test_priority_lower_first(self):
        pool = self.python_pool(PID_JOB, processes=1, max_inflight=1,
                                with_echo=True)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        c.request_until_ok("echo", "warm-up")
        release = os.path.join(pool.tmp, "release")
        priorities = [5, -2, 3, 0, 4, 1, 3]
        # The only py process is kept busy until RELEASE exists; the others
        # wait in the reactor's queue. The reactor handles lines in order, so
        # once the echo marker is answered every one of them is queued.
        items = [("py", "wait:" + release, None)] + [
            ("py", "p%d_%d" % (p, n), p) for n, p in enumerate(priorities)]
        ids = c.send_many(items + [("echo", "marker", None)])
        self.assertTrue(c.answer(ids[-1]).ok)
        open(release, "w").close()
        answers = [c.answer(i) for i in ids[:-1]]
        for a in answers:
            self.assertTrue(a.ok, a)
        # "PID SEQ BODY": the order the job started them in.
        started = sorted(answers[1:], key=lambda a: int(a.body.split()[1]))
        bodies = [a.body.split()[2] for a in started]
        expected = ["p%d_%d" % (p, n) for n, p in
                    sorted(enumerate(priorities), key=lambda x: (x[1], x[0]))]
        self.assertEqual(bodies, expected)

    # -- cancel and progress

    def test_cancel_queued_request(self):
        pool, c = self.echo_pool(max_inflight=1)
        # One write: the reactor handles the three lines in a row, while the
        # only process is busy with the first.
        c.write("q1 send echo sleep:3000\nq2 send echo waiting\n"
                "q3 cancel q2\n")
        a = c.answer("q2")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, CANCELLED, a)
        self.assertIn("queued", a.body)
        self.assertTrue(c.answer("q1").ok)
        self.assertEqual(c.request("echo", "next").body, "next")

    def test_cancel_running_request(self):
        pool, c = self.echo_pool(max_inflight=1)
        (job,) = pool.children("echo")
        running = c.send("echo", "sleep:2000")
        c.cancel(running)
        a = c.answer(running)
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, CANCELLED, a)
        # The job keeps working: the next request is answered by the same
        # process (after the cancelled one ended: max_inflight 1).
        self.assertEqual(c.request("echo", "next").body, "next")
        self.assertEqual(pool.child("echo", 0).pid, job.pid)
        self.assertEqual(pool.find_log(r"killing echo"), [])

    def test_progress(self):
        pool, c = self.echo_pool()
        id_ = c.send("echo", "progress:5")
        a = c.answer(id_)
        self.assertTrue(a.ok, a)
        self.assertEqual(a.body, "progress:5")
        self.assertEqual(len(a.progress), 5, a.progress)
        for n, line in enumerate(a.progress, 1):
            _, fraction, text = line.split(" ", 2)
            self.assertAlmostEqual(float(fraction), n / 5.0, places=3)
            self.assertEqual(text, "step %d" % n)

    # -- volume

    def test_1000_pipelined_requests(self):
        pool, c = self.echo_pool(processes=2, max_inflight=8,
                                 queue_limit=5000)
        ids = c.send_many([("echo", "n%d" % n, None) for n in range(1000)])
        for n, id_ in enumerate(ids):
            a = c.answer(id_)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "n%d" % n)

    def test_requests_outlive_the_read_that_brought_them(self):
        # A handler that answers later (or keeps an answered request) must
        # still see each request's own bytes after the job's read buffer
        # was reused for the requests that followed.
        deferred = wp_ipc.yaml_list([os.path.join(wp_ipc.KIT_DIR,
                                                  "deferred_echo_job")])
        pool = self.make_pool("""  - name: deferred
    type: job
    processes: 1
    max_inflight: 64
    command: %s
""" % deferred, ["deferred"])
        c = self.client(pool)
        self.assertEqual(c.request_until_ok("deferred", "warm-up").body,
                         "warm-up")
        job_pid = pool.child("deferred", 0).pid
        payloads = []
        for n in range(400):
            body = ("%d-" % n) * (30 + (n * 37) % 700)  # ~100 B to ~4 KiB
            payloads.append(("now:" if n % 3 == 0 else "") + body)
        ids = c.send_many([("deferred", p, None) for p in payloads])
        for payload, id_ in zip(payloads, ids):
            a = c.answer(id_)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, payload)
        self.assertEqual(pool.child("deferred", 0).pid, job_pid)

    def group_requests(self, pool, name):
        """The summed request counters of group NAME in `status --json`."""
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     os.path.join(pool.tmp, "ipc.sock")])
        self.assertEqual(code, 0, err)
        (group,) = [g for g in json.loads(out)["groups"] if g["name"] == name]
        return group["requests"]

    def wait_busy_poll_reads(self, pool, name, more_than):
        """Waits until group NAME reports more than MORE_THAN busy-poll reads
        (children send their counters at most once a second)."""
        return wp.wait_until(
            lambda: (self.group_requests(pool, name).get("busy_poll_reads", 0)
                     > more_than) or None,
            what="busy-poll reads of %s above %d" % (name, more_than))

    @unittest.skipUnless(len(os.sched_getaffinity(0)) >= 2 and
                         shutil.which("taskset"), "needs two CPUs and taskset")
    def test_busy_polling_peers_on_two_cpus(self):
        # The reactor on one CPU, the jobs on another: each side reads its
        # links without blocking while the other keeps sending (the client
        # library's busy polling; docs/PROTOCOL.md). Every request still
        # gets exactly its own answer, a job killed mid-stream still fails
        # its requests, and busy_poll_us: 0 (group "quiet") turns it off
        # until a reload turns it on, without a restart.
        cpus = sorted(os.sched_getaffinity(0))
        heartbeat = "%dms" % int(2000 * wp.SCALE)
        pool = self.pool("""
pool: {name: ipc, stop_timeout: 3s}
groups:
  - name: front
    type: reactor
    processes: 1
    heartbeat_timeout: %(heartbeat)s
    command: [taskset, -c, "%(cpu0)d", "%(reactor)s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [echo, quiet]
  - name: echo
    type: job
    processes: 2
    max_inflight: 16
    queue_limit: 5000
    heartbeat_timeout: %(heartbeat)s
    command: [taskset, -c, "%(cpu1)d", "%(bin)s", builtin, echo-job]
  - name: quiet
    type: job
    processes: 1
    max_inflight: 64
    busy_poll_us: 0
    command: [taskset, -c, "%(cpu1)d", "%(bin)s", builtin, echo-job]
""" % {"heartbeat": heartbeat, "cpu0": cpus[0], "cpu1": cpus[1],
       "reactor": wp_ipc.LINE_REACTOR, "bin": wp.BIN})
        c = self.client(pool)
        c.request_until_ok("echo", "warm-up")
        c.request_until_ok("quiet", "warm-up")
        for round_ in range(3):
            ids = c.send_many([("echo", "r%d-%d" % (round_, n) * 20, None)
                               for n in range(1000)])
            for n, id_ in enumerate(ids):
                a = c.answer(id_)
                self.assertTrue(a.ok, a)
                self.assertEqual(a.body, "r%d-%d" % (round_, n) * 20)
        # A long flood: the reactor and the jobs keep reading their links
        # without blocking, and still run their loops' other work (timers:
        # no heartbeat is missed) and answer other connections.
        flood = c.flood("echo", 1000000, 64, "f" * 200)
        other = self.client(pool)
        self.assertEqual(other.request("echo", "meanwhile").body, "meanwhile")
        a = c.answer(flood, timeout=120)
        self.assertTrue(a.ok, a)
        self.assertEqual(a.body, "1000000")
        self.assertEqual(pool.find_log(r"is hung"), [])
        self.wait_busy_poll_reads(pool, "echo", 0)
        self.wait_busy_poll_reads(pool, "front", 0)

        # busy_poll_us: 0 reads only when the loop wakes up.
        a = c.answer(c.flood("quiet", 100000, 64, "q" * 200), timeout=120)
        self.assertEqual(a.body, "100000")
        wp.wait_until(lambda: self.group_requests(pool, "quiet")
                      .get("served", 0) >= 100001 or None,
                      what="quiet's served count")
        self.assertEqual(
            self.group_requests(pool, "quiet").get("busy_poll_reads", 0), 0)
        quiet_pid = pool.child("quiet", 0).pid
        mark = pool.mark()
        with open(pool.path) as f:
            yaml = f.read()
        pool.reload(yaml.replace("busy_poll_us: 0", "busy_poll_us: 50"))
        pool.wait_for_log(r"quiet: limits changed", since=mark)
        pool.wait_for_log(r"reload finished", since=mark)
        a = c.answer(c.flood("quiet", 100000, 64, "q" * 200), timeout=120)
        self.assertEqual(a.body, "100000")
        self.wait_busy_poll_reads(pool, "quiet", 0)
        self.assertEqual(pool.child("quiet", 0).pid, quiet_pid)

        # One request at a time, each after the last answer reached this
        # test: the job's busy poll waits in vain for the next one, and
        # polls ever more rarely (after N misses in a row it skips the next
        # 2^N - 1 chances), so 60 requests cost far fewer than 60 misses
        # (about 10 here; a read that finds one starts the count over).
        def quiet_counters(served):
            counters = self.group_requests(pool, "quiet")
            return counters if counters.get("served", 0) >= served else None
        served = 200001 + 1  # two floods, the warm-up, and one more below
        self.assertEqual(c.request("quiet", "settle").body, "settle")
        before = wp.wait_until(lambda: quiet_counters(served),
                               what="quiet's counters")
        for n in range(60):
            self.assertEqual(c.request("quiet", "one%d" % n).body, "one%d" % n)
        after = wp.wait_until(lambda: quiet_counters(served + 60),
                              what="quiet's counters")
        self.assertLessEqual(after.get("busy_poll_misses", 0) -
                             before.get("busy_poll_misses", 0), 40)

        # A job killed while requests fly: each request still gets exactly
        # one answer, its own body or "worker died".
        victim = pool.child("echo", 0)
        payloads = ["k%d" % n * 50 for n in range(2000)]
        ids = c.send_many([("echo", p, None) for p in payloads])
        os.kill(victim.pid, signal.SIGKILL)
        for payload, id_ in zip(payloads, ids):
            a = c.answer(id_)
            if a.ok:
                self.assertEqual(a.body, payload)
            else:
                self.assertEqual(a.code, WORKER_DIED, a)
                self.assertIn("pid %d" % victim.pid, a.body)
        pool.wait_for_log(r"echo\[0\] pid %d killed by signal SIGKILL"
                          % victim.pid)
        self.assertEqual(c.request_until_ok("echo", "after").body, "after")

    # -- children that break the protocol on their pool channel

    def bad_channel(self, bad, after_hello, error_re):
        pool = self.make_pool("""  - {name: echo, type: job, processes: 1, command: %s}
  - {name: bad, type: job, processes: 1, command: %s}
""" % (ECHO, wp_ipc.python_command("{tmp}/bad.py")), ["echo", "bad"],
                              start=False)
        self.script(pool, "bad.py", BAD_CHANNEL_JOB,
                    mark=os.path.join(pool.tmp, "bad.mark"),
                    bad=bad, after_hello=after_hello)
        pool.start()
        c = self.client(pool)
        first = pool.wait_for_log(r"spawned bad\[0\] pid (\d+)")
        first_pid = int(first.group(1))
        pool.wait_for_log(r"closing a child's pool channel: %s" % error_re)
        pool.wait_for_log(r"bad\[0\] %d: the pool closed the channel"
                          % first_pid)
        pool.wait_for_log(r"bad\[0\] pid %d exited" % first_pid)
        # Other groups are unaffected; the bad child was replaced and its
        # successor serves.
        self.assertEqual(c.request_until_ok("echo", "fine").body, "fine")
        self.assertEqual(c.request_until_ok("bad", "x").body, "fresh x")
        self.assertNotEqual(pool.child("bad", 0).pid, first_pid)
        self.assertTrue(pool.running())

    def test_garbage_on_pool_channel(self):
        self.bad_channel(b"this is not a frame, it is just text\n" * 4,
                         False, r"unsupported protocol version")

    def test_huge_length_on_pool_channel(self):
        self.bad_channel(wp_ipc.frame(16, b"", length=0xFFFFFFF0), True,
                         r"frame of 4294967280 bytes is over the limit")

    def test_unknown_type_on_pool_channel(self):
        self.bad_channel(wp_ipc.frame(99, b"{}"), True,
                         r"unknown frame type 99")


if __name__ == "__main__":
    wp_ipc.require_kit()
    wp.main()
