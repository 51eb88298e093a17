"""In-place upgrade of the Watcher (`workerpool upgrade`, SIGUSR2): the
Watcher execs a new binary in its own pid, which adopts the running pool
from the state handed over (docs/OPERATIONS.md, "Upgrading in place").

Two "builds" that report different versions are two wrapper scripts that
exec the same binary with $WORKERPOOL_TEST_VERSION set (the binary reports
that version instead of its own; nothing else changes): an upgrade from one
to the other goes through the whole hand-over, checks included. Broken new
binaries: one that exits 1, a file that is not executable, and wrappers
that set $WORKERPOOL_TEST_ADOPT_FAULT (crash: abort() while adopting;
refuse: an adoption error), so that the old binary must take the pool back.

Checked: no HTTP request fails through the http-reactor during 20 upgrades,
every child keeps its pid, the Watcher keeps its pid, its fds and RSS stay
flat; a refused or failed upgrade leaves the pool as it was and the command
exits non-zero with the reason; an upgrade while a child is in backoff,
during a reload, during a rolling restart and while a group drains ends as
the same pool without the upgrade would have."""

import http.client
import os
import signal
import subprocess
import threading
import time
import unittest

import wp

WRAPPER = """#!/bin/sh
WORKERPOOL_TEST_VERSION=%(version)s%(extra)s exec %(bin)s "$@"
"""


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class UpgradeTest(wp.TestCase):

    def wrapper(self, pool, name, version, extra=""):
        path = pool.write(name, WRAPPER % {
            "version": version, "extra": extra, "bin": wp.BIN})
        os.chmod(path, 0o755)
        return path

    def socket(self, pool):
        return os.path.join(pool.tmp, "up.sock")

    def upgrade(self, pool, binary=None):
        args = ["upgrade", "--socket", self.socket(pool)]
        if binary:
            args += ["--binary", binary]
        return wp.run_cli(args)

    def status(self, pool):
        import json
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     self.socket(pool)])
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def pids(self, pool, group=None):
        return sorted((c.group, c.index, c.pid) for c in pool.children(group))

    def http_pool(self):
        self.port = wp_free_port()
        return self.pool("""
pool: {name: up, stop_timeout: 3s, control_socket: "{tmp}/up.sock"}
groups:
  - name: web
    type: reactor
    processes: 2
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:%d"]
    routes_to: [echo]
  - name: echo
    type: job
    processes: 2
    command: [workerpool, builtin, echo-job]
  - name: plain
    type: job
    processes: 2
    command: [sleep, "1000"]
""" % self.port)

    def post(self, conn, body):
        conn.request("POST", "/jobs/echo", body=body)
        r = conn.getresponse()
        return r.status, r.read()

    def wait_http(self):
        def ready():
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port,
                                               timeout=5)
                status, body = self.post(c, b"ready?")
                c.close()
                return status == 200
            except OSError:
                return False
        wp.wait_until(ready, what="echo answering over HTTP")

    # -- the hand-over under load

    def test_twenty_upgrades_under_http_load_lose_nothing(self):
        pool = self.http_pool()
        pool.wait_for_children(6)
        self.wait_http()
        a = self.wrapper(pool, "build-a", "upgrade-a")
        b = self.wrapper(pool, "build-b", "upgrade-b")
        before = self.pids(pool)
        watcher = pool.pid

        stop = threading.Event()
        results = {"ok": 0, "failed": []}
        lock = threading.Lock()

        def load(n):
            conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                              timeout=10)
            i = 0
            while not stop.is_set():
                body = ("%d-%d" % (n, i)).encode()
                try:
                    status, reply = self.post(conn, body)
                    good = status == 200 and reply == body
                except (OSError, http.client.HTTPException) as e:
                    good = False
                    status, reply = repr(e), b""
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=10)
                with lock:
                    if good:
                        results["ok"] += 1
                    else:
                        results["failed"].append((status, reply[:80]))
                i += 1
            conn.close()

        def requests_to_echo(status):
            """The requests the senders' latency histograms counted towards
            echo (None before the first stats frame that has them)."""
            for group in status["groups"]:
                if group["name"] == "echo" and "latency" in group:
                    return sum(group["latency"]["counts"])
            return None

        threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        fds = []
        rss = []
        # The histograms are handed over (state version 2): right after
        # each upgrade they are there, and they only grow.
        counted = [wp.wait_until(lambda: requests_to_echo(self.status(pool)),
                                 what="echo's latency in status")]
        try:
            for round_ in range(20):
                binary = a if round_ % 2 == 0 else b
                version = "upgrade-a" if round_ % 2 == 0 else "upgrade-b"
                code, out, err = self.upgrade(pool, binary)
                self.assertEqual(code, 0, out + err)
                self.assertIn("-> %s" % version, out)
                status = self.status(pool)
                self.assertEqual(status["version"], version)
                self.assertEqual(status["upgrade"]["attempts"], round_ + 1)
                self.assertIsNone(status["upgrade"]["last_error"])
                counted.append(requests_to_echo(status))
                self.assertIsNotNone(counted[-1], status)
                self.assertGreaterEqual(counted[-1], counted[-2], counted)
                fds.append(fd_count(watcher))
                rss.append(rss_kb(watcher))
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(results["failed"], [])
        self.assertGreater(results["ok"], 100)
        self.assertEqual(pool.pid, watcher)
        self.assertTrue(pool.running())
        self.assertEqual(self.pids(pool), before)
        # Flat: no more fds in the last ten rounds than in the first ten (a
        # control connection or a link being passed may be open at the
        # moment of a count: the fewest counted is the baseline; one fd
        # leaked per upgrade would add ten), and the resident size not
        # growing.
        self.assertLessEqual(min(fds[10:]), min(fds[:10]), fds)
        self.assertLessEqual(max(fds), min(fds) + 2, fds)
        self.assertLess(rss[-1] - rss[4], 4096, rss)
        self.assertEqual(len(pool.find_log(r"upgrade done")), 20)
        # Nothing was spawned after the start.
        self.assertEqual(len(pool.find_log(r"spawned .* pid")), 6)

    def test_sigusr2_upgrades_to_the_binary_it_was_started_from(self):
        pool = self.http_pool()
        pool.wait_for_children(6)
        before = self.pids(pool)
        pool.signal(signal.SIGUSR2)
        pool.wait_for_log(r"upgrade done")
        status = self.status(pool)
        self.assertEqual(status["upgrade"]["attempts"], 1)
        self.assertIsNone(status["upgrade"]["last_error"])
        self.assertEqual(self.pids(pool), before)
        code, out, _ = wp.run_cli(["status", "--socket", self.socket(pool)])
        self.assertEqual(code, 0)
        self.assertIn("upgraded from", out)

    def test_systemd_hears_reloading_then_ready_and_metrics_stay(self):
        import shutil
        import tempfile
        import urllib.request
        from test_notify import NotifyListener, states
        directory = tempfile.mkdtemp(prefix="wp-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        notify = NotifyListener(os.path.join(directory, "notify.sock"))
        self.addCleanup(notify.close)
        metrics_port = wp_free_port()
        pool = self.pool("""
pool: {name: up, control_socket: "{tmp}/up.sock",
       metrics: "127.0.0.1:%d"}
groups:
  - name: keep
    type: job
    processes: 2
    command: [sleep, "1000"]
""" % metrics_port, env={"NOTIFY_SOCKET": notify.path})
        notify.wait_for(lambda ms: "READY" in states(ms), "READY=1")
        before = self.pids(pool)
        build = self.wrapper(pool, "build-n", "upgrade-n")
        code, out, err = self.upgrade(pool, build)
        self.assertEqual(code, 0, out + err)
        notify.wait_for(lambda ms: states(ms).count("READY") == 2,
                        "READY=1 after the upgrade")
        self.assertEqual(states(notify.fields()),
                         ["READY", "RELOADING", "READY"])
        reloading = [m for m in notify.fields()
                     if m.get("RELOADING") == "1"][0]
        self.assertEqual(reloading["STATUS"],
                         "upgrading to workerpool upgrade-n")
        self.assertTrue(reloading["MONOTONIC_USEC"].isdigit())
        ready = [m for m in notify.fields() if m.get("READY") == "1"][-1]
        self.assertTrue(ready["STATUS"].startswith("workerpool upgrade-n: "),
                        ready)
        # The metrics endpoint answers on the socket handed over.
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics"
                                    % metrics_port, timeout=10) as r:
            self.assertEqual(r.status, 200)
        self.assertEqual(self.pids(pool), before)

    # -- binaries that cannot take over

    def assert_refused(self, pool, binary, reason):
        before = self.pids(pool)
        watcher = pool.pid
        code, out, err = self.upgrade(pool, binary)
        self.assertNotEqual(code, 0, out)
        self.assertRegex(err, reason)
        self.assertEqual(pool.pid, watcher)
        self.assertTrue(pool.running())
        self.assertEqual(self.pids(pool), before)
        status = self.status(pool)
        self.assertNotEqual(status["version"], "upgrade-broken")
        return status

    def test_broken_binaries_are_refused_and_the_pool_carries_on(self):
        pool = self.http_pool()
        pool.wait_for_children(6)
        self.wait_http()
        exits = pool.write("exits-1", "#!/bin/sh\nexit 1\n")
        os.chmod(exits, 0o755)
        self.assert_refused(pool, exits, r"--version exited with code 1")
        plain = pool.write("not-executable", "just text\n")
        os.chmod(plain, 0o644)
        self.assert_refused(pool, plain, r"cannot be executed")
        self.assert_refused(pool, os.path.join(pool.tmp, "missing"),
                            r"cannot be executed")
        self.wait_http()

    def test_the_pool_answers_while_a_hanging_binary_is_checked(self):
        pool = self.pool("""
pool: {name: up, control_socket: "{tmp}/up.sock"}
groups:
  - name: keep
    type: job
    processes: 1
    command: [sleep, "1000"]
""")
        pool.wait_for_children(1)
        hangs = pool.write("hangs", "#!/bin/sh\nexec sleep 60\n")
        os.chmod(hangs, 0o755)
        upgrade = subprocess.Popen(
            [wp.BIN, "upgrade", "--socket", self.socket(pool), "--binary",
             hangs], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        wp.wait_until(lambda: self.status(pool)["upgrade"]["in_progress"],
                      what="the check under way")
        # The loop is not held by the check: status answers, a child that
        # dies is restarted.
        before = self.pids(pool)
        os.kill(before[0][2], signal.SIGKILL)
        wp.wait_until(lambda: len(self.pids(pool)) == 1 and
                      self.pids(pool) != before, what="the restart")
        self.assertTrue(self.status(pool)["upgrade"]["in_progress"])
        out, err = upgrade.communicate(timeout=60)
        self.assertEqual(upgrade.returncode, 1, out + err)
        self.assertIn("--version: it did not finish within 10 s", err)
        self.assertIs(self.status(pool)["upgrade"]["last_refused"], True)

    def test_a_new_binary_that_crashes_while_adopting_gives_the_pool_back(self):
        pool = self.http_pool()
        pool.wait_for_children(6)
        self.wait_http()
        crash = self.wrapper(pool, "crashes", "upgrade-broken",
                             " WORKERPOOL_TEST_ADOPT_FAULT=crash")
        status = self.assert_refused(pool, crash,
                                     r"crashed while adopting the pool "
                                     r"\(signal 06\)")
        self.assertEqual(status["upgrade"]["attempts"], 1)
        refuse = self.wrapper(pool, "refuses", "upgrade-broken",
                              " WORKERPOOL_TEST_ADOPT_FAULT=refuse")
        status = self.assert_refused(pool, refuse, r"refused by")
        self.assertEqual(status["upgrade"]["attempts"], 2)
        pool.wait_for_log(r"took pool up back", count=2)
        self.wait_http()
        # And a good upgrade still works afterwards.
        good = self.wrapper(pool, "good", "upgrade-good")
        code, out, err = self.upgrade(pool, good)
        self.assertEqual(code, 0, out + err)

    # -- the hand-over in the middle of something

    def test_a_child_in_backoff_restarts_after_the_upgrade(self):
        pool = self.pool("""
pool: {name: up, stop_timeout: 3s, control_socket: "{tmp}/up.sock"}
groups:
  - name: steady
    type: job
    processes: 1
    command: [sleep, "1000"]
  - name: flaky
    type: job
    processes: 1
    command: [sh, -c, "sleep 0.2; exit 3"]
    restart:
      backoff: {initial: 1500ms, max: 1500ms}
      intensity: {max_restarts: 100, period: 60s}
""")
        pool.wait_for_log(r"restarting flaky\[0\] in")
        steady = self.pids(pool, "steady")
        mark = pool.mark()
        code, out, err = self.upgrade(pool)
        self.assertEqual(code, 0, out + err)
        # The slot's backoff timer was handed over: it restarts by itself.
        pool.wait_for_log(r"spawned flaky\[0\] pid", since=mark)
        self.assertEqual(self.pids(pool, "steady"), steady)
        state = [g for g in self.status(pool)["groups"]
                 if g["name"] == "flaky"][0]
        self.assertGreaterEqual(state["restarts"], 1)

    def test_a_child_killed_during_the_hand_over_is_restarted(self):
        pool = self.pool("""
pool: {name: up, stop_timeout: 3s, control_socket: "{tmp}/up.sock"}
groups:
  - name: plain
    type: job
    processes: 3
    command: [sleep, "1000"]
""")
        before = {c.index: c.pid for c in pool.wait_for_children(3)}
        for round_, index in enumerate((0, 1, 2)):
            mark = pool.mark()
            upgrade = subprocess.Popen(
                [wp.BIN, "upgrade", "--socket", self.socket(pool)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # Before, during or right after the exec: whichever Watcher
            # reaps it restarts it.
            time.sleep(0.02 * round_)
            os.kill(before[index], signal.SIGKILL)
            out, err = upgrade.communicate(timeout=60)
            self.assertEqual(upgrade.returncode, 0, out + err)
            pool.wait_for_log(r"plain\[%d\] pid %d killed by signal SIGKILL"
                              % (index, before[index]), since=mark)
            pool.wait_for_log(r"spawned plain\[%d\] pid" % index, since=mark)
        after = {c.index: c.pid for c in pool.wait_for_children(3)}
        self.assertEqual(set(after), {0, 1, 2})
        self.assertFalse(set(after.values()) & set(before.values()))
        self.assertEqual(pool.zombies(), [])

    def test_upgrade_during_a_reload_and_a_rolling_restart(self):
        pool = self.http_pool()
        pool.wait_for_children(6)
        self.wait_http()
        plain = self.pids(pool, "plain")
        echo = self.pids(pool, "echo")
        # A reload that grows plain, then at once a rolling restart of echo
        # and an upgrade while both are under way.
        with open(pool.path) as f:
            text = f.read()
        text = text.replace(
            "processes: 2\n    command: [sleep", "processes: 3\n    command: [sleep")
        pool.write_config(text)
        code, _, err = wp.run_cli(["reload", "--socket", self.socket(pool)])
        self.assertEqual(code, 0, err)
        code, _, err = wp.run_cli(["restart", "echo", "--socket",
                                   self.socket(pool)])
        self.assertEqual(code, 0, err)
        code, out, err = self.upgrade(pool)
        self.assertEqual(code, 0, out + err)
        pool.wait_for_children(3, group="plain")
        # The rolling restart finishes under the new Watcher: two new echo
        # children, the old ones gone.
        wp.wait_until(lambda: len(self.pids(pool, "echo")) == 2 and
                      not set(p for _, _, p in self.pids(pool, "echo")) &
                      set(p for _, _, p in echo),
                      what="echo replaced")
        self.assertTrue(set(plain) <= set(self.pids(pool, "plain")))
        self.wait_http()
        wp.wait_until(lambda: self.status(pool)["state"] == "running",
                      what="the pool settled")

    def test_upgrade_while_a_group_drains(self):
        pool = self.pool("""
pool: {name: up, stop_timeout: 2s, control_socket: "{tmp}/up.sock"}
groups:
  - name: keep
    type: job
    processes: 1
    command: [sleep, "1000"]
  - name: stubborn
    type: job
    processes: 1
    command: [sh, -c, "trap '' TERM; while true; do sleep 0.1; done"]
""")
        pool.wait_for_children(2)
        keep = self.pids(pool, "keep")
        pool.write_config("""
pool: {name: up, stop_timeout: 2s, control_socket: "{tmp}/up.sock"}
groups:
  - name: keep
    type: job
    processes: 1
    command: [sleep, "1000"]
""")
        code, _, err = wp.run_cli(["reload", "--socket", self.socket(pool)])
        self.assertEqual(code, 0, err)
        names = [g["name"] for g in self.status(pool)["groups"]]
        code, out, err = self.upgrade(pool)
        self.assertEqual(code, 0, out + err)
        # The kill deadline was handed over: SIGKILL, then the group goes.
        pool.wait_for_log(r"stubborn\[0\] pid \d+ still running .*SIGKILL")
        wp.wait_until(lambda: [g["name"] for g in self.status(pool)["groups"]]
                      == ["keep"], what="the drained group removed")
        self.assertIn("stubborn", names)
        self.assertEqual(self.pids(pool, "keep"), keep)

    # -- large pools: output through one socket per group, the spawner

    def test_shared_output_sockets_and_the_spawner_are_handed_over(self):
        # RLIMIT_NOFILE 800 allows 272 children with a pipe each: 300 write
        # to one socket per group (as test_output_socket forces it). Each
        # child says hello, then waits on a FIFO and says more once the
        # test writes to it, after the upgrade: those lines must come out
        # under the child's name from the new Watcher's reading of the
        # same socket.
        children = 300
        pool = self.pool("""
pool: {name: up, stop_timeout: 3s, control_socket: "{tmp}/up.sock"}
groups:
  - name: talk
    type: job
    processes: %d
    command: [sh, -c, 'echo "hello $$"; read x < {tmp}/go; echo "after $$";
              exec sleep 1000']
""" % children, start=False)
        os.mkfifo(os.path.join(pool.tmp, "go"))
        limited = os.path.join(pool.tmp, "workerpool-limited")
        with open(limited, "w") as f:
            f.write("#!/bin/sh\nexec prlimit --nofile=800:800 -- %s \"$@\"\n"
                    % wp.BIN)
        os.chmod(limited, 0o755)
        binary = wp.BIN
        wp.BIN = limited
        try:
            pool.start()
        finally:
            wp.BIN = binary
        pool.wait_for_log(r"output of %d children through one socket per "
                          r"group" % children)
        talk = pool.wait_for_children(children, timeout=120)
        for child in talk:
            pool.wait_for_log(r"talk\[%d\] %d: hello %d$"
                              % (child.index, child.pid, child.pid),
                              timeout=30)

        def spawners():
            found = []
            for pid in wp.pids_with_parent(pool.pid):
                try:
                    with open("/proc/%d/comm" % pid) as f:
                        if f.read().startswith("workerpool-spaw"):
                            found.append(pid)
                except OSError:
                    pass
            return found
        spawner = spawners()
        self.assertEqual(len(spawner), 1)

        mark = pool.mark()
        code, out, err = self.upgrade(pool)
        self.assertEqual(code, 0, out + err)
        pool.wait_for_log(r"upgrade done: .* %d children, none restarted"
                          % children, since=mark)
        self.assertEqual(self.pids(pool), self.pids_of(talk))
        self.assertEqual(spawners(), spawner)

        # Every child's next line, read by the new Watcher, under its name.
        with open(os.path.join(pool.tmp, "go"), "w") as go:
            go.write("x\n" * children)
        for child in talk:
            pool.wait_for_log(r"talk\[%d\] %d: after %d$"
                              % (child.index, child.pid, child.pid),
                              since=mark, timeout=30)
        # A child killed now is spawned by the same spawner, and its
        # replacement writes to the same socket.
        victim = talk[0]
        os.kill(victim.pid, signal.SIGKILL)
        pool.wait_for_log(r"spawned talk\[%d\] pid" % victim.index,
                          since=mark)
        self.assertNotIn("spawner pid", pool.log_text()[mark:]
                         .replace("spawner pid %d" % spawner[0], ""))
        self.assertEqual(spawners(), spawner)
        replacement = wp.wait_until(
            lambda: pool.child("talk", victim.index)
            if pool.child("talk", victim.index) is not None
            and pool.child("talk", victim.index).pid != victim.pid else None,
            what="the killed child replaced")
        pool.wait_for_log(r"talk\[%d\] %d: hello %d$"
                          % (victim.index, replacement.pid, replacement.pid),
                          since=mark)
        self.assertEqual(pool.zombies(), [])

    def test_a_status_answer_being_written_is_not_cut_by_the_exec(self):
        # A status of 2500 children (~270 KB) outgrows the control socket's
        # buffer: the Watcher still holds the rest while the client has not
        # read. An upgrade waits for the answer (up to a second) instead of
        # exec dropping it; the client reads it whole, after the upgrade
        # began.
        children = 2500
        pool = self.pool("""
pool: {name: up, stop_timeout: 5s, control_socket: "{tmp}/up.sock"}
groups:
  - name: many
    type: job
    processes: %d
    command: [sleep, "1000"]
""" % children)
        pool.wait_for_children(children, timeout=180)
        import json
        import socket as socket_module
        client = socket_module.socket(socket_module.AF_UNIX)
        client.connect(self.socket(pool))
        client.sendall(b'{"command":"status"}\n')
        mark = pool.mark()
        upgrade = subprocess.Popen(
            [wp.BIN, "upgrade", "--socket", self.socket(pool)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The checks begin; the status answer waits in the Watcher.
        pool.wait_for_log(r"upgrade: checking", since=mark)
        time.sleep(0.3)
        data = b""
        client.settimeout(60)
        while not data.endswith(b"\n"):
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        client.close()
        out, err = upgrade.communicate(timeout=120)
        self.assertEqual(upgrade.returncode, 0, out + err)
        answer = json.loads(data)
        self.assertTrue(answer["ok"])
        self.assertEqual(
            len(answer["status"]["groups"][0]["children"]), children)

    def pids_of(self, children):
        return sorted((c.group, c.index, c.pid) for c in children)

    def test_garbage_upgrade_requests_are_refused(self):
        pool = self.pool("""
pool: {name: up, control_socket: "{tmp}/up.sock"}
groups:
  - name: keep
    type: job
    processes: 1
    command: [sleep, "1000"]
""")
        pool.wait_for_children(1)
        import socket as socket_module
        for request in (b'{"command":"upgrade","binary":3}\n',
                        b'{"command":"upgrade","binary":"relative/path"}\n',
                        b'{"command":"upgrade","binary":""}\n'):
            s = socket_module.socket(socket_module.AF_UNIX)
            s.connect(self.socket(pool))
            s.sendall(request)
            answer = s.makefile().readline()
            s.close()
            self.assertIn('"ok":false', answer)
            self.assertIn("absolute path", answer)
        self.assertEqual(self.status(pool)["upgrade"]["attempts"], 0)


def wp_free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    wp.main()
