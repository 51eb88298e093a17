#!/usr/bin/env python3
"""The Celery baseline of bench/outbox_bench.cc: `apply_async(...).get()`
with the rpc:// result backend, on the same RabbitMQ as the pool, for a task
that returns its argument (the echo-job's work).

  celery_rpc.py worker AMQP_URL QUEUE [--concurrency 2]
      runs a Celery worker (prefork, CONCURRENCY processes) on QUEUE until
      SIGTERM; Celery's defaults otherwise (prefetch multiplier 4, acks
      early), without heartbeat, gossip and mingle (nothing to talk to).
  celery_rpc.py client AMQP_URL QUEUE --callers N [--warmup 1] [--duration 5]
                [--body 64]
      N threads, each calling echo.apply_async((body,)).get() in a closed
      loop (as each of N HTTP connections does against the pool); prints one
      JSON line: requests/s over the measured window, ok, failed and the
      latency percentiles in microseconds.

Debian's python3-celery (5.2). Each thread has its own result backend and
reply queue (Celery's app.backend is thread-local), so the callers do not
share a consumer.
"""

import argparse
import json
import sys
import threading
import time

from celery import Celery


def make_app(url, queue):
    app = Celery("wpbench", broker=url, backend="rpc://")
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="wpbench.echo")
    def echo(body):
        return body

    return app, echo


def run_worker(args):
    app, _ = make_app(args.url, args.queue)
    app.worker_main(argv=[
        "worker", "--pool=prefork", "-c", str(args.concurrency), "-Q",
        args.queue, "--without-heartbeat", "--without-gossip",
        "--without-mingle", "--loglevel=WARNING", "-n",
        "wpbench-%d@localhost" % int(time.time() * 1000),
    ])


def run_client(args):
    app, echo = make_app(args.url, args.queue)
    body = "x" * args.body
    start = time.monotonic()
    measure_from = start + args.warmup
    measure_to = measure_from + args.duration
    latencies = []
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def caller():
        mine, ok, failed = [], 0, 0
        while True:
            t0 = time.monotonic()
            if t0 >= measure_to:
                break
            try:
                good = echo.apply_async((body,)).get(timeout=30) == body
            except Exception:  # a timeout or a broker error: counted
                good = False
            t1 = time.monotonic()
            if measure_from <= t0 and t1 <= measure_to:
                if good:
                    ok += 1
                    mine.append((t1 - t0) * 1e6)
                else:
                    failed += 1
        with lock:
            latencies.extend(mine)
            counts["ok"] += ok
            counts["failed"] += failed

    threads = [threading.Thread(target=caller) for _ in range(args.callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()

    def at(q):
        if not latencies:
            return 0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    print(json.dumps({
        "callers": args.callers,
        "requests_per_second": counts["ok"] / args.duration,
        "ok": counts["ok"], "failed": counts["failed"],
        "p50_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99),
        "max_us": latencies[-1] if latencies else 0,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["worker", "client"])
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--body", type=int, default=64)
    args = parser.parse_args()
    if args.mode == "worker":
        run_worker(args)
    else:
        run_client(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
