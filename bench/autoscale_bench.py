#!/usr/bin/python3
"""Step load against autoscaled pools (issue 18), beside their peers.

Usage:
  autoscale_bench.py http --workerpool PATH [--min 1] [--max 8]
      [--sleep-ms 200] [--requests 20] [--up-after 1s] [--down-after 5s]
      [--rest-s 3] [--systems LIST]
  autoscale_bench.py amqp --workerpool PATH --amqp-url URL [--min 1]
      [--max 8] [--sleep-ms 200] [--messages 400] [--up-after 1s]
      [--down-after 5s] [--systems LIST]

http: MAX clients each send REQUESTS `sleep:SLEEP_MS` requests one after
the other (keep-alive), all starting at once (the step), to
  - "workerpool autoscale": http-reactor -> echo-job with
    autoscale {min, max, up_after, down_after}, max_inflight 1;
  - "workerpool fixed max": the same group with processes: MAX;
  - "uwsgi cheaper": Debian's uWSGI, --http router in front of MAX workers
    in cheaper mode (--cheaper MIN --cheaper-initial MIN, the default
    algorithm `spare` with its default cheaper-overload and cheaper-step),
    a WSGI app that sleeps SLEEP_MS;
  - "uwsgi fixed max": uWSGI with MAX workers, no cheaper mode.
amqp: MESSAGES messages `sleep:SLEEP_MS` published at once (the step) to
  - "workerpool autoscale": the built-in rabbitmq-service -> echo-job with
    autoscale {min, max, ...};
  - "workerpool fixed max": the same job group with processes: MAX;
  - "celery autoscale": Debian's Celery, `worker --autoscale=MAX,MIN`
    (prefork, defaults otherwise), a task that sleeps SLEEP_MS;
  - "celery fixed max": `worker --concurrency=MAX`.

For each system one JSON line on stdout: the processes that serve (job
processes, uWSGI workers, Celery pool processes) are counted from /proc
every 20 ms; "reaction_s" is the time from the step until MAX of them run
(null when never), "burst_s" from the step to the last answer (or the last
task done), "peak" the most seen, "back_to_min_s" the time from the end of
the burst until only MIN run (null when not within down_after plus
REST_WAIT_S), "at_rest" how many run a second after that, "rest_rss_kb"
their summed RSS then, "ok"/"failed" the answers, "timeline" the count's
changes (seconds from the step, processes). Each system is started,
measured and stopped before the next; every process started is stopped,
also on failure or ^C. Runs with Debian's python3 (Celery and py-amqp
come from Debian's packages).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

SAMPLE_S = 0.02


def log(message):
    print(f"autoscale_bench: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------- processes --

def children_of(pid):
    """{child pid: cmdline} of PID's direct children."""
    out = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            try:
                with open(f"/proc/{kid}/cmdline", "rb") as f:
                    out[kid] = f.read().replace(b"\0", b" ").decode(
                        errors="replace")
            except OSError:
                pass
    return out


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Counts the serving processes every SAMPLE_S and notes when the count
    first reaches the target after mark_step()."""

    def __init__(self, count, target):
        super().__init__(daemon=True)
        self.count = count  # () -> list of pids
        self.target = target
        self.step_at = None
        self.reached_at = None
        self.peak = 0
        self.stopped = threading.Event()
        self.timeline = []

    def mark_step(self):
        self.step_at = time.monotonic()

    def run(self):
        while not self.stopped.is_set():
            n = len(self.count())
            now = time.monotonic()
            if self.step_at is not None:
                self.peak = max(self.peak, n)
                if not self.timeline or self.timeline[-1][1] != n:
                    self.timeline.append((round(now - self.step_at, 3), n))
                if self.reached_at is None and n >= self.target:
                    self.reached_at = now
            time.sleep(SAMPLE_S)

    def stop(self):
        self.stopped.set()
        self.join()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Started:
    """A process group we started; stop() ends it and everything in it."""

    def __init__(self, argv, log_path, env=None, cwd=None):
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything left in the group
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


# ------------------------------------------------------------- the pools --

def pool_yaml(d, name, autoscale, args, front):
    if autoscale:
        sizing = (f"    processes: {args.min}\n"
                  f"    autoscale: {{min: {args.min}, max: {args.max}, "
                  f"up_after: {args.up_after}, down_after: {args.down_after}}}\n")
    else:
        sizing = f"    processes: {args.max}\n"
    return f"""\
pool:
  name: {name}
  control_socket: {d}/control.sock
  stop_timeout: 5s
groups:
{front}  - name: compute
    type: job
    max_inflight: 1
    queue_limit: 100000
    request_timeout: 300s
    command: [workerpool, builtin, echo-job]
{sizing}"""


def workerpool_jobs(watcher_pid):
    return [p for p, c in children_of(watcher_pid).items() if "echo-job" in c]


def start_workerpool(args, d, autoscale, front):
    name = f"asb{os.getpid()}x{'a' if autoscale else 'f'}"
    path = os.path.join(d, "pool.yaml")
    with open(path, "w") as f:
        f.write(pool_yaml(d, name, autoscale, args, front))
    started = Started([args.workerpool, "run", path], os.path.join(d, "watcher.log"))
    initial = args.min if autoscale else args.max
    wait_for(lambda: len(workerpool_jobs(started.pid)) >= initial, 30,
             "the job group to start")
    return started


# ------------------------------------------------------------------ http --

UWSGI_APP = """\
import time

def application(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    if body.startswith(b"sleep:"):
        time.sleep(int(body[6:]) / 1000.0)
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def http_step(port, path, clients, requests, sleep_ms, sampler):
    """CLIENTS threads, each REQUESTS POSTs in a row; returns (burst_s, ok,
    failed)."""
    body = f"sleep:{sleep_ms}".encode()
    barrier = threading.Barrier(clients + 1)
    results = {"ok": 0, "failed": 0, "reconnects": 0, "last": 0.0}
    lock = threading.Lock()

    def one(conn):
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        data = response.read()
        return response.status == 200 and data == body

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        barrier.wait()
        for _ in range(requests):
            try:
                try:
                    good = one(conn)
                except (http.client.RemoteDisconnected, BrokenPipeError,
                        ConnectionResetError):
                    # A keep-alive connection the server closed before this
                    # request reached it: sent again on a new one, as any
                    # HTTP client does.
                    with lock:
                        results["reconnects"] += 1
                    conn.close()
                    good = one(conn)
            except (OSError, http.client.HTTPException):
                good = False
                conn.close()
            with lock:
                results["ok" if good else "failed"] += 1
                results["last"] = time.monotonic()
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    sampler.mark_step()
    for t in threads:
        t.join()
    if results["reconnects"]:
        log(f"  {results['reconnects']} requests sent again on a new "
            "connection (the server closed the kept-alive one)")
    return results["last"] - start, results["ok"], results["failed"]


def wait_http(port, path):
    def answers():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("POST", path, body=b"ping")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except (OSError, http.client.HTTPException):
            return False
    wait_for(answers, 30, f"HTTP answers on port {port}")


def measure(system, args, count, step, stop, rest_pids_rss):
    """Runs STEP with a sampler over COUNT; then waits for rest."""
    sampler = Sampler(count, args.max)
    sampler.start()
    time.sleep(args.rest_s)  # at rest before the step
    before = len(count())
    try:
        burst_s, ok, failed = step(sampler)
        ended = time.monotonic()
        # A group fixed at max never returns to min: nothing to wait for.
        limit = (0 if system.endswith("fixed max")
                 else args.down_after_s + args.rest_wait_s)
        log(f"  {system}: burst {burst_s:.2f} s, {ok} ok, {failed} failed"
            + (f"; waiting up to {limit:.0f} s for {args.min} processes"
               if limit else ""))
        back_to_min = None
        while time.monotonic() - ended < limit:
            if len(count()) <= args.min:
                back_to_min = time.monotonic() - ended
                break
            time.sleep(SAMPLE_S)
        time.sleep(1)  # settled
        pids = count()
        result = {
            "case": args.case, "system": system, "min": args.min,
            "max": args.max, "before": before,
            "reaction_s": (round(sampler.reached_at - sampler.step_at, 3)
                           if sampler.reached_at else None),
            "burst_s": round(burst_s, 3), "peak": sampler.peak,
            "back_to_min_s": (round(back_to_min, 2)
                              if back_to_min is not None else None),
            "at_rest": len(pids), "rest_rss_kb": rest_pids_rss(pids),
            "ok": ok, "failed": failed,
            "timeline": sampler.timeline[:40],
        }
    finally:
        sampler.stop()
        stop()
    print(json.dumps(result), flush=True)
    return result


def bench_http(args):
    results = []
    path = "/jobs/compute"
    for system in args.systems:
        d = tempfile.mkdtemp(prefix="asb-")
        port = free_port()
        try:
            if system.startswith("workerpool"):
                front = f"""\
  - name: web
    type: reactor
    processes: 1
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:{port}"]
    routes_to: [compute]
"""
                started = start_workerpool(args, d, system.endswith("autoscale"),
                                           front)
                count = lambda s=started: workerpool_jobs(s.pid)
            else:
                uwsgi = shutil.which("uwsgi") or "uwsgi"
                with open(os.path.join(d, "app.py"), "w") as f:
                    f.write(UWSGI_APP)
                argv = [uwsgi, "--plugin", "http,python3", "--master",
                        "--http", f"127.0.0.1:{port}",
                        "--wsgi-file", os.path.join(d, "app.py"),
                        "--workers", str(args.max), "--auto-procname",
                        "--die-on-term", "--disable-logging",
                        "--http-keepalive", "--listen", "1024"]
                if system.endswith("cheaper"):
                    argv += ["--cheaper", str(args.min), "--cheaper-initial",
                             str(args.min)]
                started = Started(argv, os.path.join(d, "uwsgi.log"))
                count = lambda s=started: [
                    p for p, c in children_of(s.pid).items()
                    if "worker" in c]
            wait_http(port, path)
            log(f"http: {system}")
            results.append(measure(
                system, args, count,
                lambda sampler: http_step(port, path, args.max, args.requests,
                                          args.sleep_ms, sampler),
                started.stop,
                lambda pids: sum(rss_kb(p) for p in pids)))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return results


# ------------------------------------------------------------------ amqp --

CELERY_APP = """\
import os
import time

from celery import Celery

app = Celery("asb", broker=os.environ["ASB_BROKER"])
app.conf.task_default_queue = os.environ["ASB_QUEUE"]
app.conf.worker_hijack_root_logger = False

@app.task(name="asb.work")
def work(ms, done):
    time.sleep(ms / 1000.0)
    with open(done, "a") as f:
        f.write("x\\n")
"""


def amqp_connection(url):
    import amqp  # Debian's python3-amqp
    from urllib.parse import urlparse, unquote
    u = urlparse(url)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    conn = amqp.Connection(host=f"{u.hostname}:{u.port or 5672}",
                           userid=unquote(u.username or "guest"),
                           password=unquote(u.password or "guest"),
                           virtual_host=vhost)
    conn.connect()
    return conn


def delete_queue(url, queue):
    try:
        conn = amqp_connection(url)
        conn.channel().queue_delete(queue)
        conn.close()
    except Exception as error:  # the broker's own cleanup is best effort
        log(f"cannot delete queue {queue}: {error}")


def served(control_socket, workerpool):
    out = subprocess.run([workerpool, "status", "--json", "--socket",
                          control_socket], capture_output=True, text=True)
    try:
        status = json.loads(out.stdout)
    except ValueError:
        return 0
    for group in status.get("groups", []):
        if group.get("name") == "compute":
            return int(group.get("requests", {}).get("served", 0))
    return 0


def amqp_step_workerpool(args, d, queue, sampler):
    import amqp  # Debian's python3-amqp
    sock = os.path.join(d, "control.sock")
    base = served(sock, args.workerpool)
    conn = amqp_connection(args.amqp_url)
    channel = conn.channel()
    channel.queue_declare(queue, durable=True, auto_delete=False)
    body = f"sleep:{args.sleep_ms}".encode()
    start = time.monotonic()
    sampler.mark_step()
    for _ in range(args.messages):
        channel.basic_publish(amqp.Message(body), exchange="",
                              routing_key=queue)
    conn.close()
    while True:
        n = served(sock, args.workerpool) - base
        if n >= args.messages:
            return time.monotonic() - start, n, 0
        time.sleep(0.05)


def amqp_step_celery(args, d, queue, sampler, env):
    done = os.path.join(d, "done")
    open(done, "w").close()
    code = (
        "import os, sys\n"
        "sys.path.insert(0, os.environ['ASB_DIR'])\n"
        "from asb_tasks import work\n"
        "work.app.connection().ensure_connection()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        f"for _ in range({args.messages}):\n"
        f"    work.delay({args.sleep_ms}, {done!r})\n")
    # The publisher imports Celery and connects first; the step is when it
    # starts publishing.
    publisher = subprocess.Popen(["/usr/bin/python3", "-c", code], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    if publisher.stdout.readline().strip() != "ready":
        publisher.wait()
        raise RuntimeError("the Celery publisher did not start")
    start = time.monotonic()
    sampler.mark_step()
    publisher.stdin.write("go\n")
    publisher.stdin.close()
    if publisher.wait() != 0:
        raise RuntimeError("the Celery publisher failed")
    while True:
        with open(done) as f:
            n = sum(1 for _ in f)
        if n >= args.messages:
            return time.monotonic() - start, n, 0
        time.sleep(0.05)


def bench_amqp(args):
    results = []
    for system in args.systems:
        d = tempfile.mkdtemp(prefix="asb-")
        queue = f"asb-{os.getpid()}-{system.replace(' ', '-')}"
        try:
            if system.startswith("workerpool"):
                front = f"""\
  - name: intake
    type: service
    processes: 1
    routes_to: [compute]
    rabbitmq: {{url: "{args.amqp_url}", queues: [{queue}], declare: true}}
"""
                started = start_workerpool(args, d, system.endswith("autoscale"),
                                           front)
                count = lambda s=started: workerpool_jobs(s.pid)
                step = lambda sampler: amqp_step_workerpool(args, d, queue,
                                                            sampler)
            else:
                with open(os.path.join(d, "asb_tasks.py"), "w") as f:
                    f.write(CELERY_APP)
                env = dict(os.environ, ASB_BROKER=args.amqp_url,
                           ASB_QUEUE=queue, ASB_DIR=d, PYTHONPATH=d)
                sizing = ([f"--autoscale={args.max},{args.min}"]
                          if system.endswith("autoscale")
                          else [f"--concurrency={args.max}"])
                argv = ["/usr/bin/python3", "-m", "celery", "-A", "asb_tasks",
                        "worker", "--loglevel=WARNING", "--without-gossip",
                        "--without-mingle", "--without-heartbeat"] + sizing
                started = Started(argv, os.path.join(d, "celery.log"),
                                  env=env, cwd=d)
                initial = args.min if system.endswith("autoscale") else args.max
                count = lambda s=started: list(children_of(s.pid))
                wait_for(lambda: len(count()) >= initial, 60,
                         "the Celery pool to start")
                time.sleep(2)  # connected and consuming
                step = lambda sampler, env=env: amqp_step_celery(
                    args, d, queue, sampler, env)
            log(f"amqp: {system}")
            results.append(measure(
                system, args, count, step, started.stop,
                lambda pids: sum(rss_kb(p) for p in pids)))
        finally:
            delete_queue(args.amqp_url, queue)
            shutil.rmtree(d, ignore_errors=True)
    return results


# ------------------------------------------------------------------ main --

def seconds_of(text):
    for unit, factor in (("ms", 0.001), ("s", 1), ("m", 60)):
        if text.endswith(unit) and text[:-len(unit)].isdigit():
            return int(text[:-len(unit)]) * factor
    raise argparse.ArgumentTypeError(f"a duration such as 1s: {text!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=["http", "amqp"])
    parser.add_argument("--workerpool", required=True)
    parser.add_argument("--amqp-url")
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=8)
    parser.add_argument("--sleep-ms", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20,
                        help="http: requests per client")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--up-after", default="1s")
    parser.add_argument("--down-after", default="5s")
    parser.add_argument("--rest-s", type=float, default=3,
                        help="at rest before the step")
    parser.add_argument("--rest-wait-s", type=float, default=60,
                        help="after the burst, wait down_after plus this "
                        "at most for the processes to return to min")
    parser.add_argument("--systems")
    args = parser.parse_args()
    args.down_after_s = seconds_of(args.down_after)
    seconds_of(args.up_after)
    every = {
        "http": ["workerpool autoscale", "workerpool fixed max",
                 "uwsgi cheaper", "uwsgi fixed max"],
        "amqp": ["workerpool autoscale", "workerpool fixed max",
                 "celery autoscale", "celery fixed max"],
    }[args.case]
    args.systems = ([s.strip() for s in args.systems.split(",")]
                    if args.systems else every)
    for s in args.systems:
        if s not in every:
            parser.error(f"unknown system {s!r} for {args.case}: "
                         f"{', '.join(every)}")
    if args.case == "amqp" and not args.amqp_url:
        parser.error("amqp needs --amqp-url")

    def on_term(*_):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)
    try:
        (bench_http if args.case == "http" else bench_amqp)(args)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(2)


if __name__ == "__main__":
    main()
