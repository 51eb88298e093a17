"""The Watcher foundation (`workerpool run FILE`), from outside: children and
their environment, restarts, backoff and failed groups, graceful stop,
PR_SET_PDEATHSIG, scale, output capture, JSON logs, dropping privileges.
DESIGN.md: "What a child receives", "Signals", "Pool definition"."""

import collections
import datetime
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import wp

SLEEP = '[sleep, "1000"]'


def spawned_re(group, index=r"\d+"):
    return r"spawned %s\[(%s)\] pid (\d+)" % (re.escape(group), index)


def output_re(group, index, pid):
    """A captured output line of GROUP[INDEX] pid PID; group(1) is the line."""
    return r"%s\[%d\] %d: (.*)$" % (re.escape(group), index, pid)


def log_time(line):
    """The timestamp at the start of a text log line, or None."""
    m = re.match(r"^\[?(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d(?:\.\d+)?)", line)
    if not m:
        return None
    try:
        return datetime.datetime.fromisoformat(m.group(1) + " " + m.group(2))
    except ValueError:
        return None


class WatcherTest(wp.TestCase):

    # -- children and what they receive

    def test_children_env_and_cwd(self):
        pool = self.pool("""
pool: {name: envpool, stop_timeout: 5s}
groups:
  - name: alpha
    type: job
    processes: 2
    command: %(sleep)s
    env: {ALPHA_VAR: one, SHARED: from-alpha}
    cwd: "{tmp}/alpha"
  - name: beta
    type: service
    processes: 3
    command: %(sleep)s
    env: {BETA_VAR: "two words", SHARED: from-beta, EMPTY: ""}
    cwd: "{tmp}/beta"
  - name: gamma
    type: job
    processes: 1
    command: %(sleep)s
""" % {"sleep": SLEEP}, start=False)
        os.mkdir(os.path.join(pool.tmp, "alpha"))
        os.mkdir(os.path.join(pool.tmp, "beta"))
        pool.start()
        children = pool.wait_for_children(6)

        expected = {
            "alpha": ("job", 2, os.path.join(pool.tmp, "alpha"),
                      {"ALPHA_VAR": "one", "SHARED": "from-alpha"}),
            "beta": ("service", 3, os.path.join(pool.tmp, "beta"),
                     {"BETA_VAR": "two words", "SHARED": "from-beta",
                      "EMPTY": ""}),
            # no cwd: the Watcher's own (the harness starts it in tmp)
            "gamma": ("job", 1, pool.tmp, {}),
        }
        foreign = {"ALPHA_VAR", "BETA_VAR", "SHARED", "EMPTY"}
        for group, (gtype, count, cwd, env) in expected.items():
            mine = [c for c in children if c.group == group]
            self.assertEqual(sorted(c.index for c in mine), list(range(count)),
                             "indices of %s: %s" % (group, mine))
            for child in mine:
                where = "%s[%d] pid %d" % (group, child.index, child.pid)
                child_env = wp.proc_environ(child.pid)
                self.assertEqual(child_env.get("WORKERPOOL_GROUP"), group, where)
                self.assertEqual(child_env.get("WORKERPOOL_TYPE"), gtype, where)
                self.assertEqual(child_env.get("WORKERPOOL_INDEX"),
                                 str(child.index), where)
                self.assertEqual(child_env.get("WORKERPOOL_POOL"), "envpool",
                                 where)
                for key, value in env.items():
                    self.assertEqual(child_env.get(key), value,
                                     "%s: %s" % (where, key))
                for key in foreign - set(env):
                    self.assertNotIn(key, child_env,
                                     "%s has another group's %s" % (where, key))
                self.assertEqual(wp.proc_cwd(child.pid), cwd, where)
                pool.wait_for_log(r"spawned %s\[%d\] pid %d\b"
                                  % (group, child.index, child.pid))
        self.assertEqual(pool.stop(), 0)

    def test_group_env_overrides_watcher_env(self):
        # A name both in the Watcher's environment and in the group's env:
        # the child has it once, with the group's value (getenv returns the
        # first of duplicates, so a duplicate would hide the group's value).
        pool = self.pool("""
pool: {name: override, stop_timeout: 5s}
groups:
  - {name: g, type: job, processes: 1, command: %s, env: {WP_OVERRIDE: group}}
""" % SLEEP, env={"WP_OVERRIDE": "watcher"})
        (child,) = pool.wait_for_children(1)
        values = [v for k, v in wp.proc_environ_list(child.pid)
                  if k == "WP_OVERRIDE"]
        self.assertEqual(values, ["group"],
                         "WP_OVERRIDE entries in the child's environment")
        self.assertEqual(pool.stop(), 0)

    def test_child_starts_with_default_signals(self):
        # The Watcher catches SIGCHLD/SIGTERM/SIGINT/SIGHUP and ignores
        # SIGPIPE; none of that may reach a child: nothing ignored, nothing
        # blocked, nothing caught.
        pool = self.pool("""
pool: {name: signals, stop_timeout: 5s}
groups:
  - {name: g, type: job, processes: 1, command: %s}
""" % SLEEP)
        (child,) = pool.wait_for_children(1)
        with open("/proc/%d/status" % child.pid) as f:
            fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
        for field in ("SigIgn", "SigBlk", "SigCgt"):
            self.assertEqual(int(fields[field], 16), 0, field)
        self.assertEqual(pool.stop(), 0)

    def test_command_workerpool_is_this_binary(self):
        # `workerpool builtin NAME` runs this build's workerpool-builtin
        # (beside the binary) directly; any other `workerpool` command runs
        # this binary, not one from PATH.
        pool = self.pool("""
pool: {name: self, stop_timeout: 5s}
groups:
  - {name: echo, type: job, processes: 1, command: [workerpool, builtin, echo-job]}
  - {name: bypath, type: job, processes: 1, command: [%s, builtin, echo-job]}
""" % wp.BIN)
        builtin = os.path.join(os.path.dirname(os.path.realpath(wp.BIN)),
                               "workerpool-builtin")
        # Named "workerpool" or by this binary's path: one exec, straight
        # into workerpool-builtin.
        for child in pool.wait_for_children(2):
            exe = os.readlink("/proc/%d/exe" % child.pid)
            self.assertEqual(exe, builtin, child.group)
            with open("/proc/%d/cmdline" % child.pid, "rb") as f:
                self.assertEqual(f.read().split(b"\0")[1:3],
                                 [b"echo-job", b""], child.group)
        self.assertEqual(pool.stop(), 0)

    def test_builtin_command_bad_input(self):
        def run(binary, *args):
            proc = subprocess.run([binary, "builtin"] + list(args),
                                  capture_output=True, text=True, timeout=30)
            return proc.returncode, proc.stderr.strip()
        code, err = run(wp.BIN, "no-such-child")
        self.assertEqual(code, 1)
        self.assertIn("unknown child 'no-such-child' (known: echo-job, "
                      "http-reactor, rabbitmq-service)", err)
        code, err = run(wp.BIN)
        self.assertEqual(code, 1)
        self.assertIn("NAME is required", err)
        # A workerpool binary copied away from its workerpool-builtin says
        # where it looked, with a runtime-failure exit.
        scratch = tempfile.mkdtemp(prefix="wp-lonely-")
        self.addCleanup(shutil.rmtree, scratch, True)
        lonely = os.path.join(scratch, "workerpool")
        shutil.copy(wp.BIN, lonely)
        code, err = run(lonely, "echo-job")
        self.assertEqual(code, 2)
        self.assertIn("workerpool-builtin is missing (looked beside %s" % lonely,
                      err)
        self.assertEqual(len(err.splitlines()), 1, err)

    def test_command_workerpool_other_than_builtin_is_this_binary(self):
        pool = self.pool("""
pool: {name: selfcli, stop_timeout: 5s}
groups:
  - {name: cli, type: job, processes: 1,
     command: [workerpool, check, /nonexistent.yaml],
     restart: {backoff: {initial: 10s, max: 10s}}}
""")
        # The child exits at once (the file is missing); its death is logged
        # with the exit code that this binary's `check` gives.
        pool.wait_for_log(r"cli\[0\] pid \d+ exited with code 1")
        self.assertEqual(pool.stop(), 0)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to change user")
    def test_user_drops_privileges(self):
        nobody = pwd.getpwnam("nobody")
        pool = self.pool("""
pool: {name: users, stop_timeout: 5s}
groups:
  - {name: low, type: job, processes: 2, command: %s, user: nobody, cwd: "{tmp}"}
  - {name: high, type: job, processes: 1, command: %s}
""" % (SLEEP, SLEEP))
        children = pool.wait_for_children(3)
        allowed_groups = set(os.getgrouplist("nobody", nobody.pw_gid))
        for child in children:
            status = wp.proc_status(child.pid)
            uids = status["Uid"].split()
            gids = status["Gid"].split()
            groups = set(int(g) for g in status.get("Groups", "").split())
            if child.group == "low":
                self.assertEqual(uids, [str(nobody.pw_uid)] * 4,
                                 "real/effective/saved/fs uid of %s" % (child,))
                self.assertEqual(gids, [str(nobody.pw_gid)] * 4,
                                 "real/effective/saved/fs gid of %s" % (child,))
                self.assertTrue(groups <= allowed_groups,
                                "%s keeps supplementary groups %s (nobody's: %s)"
                                % (child, sorted(groups - allowed_groups),
                                   sorted(allowed_groups)))
            else:
                self.assertEqual(uids, ["0"] * 4, str(child))
        self.assertEqual(pool.stop(), 0)

    # -- restarts

    def test_killed_child_restarts_in_same_slot(self):
        pool = self.pool("""
pool: {name: restart, stop_timeout: 5s}
groups:
  - {name: w, type: job, processes: 2, command: %s}
""" % SLEEP)
        before = pool.wait_for_children(2)
        victim = pool.child("w", 1)
        other = pool.child("w", 0)
        os.kill(victim.pid, signal.SIGKILL)
        def new_child():
            child = pool.child("w", 1)  # one look: the slot may be empty
            return child if child and child.pid != victim.pid else None
        replacement = wp.wait_until(
            new_child,
            what="a new pid in slot w[1]",
            on_timeout=lambda: "children: %s\n%s" % (pool.children(),
                                                    pool.log_tail()))
        self.assertNotEqual(replacement.pid, victim.pid)
        self.assertEqual(pool.child("w", 0), other, "slot 0 was touched")
        self.assertEqual(len(pool.children()), 2, "before: %s" % (before,))
        pool.wait_for_log(r"w\[1\] pid %d killed by signal SIGKILL \(9\)"
                          % victim.pid)
        pool.wait_for_log(r"spawned w\[1\] pid %d\b" % replacement.pid)
        wp.wait_until(lambda: not pool.zombies(), what="no zombie children")
        self.assertEqual(pool.stop(), 0)

    def test_exit_code_is_logged(self):
        pool = self.pool("""
pool: {name: exits, stop_timeout: 5s}
groups:
  - name: once
    type: job
    processes: 1
    command: [sh, -c, 'if [ -e "{tmp}/second" ]; then exec sleep 1000; fi; touch "{tmp}/second"; exit 7']
""")
        m = pool.wait_for_log(r"once\[0\] pid (\d+) exited with code 7\b")
        dead = int(m.group(1))
        (child,) = pool.wait_for_children(1)
        self.assertNotEqual(child.pid, dead)
        self.assertEqual(child.index, 0)
        self.assertEqual(pool.stop(), 0)

    def test_last_output_before_exit_and_descendants_still_heard(self):
        # The Watcher holds the write end of each child's output pipe while
        # the child runs (a death then wakes it once, not three times): what
        # the child wrote must still come before the line saying it died,
        # and a descendant that inherited the pipe must still be heard.
        pool = self.pool("""
pool: {name: lastwords, stop_timeout: 5s}
groups:
  - name: last
    type: job
    processes: 1
    command: [sh, -c, 'if [ -e "{tmp}/second" ]; then exec sleep 1000; fi; touch "{tmp}/second"; (sleep 1; echo "orphan speaks") & echo "last words"; exit 3']
""")
        m = pool.wait_for_log(r"last\[0\] pid (\d+) exited with code 3\b")
        dead = int(m.group(1))
        pool.wait_for_log(output_re("last", 0, dead).replace(
            "(.*)$", "orphan speaks$"))
        text = pool.log_text()
        words = text.find("last[0] %d: last words" % dead)
        died = text.find("last[0] pid %d exited with code 3" % dead)
        self.assertGreaterEqual(words, 0, "the child's output was lost")
        self.assertLess(words, died, "its output came after its death")
        pool.wait_for_children(1)
        self.assertEqual(pool.stop(), 0)

    def test_crashing_group_backs_off_then_fails(self):
        pool = self.pool("""
pool: {name: failing, stop_timeout: 5s}
groups:
  - name: bad
    type: job
    processes: 1
    command: [sh, -c, "exit 3"]
    restart:
      backoff: {initial: 200ms, max: 1s}
      intensity: {max_restarts: 3, period: 60s}
  - {name: good, type: job, processes: 1, command: %s}
""" % SLEEP, allow_critical=[r"group bad failed"])
        pool.wait_for_log(r"group bad failed", timeout=60)
        self.assertTrue(pool.running(), "the Watcher must stay up")

        spawns = pool.find_log(spawned_re("bad"))
        exits = pool.find_log(r"bad\[0\] pid (\d+) exited with code 3\b")
        self.assertGreaterEqual(len(spawns), 2, "it was never restarted")
        self.assertLessEqual(len(spawns), 3 + 2,
                             "more restarts than max_restarts allows")
        self.assertGreaterEqual(len(exits), len(spawns) - 1)

        # Backoff: a lower bound only (a slow machine makes gaps longer,
        # never shorter). After the first restart, every restart waits at
        # least the initial backoff (200ms) after the death before it.
        lines = pool.log_lines()
        events = []
        for line in lines:
            if re.search(r"bad\[0\] pid \d+ exited with code 3\b", line):
                events.append(("exit", log_time(line)))
            elif re.search(spawned_re("bad"), line):
                events.append(("spawn", log_time(line)))
        if all(t is not None for _, t in events):
            gaps = [(b[1] - a[1]).total_seconds()
                    for a, b in zip(events, events[1:])
                    if a[0] == "exit" and b[0] == "spawn"]
            for gap in gaps[1:]:
                self.assertGreaterEqual(
                    gap, 0.19, "restart gaps %s: no backoff\n%s"
                    % (gaps, "\n".join(l for l in lines if "bad[" in l)))
        else:
            print("(no timestamps in the log: backoff not measured)")

        # It stopped restarting: nothing new over more than the max backoff.
        count = len(pool.find_log(spawned_re("bad")))
        time.sleep(2.5)
        self.assertEqual(len(pool.find_log(spawned_re("bad"))), count,
                         "a failed group was restarted")
        self.assertEqual(pool.children("bad"), [])

        # Still serving the other group: a killed child comes back.
        (good,) = pool.wait_for_children(1, "good")
        os.kill(good.pid, signal.SIGKILL)
        wp.wait_until(lambda: [c for c in pool.children("good")
                               if c.pid != good.pid],
                      what="good[0] restarted after the other group failed",
                      on_timeout=pool.log_tail)
        self.assertTrue(pool.running())
        self.assertEqual(pool.stop(), 0)

    # -- stopping

    def _stop_with(self, sig):
        pool = self.pool("""
pool: {name: stopping, stop_timeout: 10s}
groups:
  - {name: a, type: job, processes: 3, command: %s}
  - name: b
    type: service
    processes: 2
    command: [sh, -c, "while true; do sleep 0.2; done"]
""" % SLEEP)
        children = pool.wait_for_children(5)
        self.assertEqual(pool.stop(sig=sig), 0, pool.log_tail())
        for child in children:
            wp.wait_until(lambda: not wp.alive(child.pid),
                          what="%s to be gone" % (child,))
        wp.wait_until(lambda: not pool.leftovers(),
                      what="every process of the pool to be gone",
                      on_timeout=lambda: str(pool.leftovers()))

    def test_sigterm_stops_every_child(self):
        self._stop_with(signal.SIGTERM)

    def test_sigint_stops_every_child(self):
        self._stop_with(signal.SIGINT)

    def test_child_ignoring_sigterm_is_killed_after_stop_timeout(self):
        pool = self.pool("""
pool: {name: stubborn, stop_timeout: 1s}
groups:
  - name: deaf
    type: job
    processes: 1
    command: [sh, -c, 'trap "" TERM; echo ready; while true; do sleep 0.1; done']
  - {name: polite, type: job, processes: 1, command: %s}
""" % SLEEP)
        deaf = pool.wait_for_children(1, "deaf")[0]
        pool.wait_for_log(output_re("deaf", 0, deaf.pid).replace(
            "(.*)$", "ready$"))
        self.assertEqual(pool.stop(), 0, pool.log_tail())
        self.assertFalse(wp.alive(deaf.pid), "the deaf child survived")
        self.assertTrue(pool.find_log(
            r"deaf\[0\] pid %d killed by signal SIGKILL \(9\)" % deaf.pid),
            "no log line for the SIGKILL of deaf[0]\n" + pool.log_tail())

    def test_watcher_sigkill_leaves_no_child(self):
        pool = self.pool("""
pool: {name: orphans, stop_timeout: 5s}
groups:
  - {name: a, type: job, processes: 3, command: %s}
  - {name: b, type: service, processes: 2, command: [sh, -c, "sleep 1000"]}
""" % SLEEP)
        children = pool.wait_for_children(5)
        pool.signal(signal.SIGKILL)
        self.assertEqual(pool.wait_exit(), -signal.SIGKILL)
        for child in children:
            wp.wait_until(lambda: not wp.alive(child.pid),
                          what="%s to die with the Watcher" % (child,))

    # -- scale

    def test_500_children_start_and_stop(self):
        pool = self.pool("""
pool: {name: many, stop_timeout: 20s}
groups:
  - {name: big, type: job, processes: 500, command: [/bin/sleep, "1000"]}
""")
        children = pool.wait_for_children(500, timeout=120)
        self.assertEqual(sorted(c.index for c in children), list(range(500)))
        self.assertEqual(pool.zombies(), [])
        pool.wait_for_log(spawned_re("big"), count=500, timeout=60)

        # Kill a few: each slot gets a new child, and every death is reaped.
        victims = children[::50]
        for child in victims:
            os.kill(child.pid, signal.SIGKILL)
        victim_pids = {c.pid for c in victims}
        wp.wait_until(
            lambda: (len(pool.children("big")) == 500 and not victim_pids
                     & {c.pid for c in pool.children("big")}),
            timeout=60, what="the killed children to be replaced")
        wp.wait_until(lambda: not pool.zombies(), what="no zombie children",
                      on_timeout=lambda: str(pool.zombies()[:20]))
        everyone = {c.pid for c in pool.children("big")} | {
            c.pid for c in children}

        self.assertEqual(pool.stop(timeout=90), 0, pool.log_tail())
        wp.wait_until(lambda: not [p for p in everyone if wp.alive(p)],
                      what="all 500 children to be gone",
                      on_timeout=lambda: str([p for p in everyone
                                              if wp.alive(p)][:20]))

    # -- output capture

    def test_output_capture_keeps_every_line_of_10mb(self):
        lines = 163840  # 64 bytes each: 10 MiB
        pool = self.pool("""
pool: {name: output, stop_timeout: 5s}
groups:
  - {name: talk, type: job, processes: 1, command: [python3, "{tmp}/talk.py"]}
""", start=False)
        pool.write("talk.py", """
import sys, time
out = sys.stdout
for i in range(%d):
    out.write("n=%%07d %%s\\n" %% (i, "x" * 55))
out.write("talk done\\n")
out.flush()
time.sleep(1000)
""" % lines)
        pool.start()
        (child,) = pool.wait_for_children(1)
        pool.wait_for_log(output_re("talk", 0, child.pid).replace(
            "(.*)$", "talk done$"), timeout=180)
        found = re.findall(r"talk\[0\] %d: n=(\d{7}) x{55}$" % child.pid,
                           pool.log_text(), re.M)
        counts = collections.Counter(int(n) for n in found)
        missing = [i for i in range(lines) if counts[i] == 0]
        doubled = [i for i, c in counts.items() if c > 1]
        self.assertEqual(missing[:20], [], "%d lines missing" % len(missing))
        self.assertEqual(doubled[:20], [], "%d lines twice" % len(doubled))
        self.assertEqual(len(found), lines)
        self.assertEqual(len(pool.children("talk")), 1, "the child restarted")
        self.assertEqual(pool.stop(), 0)

    def test_long_line_is_split_not_lost(self):
        pool = self.pool("""
pool: {name: longline, stop_timeout: 5s}
groups:
  - {name: long, type: job, processes: 1, command: [python3, "{tmp}/long.py"]}
""", start=False)
        pool.write("long.py", """
import sys, time
sys.stdout.write("before\\n" + "".join("%07d," % i for i in range(40000)) + "\\nafter\\n")
sys.stdout.flush()
time.sleep(1000)
""")
        pool.start()
        (child,) = pool.wait_for_children(1)
        pool.wait_for_log(output_re("long", 0, child.pid).replace(
            "(.*)$", "after$"))
        payloads = [m.group(1) for m in pool.find_log(
            output_re("long", 0, child.pid))]
        self.assertEqual(payloads[0], "before")
        self.assertEqual(payloads[-1], "after")
        self.assertGreater(len(payloads), 3, "the long line was not split")
        expected = "".join("%07d," % i for i in range(40000))
        joined = "".join(payloads[1:-1])
        self.assertEqual(len(joined), len(expected))
        self.assertTrue(joined == expected, "the pieces do not add up to the line")
        self.assertEqual(pool.stop(), 0)

    def test_flooding_child_does_not_stop_restarts(self):
        # The flood stops when the test is done with it, or after 2 GB: the
        # Watcher logs a read's lines in one write, so 500 MB could pass
        # before a loaded CI machine saw the restart.
        pool = self.pool("""
pool: {name: flood, stop_timeout: 5s}
groups:
  - {name: flood, type: job, processes: 1, command: [python3, "{tmp}/flood.py"]}
  - {name: victim, type: job, processes: 1, command: %s}
""" % SLEEP, start=False)
        pool.write("flood.py", """
import os, sys, time
w = sys.stdout.buffer.write
chunk = (b"F" * 99 + b"\\n") * 1000
stop = os.path.join(%r, "stop")
for _ in range(20000):
    w(chunk)
    if os.path.exists(stop):
        break
sys.stdout.flush()
open(os.path.join(%r, "flood.finished"), "w").close()
time.sleep(1000)
""" % (pool.tmp, pool.tmp))
        pool.start()
        (victim,) = pool.wait_for_children(1, "victim")
        (flood,) = pool.wait_for_children(1, "flood")
        pool.wait_for_log(r"flood\[0\] %d: F{99}$" % flood.pid)
        finished = os.path.join(pool.tmp, "flood.finished")
        try:
            os.kill(victim.pid, signal.SIGKILL)
            wp.wait_until(lambda: [c for c in pool.children("victim")
                                   if c.pid != victim.pid],
                          what="victim[0] restarted during the flood")
            self.assertFalse(os.path.exists(finished),
                             "the flood ended before the restart: inconclusive")
        finally:
            open(os.path.join(pool.tmp, "stop"), "w").close()
        self.assertEqual(pool.stop(), 0)

    # -- JSON log

    def _json_lines(self, pool):
        with open(pool.log_path, "rb") as f:
            raw = f.read().splitlines()
        self.assertTrue(raw, "empty log")
        records = []
        for n, line in enumerate(raw, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                self.fail("log line %d is not UTF-8 (%s): %r" % (n, e, line[:200]))
            try:
                record = json.loads(text)
            except ValueError as e:
                self.fail("log line %d is not JSON (%s): %r" % (n, e, text[:200]))
            self.assertIsInstance(record, dict, "line %d" % n)
            records.append(record)
        return records

    def test_json_log_lines_are_json(self):
        pool = self.pool(r"""
pool: {name: json, stop_timeout: 5s, log: {level: info, format: json}}
groups:
  - name: talk
    type: job
    processes: 1
    command: [printf, 'quote " backslash \\ tab \t bell \a esc \033[1m unicode \303\251 \346\227\245 end\n']
    restart: {backoff: {initial: 100ms, max: 200ms}}
  - {name: w, type: job, processes: 2, command: %s}
""" % SLEEP, allow_critical=[r"group talk failed"])
        pool.wait_for_log(r"unicode", count=2)
        children = pool.wait_for_children(2, "w")
        os.kill(children[0].pid, signal.SIGKILL)
        pool.wait_for_log(r"pid %d" % children[0].pid, count=2)
        self.assertEqual(pool.stop(), 0)
        records = self._json_lines(pool)
        text = "\n".join(json.dumps(r) for r in records)
        self.assertIn("spawned", text)
        messages = [str(v) for r in records for v in r.values()]
        self.assertTrue(any('quote " backslash \\ tab \t bell \a esc \x1b[1m '
                            'unicode \u00e9 \u65e5 end' in m for m in messages),
                        "the child's line did not survive JSON escaping:\n"
                        + "\n".join(m for m in messages if "quote" in m))

    def test_json_log_stays_utf8_with_binary_child_output(self):
        pool = self.pool(r"""
pool: {name: jsonbin, stop_timeout: 5s, log: {level: info, format: json}}
groups:
  - name: bin
    type: job
    processes: 1
    command: [sh, -c, 'printf "bytes \377\376\300 end\n"; exec sleep 1000']
""")
        (child,) = pool.wait_for_children(1)
        pool.wait_for_log(r"bytes .* end")
        self.assertEqual(pool.stop(), 0)
        self._json_lines(pool)

    def test_child_line_priority_prefix_sets_its_level(self):
        # "<N>" as systemd reads stderr (sd-daemon(3)): with log.level warn,
        # a child's errors and warnings show, its chatter does not; nothing
        # a child says is logged above error.
        pool = self.pool(r"""
pool: {name: levels, stop_timeout: 5s, log: {level: warn, format: json}}
groups:
  - name: talk
    type: job
    processes: 1
    command: [sh, -c, 'printf "<3>boom-err\n<4>careful-warn\n<6>chatty-info\n<7>verbose-debug\nplain-info\n<0>emerg-capped\n<9>not-a-priority\n"; exec sleep 1000']
""")
        pool.wait_for_log(r"emerg-capped")
        self.assertEqual(pool.stop(), 0)
        levels = {}
        for record in self._json_lines(pool):
            for word in ("boom-err", "careful-warn", "chatty-info",
                         "verbose-debug", "plain-info", "emerg-capped",
                         "not-a-priority"):
                if word in record["msg"]:
                    levels[word] = (record["level"], record["msg"])
        self.assertEqual(levels["boom-err"][0], "error")
        self.assertTrue(levels["boom-err"][1].endswith(": boom-err"),
                        levels["boom-err"][1])
        self.assertEqual(levels["careful-warn"][0], "warning")
        self.assertEqual(levels["emerg-capped"][0], "error")
        for quiet in ("chatty-info", "verbose-debug", "plain-info",
                      "not-a-priority"):
            self.assertNotIn(quiet, levels)


    # -- an idle pool sleeps

    def test_idle_pool_has_no_wakeups(self):
        """No polling timer runs while nothing happens: neither the Watcher
        nor an idle protocol child (no heartbeat_timeout, no max_rss) wakes
        up on its own."""
        pool = self.pool("""
pool: {name: idle, stop_timeout: 2s}
groups:
  - {name: s, type: job, processes: 2, command: %s}
  - {name: e, type: job, processes: 1, command: [workerpool, builtin, echo-job]}
""" % SLEEP)
        pool.wait_for_log(r"pool idle ready")
        (echo,) = pool.children("e")

        def switches(pid):
            total = 0
            for task in os.listdir("/proc/%d/task" % pid):
                status = wp.proc_status(int(task))
                total += int(status.get("voluntary_ctxt_switches", 0))
                total += int(status.get("nonvoluntary_ctxt_switches", 0))
            return total

        time.sleep(1.5)  # the start grace and any last stats go by
        before = {pid: switches(pid) for pid in (pool.pid, echo.pid)}
        time.sleep(3)
        after = {pid: switches(pid) for pid in (pool.pid, echo.pid)}
        for pid in before:
            # A stray wake-up or two (page faults, the scheduler) is not a
            # timer; a 1 s timer would show 3 or more here.
            self.assertLessEqual(after[pid] - before[pid], 2,
                                 "pid %d woke up %d times while idle"
                                 % (pid, after[pid] - before[pid]))
        self.assertEqual(pool.stop(), 0)

if __name__ == "__main__":
    wp.main()
