#!/usr/bin/python3
"""Requests lost while the HTTP tier restarts under keep-alive load (issue 23).

Usage:
  reload_keepalive_bench.py --workerpool PATH [--reloads 20] [--interval 1]
      [--connections 16] [--systems LIST]

wrk keeps CONNECTIONS keep-alive connections busy POSTing a short body
while the server is told RELOADS times, INTERVAL seconds apart, to replace
the processes that hold those connections:
  - "workerpool": two http-reactors -> four echo-jobs; each reload
    changes the reactor group's `env` and sends SIGHUP (a rolling restart
    of the reactors);
  - "workerpool jobs only": the same, changing the job group's `env`
    instead (the reactors stay; the baseline of the job side);
  - "workerpool idle clients": the one race the drain leaves, measured:
    instead of wrk, 64 keep-alive connections that each think 0 to 4 s
    (uniform) between requests, reactors with --drain-timeout 1s, so that
    many connections are still idle when their drain times out and are
    closed; a client checks its connection before reusing it (as urllib3
    and browsers do: one that is readable while idle was closed) and only a
    request that meets a close is a failure;
  - "nginx": Debian's nginx, two workers, `return 200`, SIGHUP (new
    workers, old ones shut down gracefully);
  - "gunicorn": Debian's gunicorn, gthread, two workers, a WSGI app that
    echoes the body, SIGHUP;
  - "uwsgi": Debian's uWSGI, --http11-socket (keep-alive), two workers,
    the same app, SIGHUP (graceful reload).
For each system one JSON line on stdout: "failed" is wrk's socket errors
(connect, read, write, timeout) plus non-2xx answers, "per_reload" that
over RELOADS, "requests" wrk's total, "restarted" how many serving
processes were replaced (workerpool: counted from its log). Each system is
started, measured and stopped before the next; every process started is
stopped, also on failure or ^C.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

LUA = """
wrk.method = "POST"
wrk.body = "keep-alive payload"
wrk.headers["Content-Type"] = "text/plain"
"""

WSGI_APP = """
def application(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
app = application
"""


def log(message):
    print(f"reload_keepalive_bench: {message}", file=sys.stderr, flush=True)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("POST", path, body=b"ready?")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def parse_wrk(text):
    out = {"requests": 0, "failed": 0, "socket_errors": {}, "non_2xx": 0}
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                  r"timeout (\d+)", text)
    if m:
        out["socket_errors"] = dict(zip(("connect", "read", "write",
                                         "timeout"),
                                        (int(g) for g in m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
    out["failed"] = sum(out["socket_errors"].values()) + out["non_2xx"]
    return out


class System:
    """Starts one server; reload(i) replaces its serving processes."""

    def __init__(self, tmp, port):
        self.tmp, self.port, self.proc = tmp, port, None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()

    def spawn(self, args, log_name):
        self.log_path = os.path.join(self.tmp, log_name)
        self.proc = subprocess.Popen(
            args, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.tmp)

    def restarted(self):
        return None


class Workerpool(System):
    path = "/jobs/echo"

    reactor_args = ""

    def __init__(self, tmp, port, binary, jobs_only):
        super().__init__(tmp, port)
        self.binary, self.jobs_only = os.path.abspath(binary), jobs_only
        self.config = os.path.join(tmp, "pool.yaml")

    def write(self, generation):
        web, echo = (0, generation) if self.jobs_only else (generation, 0)
        with open(self.config, "w") as f:
            f.write(f"""
pool: {{name: bench{self.port}, stop_timeout: 10s,
       control_socket: {self.tmp}/control.sock}}
groups:
  - name: web
    type: reactor
    processes: 2
    command: [workerpool, builtin, http-reactor{self.reactor_args}]
    listen: ["127.0.0.1:{self.port}"]
    routes_to: [echo]
    env: {{GENERATION: "{web}"}}
  - name: echo
    type: job
    processes: 4
    command: [workerpool, builtin, echo-job]
    env: {{GENERATION: "{echo}"}}
""")

    def start(self):
        self.write(0)
        self.spawn([self.binary, "run", self.config], "workerpool.log")

    def reload(self, generation):
        self.write(generation)
        self.proc.send_signal(signal.SIGHUP)

    def restarted(self):
        with open(self.log_path, errors="replace") as f:
            text = f.read()
        group = "echo" if self.jobs_only else "web"
        return len(re.findall(r"rolling restart of %s: replacing" % group,
                              text))

    def drains(self):
        """The reactors' own account of their drains (http-reactor logs one
        line at the end of each)."""
        with open(self.log_path, errors="replace") as f:
            text = f.read()
        found = re.findall(r"drained (\d+) connections in (\d+)ms: (\d+) "
                           r"ended with Connection: close, (\d+) idle", text)
        if not found:
            return None
        rows = [tuple(int(x) for x in row) for row in found]
        return {"drains": len(rows),
                "max_ms": max(r[1] for r in rows),
                "closed_by_answer": sum(r[2] for r in rows),
                "idle_closed_at_timeout": sum(r[3] for r in rows)}


class WorkerpoolIdle(Workerpool):
    reactor_args = ", --drain-timeout, 1s"
    idle_clients = 64


def idle_client(port, path, stop, seed, counts, lock):
    import random
    import select
    import socket
    rng = random.Random(seed)
    sock = None
    n = 0
    while not stop.wait(rng.uniform(0, 4)):
        if sock is not None and select.select([sock], [], [], 0)[0]:
            sock.close()  # closed while idle: the client can tell
            sock = None
            with lock:
                counts["closed_while_idle"] += 1
        n += 1
        body = b"idle %d %d" % (seed, n)
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), 10)
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: b\r\nContent-Length: "
                         b"%d\r\n\r\n%s" % (path.encode(), len(body), body))
            r = http.client.HTTPResponse(sock, method="POST")
            r.begin()
            got = r.read()
            ok = r.status == 200 and got == body
            if r.getheader("connection", "").lower() == "close":
                sock.close()
                sock = None
        except Exception:  # a reset, an EOF instead of an answer
            ok = False
            if sock is not None:
                sock.close()
            sock = None
        with lock:
            counts["requests"] += 1
            counts["failed"] += 0 if ok else 1
    if sock is not None:
        sock.close()


def run_idle_clients(system, args):
    """{"requests", "failed", ...} of idle_clients threads over the
    reloads."""
    import threading
    stop, lock = threading.Event(), threading.Lock()
    counts = {"requests": 0, "failed": 0, "closed_while_idle": 0}
    threads = [threading.Thread(target=idle_client, daemon=True,
                                args=(system.port, system.path, stop, i,
                                      counts, lock))
               for i in range(system.idle_clients)]
    for t in threads:
        t.start()
    time.sleep(5)  # every connection open and idle between requests
    for i in range(1, args.reloads + 1):
        system.reload(i)
        time.sleep(args.interval)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(15)
    return counts


class Nginx(System):
    path = "/"

    def start(self):
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 2;
daemon off;
master_process on;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {self.tmp}/body;
  proxy_temp_path {self.tmp}/proxy;
  fastcgi_temp_path {self.tmp}/fastcgi;
  uwsgi_temp_path {self.tmp}/uwsgi;
  scgi_temp_path {self.tmp}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{self.port};
    location / {{ return 200 "ok"; }}
  }}
}}
""")
        self.spawn(["nginx", "-p", self.tmp, "-c", conf], "nginx.log")

    def reload(self, generation):
        self.proc.send_signal(signal.SIGHUP)


class Gunicorn(System):
    path = "/"

    def start(self):
        with open(os.path.join(self.tmp, "app.py"), "w") as f:
            f.write(WSGI_APP)
        self.spawn(["gunicorn", "--worker-class", "gthread", "--threads", "8",
                    "--workers", "2", "--keep-alive", "30",
                    "--bind", f"127.0.0.1:{self.port}", "app:app"],
                   "gunicorn.log")

    def reload(self, generation):
        self.proc.send_signal(signal.SIGHUP)


class Uwsgi(System):
    path = "/"

    def start(self):
        with open(os.path.join(self.tmp, "app.py"), "w") as f:
            f.write(WSGI_APP)
        self.spawn(["uwsgi", "--plugin", "python3", "--master",
                    "--processes", "2", "--threads", "8",
                    "--http11-socket", f"127.0.0.1:{self.port}",
                    "--wsgi-file", "app.py", "--die-on-term",
                    "--so-keepalive", "--disable-logging"], "uwsgi.log")

    def reload(self, generation):
        self.proc.send_signal(signal.SIGHUP)


def run(name, system, args):
    try:
        system.start()
        if not wait_http(system.port, system.path):
            return {"system": name, "error": "did not answer"}
        time.sleep(0.5)
        if getattr(system, "idle_clients", 0):
            result = {"system": name, **run_idle_clients(system, args),
                      "reloads": args.reloads,
                      "restarted": system.restarted(),
                      "drains": system.drains()}
            result["per_reload"] = round(result["failed"] / args.reloads, 2)
            return result
        lua = os.path.join(system.tmp, "post.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        duration = int(args.reloads * args.interval + 3)
        wrk = subprocess.Popen(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{duration}s",
             "-s", lua, f"http://127.0.0.1:{system.port}{system.path}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1)
        for i in range(1, args.reloads + 1):
            system.reload(i)
            time.sleep(args.interval)
        out, _ = wrk.communicate(timeout=duration + 30)
        result = {"system": name, **parse_wrk(out),
                  "reloads": args.reloads, "restarted": system.restarted()}
        if isinstance(system, Workerpool):
            result["drains"] = system.drains()
        result["per_reload"] = round(result["failed"] / args.reloads, 2)
        return result
    finally:
        system.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workerpool", required=True)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--systems",
                        default="workerpool,workerpool jobs only,"
                                "workerpool idle clients,nginx,gunicorn,"
                                "uwsgi")
    args = parser.parse_args()
    makers = {
        "workerpool": lambda t, p: Workerpool(t, p, args.workerpool, False),
        "workerpool jobs only": lambda t, p: Workerpool(t, p, args.workerpool,
                                                        True),
        "workerpool idle clients": lambda t, p: WorkerpoolIdle(
            t, p, args.workerpool, False),
        "nginx": Nginx, "gunicorn": Gunicorn, "uwsgi": Uwsgi,
    }
    for name in [s.strip() for s in args.systems.split(",") if s.strip()]:
        if name not in makers:
            print(json.dumps({"system": name, "error": "unknown system"}))
            continue
        tool = {"nginx": "nginx", "gunicorn": "gunicorn",
                "uwsgi": "uwsgi"}.get(name)
        if tool and shutil.which(tool) is None:
            print(json.dumps({"system": name, "error": tool + " not found"}),
                  flush=True)
            continue
        tmp = tempfile.mkdtemp(prefix="reload-keepalive-")
        try:
            system = makers[name](tmp, free_port())
            clients = getattr(system, "idle_clients", 0)
            log(f"{name}: {args.reloads} reloads, "
                + (f"{clients} mostly idle" if clients
                   else f"{args.connections}") + " keep-alive connections")
            print(json.dumps(run(name, system, args)), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
