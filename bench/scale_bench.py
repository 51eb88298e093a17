#!/usr/bin/env python3
"""The scale benchmark: workerpool with N children against a bare C spawner
of the same children (bench/scale_spawner.c: posix_spawn, no descriptor kept
per child) in the same run. scripts/bench --only scale runs it.

Per system and N: start-all (first exec to the N-th child's datagram, and
its two halves), restart latency of one child (SIGKILL -> the replacement's
datagram; median of --restarts), a kill storm (N / --storm-fraction children
SIGKILLed at once -> the last replacement's datagram; the time per killed
child must not grow with N), the supervisor's RSS, CPU time and context
switches (wake-ups) over --idle-seconds idle, `workerpool status --json`
time, and stop-all (SIGTERM -> the supervisor and every child gone).
workerpool's restart latency is also measured with 10 children.
WORKERPOOL_REAP=waitpid in the environment measures workerpool reaping on
SIGCHLD only (no pidfds), for comparison.

N larger than the Watcher's RLIMIT_NOFILE allows (core/file_limit.h: two
descriptors per child, or one and two per group with the output through a
socket per group, when the hard limit cannot be raised, i.e. without
CAP_SYS_RESOURCE) is lowered to what fits, and the output says so.

Prints one JSON object on stdout.
"""

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

RESERVED_FDS = 256  # core/file_limit.h kReservedFds
FDS_PER_CHILD = 2   # core/file_limit.h kFdsPerChild
FDS_PER_GROUP_SOCKET = 2  # core/file_limit.h kFdsPerGroupSocket (1 group)
# core/file_limit.h ComfortableLimit: kFdsPerChild + kPidfdsPerChild +
# kHeldFdsPerChild.
COMFORTABLE_FDS_PER_CHILD = 5


def log(message):
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def fitting_children(wanted):
    """What the Watcher will allow here: the hard limit, raised when this
    process may raise it (the Watcher may as much as we may)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = RESERVED_FDS + wanted * COMFORTABLE_FDS_PER_CHILD
    try:
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
    except OSError:
        nr_open = 1 << 20
    if hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (min(need, nr_open), min(need, nr_open)))
            hard = min(need, nr_open)
        except (ValueError, OSError):
            pass
    # A pipe per child, or (core/file_limit.h ChooseOutputMode) one output
    # socket for the benchmark's one group and 1 descriptor per child.
    allowed = max((hard - RESERVED_FDS) // FDS_PER_CHILD,
                  hard - RESERVED_FDS - FDS_PER_GROUP_SOCKET)
    return min(wanted, allowed), hard


def proc_cost(pid):
    """(utime+stime ticks, voluntary+nonvoluntary switches) over threads."""
    ticks = switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                    switches += int(line.split()[1])
    return ticks, switches


def cpu_ns(pid):
    """Time on a CPU in nanoseconds over threads (schedstat: finer than
    clock ticks, which a storm of 100 barely moves)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Run:
    def __init__(self, name, command, n, sock_path, env=None, log_path=None):
        self.name, self.n = name, n
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sock_path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.pids = set()
        self.started = time.monotonic()
        out = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(command, stdout=out, stderr=out, env=env,
                                     start_new_session=True)

    def receive(self, timeout):
        self.sock.settimeout(timeout)
        data = self.sock.recv(64)
        return int(data)

    def wait_all(self, timeout):
        half_at = None
        deadline = time.monotonic() + timeout
        while len(self.pids) < self.n:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: {len(self.pids)} of {self.n} "
                                   "children came up")
            self.pids.add(self.receive(left))
            if half_at is None and len(self.pids) >= self.n // 2:
                half_at = time.monotonic()
        end = time.monotonic()
        return {"start_s": end - self.started,
                "first_half_s": half_at - self.started,
                "second_half_s": end - half_at}

    def restart_latency(self, rounds):
        samples = []
        for _ in range(rounds):
            victim = random.choice(sorted(self.pids))
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            self.pids.discard(victim)
            while True:
                pid = self.receive(30)
                if pid not in self.pids:
                    self.pids.add(pid)
                    break
            samples.append((time.monotonic() - killed) * 1e6)
            time.sleep(0.05)
        samples.sort()
        return samples[len(samples) // 2]

    def storm(self, count):
        """Seconds from SIGKILLing COUNT random children at once to the
        datagram of the last of their replacements."""
        victims = random.sample(sorted(self.pids), count)
        killed = time.monotonic()
        for victim in victims:
            os.kill(victim, signal.SIGKILL)
            self.pids.discard(victim)
        replaced = 0
        while replaced < count:
            pid = self.receive(60)
            if pid not in self.pids:
                self.pids.add(pid)
                replaced += 1
        return time.monotonic() - killed

    def idle(self, seconds):
        time.sleep(1)
        ticks0, sw0 = proc_cost(self.proc.pid)
        time.sleep(seconds)
        ticks1, sw1 = proc_cost(self.proc.pid)
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        return {"rss_mb": rss_kb(self.proc.pid) / 1024,
                "idle_cpu_ms": (ticks1 - ticks0) * tick_ms,
                "idle_wakeups": sw1 - sw0}

    def stop(self):
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        while any(alive(p) for p in self.pids):
            time.sleep(0.01)
        self.sock.close()
        return time.monotonic() - began

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def pool_yaml(d, n, child, sock):
    return f"""\
pool:
  name: scale{os.getpid()}x{n}
  control_socket: {d}/control.sock
  stop_timeout: 10s
groups:
  - name: many
    type: job
    processes: {n}
    command: [{child}, {sock}]
    restart:
      backoff: {{initial: 100ms, max: 1s, reset_after: 0ms}}
      intensity: {{max_restarts: 100000, period: 1s}}
"""


def measure(args, system, n, tmp):
    d = tempfile.mkdtemp(prefix="%s%d-" % (system.replace(", ", "-").replace(" ", "-"), n),
                         dir=tmp)
    sock = f"{d}/c.sock"
    env = dict(os.environ)
    if system == "bare spawner":
        command = [args.spawner, str(n), args.child, sock]
    else:
        with open(f"{d}/pool.yaml", "w") as f:
            f.write(pool_yaml(d, n, args.child, sock))
        command = [args.workerpool, "run", f"{d}/pool.yaml"]
        if system == "workerpool, direct":
            env["WORKERPOOL_SPAWN"] = "direct"
        if system == "workerpool, waitpid":
            env["WORKERPOOL_REAP"] = "waitpid"
    log(f"{system}: {n} children")
    run = Run(system, command, n, sock, env, f"{d}/log")
    try:
        row = {"system": system, "children": n}
        row.update(run.wait_all(args.timeout))
        log(f"  start {row['start_s']:.2f} s (halves {row['first_half_s']:.2f} + "
            f"{row['second_half_s']:.2f})")
        row.update(run.idle(args.idle_seconds))
        row["restart_us"] = run.restart_latency(args.restarts)
        if n >= args.storm_fraction * 10:
            # The median of --storms storms, each after the last settled;
            # the supervisor's CPU time in it too (the median storm's).
            row["storm_killed"] = n // args.storm_fraction
            storms = []
            for _ in range(args.storms):
                time.sleep(0.5)
                ns0 = cpu_ns(run.proc.pid)
                took = run.storm(row["storm_killed"])
                storms.append((took, (cpu_ns(run.proc.pid) - ns0) / 1e6))
            storms.sort()
            row["storm_s"], row["storm_cpu_ms"] = storms[len(storms) // 2]
            log(f"  storm: {row['storm_killed']} killed, all back in "
                f"{row['storm_s']:.2f} s, {row['storm_cpu_ms']:.1f} ms CPU "
                f"(median of {len(storms)}: "
                f"{', '.join('%.2f' % t for t, _ in storms)} s)")
        if system != "bare spawner":
            began = time.monotonic()
            subprocess.run([args.workerpool, "status", "--socket",
                            f"{d}/control.sock", "--json"],
                           stdout=subprocess.DEVNULL, check=True, timeout=60)
            row["status_ms"] = (time.monotonic() - began) * 1000
        row["stop_s"] = run.stop()
        log(f"  RSS {row['rss_mb']:.1f} MB, idle {row['idle_cpu_ms']:.0f} ms CPU "
            f"{row['idle_wakeups']} wake-ups, restart {row['restart_us']:.0f} us, "
            f"stop {row['stop_s']:.2f} s")
        return row
    finally:
        run.kill()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workerpool", required=True)
    parser.add_argument("--spawner", required=True)
    parser.add_argument("--child", required=True)
    parser.add_argument("--children", default="1000,10000")
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--storm-fraction", type=int, default=10,
                        help="the kill storm kills N / this many at once")
    parser.add_argument("--storms", type=int, default=5)
    parser.add_argument("--direct", action="store_true",
                        help="also workerpool with WORKERPOOL_SPAWN=direct")
    parser.add_argument("--waitpid", action="store_true",
                        help="also workerpool with WORKERPOOL_REAP=waitpid "
                        "(every child reaped on SIGCHLD, no pidfds)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="wp-scale-")
    rows = []
    notes = []
    try:
        for wanted in [int(x) for x in args.children.split(",")]:
            n, hard = fitting_children(wanted)
            if n < wanted:
                notes.append(f"{wanted} children with this machine's limits "
                             f"(goal): NOT met: they do not fit RLIMIT_NOFILE "
                             f"{hard} (hard; not raisable here: no "
                             f"CAP_SYS_RESOURCE), so {n} ran")
                log(notes[-1])
            if n > (hard - RESERVED_FDS) // FDS_PER_CHILD:
                notes.append(f"{n} children: the Watcher's output capture is "
                             f"one socket per group (RLIMIT_NOFILE {hard} "
                             f"allows {(hard - RESERVED_FDS) // FDS_PER_CHILD} "
                             f"with a pipe each)")
                log(notes[-1])
            systems = ["bare spawner", "workerpool"]
            if args.direct:
                systems.append("workerpool, direct")
            if args.waitpid:
                systems.append("workerpool, waitpid")
            for system in systems:
                row = measure(args, system, n, tmp)
                row["requested"] = wanted
                rows.append(row)
        for system in ["workerpool"] + (["workerpool, waitpid"]
                                        if args.waitpid else []):
            small = measure(args, system, 10, tmp)
            small["requested"] = 10
            rows.append(small)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"rows": rows, "notes": notes}))


if __name__ == "__main__":
    main()
