#!/usr/bin/env python3
"""Children in Node.js (src/node/workerpool.js), which cannot receive
descriptors, through links by connect (docs/PROTOCOL.md, "Links by
connect"): a Node.js job serves the C++ test-kit reactor (the Watcher
accepts the job's connection and passes it to the reactor by SCM_RIGHTS),
is replaced when killed, drains, honours cancel, sends progress, is
recycled by max_requests; a Node.js service sends to a C++ job (the other
way round). Garbage in hello's "links" and on a link path: a clear log line,
an offence counted, nothing else lost.

Environment: WORKERPOOL_BIN (the binary), WORKERPOOL_KIT_DIR (the directory
of line_reactor); node on PATH."""

import json
import os
import shutil
import signal
import sys
import time

import wp
import wp_ipc
from wp_ipc import CANCELLED, HANDLER_ERROR, NO_WORKERS, REFUSED

NODE = shutil.which("node") or "/usr/bin/node"
NODE_DIR = os.path.join(wp_ipc.TOP, "src", "node")
JOB = os.path.join(NODE_DIR, "examples", "job.js")
SENDER = os.path.join(NODE_DIR, "examples", "sender.js")

# A raw-frame child that takes links by connect. HELLO_LINKS is what it says
# in hello first (garbage, then "connect"). On each peer_added with a path it
# first lets a process of another pid (a grandchild) connect there, then
# connects itself, and answers each request with "raw <body>".
RAW = r"""
import json, os, selectors, socket, struct, subprocess, sys
H = struct.Struct("<IBBHQII")
pool = socket.socket(fileno=int(os.environ["WORKERPOOL_IPC_FD"]))

def frame(type_, body=b"", id_=0, aux=0):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return H.pack(len(body), 1, type_, 0, id_, aux, 0) + body

for links in json.loads(os.environ["HELLO_LINKS"]):
    pool.sendall(frame(16, {"pid": os.getpid(), "protocol": 1, "links": links}))
print("said hello", flush=True)
sel = selectors.DefaultSelector()
sel.register(pool, selectors.EVENT_READ, None)
buffers = {}
connect = os.environ.get("RAW_CONNECT", "yes") == "yes"
while True:
    for key, _ in sel.select():
        sock = key.fileobj
        data = sock.recv(65536)
        if not data:
            if sock is pool:
                sys.exit(0)
            sel.unregister(sock)
            continue
        buf = buffers.get(sock, b"") + data
        while len(buf) >= 24:
            length, _, type_, _, id_, aux, meta = H.unpack_from(buf)
            if len(buf) < 24 + length:
                break
            body = buf[24 + meta:24 + length]
            buf = buf[24 + length:]
            if sock is pool and type_ == 19:
                info = json.loads(body)
                if not connect:
                    print("ignoring", info["path"], flush=True)
                    continue
                # Another process connects first: the Watcher must refuse it.
                intruder = subprocess.run(
                    [sys.executable, "-c",
                     "import socket,sys; s=socket.socket(socket.AF_UNIX); "
                     "s.connect(sys.argv[1]); s.settimeout(10); "
                     "print('intruder got', s.recv(10), flush=True)",
                     info["path"]], capture_output=True, text=True, timeout=20)
                print(intruder.stdout.strip(), flush=True)
                link = socket.socket(socket.AF_UNIX)
                link.connect(info["path"])
                sel.register(link, selectors.EVENT_READ, None)
                print("linked", info["group"], flush=True)
            elif sock is not pool and type_ == 1:
                sock.sendall(frame(2, b"raw " + body, id_))
        buffers[sock] = buf
"""


class NodeJobTest(wp.TestCase):

    def make_pool(self, groups, routes, start=True):
        return self.pool("""
pool: {name: nodejobs, stop_timeout: 5s}
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

    def job_pool(self, processes=1, **settings):
        lines = "".join("    %s: %s\n" % kv for kv in settings.items())
        return self.make_pool("""  - name: js
    type: job
    processes: %d
    command: %s
%s""" % (processes, wp_ipc.yaml_list([NODE, JOB]), lines), ["js"])

    def pids_answering(self, c, count):
        """The pids of the processes that answered COUNT requests sent at
        once (spread over every linked process by least-in-flight)."""
        ids = c.send_many([("js", "pid", None)] * count)
        return set(c.answer(id_).body for id_ in ids)

    def front_inflight(self, pool):
        """Requests the front sent and awaits answers for (status --json;
        its children report their counts at most once a second)."""
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     os.path.join(pool.tmp, "nodejobs.sock")])
        self.assertEqual(code, 0, err)
        (front,) = [g for g in json.loads(out)["groups"]
                    if g["name"] == "front"]
        return front["inflight"]

    def assert_clean_links(self, pool):
        self.assertEqual(pool.find_log(r"cannot link|link-timeout|"
                                       r"link-refused|broke the pool"), [])

    def test_answers_and_is_replaced_after_sigkill(self):
        pool = self.job_pool()
        c = self.client(pool)
        self.assertEqual(c.request_until_ok("js", "hello node").body,
                         "HELLO NODE")
        (old,) = pool.children("js")
        os.kill(old.pid, signal.SIGKILL)
        pool.wait_for_log(r"js\[0\] pid %d killed by signal SIGKILL" % old.pid)
        pool.wait_for_log(r"spawned js\[0\] pid (?!%d\b)\d+" % old.pid)
        self.assertEqual(c.request_until_ok("js", "again").body, "AGAIN")
        self.assertNotEqual(pool.child("js", 0).pid, old.pid)
        # Killed with a request in flight: the sender hears how it died.
        (job,) = pool.children("js")
        # Killed once the front counts the request in flight on the job's
        # link (a slow front might not even have read the line yet). Its
        # report from while "again" was in flight may still stand: wait
        # for the one that counts none first.
        wp.wait_until(lambda: self.front_inflight(pool) == 0,
                      what="no request in flight")
        c.write("k1 send js sleep:60000\n")
        wp.wait_until(lambda: self.front_inflight(pool) == 1,
                      what="the request in flight to js[0]")
        os.kill(job.pid, signal.SIGKILL)
        a = c.answer("k1")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, wp_ipc.WORKER_DIED, a)
        self.assertIn("SIGKILL", a.body)
        self.assertEqual(c.request_until_ok("js", "third").body, "THIRD")
        a = c.request("js", "fail: on purpose")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, HANDLER_ERROR, a)
        self.assertEqual(a.body, "fail: on purpose")
        self.assert_clean_links(pool)

    def test_many_requests_over_several_processes(self):
        pool = self.job_pool(processes=3, max_inflight=4)
        c = self.client(pool)
        c.request_until_ok("js", "warm-up")
        # Every process is linked before the route opens for the reactor.
        wp.wait_until(lambda: len(self.pids_answering(c, 24)) == 3,
                      what="requests reaching all three processes")
        ids = c.send_many([("js", "n%d" % n, None) for n in range(300)])
        for n, id_ in enumerate(ids):
            a = c.answer(id_)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "N%d" % n)
        self.assert_clean_links(pool)

    def test_progress_and_cancel(self):
        pool = self.job_pool(max_inflight=1)
        c = self.client(pool)
        c.request_until_ok("js", "warm-up")
        (job,) = pool.children("js")
        a = c.request("js", "progress:4")
        self.assertTrue(a.ok, a)
        self.assertEqual(a.body, "done progress:4")
        self.assertEqual(len(a.progress), 4, a.progress)
        for n, line in enumerate(a.progress, 1):
            _, fraction, text = line.split(" ", 2)
            self.assertAlmostEqual(float(fraction), n / 4.0, places=3)
            self.assertEqual(text, "step %d" % n)
        # The first runs (until cancelled); the second is queued behind it.
        c.write("s1 send js sleep:60000\ns2 send js queued\n"
                "c1 cancel s2\nc2 cancel s1\n")
        for id_ in ("s1", "s2"):
            a = c.answer(id_)
            self.assertFalse(a.ok, a)
            self.assertEqual(a.code, CANCELLED, a)
        self.assertEqual(c.request("js", "next").body, "NEXT")
        self.assertEqual(pool.child("js", 0).pid, job.pid)
        self.assertEqual(pool.find_log(r"killing js"), [])

    def test_drain_on_scale_down_and_graceful_stop(self):
        pool = self.job_pool(processes=2, max_inflight=1)
        c = self.client(pool)
        c.request_until_ok("js", "warm-up")
        wp.wait_until(lambda: len(self.pids_answering(c, 8)) == 2,
                      what="both processes linked")
        retiring = pool.child("js", 1)
        ids = c.send_many([("js", "sleep:1500", None)] * 2)
        mark = pool.mark()
        with open(pool.path) as f:
            pool.reload(f.read().replace("processes: 2", "processes: 1"))
        for id_ in ids:
            a = c.answer(id_)
            self.assertTrue(a.ok, a)
            self.assertEqual(a.body, "slept")
        pool.wait_for_log(r"js\[1\] pid %d exited with code 0" % retiring.pid,
                          since=mark)
        self.assertTrue(c.request("js", "after").ok)
        (job,) = pool.children("js")
        c.close()
        self.assertEqual(pool.stop(), 0)
        pool.wait_for_log(r"js\[0\] pid %d exited with code 0" % job.pid)
        self.assertEqual(pool.find_log(r"still running|killed by signal"), [])

    def test_max_requests_recycles_and_loses_nothing(self):
        pool = self.job_pool(max_requests=5)
        c = self.client(pool)
        c.request_until_ok("js", "warm-up")
        first = pool.child("js", 0)
        for n in range(30):
            a = c.request_until_ok("js", "r%d" % n)
            self.assertEqual(a.body, "R%d" % n)
        pool.wait_for_log(r"recycling js\[0\] pid %d: answered \d+ requests "
                          r"\(max_requests 5\)" % first.pid)
        pool.wait_for_log(r"js\[0\] pid %d exited with code 0" % first.pid)
        self.assert_clean_links(pool)

    def test_node_service_sends_to_a_cpp_job(self):
        pool = self.make_pool("""  - name: relay
    type: service
    processes: 1
    command: %s
    routes_to: [echo]
  - {name: echo, type: job, processes: 2, command: [workerpool, builtin, echo-job]}
  - {name: other, type: job, processes: 1, command: [workerpool, builtin, echo-job]}
""" % wp_ipc.yaml_list([NODE, SENDER]), ["relay"])
        c = self.client(pool)

        def forwarded(text):
            a = c.request("relay", text)
            self.assertTrue(a.ok, a)
            return json.loads(a.body)

        c.request_until_ok("relay", "echo warm-up")
        self.assertEqual(forwarded("echo through node"),
                         {"ok": True, "code": None, "text": "through node"})
        result = forwarded("echo fail: no")
        self.assertEqual(result["code"], HANDLER_ERROR, result)
        result = forwarded("other x")
        self.assertEqual(result["code"], REFUSED, result)
        self.assertIn("routes_to", result["text"])
        result = forwarded("echo crash")
        self.assertEqual(result["code"], wp_ipc.WORKER_DIED, result)
        self.assertIn("SIGABRT", result["text"])
        wp.wait_until(lambda: forwarded("echo back")["ok"] or
                      time.sleep(0.1), what="echo replaced")
        self.assert_clean_links(pool)

    def test_node_sender_to_node_job(self):
        # Both ends connect: the job listens on the path the Watcher named,
        # the sender connects and writes the token first.
        pool = self.make_pool("""  - name: relay
    type: service
    processes: 1
    max_inflight: 8
    command: %s
    routes_to: [js]
  - name: js
    type: job
    processes: 2
    command: %s
""" % (wp_ipc.yaml_list([NODE, SENDER]), wp_ipc.yaml_list([NODE, JOB])),
            ["relay"])
        c = self.client(pool)

        def forwarded(text):
            a = c.request("relay", text)
            self.assertTrue(a.ok, a)
            return json.loads(a.body)

        c.request_until_ok("relay", "js warm-up")
        wp.wait_until(lambda: forwarded("js hi")["ok"] or time.sleep(0.1),
                      what="relay reaching js")
        self.assertEqual(forwarded("js node to node"),
                         {"ok": True, "code": None, "text": "NODE TO NODE"})
        def pids_reached():
            # Sent at once: the relay's handlers run together and its
            # requests spread over its links to js.
            ids = c.send_many([("relay", "js pid", None)] * 8)
            return set(json.loads(c.answer(id_).body)["text"] for id_ in ids)

        wp.wait_until(lambda: len(pids_reached()) == 2,
                      what="both js processes reached")
        old = pool.child("js", 0)
        os.kill(old.pid, signal.SIGKILL)
        pool.wait_for_log(r"spawned js\[0\] pid (?!%d\b)\d+" % old.pid)
        wp.wait_until(lambda: str(pool.child("js", 0).pid) in pids_reached(),
                      what="the new js process reached")
        self.assert_clean_links(pool)
        self.assertEqual(pool.find_log(r"no sender connected|cannot listen"),
                         [])

    def test_cpp_children_by_connect(self):
        # The C++ library asked for links by connect (WP_CONNECT_LINKS):
        # a sender that connects, and a job that connects.
        pool = self.pool("""
pool: {name: nodejobs, stop_timeout: 5s, log: {level: debug}}
groups:
  - name: front
    type: reactor
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock", WP_CONNECT_LINKS: "1"}
    routes_to: [echo]
  - name: plain
    type: reactor
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/plain.sock"}
    routes_to: [echoc]
  - {name: echo, type: job, processes: 2, command: [workerpool, builtin, echo-job]}
  - name: echoc
    type: job
    processes: 2
    command: [workerpool, builtin, echo-job]
    env: {WP_CONNECT_LINKS: "1"}
""" % (wp_ipc.LINE_REACTOR, wp_ipc.LINE_REACTOR))
        c = self.client(pool)
        plain = wp_ipc.LineClient(os.path.join(pool.tmp, "plain.sock"))
        self.addCleanup(plain.close)
        self.assertEqual(c.request_until_ok("echo", "by connect").body,
                         "by connect")
        self.assertEqual(plain.request_until_ok("echoc", "served").body,
                         "served")
        ids = plain.send_many([("echoc", "n%d" % n, None) for n in range(200)])
        for n, id_ in enumerate(ids):
            self.assertEqual(plain.answer(id_).body, "n%d" % n)
        # Those links were made by connect (the Watcher logs each at debug).
        for group in ("front", "echoc"):
            pool.wait_for_log(r"%s\[0\] pid \d+ connected its link in \d+ us"
                              % group)
        self.assertEqual(pool.find_log(r"(echo|plain)\[\d\] pid \d+ connected"),
                         [])
        self.assert_clean_links(pool)

    def raw_pool(self, hello_links, connect="yes"):
        pool = self.make_pool("""  - name: raw
    type: job
    processes: 1
    command: %s
    env: {HELLO_LINKS: '%s', RAW_CONNECT: "%s"}
  - {name: echo, type: job, processes: 1, command: [workerpool, builtin, echo-job]}
""" % (wp_ipc.python_command("{tmp}/raw.py"), json.dumps(hello_links),
       connect), ["raw", "echo"], start=False)
        pool.write("raw.py", RAW)
        pool.start()
        return pool

    def test_garbage_in_hello_links_and_on_the_link_path(self):
        pool = self.raw_pool([5, "Connect", "connect"])
        # Both bad hellos are refused with a clear line (logged once per
        # kind) and counted; the third is taken.
        pool.wait_for_log(r'raw\[0\] pid \d+ broke the pool protocol '
                          r'\(bad-field\): hello: "links" must be "fd" or '
                          r'"connect", not 5')
        c = self.client(pool)
        self.assertEqual(c.request_until_ok("echo", "fine").body, "fine")
        # A process of another pid connected to raw's link path first: the
        # Watcher closed it (it read EOF) and logged it; raw's own
        # connection became the link.
        self.assertEqual(c.request_until_ok("raw", "x").body, "raw x")
        pool.wait_for_log(r"raw\[0\] \d+: intruder got b''")
        pool.wait_for_log(r"refused a connection to link path \S+ from pid "
                          r"\d+ uid \d+: it was for raw\[0\] pid %d"
                          % pool.child("raw", 0).pid)
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     os.path.join(pool.tmp, "nodejobs.sock")])
        self.assertEqual(code, 0, err)
        groups = {g["name"]: g for g in json.loads(out)["groups"]}
        self.assertEqual(groups["raw"]["protocol_errors"], 2)
        self.assertEqual(groups["echo"]["protocol_errors"], 0)
        self.assertEqual(c.request("raw", "y").body, "raw y")

    def test_a_child_that_never_connects(self):
        pool = self.raw_pool(["connect"], connect="no")
        c = self.client(pool)
        # The reactor's route waits for the link, then opens without it:
        # requests fail with "no workers" instead of hanging.
        a = c.request("raw", "x", timeout=30)
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, NO_WORKERS, a)
        pool.wait_for_log(r"raw\[0\] pid \d+ broke the pool protocol "
                          r"\(link-timeout\): did not connect to its link "
                          r"path to front\[0\] within 5000 ms")
        self.assertEqual(c.request_until_ok("echo", "fine").body, "fine")
        # The path is gone: nothing is left listening.
        (found,) = pool.find_log(r"ignoring (\S+)")
        path = found.group(1)
        self.assertFalse(os.path.exists(path), path)
        # The private directory sits beside the control socket (here the
        # test's directory; $RUNTIME_DIRECTORY under systemd), mode 0700.
        directory = os.path.dirname(path)
        self.assertEqual(os.path.dirname(directory), pool.tmp)
        self.assertEqual(os.stat(directory).st_mode & 0o777, 0o700)
        c.close()
        self.assertEqual(pool.stop(), 0)
        self.assertFalse(os.path.exists(directory), "left behind")


if __name__ == "__main__":
    if not os.access(NODE, os.X_OK):
        sys.stderr.write("node not found: run scripts/setup\n")
        sys.exit(1)
    wp_ipc.require_kit()
    wp.main()
