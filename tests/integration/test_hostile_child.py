#!/usr/bin/env python3
"""The Watcher never dies of what a child sends on its pool channel.

A child is untrusted input: other people's code, in any language. These
children speak raw frames (no client library) and send every control frame
type with wrong JSON types, missing fields, non-object bodies, huge and
negative numbers; kill_peer for the Watcher, pid 1, themselves and children
they do not send to; frames before hello, hello twice, frame types children
never send; and floods of valid frames. Until this was fixed, one kill_peer
{"pid": "x"} or one stats {"served": "x"} in a group with max_requests
aborted the Watcher (an uncaught nlohmann type_error) and took every child
with it.

What must hold: the Watcher stays up; each kind of offence is logged once per
child, every offending frame is counted in the group's protocol_errors
(status --json and the metrics endpoint); a child that keeps offending loses
its channel and is restarted with backoff; every other group keeps serving
and none of their requests fails.
"""

import json
import os
import re
import socket
import urllib.request

import wp
import wp_ipc

ECHO = "[workerpool, builtin, echo-job]"

# Every offence kind the Watcher names, as in src/core/child_protocol.h.
KINDS = ("bad-body", "bad-field", "before-hello", "repeated-hello",
         "route-already-open", "kill-refused", "unknown-frame", "too-large")

# A raw-frame child. It prints "offences N" with the number of frames it
# sent that the Watcher must refuse, then "done", then reads its channel
# until EOF (the Watcher going away, or closing it).
ROGUE = r"""
import json, os, socket, struct, sys, time
H = struct.Struct("<IBBHQII")
HELLO, ROUTE_OPEN, KILL_PEER, HEARTBEAT, STATS = 16, 17, 22, 23, 24
pool = socket.socket(fileno=int(os.environ["WORKERPOOL_IPC_FD"]))
offences = 0

def send(type_, body):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    pool.sendall(H.pack(len(body), 1, type_, 0, 0, 0, 0) + body)

def bad(type_, body):
    global offences
    offences += 1
    send(type_, body)

others = json.loads(os.environ["ROGUE_TARGETS"])  # pids of other children
# Before hello.
bad(ROUTE_OPEN, {"group": "echo"})
bad(STATS, {"served": 1})
bad(KILL_PEER, {"pid": others[0]})
bad(HEARTBEAT, {})
send(HELLO, {"pid": os.getpid(), "protocol": 1})
bad(HELLO, {"pid": os.getpid(), "protocol": 1})
# Bodies that are no JSON object, for every type that has fields.
for t in (ROUTE_OPEN, KILL_PEER, STATS):
    for body in (b"[]", b"7", b'"text"', b"null", b"{not json", b"\xff\xfe",
                 b"[" * 3000 + b"]" * 3000):
        bad(t, body)
# Wrong types, missing fields, huge and negative numbers.
for body in ({"pid": "x"}, {"pid": -1}, {"pid": 0}, {"pid": 1.5}, {},
             {"pid": 2 ** 64 - 1}, {"pid": 2 ** 31}, {"pid": None},
             {"pid": True}, {"pid": others[0], "reason": ["x"]}):
    bad(KILL_PEER, body)
for body in ({"served": "x"}, {"served": -5}, {"served_errors": 1.5},
             {"inflight": None}, {"latency": 7}, {"app": []},
             {"latency": {"echo": {"bounds_ms": [1], "counts": ["a", 1]}}}):
    bad(STATS, body)
for body in ({"group": 7}, {}, {"group": ""}, {"group": ["echo"]}):
    bad(ROUTE_OPEN, body)
bad(STATS, {"app": {"x": "y" * 70000}})                       # too large
# Kills it may not ask for: the Watcher, init, itself, children of groups it
# does not send to.
for pid in [os.getppid(), 1, os.getpid()] + others:
    bad(KILL_PEER, {"pid": pid, "reason": "hostile"})
# Frame types a child never sends on its pool channel.
for t in (1, 2, 3, 18, 19, 25, 26, 27):
    bad(t, {})
# A route it may open, then again.
if os.environ.get("ROGUE_ROUTE"):
    send(ROUTE_OPEN, {"group": os.environ["ROGUE_ROUTE"]})
    bad(ROUTE_OPEN, {"group": os.environ["ROGUE_ROUTE"]})
# Floods of valid frames: none is an offence.
flood = []
cap = int(os.environ.get("ROGUE_SERVED_MAX", "100000"))
for n in range(20000):
    body = json.dumps({"served": min(n, cap), "inflight": 0}).encode()
    flood.append(H.pack(len(body), 1, STATS, 0, 0, 0, 0) + body)
    flood.append(H.pack(2, 1, HEARTBEAT, 0, 0, 0, 0) + b"{}")
pool.sendall(b"".join(flood))
print("offences %d" % offences, flush=True)
print("done", flush=True)
while pool.recv(65536):
    pass
print("the pool closed the channel", flush=True)
"""

# A job that offends without end: the Watcher closes its channel and it is
# restarted. The first run also sends what once aborted the Watcher. Later
# runs (a mark file exists) only sleep.
FLOODER = r"""
import json, os, socket, struct, sys, time
H = struct.Struct("<IBBHQII")
mark = os.path.join(os.environ["ROGUE_DIR"], "flooder.mark")
pool = socket.socket(fileno=int(os.environ["WORKERPOOL_IPC_FD"]))
def send(type_, body):
    body = json.dumps(body).encode()
    pool.sendall(H.pack(len(body), 1, type_, 0, 0, 0, 0) + body)
send(16, {"pid": os.getpid(), "protocol": 1})
if os.path.exists(mark):
    print("calm", flush=True)
    while pool.recv(65536):
        pass
    sys.exit(0)
open(mark, "w").close()
send(22, {"pid": "x"})
send(24, {"served": "x"})
try:
    for n in range(100000):
        send(24, {"served": "x%d" % n})
except OSError:
    pass
pool.settimeout(60)
try:
    while pool.recv(65536):
        pass
except OSError:
    pass
print("the pool closed the channel", flush=True)
"""


class HostileChildTest(wp.TestCase):

    def status(self, pool):
        code, out, err = wp.run_cli(
            ["status", "--json", "--socket",
             os.path.join(pool.tmp, "hostile.sock")])
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def group(self, status, name):
        for g in status["groups"]:
            if g["name"] == name:
                return g
        self.fail("no group %s" % name)

    def test_hostile_children_do_not_take_the_pool_down(self):
        wp_ipc.require_kit()
        port = free_port()
        pool = self.pool("""
pool: {name: hostile, stop_timeout: 3s, metrics: "127.0.0.1:%d"}
groups:
  - name: front
    type: reactor
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [echo]
  - {name: echo, type: job, processes: 2, command: %s, max_requests: 1000000}
  - {name: other, type: job, processes: 1, command: %s}
""" % (port, wp_ipc.LINE_REACTOR, ECHO, ECHO))
        client = wp_ipc.LineClient(os.path.join(pool.tmp, "kit.sock"))
        self.addCleanup(client.close)
        self.assertEqual(client.request_until_ok("echo", "warm").body, "warm")
        targets = [c.pid for c in pool.children("echo")] + \
            [pool.child("other", 0).pid]

        # Requests keep flowing from front to echo while the rogues act.
        ids = [client.send("echo", "before%d" % n) for n in range(200)]

        # The rogues join by reload: a reactor that may route to echo, and a
        # job (max_requests set, as in the original crash) that floods.
        pool.write("rogue.py", ROGUE)
        pool.write("flooder.py", FLOODER)
        with open(pool.path) as f:
            yaml = f.read()
        pool.reload(yaml + """
  - name: rogue
    type: reactor
    command: %s
    routes_to: [echo]
    env: {ROGUE_TARGETS: "%s", ROGUE_ROUTE: echo}
  - name: rogue-job
    type: job
    command: %s
    max_requests: 10
    env: {ROGUE_TARGETS: "%s", ROGUE_SERVED_MAX: "0"}
  - name: flooder
    type: job
    command: %s
    max_requests: 10
    restart: {backoff: {initial: 100ms}}
    env: {ROGUE_DIR: "{tmp}"}
""" % (wp_ipc.python_command("{tmp}/rogue.py"), json.dumps(targets),
       wp_ipc.python_command("{tmp}/rogue.py"), json.dumps(targets),
       wp_ipc.python_command("{tmp}/flooder.py")))

        # Each rogue sent everything and the Watcher read all of it.
        expected = {}
        for name in ("rogue", "rogue-job"):
            m = pool.wait_for_log(r"%s\[0\] \d+: offences (\d+)" % name,
                                  timeout=60)
            expected[name] = int(m.group(1))
            pool.wait_for_log(r"%s\[0\] \d+: done" % name)

        # The rogue's flood of valid stats comes after its offences on the
        # channel, and its "done" through another pipe: the Watcher may
        # still be reading the flood when the offences are all counted, so
        # wait for the flood's last figure too.
        def counted():
            s = self.status(pool)
            done = (all(self.group(s, n)["protocol_errors"] == expected[n]
                        for n in expected)
                    and self.group(s, "rogue")["requests"].get("served")
                    == 19999)
            return s if done else None
        status = wp.wait_until(
            counted, what="protocol_errors and the flood of the rogues",
            on_timeout=lambda: json.dumps(
                [(g["name"], g["protocol_errors"], g["requests"])
                 for g in self.status(pool)["groups"]]))
        self.assertEqual(self.group(status, "echo")["protocol_errors"], 0)
        self.assertEqual(self.group(status, "front")["protocol_errors"], 0)
        # The flood of valid stats reached the Watcher and counts as such.
        self.assertEqual(self.group(status, "rogue")["requests"]["served"],
                         19999)

        # Each kind of offence: one line per child, whatever the count.
        rogue_pid = pool.child("rogue", 0).pid
        for kind in KINDS:
            lines = pool.find_log(
                r"rogue\[0\] pid %d broke the pool protocol \(%s\)"
                % (rogue_pid, re.escape(kind)))
            self.assertEqual(len(lines), 1, "%s: %s" % (kind, lines))
        job_pid = pool.child("rogue-job", 0).pid
        for kind in KINDS:
            if kind == "route-already-open":
                continue  # a job may open no route
            self.assertEqual(len(pool.find_log(
                r"rogue-job\[0\] pid %d broke the pool protocol \(%s\)"
                % (job_pid, re.escape(kind)))), 1, kind)

        # Nobody was killed for them: the targets, the Watcher, the rogues.
        for pid in targets + [rogue_pid, job_pid]:
            self.assertTrue(wp.alive(pid), pid)
        self.assertTrue(pool.running())
        self.assertEqual(pool.find_log(r"killing "), [])

        # The flooder loses its channel, exits, and comes back calm.
        first = pool.wait_for_log(r"spawned flooder\[0\] pid (\d+)")
        pool.wait_for_log(r"flooder\[0\] pid %s: 1000 protocol errors; "
                          r"closing its pool channel" % first.group(1))
        pool.wait_for_log(r"flooder\[0\] pid %s (exited|killed)"
                          % first.group(1))
        pool.wait_for_log(r"flooder\[0\] \d+: calm")
        self.assertTrue(pool.running())

        # Every request of the other groups was answered, none failed.
        for n, id_ in enumerate(ids):
            answer = client.answer(id_)
            self.assertTrue(answer.ok, answer)
            self.assertEqual(answer.body, "before%d" % n)
        for n in range(200):
            self.assertEqual(client.request("echo", "after%d" % n).body,
                             "after%d" % n)
        self.assertEqual(
            [c.pid for c in pool.children("echo")] +
            [pool.child("other", 0).pid], targets)

        # The metrics endpoint counts them too.
        text = urllib.request.urlopen(
            "http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
        self.assertIn('workerpool_group_protocol_errors_total{group="rogue"} %d'
                      % expected["rogue"], text)
        self.assertIn('workerpool_group_protocol_errors_total{group="echo"} 0',
                      text)
        client.close()
        self.assertEqual(pool.stop(), 0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":
    wp_ipc.require_kit()
    wp.main()
