#!/usr/bin/env python3
"""Links by connect (docs/PROTOCOL.md) beside links by descriptor passing.

    links_bench.py --workerpool BIN --ipc-bench BIN [--runs R] [--count N]
                   [--seconds S] [--window W] [--servers K] [--node NODE]

Three ways to link the same C++ sender (`ipc_bench reactor`, the PoolClient)
to the same C++ `echo-job`, each in a pool of its own, runs alternating:

  fd                 today's path: a socketpair, both ends by SCM_RIGHTS
  connect (server)   echo-job asks for links by connect (WP_CONNECT_LINKS=1):
                     it connects, the Watcher accepts, checks
                     SO_PEERCRED and passes the accepted end to the sender
  connect (sender)   the sender connects, echo-job gets the accepted end

Per way: the round trip of one 64 B request at a time (N of them: p50,
p99), requests/s with W of 1 KiB in flight for S seconds, and link set-up:
a sender (a raw-frame Python child) opens a route to a group of K
echo-jobs and times route_open -> every link usable (fd: K fds received;
server connects: route_opened, which waits for the K connections; sender
connects: route_opened, then its K connects).

With --node: a Node.js sender (src/node) to the same echo-job, one request
at a time and W in flight; Node's costs are its own, so the row is shown
beside the others, not as a ratio.

Prints one JSON object per measurement on stdout.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_LIB = os.path.join(TOP, "src", "node", "workerpool.js")

# A sender that measures link set-up: waits for its config and for the
# servers to be up, sends route_open, and times until every link is usable.
SETUP_SENDER = r"""
import array, json, os, socket, struct, sys, time
H = struct.Struct("<IBBHQII")
connect = os.environ.get("SENDER_LINKS") == "connect"
servers = int(os.environ["SERVERS"])
pool = socket.socket(fileno=int(os.environ["WORKERPOOL_IPC_FD"]))
def send(type_, body):
    b = json.dumps(body).encode()
    pool.sendall(H.pack(len(b), 1, type_, 0, 0, 0, 0) + b)
hello = {"pid": os.getpid(), "protocol": 1}
if connect:
    hello["links"] = "connect"
send(16, hello)
buf = b""
fds = []
def frames():
    global buf
    while True:
        while len(buf) >= 24:
            length, _, type_, _, _, _, meta = H.unpack_from(buf)
            if len(buf) < 24 + length:
                break
            body = buf[24 + meta:24 + length]
            buf = buf[24 + length:]
            yield type_, json.loads(body or b"{}")
        data, got, _, _ = socket.recv_fds(pool, 65536, 64)
        fds.extend(got)
        if not data:
            sys.exit(0)
        buf += data
stream = frames()
for type_, body in stream:
    if type_ == 26:
        break
time.sleep(float(os.environ["SETUP_DELAY"]))
t0 = time.perf_counter()
send(17, {"group": "echo"})
paths, peers, opened = [], 0, False
for type_, body in stream:
    if type_ == 19:
        peers += 1
        if "path" in body:
            paths.append(body["path"])
    elif type_ == 27:
        opened = True
    if opened and peers >= servers:
        break
links = []
for path in paths:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    links.append(s)
t1 = time.perf_counter()
print("setup_us %d links %d fds %d" % ((t1 - t0) * 1e6, peers, len(fds)),
      flush=True)
for type_, body in stream:
    pass
"""

NODE_SENDER = r"""
const wp = require(process.env.NODE_LIB);
const client = new wp.Client();
const count = Number(process.env.COUNT), window = Number(process.env.WINDOW);
const seconds = Number(process.env.SECONDS);
(async () => {
  const small = Buffer.alloc(64, 'x'), big = Buffer.alloc(1024, 'x');
  for (let i = 0; i < 200; i += 1) await client.send('echo', small);  // warm-up
  const samples = [];
  for (let i = 0; i < count; i += 1) {
    const t0 = process.hrtime.bigint();
    const reply = await client.send('echo', small);
    if (!reply.ok) throw new Error(reply.text);
    samples.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  let answered = 0, stop = false;
  const end = Date.now() + seconds * 1000;
  const t0 = process.hrtime.bigint();
  const worker = async () => {
    while (Date.now() < end) {
      const reply = await client.send('echo', big);
      if (!reply.ok) throw new Error(reply.text);
      answered += 1;
    }
  };
  await Promise.all(Array.from({length: window}, worker));
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  // One short line: the Watcher logs a child's output line by line.
  samples.sort((a, b) => a - b);
  const at = (p) => samples[Math.min(samples.length - 1, Math.floor(samples.length * p))];
  console.log('NODE ' + JSON.stringify({p50_us: at(0.5), p99_us: at(0.99),
                                        requests: answered, seconds: elapsed}));
})().catch((e) => { console.log('NODE ' + JSON.stringify({error: e.message})); });
"""

WAYS = {
    "fd": ("", ""),
    "connect (server)": ("", 'WP_CONNECT_LINKS: "1"'),
    "connect (sender)": ('WP_CONNECT_LINKS: "1"', ""),
}


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


class Pool:
    """`workerpool run` on a temp YAML; its output in a file."""

    def __init__(self, workerpool, yaml_text, tmp):
        self.tmp = tmp
        self.path = os.path.join(tmp, "pool.yaml")
        with open(self.path, "w") as f:
            f.write(yaml_text)
        self.log_path = os.path.join(tmp, "watcher.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([workerpool, "run", self.path],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for(self, regex, timeout=60, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(regex, self.text())
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("not seen in the Watcher's log: %s\n%s"
                           % (regex, self.text()[-3000:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def env_line(text):
    return "    env: {%s}\n" % text if text else ""


def measure_ipc(args, way, run):
    sender_env, echo_env = WAYS[way]
    tmp = tempfile.mkdtemp(prefix="wp-links-")
    control = os.path.join(tmp, "control.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(control)
    listener.listen(1)
    pool = Pool(args.workerpool, """pool: {name: links%d, stop_timeout: 5s,
       control_socket: %s/wp.sock, log: {level: info}}
groups:
  - name: client
    type: reactor
    processes: 1
    command: [%s, reactor, %s]
    routes_to: [echo]
%s  - name: echo
    type: job
    processes: 1
    max_inflight: %d
    command: [%s, builtin, echo-job]
%s""" % (os.getpid(), tmp, args.ipc_bench, control, env_line(sender_env),
         args.window, args.workerpool, env_line(echo_env)), tmp)
    out = []
    try:
        listener.settimeout(30)
        conn, _ = listener.accept()
        conn.settimeout(120)
        reader = conn.makefile("r")

        def ask(line):
            conn.sendall((line + "\n").encode())
            answer = json.loads(reader.readline())
            if "error" in answer:
                raise RuntimeError("%s: %s" % (way, answer["error"]))
            return answer

        ask("latency 64 100")  # the links are up; warm
        samples = ask("latency 64 %d" % args.count)["samples_us"]
        out.append({"mode": "latency", "way": way, "run": run,
                    "p50_us": percentile(samples, 0.5),
                    "p99_us": percentile(samples, 0.99)})
        t = ask("throughput 1024 %d %s" % (args.window, args.seconds))
        out.append({"mode": "throughput", "way": way, "run": run,
                    "per_s": t["requests"] / t["seconds"]})
        conn.sendall(b"quit\n")
        text = pool.text()
        if re.search(r"cannot link|link-timeout|link-refused", text):
            raise RuntimeError("%s: a link failed:\n%s" % (way, text[-2000:]))
    finally:
        pool.stop()
        listener.close()
        subprocess.run(["rm", "-rf", tmp])
    return out


def measure_setup(args, way, run):
    sender_env, echo_env = WAYS[way]
    links = "connect" if sender_env else "fd"
    tmp = tempfile.mkdtemp(prefix="wp-links-")
    with open(os.path.join(tmp, "sender.py"), "w") as f:
        f.write(SETUP_SENDER)
    senders = 4
    pool = Pool(args.workerpool, """pool: {name: setup%d, stop_timeout: 5s,
       control_socket: %s/wp.sock, log: {level: info}}
groups:
  - name: sender
    type: service
    processes: %d
    command: [%s, %s/sender.py]
    routes_to: [echo]
    env: {SENDER_LINKS: %s, SERVERS: "%d", SETUP_DELAY: "1.5"}
  - name: echo
    type: job
    processes: %d
    command: [%s, builtin, echo-job]
%s""" % (os.getpid(), tmp, senders, sys.executable, tmp, links, args.servers,
         args.servers, args.workerpool, env_line(echo_env)), tmp)
    try:
        found = pool.wait_for(r"setup_us (\d+) links (\d+) fds (\d+)",
                              count=senders)
    finally:
        pool.stop()
        subprocess.run(["rm", "-rf", tmp])
    out = []
    for setup_us, peers, fds in found:
        if int(peers) != args.servers:
            raise RuntimeError("%s: %s links, not %d" % (way, peers,
                                                         args.servers))
        out.append({"mode": "setup", "way": way, "run": run,
                    "servers": args.servers, "us": int(setup_us)})
    return out


def measure_node(args, run):
    tmp = tempfile.mkdtemp(prefix="wp-links-")
    with open(os.path.join(tmp, "sender.js"), "w") as f:
        f.write(NODE_SENDER)
    pool = Pool(args.workerpool, """pool: {name: node%d, stop_timeout: 5s,
       control_socket: %s/wp.sock, log: {level: info}}
groups:
  - name: nodesender
    type: service
    processes: 1
    command: [%s, %s/sender.js]
    routes_to: [echo]
    env: {NODE_LIB: "%s", COUNT: "%d", WINDOW: "%d", SECONDS: "%s"}
  - name: echo
    type: job
    processes: 1
    max_inflight: %d
    command: [%s, builtin, echo-job]
""" % (os.getpid(), tmp, args.node, tmp, NODE_LIB, args.count, args.window,
       args.seconds, args.window, args.workerpool), tmp)
    try:
        (line,) = pool.wait_for(r"NODE (\{.*\})", timeout=120)
    finally:
        pool.stop()
        subprocess.run(["rm", "-rf", tmp])
    result = json.loads(line)
    if "error" in result:
        raise RuntimeError("node sender: " + result["error"])
    return [{"mode": "latency", "way": "node sender (connect)", "run": run,
             "p50_us": result["p50_us"], "p99_us": result["p99_us"]},
            {"mode": "throughput", "way": "node sender (connect)", "run": run,
             "per_s": result["requests"] / result["seconds"]}]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workerpool", required=True)
    parser.add_argument("--ipc-bench", required=True)
    parser.add_argument("--node", default=None,
                        help="node binary: add the Node.js sender row")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--seconds", default="2")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--servers", type=int, default=8)
    args = parser.parse_args()
    for run in range(args.runs):
        ways = list(WAYS)
        if run % 2:
            ways.reverse()
        for way in ways:
            for row in measure_ipc(args, way, run) + measure_setup(args, way,
                                                                    run):
                print(json.dumps(row), flush=True)
        if args.node:
            for row in measure_node(args, run):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
