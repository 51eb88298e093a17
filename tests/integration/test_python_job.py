"""Children in Python (src/python/workerpool.py, src/examples/python_job.py): a
Python job group answers requests from the test-kit reactor, is replaced
when killed, drains on stop and scale-down, heartbeats, runs handlers
concurrently up to max_inflight, sends progress, honours cancel, is
recycled after max_requests; a Python service sends requests itself. Each
of these with the three ways handlers run: on the I/O thread (the default:
a handler that blocks hands the loop to another thread), a thread per
request (threads=True), and `async def` handlers on an asyncio loop. Also
the library driven by hand, without a Watcher (a fake pool on a
socketpair): hello, config, links passed with SCM_RIGHTS, requests, drain,
EOF of the pool channel, and garbage on each of them.

Environment: WORKERPOOL_BIN (the binary), WORKERPOOL_KIT_DIR (the directory
of line_reactor)."""

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
import unittest

import wp
import wp_ipc
from wp_ipc import CANCELLED, HANDLER_ERROR, REFUSED

EXAMPLE = os.path.join(wp_ipc.EXAMPLES_DIR, "python_job.py")

# A job using the request object: "progress:N", "sleep:N" (cancellable),
# "barrier:N" (waits until N handlers run at once), anything else echoed.
REQUEST_JOB = r"""
import os, sys, threading
sys.path.insert(0, %(pydir)r)
import workerpool

barriers = {}
lock = threading.Lock()

def handler(request):
    text = request.body.decode()
    if text.startswith("progress:"):
        steps = int(text[9:])
        for n in range(1, steps + 1):
            request.progress(n / steps, "step %%d" %% n)
        return "done " + text
    if text.startswith("sleep:"):
        print("sleeping", text, flush=True)
        if request.wait_cancelled(int(text[6:]) / 1000.0):
            raise RuntimeError("cancelled")
        return "slept"
    if text.startswith("barrier:"):
        parties = int(text[8:])
        with lock:
            barrier = barriers.setdefault(parties, threading.Barrier(parties))
        barrier.wait(timeout=30)  # BrokenBarrierError: an error reply
        return "together %%d" %% parties
    return "%%d %%s" %% (os.getpid(), text)

workerpool.serve(handler, with_request=True,
                 on_ready=lambda: print("ready", flush=True),
                 threads=%(threads)r)
"""

# The same requests served by an `async def` handler, plus "gather:N"
# (waits until N handlers run at once: one process, one thread) and
# "send:GROUP PAYLOAD" (awaits a request of its own; for a service).
ASYNC_JOB = r"""
import asyncio, json, os, sys
sys.path.insert(0, %(pydir)r)
import workerpool

gathering = {}

async def handler(request):
    text = request.body.decode()
    if text.startswith("progress:"):
        steps = int(text[9:])
        for n in range(1, steps + 1):
            await request.progress(n / steps, "step %%d" %% n)
        return "done " + text
    if text.startswith("sleep:"):
        print("sleeping", text, flush=True)
        try:
            await asyncio.sleep(int(text[6:]) / 1000.0)
        except asyncio.CancelledError:
            print("cancelled", text, flush=True)
            raise
        return "slept"
    if text.startswith("gather:"):
        parties = int(text[7:])
        count, event = gathering.setdefault(parties, [0, asyncio.Event()])
        gathering[parties][0] += 1
        if gathering[parties][0] >= parties:
            event.set()
        await asyncio.wait_for(event.wait(), 30)
        return "together %%d" %% parties
    if text.startswith("send:"):
        group, _, payload = text[5:].partition(" ")
        reply = await request.client.asend(group, payload, timeout=30)
        return json.dumps({"ok": reply.ok,
                           "code": None if reply.ok else int(reply.code),
                           "text": reply.text})
    if text == "number":
        return 5  # not bytes: an error reply
    if text == "raise":
        raise ValueError("raised on purpose")
    return "%%d %%s" %% (os.getpid(), text)

workerpool.serve(handler, with_request=True,
                 on_ready=lambda: print("ready", flush=True))
"""

# A plain handler(body, meta) as the README shows it: "sleep:N" blocks the
# handler (time.sleep), anything else is answered at once with the pid.
BLOCKING_JOB = r"""
import os, sys, time
sys.path.insert(0, %(pydir)r)
import workerpool

def handler(body, meta):
    text = body.decode()
    if text.startswith("sleep:"):
        time.sleep(int(text[6:]) / 1000.0)
        return "slept"
    return "%%d %%s" %% (os.getpid(), text)

workerpool.serve(handler, on_ready=lambda: print("ready", flush=True))
"""

# A service that serves the reactor by sending to other groups itself:
# "GROUP PAYLOAD" -> JSON of what its own request to GROUP returned.
FORWARDING_SERVICE = r"""
import json, sys
sys.path.insert(0, %(pydir)r)
import workerpool

def handler(request):
    group, _, payload = request.body.decode().partition(" ")
    reply = request.client.send(group, payload, timeout=30)
    return json.dumps({"ok": reply.ok,
                       "code": None if reply.ok else int(reply.code),
                       "text": reply.text})

workerpool.serve(handler, with_request=True)
"""


class PythonJobTest(wp.TestCase):
    """Handlers on the I/O thread (the default)."""

    THREADS = False  # REQUEST_JOB's serve(threads=...)
    CONCURRENT = "barrier"  # the request that waits for N handlers at once

    def job_script(self):
        return REQUEST_JOB % {"pydir": wp_ipc.PYTHON_DIR,
                              "threads": self.THREADS}

    def make_pool(self, groups, routes, start=True):
        return self.pool("""
pool: {name: pyjobs, stop_timeout: 5s}
groups:
  - name: front
    type: reactor
    processes: 1
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [%s]
%s""" % (wp_ipc.LINE_REACTOR, ", ".join(routes), groups), start=start)

    def client(self, pool):
        c = wp_ipc.LineClient(os.path.join(pool.tmp, "kit.sock"))
        self.addCleanup(c.close)
        return c

    def example_pool(self, processes=1, **settings):
        lines = "".join("    %s: %s\n" % kv for kv in settings.items())
        return self.make_pool("""  - name: py
    type: job
    processes: %d
    command: %s
%s""" % (processes, wp_ipc.python_command(EXAMPLE), lines), ["py"])

    def request_job_pool(self, processes=1, **settings):
        lines = "".join("    %s: %s\n" % kv for kv in settings.items())
        pool = self.make_pool("""  - name: py
    type: job
    processes: %d
    command: %s
%s""" % (processes, wp_ipc.python_command("{tmp}/job.py"), lines), ["py"],
                              start=False)
        pool.write("job.py", self.job_script())
        pool.start()
        return pool

    # -- the example job

    def test_example_answers_and_is_replaced_after_sigkill(self):
        pool = self.example_pool()
        c = self.client(pool)
        self.assertEqual(c.request_until_ok("py", "hello python").body,
                         "HELLO PYTHON")
        (old,) = pool.children("py")
        os.kill(old.pid, signal.SIGKILL)
        pool.wait_for_log(r"py\[0\] pid %d killed by signal SIGKILL"
                          % old.pid)
        pool.wait_for_log(r"spawned py\[0\] pid (?!%d\b)\d+" % old.pid)
        self.assertEqual(c.request_until_ok("py", "again").body, "AGAIN")
        new = pool.child("py", 0)
        self.assertNotEqual(new.pid, old.pid)
        self.assertEqual(pool.find_log(r"py\[0\] \d+: Traceback"), [])

    def test_handler_exception_is_an_error_reply(self):
        pool = self.example_pool()
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        (job,) = pool.children("py")
        c.sock.sendall(b"bad send py \xff\xfe not utf-8\n")
        a = c.answer("bad")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, HANDLER_ERROR, a)
        self.assertIn("utf-8", a.body)
        self.assertEqual(c.request("py", "fine").body, "FINE")
        self.assertEqual(pool.child("py", 0).pid, job.pid)

    def test_many_requests_over_several_processes(self):
        pool = self.example_pool(processes=3, max_inflight=2)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        ids = c.send_many([("py", "n%d" % n, None) for n in range(300)])
        for n, id_ in enumerate(ids):
            a = c.answer(id_)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "N%d" % n)

    def test_graceful_stop(self):
        pool = self.request_job_pool(processes=2)
        # Python starts slowly on a busy machine: a SIGTERM before the
        # library is loaded would find the default action.
        pool.wait_for_log(r"py\[\d\] \d+: ready$", count=2)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        jobs = pool.children("py")
        c.close()  # the kit reactor waits for its connections to close
        self.assertEqual(pool.stop(), 0)
        for job in jobs:
            pool.wait_for_log(r"py\[%d\] pid %d exited with code 0"
                              % (job.index, job.pid))
        self.assertEqual(pool.find_log(r"still running|killed by signal"), [])

    def test_drain_on_scale_down_finishes_in_flight_work(self):
        pool = self.request_job_pool(processes=2, max_inflight=1)
        pool.wait_for_log(r"py\[\d\] \d+: ready$", count=2)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        retiring = pool.child("py", 1)
        # One long request on each process (least in flight, max 1 each).
        ids = c.send_many([("py", "sleep:1500", None)] * 2)
        mark = pool.mark()
        with open(pool.path) as f:
            pool.reload(f.read().replace("processes: 2", "processes: 1"))
        for id_ in ids:
            a = c.answer(id_)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "slept")
        pool.wait_for_log(r"py\[1\] pid %d exited with code 0"
                          % retiring.pid, since=mark)
        self.assertTrue(c.request("py", "after").ok)
        self.assertEqual([ch.index for ch in pool.children("py")], [0])

    def test_heartbeats_keep_an_idle_job_alive(self):
        pool = self.example_pool(heartbeat_timeout="600ms")
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        (job,) = pool.children("py")
        time.sleep(2.5)  # a wait, not an assert: several heartbeat periods
        self.assertEqual(c.request("py", "awake").body, "AWAKE")
        self.assertEqual(pool.child("py", 0).pid, job.pid)
        self.assertEqual(pool.find_log(r"is hung"), [])

    # -- the request object: concurrency, progress, cancel

    def test_max_inflight_runs_handlers_at_once(self):
        pool = self.request_job_pool(processes=1, max_inflight=3)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        ids = c.send_many([("py", self.CONCURRENT + ":3", None)] * 3)
        for id_ in ids:
            a = c.answer(id_, timeout=40)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "together 3")

    def test_progress(self):
        pool = self.request_job_pool()
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        a = c.request("py", "progress:4")
        self.assertTrue(a.ok, a)
        self.assertEqual(a.body, "done progress:4")
        self.assertEqual(len(a.progress), 4, a.progress)
        for n, line in enumerate(a.progress, 1):
            _, fraction, text = line.split(" ", 2)
            self.assertAlmostEqual(float(fraction), n / 4.0, places=3)
            self.assertEqual(text, "step %d" % n)

    def test_cancel_running_and_queued(self):
        pool = self.request_job_pool(max_inflight=1)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        (job,) = pool.children("py")
        # The first runs (and waits to be cancelled); the second is queued
        # in the reactor behind it.
        c.write("s1 send py sleep:60000\ns2 send py queued\n"
                "c1 cancel s2\nc2 cancel s1\n")
        for id_ in ("s1", "s2"):
            a = c.answer(id_)
            self.assertFalse(a.ok, a)
            self.assertEqual(a.code, CANCELLED, a)
        # The job noticed the cancel at once (well within the grace period
        # after which it would be killed) and keeps serving.
        a = c.request("py", "next")
        self.assertTrue(a.ok, a)
        self.assertEqual(a.body, "%d next" % job.pid)
        self.assertEqual(pool.find_log(r"killing py"), [])

    def test_killed_mid_request_is_replaced(self):
        pool = self.request_job_pool(max_inflight=2)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        (old,) = pool.children("py")
        running = c.send("py", "sleep:60000")
        # Killed once its handler runs (the job says so), not after a
        # fixed pause a slow machine could outlast before it arrives.
        pool.wait_for_log(r"py\[0\] %d: sleeping sleep:60000" % old.pid)
        os.kill(old.pid, signal.SIGKILL)
        a = c.answer(running)
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, wp_ipc.WORKER_DIED, a)
        self.assertIn("SIGKILL", a.body)
        pool.wait_for_log(r"spawned py\[0\] pid (?!%d\b)\d+" % old.pid)
        a = c.request_until_ok("py", "again")
        self.assertNotEqual(a.body.split()[0], str(old.pid))

    def test_max_requests_recycles_and_loses_nothing(self):
        pool = self.request_job_pool(max_requests=5)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        (first,) = pool.children("py")
        for n in range(12):
            a = c.request_until_ok("py", "n%d" % n)
            self.assertTrue(a.body.endswith(" n%d" % n), a)
        # Reported at once when the fifth was answered, not a second later.
        pool.wait_for_log(r"recycling py\[0\] pid %d: answered [5-9] "
                          r"requests \(max_requests 5\)" % first.pid)
        pool.wait_for_log(r"py\[0\] pid %d exited with code 0" % first.pid)
        self.assertNotEqual(pool.child("py", 0).pid, first.pid)

    # -- a Python sender

    def test_python_service_sends(self):
        pool = self.make_pool("""  - name: fwd
    type: service
    processes: 1
    command: %s
    routes_to: [echo]
  - {name: echo, type: job, processes: 1, command: [workerpool, builtin, echo-job]}
  - {name: other, type: job, processes: 1, command: [workerpool, builtin, echo-job]}
""" % wp_ipc.python_command("{tmp}/fwd.py"), ["fwd"], start=False)
        pool.write("fwd.py", FORWARDING_SERVICE % {"pydir": wp_ipc.PYTHON_DIR})
        pool.start()
        c = self.client(pool)

        def forwarded(text):
            a = c.request("fwd", text)
            self.assertTrue(a.ok, a)
            return json.loads(a.body)

        c.request_until_ok("fwd", "echo warm-up")  # fwd said hello
        wp.wait_until(lambda: forwarded("echo hi")["ok"] or
                      time.sleep(0.1), what="the service reaching echo")
        self.assertEqual(forwarded("echo through python"),
                         {"ok": True, "code": None, "text": "through python"})
        result = forwarded("echo fail: no")
        self.assertEqual(result["code"], HANDLER_ERROR, result)
        self.assertEqual(result["text"], "fail: no")
        for target, why in (("other", "routes_to"),
                            ("front", "a service may not send to a reactor")):
            result = forwarded(target + " x")
            self.assertEqual(result["code"], REFUSED, result)
            self.assertIn(why, result["text"])
        result = forwarded("echo crash")
        self.assertEqual(result["code"], wp_ipc.WORKER_DIED, result)
        self.assertIn("SIGABRT", result["text"])
        wp.wait_until(lambda: forwarded("echo back")["ok"] or
                      time.sleep(0.1), what="echo replaced")


class InlineHandlerTest(PythonJobTest):
    """What running on the I/O thread must not cost: a plain handler that
    blocks hands the loop over, so heartbeats and other requests go on."""

    def blocking_pool(self, **settings):
        lines = "".join("    %s: %s\n" % kv for kv in settings.items())
        pool = self.make_pool("""  - name: py
    type: job
    processes: 1
    command: %s
%s""" % (wp_ipc.python_command("{tmp}/job.py"), lines), ["py"], start=False)
        pool.write("job.py", BLOCKING_JOB % {"pydir": wp_ipc.PYTHON_DIR})
        pool.start()
        return pool

    def test_a_blocking_handler_does_not_stop_the_others(self):
        pool = self.blocking_pool(max_inflight=2)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        (job,) = pool.children("py")
        slow = c.send("py", "sleep:3000")
        # Answered while the first still sleeps, by the same process.
        a = c.request("py", "quick")
        self.assertTrue(a.ok, a)
        self.assertEqual(a.body, "%d quick" % job.pid)
        self.assertIsNone(c._answers.get(slow), "the sleep answered early")
        self.assertEqual(c.answer(slow).body, "slept")

    def test_a_blocking_handler_does_not_stop_heartbeats(self):
        pool = self.blocking_pool(max_inflight=1, heartbeat_timeout="600ms")
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        (job,) = pool.children("py")
        a = c.request("py", "sleep:2500")  # four heartbeat timeouts
        self.assertEqual(a.body, "slept")
        self.assertEqual(pool.child("py", 0).pid, job.pid)
        self.assertEqual(pool.find_log(r"is hung"), [])


class ThreadedPythonJobTest(PythonJobTest):
    """serve(threads=True): a thread per request, as before."""

    THREADS = True


class AsyncPythonJobTest(PythonJobTest):
    """`async def` handlers: tasks on the event loop that does the I/O."""

    CONCURRENT = "gather"

    def job_script(self):
        return ASYNC_JOB % {"pydir": wp_ipc.PYTHON_DIR}

    def test_many_in_flight_in_one_process(self):
        pool = self.request_job_pool(processes=1, max_inflight=50)
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        ids = c.send_many([("py", "gather:50", None)] * 50)
        for id_ in ids:
            a = c.answer(id_, timeout=40)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "together 50")

    def test_handler_errors(self):
        pool = self.request_job_pool()
        c = self.client(pool)
        c.request_until_ok("py", "warm-up")
        a = c.request("py", "raise")
        self.assertEqual((a.ok, a.code, a.body),
                         (False, HANDLER_ERROR, "raised on purpose"))
        a = c.request("py", "number")
        self.assertEqual((a.ok, a.code), (False, HANDLER_ERROR), a)
        self.assertIn("bytes or str", a.body)
        self.assertTrue(c.request("py", "fine").ok)

    def test_python_service_sends(self):
        # The service awaits its own requests (Client.asend).
        pool = self.make_pool("""  - name: fwd
    type: service
    processes: 1
    command: %s
    routes_to: [echo]
  - {name: echo, type: job, processes: 1, command: [workerpool, builtin, echo-job]}
  - {name: other, type: job, processes: 1, command: [workerpool, builtin, echo-job]}
""" % wp_ipc.python_command("{tmp}/fwd.py"), ["fwd"], start=False)
        pool.write("fwd.py", self.job_script())
        pool.start()
        c = self.client(pool)

        def forwarded(text):
            a = c.request("fwd", "send:" + text)
            self.assertTrue(a.ok, a)
            return json.loads(a.body)

        c.request_until_ok("fwd", "warm-up")
        wp.wait_until(lambda: forwarded("echo hi")["ok"] or
                      time.sleep(0.1), what="the service reaching echo")
        self.assertEqual(forwarded("echo through asyncio"),
                         {"ok": True, "code": None, "text": "through asyncio"})
        result = forwarded("echo fail: no")
        self.assertEqual(result["code"], HANDLER_ERROR, result)
        result = forwarded("other x")
        self.assertEqual(result["code"], REFUSED, result)
        self.assertIn("routes_to", result["text"])
        result = forwarded("echo crash")
        self.assertEqual(result["code"], wp_ipc.WORKER_DIED, result)


class BusyPollTest(wp.TestCase):
    """The Python library busy-polls its links as the C++ one does
    (docs/PROTOCOL.md, "Busy polling"): with the reactor on one CPU and
    the Python jobs on the other, every request still gets its own answer,
    and busy_poll_us: 0 turns it off. Whether a poll finds a frame within
    its window is a matter of speed (a sanitized reactor is slow), so how
    many reads it saves is measured in bench/, not asserted here."""

    def group_requests(self, pool, name):
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     os.path.join(pool.tmp, "py.sock")])
        self.assertEqual(code, 0, err)
        (group,) = [g for g in json.loads(out)["groups"] if g["name"] == name]
        return group["requests"]

    @unittest.skipUnless(len(os.sched_getaffinity(0)) >= 2 and
                         shutil.which("taskset"), "needs two CPUs and taskset")
    def test_busy_polling_python_jobs_on_another_cpu(self):
        cpus = sorted(os.sched_getaffinity(0))
        job = ", ".join('"%s"' % a for a in (
            ["taskset", "-c", str(cpus[1])] +
            json.loads(wp_ipc.python_command(EXAMPLE))))
        pool = self.pool("""
pool: {name: pybusy, stop_timeout: 5s, control_socket: "{tmp}/py.sock"}
groups:
  - name: front
    type: reactor
    processes: 1
    command: [taskset, -c, "%(cpu0)d", "%(reactor)s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [py, quiet]
  - name: py
    type: job
    processes: 1
    max_inflight: 16
    command: [%(job)s]
  - name: quiet
    type: job
    processes: 1
    max_inflight: 16
    busy_poll_us: 0
    command: [%(job)s]
""" % {"cpu0": cpus[0], "reactor": wp_ipc.LINE_REACTOR, "job": job})
        c = wp_ipc.LineClient(os.path.join(pool.tmp, "kit.sock"))
        self.addCleanup(c.close)
        self.assertEqual(c.request_until_ok("py", "warm-up").body, "WARM-UP")
        c.request_until_ok("quiet", "warm-up")
        ids = c.send_many([("py", "r%d" % n, None) for n in range(500)])
        for n, id_ in enumerate(ids):
            a = c.answer(id_)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "R%d" % n)
        # (The job answers in upper case; a flood wants its payload back.)
        self.assertEqual(c.answer(c.flood("py", 20000, 64, "F" * 200),
                                  timeout=120).body, "20000")
        wp.wait_until(lambda: self.group_requests(pool, "py")
                      .get("served", 0) >= 20501 or None,
                      what="py's served count")
        self.assertEqual(c.answer(c.flood("quiet", 5000, 64, "Q" * 200),
                                  timeout=120).body, "5000")
        wp.wait_until(lambda: self.group_requests(pool, "quiet")
                      .get("served", 0) >= 5001 or None,
                      what="quiet's served count")
        self.assertEqual(
            self.group_requests(pool, "quiet").get("busy_poll_reads", 0), 0)


class LibraryTest(unittest.TestCase):
    """src/python/workerpool.py against a fake pool (no Watcher)."""

    def fake(self, script=EXAMPLE):
        pool = wp_ipc.FakePool([wp_ipc.PYTHON, script])
        self.addCleanup(pool.close)
        return pool

    def hello(self, pool):
        f = pool.reader.read()
        self.assertIsNotNone(f, "no hello")
        type_, id_, aux, meta, body = f
        self.assertEqual(type_, 16)
        hello = json.loads(body)
        self.assertEqual(hello, {"pid": pool.proc.pid, "protocol": 1})

    def test_hello_config_links_requests_drain(self):
        pool = self.fake()
        self.hello(pool)
        pool.send(26, {"max_inflight": 2, "heartbeat_ms": 300})
        # Heartbeats come (at a third of the timeout).
        f = pool.reader.read_until(23)
        self.assertIsNotNone(f, "no heartbeat")
        a = pool.add_link("server", "front", 0, 1111)
        b = pool.add_link("server", "front", 1, 2222)
        ra, rb = wp_ipc.FrameReader(a), wp_ipc.FrameReader(b)
        # Pipelined requests on two links, with meta and priorities.
        a.sendall(b"".join(wp_ipc.frame(1, "a%d" % n, id_=n + 1, aux=n,
                                        meta='{"k": 1}') for n in range(50)))
        b.sendall(wp_ipc.frame(1, "from b", id_=7, aux=0xFFFFFFFF))
        got = {}
        while len(got) < 50:
            type_, id_, aux, meta, body = ra.read()
            self.assertEqual(type_, 2, body)
            got[id_] = body
        self.assertEqual(got, {n + 1: b"A%d" % n for n in range(50)})
        self.assertEqual(rb.read()[:5], (2, 7, 0, b"", b"FROM B"))
        # A non-UTF-8 body: an error reply with code 1.
        b.sendall(wp_ipc.frame(1, b"\xff", id_=8))
        type_, id_, aux, meta, body = rb.read()
        self.assertEqual((type_, id_, aux), (3, 8, HANDLER_ERROR))
        # Drain: it takes no more and exits once its senders hung up.
        pool.send(25, {})
        b.close()
        time.sleep(0.3)
        self.assertIsNone(pool.proc.poll(), "exited with a sender linked")
        a.sendall(wp_ipc.frame(1, "late", id_=99))
        self.assertEqual(ra.read()[:5], (2, 99, 0, b"", b"LATE"))
        a.close()
        self.assertEqual(pool.wait_exit(), 0, pool.output())

    def test_exits_when_the_pool_channel_closes(self):
        pool = self.fake()
        self.hello(pool)
        pool.send(26, {"max_inflight": 1, "heartbeat_ms": 0})
        link = pool.add_link()
        link.sendall(wp_ipc.frame(1, "x", id_=1))
        self.assertEqual(wp_ipc.FrameReader(link).read()[4], b"X")
        pool.ours.close()
        self.assertEqual(pool.wait_exit(), 0, "did not exit on EOF")
        self.assertIn("exiting", pool.output())

    def test_sigterm_is_a_drain(self):
        pool = self.fake()
        self.hello(pool)
        pool.send(26, {"max_inflight": 1})
        link = pool.add_link()
        reader = wp_ipc.FrameReader(link)
        link.sendall(wp_ipc.frame(1, "x", id_=1))
        self.assertEqual(reader.read()[4], b"X")
        pool.proc.send_signal(signal.SIGTERM)
        link.sendall(wp_ipc.frame(1, "y", id_=2))
        self.assertEqual(reader.read()[4], b"Y")
        link.close()
        self.assertEqual(pool.wait_exit(), 0, pool.output())

    def test_queued_cancel_and_priority_on_the_server(self):
        script = os.path.join(self.tmpdir(), "job.py")
        with open(script, "w") as f:
            f.write(REQUEST_JOB % {"pydir": wp_ipc.PYTHON_DIR,
                                   "threads": False})
        pool = self.fake(script)
        self.hello(pool)
        pool.send(26, {"max_inflight": 1})
        link = pool.add_link()
        reader = wp_ipc.FrameReader(link)
        # One running, three queued in the job itself (max_inflight 1):
        # they start lowest priority first; a cancelled queued one answers
        # at once with code 7; the running one too, when cancelled.
        link.sendall(wp_ipc.frame(1, "sleep:60000", id_=1) +
                     wp_ipc.frame(1, "low", id_=2, aux=9) +
                     wp_ipc.frame(1, "high", id_=3, aux=(-5) & 0xFFFFFFFF) +
                     wp_ipc.frame(1, "gone", id_=4, aux=0) +
                     wp_ipc.frame(5, id_=4))
        type_, id_, aux, meta, body = reader.read()
        self.assertEqual((type_, id_, aux), (3, 4, CANCELLED), body)
        link.sendall(wp_ipc.frame(5, id_=1))
        answers = [reader.read() for _ in range(3)]
        self.assertEqual([(t, i, a) for t, i, a, _, _ in answers],
                         [(3, 1, CANCELLED), (2, 3, 0), (2, 2, 0)])

    def test_one_fd_per_peer_added_in_order(self):
        # Two peer_added frames written at once with their fds: one fd per
        # frame, in order.
        pool = self.fake()
        self.hello(pool)
        pool.send(26, {"max_inflight": 1})
        ends = [socket.socketpair() for _ in range(2)]
        data = [wp_ipc.frame(19, json.dumps({"role": "server", "group": "f",
                                             "index": n, "pid": 10 + n}))
                for n in range(2)]
        for (mine, its), d in zip(ends, data):
            socket.send_fds(pool.ours, [d], [its.fileno()])
            its.close()
        for n, (mine, _) in enumerate(ends):
            mine.sendall(wp_ipc.frame(1, "link %d" % n, id_=5))
            self.assertEqual(wp_ipc.FrameReader(mine).read()[4],
                             b"LINK %d" % n)
            mine.close()

    def test_garbage_config_falls_back_to_defaults(self):
        pool = self.fake()
        self.hello(pool)
        pool.send(26, {"max_inflight": "many", "heartbeat_ms": [1],
                       "max_requests": "lots", "busy_poll_us": None})
        pool.send(26, {"max_requests": -3})
        link = pool.add_link()
        reader = wp_ipc.FrameReader(link)
        for n in range(5):
            link.sendall(wp_ipc.frame(1, "x%d" % n, id_=n + 1))
            self.assertEqual(reader.read()[:2], (2, n + 1))
        self.assertIsNone(pool.proc.poll())

    def test_max_requests_reports_stats_at_once(self):
        pool = self.fake()
        self.hello(pool)
        pool.send(26, {"max_inflight": 4, "max_requests": 3})
        link = pool.add_link()
        reader = wp_ipc.FrameReader(link)
        started = time.monotonic()
        link.sendall(b"".join(wp_ipc.frame(1, "x", id_=n) for n in (1, 2)) +
                     wp_ipc.frame(1, b"\xff", id_=3))  # an error counts too
        answers = [reader.read()[:3] for _ in range(3)]
        self.assertEqual(answers, [(2, 1, 0), (2, 2, 0), (3, 3, HANDLER_ERROR)])
        f = pool.reader.read_until(24)
        self.assertIsNotNone(f, "no stats")
        self.assertLess(time.monotonic() - started, 0.9,
                        "stats came with the 1 s timer, not at once")
        stats = json.loads(f[4])
        self.assertEqual((stats["served"], stats["served_errors"],
                          stats["serving"]), (2, 1, 0), stats)

    def test_garbage_on_a_link_closes_only_that_link(self):
        pool = self.fake()
        self.hello(pool)
        pool.send(26, {"max_inflight": 2})
        bad, good = pool.add_link(pid=11), pool.add_link(pid=12)
        good_reader = wp_ipc.FrameReader(good)
        # A reply on a link where the child serves: ignored.
        good.sendall(wp_ipc.frame(2, "not a request", id_=1) +
                     wp_ipc.frame(1, "after", id_=2))
        self.assertEqual(good_reader.read()[:5], (2, 2, 0, b"", b"AFTER"))
        # A header of another protocol version: that link is closed.
        bad.sendall(b"\x00" * 4 + b"\x09" + b"\x01" + b"\x00" * 18)
        bad.settimeout(wp.deadline(10))
        self.assertEqual(bad.recv(100), b"", "the bad link stayed open")
        good.sendall(wp_ipc.frame(1, "still", id_=3))
        self.assertEqual(good_reader.read()[:5], (2, 3, 0, b"", b"STILL"))
        self.assertIn("bad frame", self.output_so_far(pool))

    def test_async_handler_with_threads_is_an_error(self):
        script = os.path.join(self.tmpdir(), "job.py")
        with open(script, "w") as f:
            f.write("import sys\nsys.path.insert(0, %r)\nimport workerpool\n"
                    "async def handler(body, meta):\n    return body\n"
                    "workerpool.serve(handler, threads=True)\n"
                    % wp_ipc.PYTHON_DIR)
        pool = self.fake(script)
        self.hello(pool)
        self.assertNotEqual(pool.wait_exit(), 0)
        self.assertIn("ValueError: an async handler runs on the event loop",
                      pool.output())

    def test_async_job_through_the_fake_pool(self):
        script = os.path.join(self.tmpdir(), "job.py")
        with open(script, "w") as f:
            f.write(ASYNC_JOB % {"pydir": wp_ipc.PYTHON_DIR})
        pool = self.fake(script)
        self.hello(pool)
        pool.send(26, {"max_inflight": 8})
        link = pool.add_link()
        reader = wp_ipc.FrameReader(link)
        # Cancel of a running task; a queued one would not need the loop.
        link.sendall(wp_ipc.frame(1, "sleep:60000", id_=1) +
                     wp_ipc.frame(1, "hi", id_=2))
        self.assertEqual(reader.read()[:2], (2, 2))
        link.sendall(wp_ipc.frame(5, id_=1))
        self.assertEqual(reader.read()[:3], (3, 1, CANCELLED))
        # Drain: exits once the sender hung up.
        pool.send(25, {})
        link.close()
        code = pool.wait_exit()
        output = pool.output()
        self.assertEqual(code, 0, output)
        # The handler saw asyncio.CancelledError.
        self.assertIn("cancelled sleep:60000", output)

    def test_asend_from_another_event_loop(self):
        # A sender that runs the library's loop on its thread (start()) and
        # its own asyncio loop on the main thread.
        script = os.path.join(self.tmpdir(), "sender.py")
        with open(script, "w") as f:
            f.write(r"""
import asyncio, sys
sys.path.insert(0, %r)
import workerpool
client = workerpool.Client().start()

async def main():
    reply = await client.asend("echo", b"ping", timeout=30)
    print("reply", reply.ok, reply.body.decode(), flush=True)
    reply = await client.asend("echo", b"slow", timeout=0.5)
    print("timeout", int(reply.code), flush=True)
    await asyncio.sleep(1)  # the cancel frame goes out before the exit

asyncio.run(main())
""" % wp_ipc.PYTHON_DIR)
        pool = self.fake(script)
        self.hello(pool)
        pool.send(26, {"max_inflight": 1})
        f = pool.reader.read_until(17)
        self.assertEqual(json.loads(f[4]), {"group": "echo"})
        link = pool.add_link(role="sender", group="echo", pid=33)
        pool.send(27, {"group": "echo", "max_inflight": 4, "queue_limit": 10,
                       "request_timeout_ms": 30000})
        reader = wp_ipc.FrameReader(link)
        type_, id_, aux, meta, body = reader.read()
        self.assertEqual((type_, body), (1, b"ping"))
        link.sendall(wp_ipc.frame(2, "pong", id_=id_))
        type_, slow_id, aux, meta, body = reader.read()
        self.assertEqual((type_, body), (1, b"slow"))
        # Not answered: the timeout cancels it.
        self.assertEqual(reader.read()[:2], (5, slow_id))
        code = pool.wait_exit()
        output = pool.output()
        self.assertEqual(code, 0, output)
        self.assertIn("reply True pong\ntimeout 7\n", output)

    def test_blocking_and_quick_handlers_mixed(self):
        # Every tenth handler blocks 20 ms (about the hand-off delay): the
        # loop moves between threads many times, and every answer arrives,
        # each on its own id.
        script = os.path.join(self.tmpdir(), "mixed.py")
        with open(script, "w") as f:
            f.write("import sys, time\nsys.path.insert(0, %r)\n"
                    "import workerpool\n"
                    "def handler(body, meta):\n"
                    "    if int(body) %% 10 == 0:\n"
                    "        time.sleep(0.02)\n"
                    "    return b'n' + body\n"
                    "workerpool.serve(handler)\n" % wp_ipc.PYTHON_DIR)
        pool = self.fake(script)
        self.hello(pool)
        pool.send(26, {"max_inflight": 4, "heartbeat_ms": 300})
        link = pool.add_link()
        reader = wp_ipc.FrameReader(link)
        link.sendall(b"".join(wp_ipc.frame(1, str(n), id_=n + 1)
                              for n in range(400)))
        answers = {}
        while len(answers) < 400:
            type_, id_, aux, meta, body = reader.read()
            self.assertEqual(type_, 2, body)
            answers[id_] = body
        self.assertEqual(answers, {n + 1: b"n%d" % n for n in range(400)})
        link.close()
        pool.send(25, {})
        self.assertEqual(pool.wait_exit(), 0)

    def output_so_far(self, pool):
        # The child's stderr and stdout share a pipe: read what is there.
        import select
        out = b""
        while select.select([pool.proc.stdout], [], [], 0.5)[0]:
            chunk = os.read(pool.proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
        return out.decode(errors="replace")

    def tmpdir(self):
        import shutil
        import tempfile
        d = tempfile.mkdtemp(prefix="wp-pylib-")
        self.addCleanup(shutil.rmtree, d, True)
        return d


if __name__ == "__main__":
    wp_ipc.require_kit()
    wp.main()
