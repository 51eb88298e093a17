#!/usr/bin/python3
"""Python jobs behind RabbitMQ (issue 20): workerpool's service -> a Python
job group, beside Celery and beside the C++ echo-job on the same path.

Usage:
  python_bench.py --workerpool PATH --amqp-url URL [--messages 10000]
      [--prefetch 2,32,128] [--runs 1] [--systems LIST]

Each case prefills a durable queue with MESSAGES persistent messages (the
body: a short string), starts its consumer and measures the steady state as
bench/amqp_bench.cc does: the time the queue's ready count takes to fall
from 90% to 10% of MESSAGES (passive queue.declare every 2 ms), so start-up
and the tail are left out alike. Systems, two worker processes each:
  - "celery prefork": Debian's Celery, `worker --pool=prefork
    --concurrency=2`, task_acks_late, worker_prefetch_multiplier =
    PREFETCH / 2 (so the channel's prefetch count is PREFETCH), a task that
    upper-cases its argument, no result backend; the queue is prefilled
    with Celery's own task messages (apply_async);
  - "workerpool python job": the built-in rabbitmq-service (one process,
    prefetch PREFETCH) -> a job group of 2 processes running
    src/examples/python_job.py (upper case) with max_inflight 32;
  - "workerpool echo-job": the same with the C++ built-in echo-job.
One JSON line per case on stdout: system, prefetch, per_second, and for the
workerpool systems job_cpu_us (CPU time of the job processes per message over the measured stretch).
Every process started is stopped, also on failure or ^C. Runs with Debian's
python3 (Celery and py-amqp come from Debian's packages); the Python job
runs with the same interpreter.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_JOB = os.path.join(TOP, "src", "examples", "python_job.py")
BODY = b"hello workerpool, a short string"
SYSTEMS = ["celery prefork", "workerpool python job", "workerpool echo-job"]
JOB_MAX_INFLIGHT = 32
CELERY_CONCURRENCY = 2

CELERY_APP = """\
import os

from celery import Celery

app = Celery("pyb", broker=os.environ["PYB_BROKER"])
app.conf.task_default_queue = os.environ["PYB_QUEUE"]
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = int(os.environ["PYB_MULTIPLIER"])
app.conf.task_ignore_result = True
app.conf.worker_hijack_root_logger = False

@app.task(name="pyb.upper")
def upper(text):
    return text.upper()
"""


def log(message):
    print(f"python_bench: {message}", file=sys.stderr, flush=True)


def amqp_connection(url):
    import amqp  # Debian's python3-amqp
    from urllib.parse import unquote, urlparse
    u = urlparse(url)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    conn = amqp.Connection(host=f"{u.hostname}:{u.port or 5672}",
                           userid=unquote(u.username or "guest"),
                           password=unquote(u.password or "guest"),
                           virtual_host=vhost)
    conn.connect()
    return conn


def recreate(url, queue):
    conn = amqp_connection(url)
    channel = conn.channel()
    channel.queue_delete(queue)
    channel.queue_declare(queue, durable=True, auto_delete=False)
    conn.close()


def delete_queue(url, queue):
    try:
        conn = amqp_connection(url)
        conn.channel().queue_delete(queue)
        conn.close()
    except Exception as error:  # best effort
        log(f"cannot delete queue {queue}: {error}")


def prefill_raw(url, queue, count):
    """COUNT persistent messages, with publisher confirms."""
    import amqp
    conn = amqp_connection(url)
    channel = conn.channel()
    channel.confirm_select()
    for _ in range(count):
        channel.basic_publish(amqp.Message(BODY, delivery_mode=2),
                              exchange="", routing_key=queue)
    conn.close()


def prefill_celery(env, d, count):
    code = (
        "import os, sys\n"
        "sys.path.insert(0, os.environ['PYB_DIR'])\n"
        "from pyb_tasks import upper\n"
        f"for _ in range({count}):\n"
        f"    upper.apply_async(({BODY.decode()!r},))\n")
    subprocess.run(["/usr/bin/python3", "-c", code], env=env, check=True)


def depth(channel, queue):
    return channel.queue_declare(queue, passive=True).message_count


def measure_drain(url, queue, count, alive, give_up_s=300, cpu=None):
    """msgs/s while the ready count falls from 90% to 10% of COUNT, and the
    CPU seconds CPU() grew by over that stretch."""
    conn = amqp_connection(url)
    channel = conn.channel()
    high, low = count * 9 // 10, count // 10
    start = None
    limit = time.monotonic() + give_up_s
    try:
        while True:
            n = depth(channel, queue)
            now = time.monotonic()
            if start is None and n <= high:
                start = now
                cpu_start = cpu() if cpu else 0.0
            if start is not None and n <= low:
                used = cpu() - cpu_start if cpu else 0.0
                return (high - low) / (now - start), used
            if not alive() or now > limit:
                return None, 0.0
            time.sleep(0.002)
    finally:
        conn.close()


class Started:
    """A process group we started; stop() ends it and everything in it."""

    def __init__(self, argv, log_path, env=None, cwd=None):
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

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
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


def children_of(pid):
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def workerpool_case(args, system, prefetch, queue, d):
    if system == "workerpool python job":
        command = f"[/usr/bin/python3, {PYTHON_JOB}]"
    else:
        command = f"[{args.workerpool}, builtin, echo-job]"
    config = os.path.join(d, "pool.yaml")
    with open(config, "w") as f:
        f.write(f"""\
pool: {{name: pyb-{os.getpid()}, stop_timeout: 20s,
       control_socket: {d}/ctl.sock, log: {{level: warn}}}}
groups:
  - name: intake
    type: service
    processes: 1
    routes_to: [work]
    rabbitmq: {{url: "{args.amqp_url}", queues: [{queue}], declare: true,
               prefetch: {prefetch}, max_retries: 0}}
  - name: work
    type: job
    processes: 2
    max_inflight: {JOB_MAX_INFLIGHT}
    queue_limit: 100000
    command: {command}
""")
    recreate(args.amqp_url, queue)
    prefill_raw(args.amqp_url, queue, args.messages)
    started = Started([args.workerpool, "run", config],
                      os.path.join(d, "pool.log"))
    def jobs_cpu():
        jobs = [p for p in children_of(started.pid)
                if "echo-job" in cmdline(p) or "python_job" in cmdline(p)]
        return sum(cpu_seconds(p) for p in jobs)
    try:
        rate, cpu = measure_drain(args.amqp_url, queue, args.messages,
                                  started.alive, cpu=jobs_cpu)
    finally:
        started.stop()
    if rate is None:
        raise RuntimeError(f"{system}: the pool exited or stalled; see "
                           f"{d}/pool.log")
    return {"per_second": rate,
            "job_cpu_us": cpu / (args.messages * 0.8) * 1e6,
            "job_config": f"service prefetch {prefetch} -> 2 processes, "
                          f"max_inflight {JOB_MAX_INFLIGHT}"}


def celery_case(args, prefetch, queue, d):
    with open(os.path.join(d, "pyb_tasks.py"), "w") as f:
        f.write(CELERY_APP)
    multiplier = max(1, prefetch // CELERY_CONCURRENCY)
    env = dict(os.environ, PYB_BROKER=args.amqp_url, PYB_QUEUE=queue,
               PYB_DIR=d, PYTHONPATH=d, PYB_MULTIPLIER=str(multiplier))
    delete_queue(args.amqp_url, queue)
    prefill_celery(env, d, args.messages)
    argv = ["/usr/bin/python3", "-m", "celery", "-A", "pyb_tasks", "worker",
            "--pool=prefork", f"--concurrency={CELERY_CONCURRENCY}",
            "--loglevel=WARNING", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]
    started = Started(argv, os.path.join(d, "celery.log"), env=env, cwd=d)
    try:
        rate, _ = measure_drain(args.amqp_url, queue, args.messages,
                                started.alive)
    finally:
        started.stop()
    if rate is None:
        raise RuntimeError(f"celery: exited or stalled; see {d}/celery.log")
    return {"per_second": rate,
            "celery_config": f"prefork, concurrency {CELERY_CONCURRENCY}, "
                             f"task_acks_late, worker_prefetch_multiplier "
                             f"{multiplier} (prefetch count "
                             f"{multiplier * CELERY_CONCURRENCY}), "
                             "ignore_result, --without-gossip/mingle/"
                             "heartbeat"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workerpool", required=True)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--prefetch", default="2,32,128")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    args = parser.parse_args()
    prefetches = [int(p) for p in args.prefetch.split(",") if p.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    import celery
    versions = {"celery": celery.__version__,
                "python": sys.version.split()[0]}
    for run in range(args.runs):
        for prefetch in prefetches:
            for system in systems:
                d = tempfile.mkdtemp(prefix="pyb-")
                queue = f"pyb-{os.getpid()}-{system.replace(' ', '-')}"
                try:
                    log(f"run {run + 1}: {system}, prefetch {prefetch}")
                    if system == "celery prefork":
                        result = celery_case(args, prefetch, queue, d)
                    else:
                        result = workerpool_case(args, system, prefetch,
                                                 queue, d)
                finally:
                    delete_queue(args.amqp_url, queue)
                    shutil.rmtree(d, ignore_errors=True)
                result.update(system=system, prefetch=prefetch, run=run + 1,
                              messages=args.messages, **versions)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
