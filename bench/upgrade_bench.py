#!/usr/bin/python3
"""In-place upgrade of the Watcher (issue 22), beside nginx's binary upgrade.

Usage:
  upgrade_bench.py --workerpool PATH [--children 1000] [--rounds 5]
                   [--nginx /usr/sbin/nginx] [--nginx-workers 4]

workerpool: a pool of CHILDREN `sleep` children plus one "victim" child
(`sh -c 'date +%s.%N >> FILE; exec sleep ...'`: it writes when it starts)
and an http-reactor -> echo-job pair under keep-alive load from 4 clients.
ROUNDS times, `{"command":"upgrade"}` goes to the control socket while a
thread asks `status` back to back; the "pause" is the longest time between
two answered statuses around the upgrade (no status can be answered while
the Watcher checks the new binary, writes its state, execs and adopts), and
"upgrade_to_status" the time from sending `upgrade` to the first status
answered by the new Watcher, split into "checks_ms" (until `upgrade` is
answered, which it is at once: the Watcher then runs the new binary three
times from a helper thread, its loop answering meanwhile) and
"handover_ms" (from that answer to the new Watcher's first status: the
checks, then the hand-over proper, which is the pause). In each round the victim is SIGKILLed right
after the upgrade was accepted (during the hand-over); "restart_ms" is from
the kill to the replacement's first line (the victim resets its backoff
after 100 ms up, so each kill restarts at once); "restart_quiet_ms" the same kill
with no upgrade, for comparison. Children replaced and HTTP requests failed
are counted over all rounds. "watcher_handover_ms" is the new Watcher's own
log of each hand-over (from the old one starting to write the state to the
pool adopted: total, and its parts exec, read, adopt), which the pause
contains along with one status answer.

nginx: Debian's nginx with NGINX_WORKERS workers under the same load, the
documented binary upgrade: USR2 to the master (a new master starts beside
it with new workers), WINCH to the old master (its workers finish and go),
QUIT to the old master. "switch_ms" is from USR2 until the new master's
workers are all up; every worker is replaced.

One JSON line per system on stdout. Every process started is stopped at the
end, also on failure.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def log(message):
    print(f"upgrade_bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def control(path, request, timeout=30):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall((json.dumps(request) + "\n").encode())
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return json.loads(data)


def children_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid:
                continue
            # The spawner (workerpool-spawner) is the Watcher's helper, not
            # a pool child (an upgrade keeps it running; state version 2).
            with open(f"/proc/{entry}/comm") as f:
                if f.read().startswith("workerpool-spaw"):
                    continue
            out.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return set(out)


class Load:
    """4 keep-alive clients posting to PATH until stopped."""

    def __init__(self, port, path, clients=4):
        self.port, self.path = port, path
        self.ok = 0
        self.failed = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True)
                        for _ in range(clients)]
        for t in self.threads:
            t.start()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                conn.request("POST" if "jobs" in self.path else "GET",
                             self.path, body=b"x" if "jobs" in self.path else None)
                r = conn.getresponse()
                r.read()
                good = r.status == 200
            except (OSError, http.client.HTTPException):
                good = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                  timeout=10)
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1
        conn.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def wait(predicate, timeout=60, interval=0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError("timed out")


def last_start(path):
    try:
        with open(path) as f:
            lines = f.read().split()
        return float(lines[-1]) if lines else None, len(lines)
    except (OSError, ValueError):
        return None, 0


def bench_workerpool(args, tmp):
    port = free_port()
    sock = os.path.join(tmp, "wp.sock")
    starts = os.path.join(tmp, "victim.starts")
    config = os.path.join(tmp, "pool.yaml")
    with open(config, "w") as f:
        f.write(f"""
pool: {{name: upbench, control_socket: "{sock}", stop_timeout: 5s,
       log: {{level: info}}}}
groups:
  - name: many
    type: job
    processes: {args.children}
    command: [sleep, "100000"]
  - name: victim
    type: job
    processes: 1
    command: [sh, -c, "date +%s.%N >> {starts}; exec sleep 100000"]
    restart: {{backoff: {{initial: 100ms, reset_after: 100ms}},
              intensity: {{max_restarts: 1000}}}}
  - name: web
    type: reactor
    processes: 1
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:{port}"]
    routes_to: [echo]
  - name: echo
    type: job
    processes: 2
    command: [workerpool, builtin, echo-job]
""")
    log_file = open(os.path.join(tmp, "watcher.log"), "wb")
    proc = subprocess.Popen([args.workerpool, "run", config],
                            stdout=log_file, stderr=log_file,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        total = args.children + 4  # many, victim, web, 2 echo
        wait(lambda: proc.poll() is not None or
             len(children_of(proc.pid)) >= total, timeout=120, interval=0.2)
        if proc.poll() is not None:
            with open(os.path.join(tmp, "watcher.log")) as f:
                raise RuntimeError("the Watcher exited: " + f.read()[-2000:])
        wait(lambda: control(sock, {"command": "status"})["status"]["state"]
             == "running", timeout=120, interval=0.2)

        def victim_pid():
            status = control(sock, {"command": "status"})["status"]
            for g in status["groups"]:
                if g["name"] == "victim" and g["children"]:
                    return g["children"][0]["pid"]
            return None

        def kill_and_time(pid):
            _, count = last_start(starts)
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            wait(lambda: last_start(starts)[1] > count, timeout=30,
                 interval=0.001)
            return (last_start(starts)[0] - killed) * 1000

        quiet = []
        for _ in range(args.rounds):
            pid = wait(victim_pid)
            quiet.append(kill_and_time(pid))
            time.sleep(0.3)
        wait(lambda: len(children_of(proc.pid)) >= total, timeout=30)
        before = children_of(proc.pid)
        load = Load(port, "/jobs/echo")
        time.sleep(0.5)
        pauses, to_status, restarts, checks, handover = [], [], [], [], []
        for round_ in range(args.rounds):
            victim = wait(victim_pid)
            before.discard(victim)
            answers = []
            stop = threading.Event()

            def poll():
                while not stop.is_set():
                    try:
                        # As `workerpool status` asks: no /proc read per
                        # child (that is the status's own O(n) cost).
                        s = control(sock, {"command": "status",
                                           "usage": False})["status"]
                        answers.append((time.monotonic(),
                                        s["upgrade"]["attempts"]))
                    except (OSError, ValueError, KeyError):
                        pass
            poller = threading.Thread(target=poll)
            poller.start()
            time.sleep(0.2)
            sent = time.monotonic()
            started = control(sock, {"command": "upgrade"})
            accepted = time.monotonic()
            if not started.get("ok"):
                raise RuntimeError(f"upgrade refused: {started}")
            checks.append((accepted - sent) * 1000)
            restart = kill_and_time(victim)
            wait(lambda: answers and answers[-1][1] > round_, timeout=60)
            time.sleep(0.2)
            stop.set()
            poller.join()
            times = [t for t, _ in answers]
            gaps = [b - a for a, b in zip(times, times[1:]) if b >= sent - 0.05]
            pauses.append(max(gaps) * 1000)
            first_new = min(t for t, n in answers if n > round_)
            to_status.append((first_new - sent) * 1000)
            handover.append((first_new - accepted) * 1000)
            restarts.append(restart)
            time.sleep(0.3)
        load.finish()
        # The new Watcher's own account of each hand-over (its log line
        # "hand-over X ms (state written and exec A, state and config read
        # B, adoption C)"): the pause without the status poller's share.
        parts = {"total": [], "exec": [], "read": [], "adopt": []}
        with open(os.path.join(tmp, "watcher.log")) as f:
            for match in re.finditer(
                    r"hand-over ([\d.]+) ms \(state written and exec "
                    r"([\d.]+), state and config read ([\d.]+), adoption "
                    r"([\d.]+)\)", f.read()):
                for key, value in zip(("total", "exec", "read", "adopt"),
                                      match.groups()):
                    parts[key].append(float(value))
        after = children_of(proc.pid)
        replaced = len(before - after)
        status = control(sock, {"command": "status"})["status"]
        rss = status.get("watcher", {}).get("rss_bytes", 0)
        return {"system": "workerpool upgrade", "children": len(before),
                "rounds": args.rounds,
                "pause_ms": sorted(pauses), "upgrade_to_status_ms": sorted(to_status),
                "checks_ms": sorted(checks), "handover_ms": sorted(handover),
                "restart_ms": sorted(restarts), "restart_quiet_ms": sorted(quiet),
                "replaced": replaced, "http_ok": load.ok,
                "http_failed": load.failed, "watcher_rss_bytes": rss,
                "pid_unchanged": proc.poll() is None,
                "watcher_handover_ms": {k: sorted(v) for k, v in parts.items()}}
    finally:
        try:
            control(sock, {"command": "stop"}, timeout=5)
        except (OSError, ValueError):
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bench_nginx(args, tmp):
    port = free_port()
    root = os.path.join(tmp, "nginx")
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    pidfile = os.path.join(root, "nginx.pid")
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes {args.nginx_workers};
pid {pidfile};
error_log {root}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok"; }}
  }}
}}
""")
    subprocess.run([args.nginx, "-c", conf, "-p", root], check=True)
    master = None
    try:
        master = int(wait(lambda: open(pidfile).read().strip()
                          if os.path.exists(pidfile) else None))
        wait(lambda: len(children_of(master)) == args.nginx_workers)
        workers_before = children_of(master)
        load = Load(port, "/")
        time.sleep(0.5)
        sent = time.monotonic()
        os.kill(master, signal.SIGUSR2)
        new_master = int(wait(
            lambda: open(pidfile).read().strip()
            if os.path.exists(pidfile + ".oldbin") and os.path.exists(pidfile)
            else None))
        wait(lambda: len(children_of(new_master)) == args.nginx_workers)
        switch = (time.monotonic() - sent) * 1000
        os.kill(master, signal.SIGWINCH)
        wait(lambda: len(children_of(master)) == 1)  # the new master only
        os.kill(master, signal.SIGQUIT)
        wait(lambda: not os.path.exists(f"/proc/{master}"))
        done = (time.monotonic() - sent) * 1000
        time.sleep(0.3)
        load.finish()
        workers_after = children_of(new_master)
        result = {"system": "nginx USR2 binary upgrade",
                  "version": subprocess.run([args.nginx, "-v"], capture_output=True,
                                            text=True).stderr.strip(),
                  "workers": args.nginx_workers, "switch_ms": switch,
                  "done_ms": done,
                  "replaced": len(workers_before - workers_after),
                  "master_pid_changed": new_master != master,
                  "http_ok": load.ok, "http_failed": load.failed}
        master = new_master
        return result
    finally:
        if master is not None:
            try:
                os.kill(master, signal.SIGQUIT)
                wait(lambda: not os.path.exists(f"/proc/{master}"), timeout=10)
            except (OSError, RuntimeError):
                pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workerpool", required=True)
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nginx", default="/usr/sbin/nginx")
    parser.add_argument("--nginx-workers", type=int, default=4)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="wp-upgrade-bench-")
    try:
        print(json.dumps(bench_workerpool(args, tmp)), flush=True)
        if os.access(args.nginx, os.X_OK):
            print(json.dumps(bench_nginx(args, tmp)), flush=True)
        else:
            log(f"{args.nginx} not found: nginx left out")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
