"""Reload (SIGHUP) applies only the difference, from outside: grow, shrink
(idle first), rolling restart (a new child up before an old one drains),
new and removed groups, routes_to and limits in place, an invalid file,
listen sockets, reloads queued behind a running one, and no request lost
by a client sending through 20 reloads.
DESIGN.md: "Signals", "Reload applies the difference"; issue 7.

Environment: WORKERPOOL_BIN (the binary), WORKERPOOL_KIT_DIR (the directory
of line_reactor)."""

import json
import os
import re
import socket
import threading
import time

import wp
import wp_ipc
from wp_ipc import REFUSED

SLEEP = '[sleep, "1000"]'
ECHO = "[workerpool, builtin, echo-job]"
FINISHED = r"reload finished"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_inode(port):
    """The inode of the TCP socket listening on 127.0.0.1:PORT, or None."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                return int(fields[9])
    return None


def socket_inodes(pid):
    """Inodes of the sockets PID holds open."""
    result = set()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return result
    for name in names:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", target)
        if m:
            result.add(int(m.group(1)))
    return result


class ReloadTest(wp.TestCase):

    def status(self, pool, name):
        code, out, err = wp.run_cli(
            ["status", "--json", "--socket",
             os.path.join(pool.tmp, name + ".sock")])
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def pids(self, pool, group):
        return {c.index: c.pid for c in pool.children(group)}

    def ready(self, pool):
        pool.wait_for_log(r"pool \S+ ready")

    def reload(self, pool, yaml, finished=True):
        mark = pool.mark()
        pool.reload(yaml)
        if finished:
            pool.wait_for_log(FINISHED, since=mark)
        return mark

    # -- processes grew or shrank

    def test_grow_and_shrink_keep_untouched_pids(self):
        yaml = """
pool: {name: rl, stop_timeout: 2s}
groups:
  - {name: a, type: job, processes: %d, command: %s}
  - {name: b, type: job, processes: 1, command: %s}
"""
        pool = self.pool(yaml % (2, SLEEP, SLEEP))
        self.ready(pool)
        a, b = self.pids(pool, "a"), self.pids(pool, "b")
        self.assertEqual(sorted(a), [0, 1])

        self.reload(pool, yaml % (4, SLEEP, SLEEP))
        grown = self.pids(pool, "a")
        self.assertEqual(sorted(grown), [0, 1, 2, 3])
        self.assertEqual(grown[0], a[0])
        self.assertEqual(grown[1], a[1])
        self.assertEqual(self.pids(pool, "b"), b)

        mark = self.reload(pool, yaml % (1, SLEEP, SLEEP))
        # All idle and alike: the highest indices go, index 0 stays.
        self.assertEqual(self.pids(pool, "a"), {0: a[0]})
        self.assertEqual(self.pids(pool, "b"), b)
        for index in (1, 2, 3):
            pool.wait_for_log(r"a\[%d\] pid %d (exited|killed)"
                              % (index, grown[index]), since=mark)
        doc = self.status(pool, "rl")
        self.assertTrue(doc["last_reload"]["ok"], doc["last_reload"])
        self.assertEqual(doc["state"], "running")
        self.assertEqual(pool.stop(), 0)

    # -- command, env, cwd or user changed

    def test_env_change_is_a_rolling_restart(self):
        yaml = """
pool: {name: rl, stop_timeout: 2s}
groups:
  - {name: a, type: job, processes: 3, command: %s, env: {GEN: "%s"}}
  - {name: b, type: job, processes: 1, command: %s}
"""
        pool = self.pool(yaml % (SLEEP, "1", SLEEP))
        self.ready(pool)
        old, b = self.pids(pool, "a"), self.pids(pool, "b")
        counts = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                counts.append(len(pool.children("a")))
                time.sleep(0.02)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        mark = self.reload(pool, yaml % (SLEEP, "2", SLEEP))
        stop.set()
        sampler.join()

        new = self.pids(pool, "a")
        self.assertEqual(sorted(new), [0, 1, 2])
        for index in range(3):
            self.assertNotEqual(new[index], old[index])
            self.assertEqual(wp.proc_environ(new[index])["GEN"], "2")
        self.assertEqual(self.pids(pool, "b"), b)
        # Never below count - 1, never above count + 1.
        self.assertGreaterEqual(min(counts), 2, counts)
        self.assertLessEqual(max(counts), 4, counts)
        # Each new child was up before its old one was told to stop.
        log = pool.log_since(mark)
        for index in range(3):
            up = re.search(r"a\[%d\] pid %d is up; it replaces pid %d"
                           % (index, new[index], old[index]), log)
            stopped = re.search(r"stopping a\[%d\] pid %d"
                                % (index, old[index]), log)
            self.assertIsNotNone(up, log)
            self.assertIsNotNone(stopped, log)
            self.assertLess(up.start(), stopped.start())
        self.assertEqual(pool.stop(), 0)

    def test_broken_new_command_keeps_the_old_children(self):
        yaml = """
pool: {name: rl, stop_timeout: 2s}
groups:
  - name: a
    type: job
    processes: 2
    command: %s
    restart: {backoff: {initial: 10ms, max: 20ms}, intensity: {max_restarts: 3, period: 60s}}
"""
        pool = self.pool(yaml % SLEEP)
        self.ready(pool)
        old = self.pids(pool, "a")
        mark = self.reload(pool, yaml % "[sh, -c, 'exit 3']")
        pool.wait_for_log(r"group a failed", since=mark)
        # The replacement never came up: the old children still serve.
        self.assertEqual(self.pids(pool, "a"), old)
        # The pool is not stuck: the next reload applies at once.
        mark = self.reload(pool, yaml % '[sleep, "999"]')
        new = self.pids(pool, "a")
        self.assertEqual(sorted(new), [0, 1])
        self.assertTrue(set(new.values()).isdisjoint(old.values()))
        self.assertEqual(pool.stop(), 0)

    # -- groups added and removed

    def test_new_group_starts_and_removed_group_stops(self):
        pool = self.pool("""
pool: {name: rl, stop_timeout: 2s}
groups:
  - {name: a, type: job, processes: 1, command: %s}
  - {name: b, type: job, processes: 2, command: %s}
""" % (SLEEP, SLEEP))
        self.ready(pool)
        a = self.pids(pool, "a")
        mark = self.reload(pool, """
pool: {name: rl, stop_timeout: 2s}
groups:
  - {name: a, type: job, processes: 1, command: %s}
  - {name: c, type: job, processes: 2, command: %s}
""" % (SLEEP, SLEEP))
        pool.wait_for_log(r"group b removed", since=mark)
        self.assertEqual(pool.children("b"), [])
        self.assertEqual(sorted(self.pids(pool, "c")), [0, 1])
        self.assertEqual(self.pids(pool, "a"), a)
        groups = [g["name"] for g in self.status(pool, "rl")["groups"]]
        self.assertEqual(groups, ["a", "c"])
        self.assertEqual(pool.stop(), 0)

    # -- an invalid file

    def test_invalid_file_keeps_the_old_pool(self):
        good = """
pool: {name: rl, stop_timeout: 2s}
groups:
  - {name: a, type: job, processes: 2, command: %s}
""" % SLEEP
        pool = self.pool(good)
        self.ready(pool)
        before = self.pids(pool, "a")
        mark = pool.mark()
        pool.reload(good.replace("processes: 2", "processes: -3"))
        line = pool.wait_for_log(
            r"reload failed, keeping the running pool: (.*)$", since=mark)
        self.assertRegex(line.group(1),
                         r"pool\.yaml:4:\d+: groups\[0\]\.processes: ")
        doc = self.status(pool, "rl")
        self.assertFalse(doc["last_reload"]["ok"])
        self.assertRegex(doc["last_reload"]["error"], r"pool\.yaml:4:\d+:")
        self.assertEqual(doc["state"], "running")
        # Broken YAML too.
        mark = pool.mark()
        pool.reload(good + "  - {name: b, type: [\n")
        pool.wait_for_log(r"reload failed, keeping the running pool: "
                          r".*pool\.yaml:\d+:\d+:", since=mark)
        time.sleep(0.3)  # nothing may change; a wrong change would show now
        self.assertEqual(self.pids(pool, "a"), before)
        self.assertEqual(pool.find_log(r"spawned|stopping", since=mark), [])
        # The control command answers with the error and exit 1.
        code, _, err = wp.run_cli(["reload", "--socket",
                                   os.path.join(pool.tmp, "rl.sock")])
        self.assertEqual(code, 1, err)
        self.assertRegex(err, r"pool\.yaml:\d+:\d+:")
        # Fixed, it applies.
        self.reload(pool, good.replace("processes: 2", "processes: 3"))
        self.assertEqual(len(pool.children("a")), 3)
        self.assertTrue(self.status(pool, "rl")["last_reload"]["ok"])
        self.assertEqual(pool.stop(), 0)

    # -- routes_to and limits change in place

    def line_pool_yaml(self, routes, echo_settings=""):
        return """
pool: {name: rr, stop_timeout: 3s}
groups:
  - name: front
    type: reactor
    processes: 1
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [%s]
  - {name: echo, type: job, processes: 2, command: %s%s}
  - {name: other, type: job, processes: 1, command: %s}
""" % (wp_ipc.LINE_REACTOR, ", ".join(routes), ECHO, echo_settings, ECHO)

    def test_routes_and_limits_change_in_place(self):
        pool = self.pool(self.line_pool_yaml(["echo", "other"]))
        c = wp_ipc.LineClient(os.path.join(pool.tmp, "kit.sock"))
        self.addCleanup(c.close)
        c.request_until_ok("echo", "warm")
        c.request_until_ok("other", "warm")
        self.ready(pool)
        front, echo = self.pids(pool, "front"), self.pids(pool, "echo")

        mark = self.reload(pool, self.line_pool_yaml(
            ["echo"], ", max_inflight: 2, queue_limit: 50"))
        self.assertIn("front: routes_to changed", pool.log_since(mark))
        self.assertIn("echo: limits changed", pool.log_since(mark))
        pool.wait_for_log(r"route front\[0\] pid %d -> other revoked"
                          % front[0], since=mark)
        a = c.request("other", "after revoke")
        self.assertFalse(a.ok, a)
        self.assertEqual(a.code, REFUSED, a)
        self.assertEqual(c.request("echo", "still").body, "still")
        # Two at once on each echo process now (max_inflight 2).
        ids = c.send_many([("echo", "sleep:300", None)] * 4)
        for id_ in ids:
            self.assertTrue(c.answer(id_).ok)

        mark = self.reload(pool, self.line_pool_yaml(["echo", "other"]))
        pool.wait_for_log(r"route front\[0\] pid %d -> other allowed"
                          % front[0], since=mark)
        self.assertEqual(c.request_until_ok("other", "again").body, "again")
        self.assertEqual(self.pids(pool, "front"), front)
        self.assertEqual(self.pids(pool, "echo"), echo)

    # -- reloads queue

    def test_reload_during_reload_is_queued(self):
        yaml = """
pool: {name: rl, stop_timeout: 2s}
groups:
  - {name: a, type: job, processes: 2, command: %s, env: {GEN: "%s"}}
"""
        pool = self.pool(yaml % (SLEEP, "1"))
        self.ready(pool)
        mark = pool.mark()
        pool.reload(yaml % (SLEEP, "2"))
        # sleep never says hello: each new child is up after a grace, so
        # this rolling restart takes a while.
        pool.wait_for_log(r"reload: a: restarted", since=mark)
        pool.reload(yaml % (SLEEP, "3"))
        pool.wait_for_log(r"reload queued", since=mark)
        pool.wait_for_log(FINISHED, since=mark, count=2)
        log = pool.log_since(mark)
        applied = [m.start() for m in re.finditer(r"reload: a: restarted", log)]
        finished = [m.start() for m in re.finditer(FINISHED, log)]
        self.assertEqual(len(applied), 2, log)
        # Not interleaved: the second starts after the first finished.
        self.assertLess(finished[0], applied[1])
        for child in pool.children("a"):
            self.assertEqual(wp.proc_environ(child.pid)["GEN"], "3")
        self.assertEqual(len(pool.children("a")), 2)
        self.assertEqual(pool.stop(), 0)

    # -- listen sockets

    def test_listen_sockets_across_reloads(self):
        p1, p2, p3 = free_port(), free_port(), free_port()
        yaml = """
pool: {name: ls, stop_timeout: 2s}
groups:
  - name: web
    type: reactor
    processes: 2
    command: %s
    listen: [%s]
"""
        listen = lambda *ports: ", ".join('"127.0.0.1:%d"' % p for p in ports)
        pool = self.pool(yaml % (SLEEP, listen(p1)))
        self.ready(pool)
        inode1 = listening_inode(p1)
        self.assertIsNotNone(inode1)
        self.assertIn(inode1, socket_inodes(pool.pid))

        # A new address: bound; the unchanged one keeps its socket.
        self.reload(pool, yaml % (SLEEP, listen(p1, p2)))
        self.assertEqual(listening_inode(p1), inode1)
        inode2 = listening_inode(p2)
        self.assertIsNotNone(inode2)
        for child in pool.children("web"):
            self.assertEqual(wp.proc_environ(child.pid)["LISTEN_FDS"], "2")
            self.assertTrue({inode1, inode2} <= socket_inodes(child.pid))

        # Bind failure: the reload is refused, the old sockets keep serving.
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", p3))
        blocker.listen(1)
        before = self.pids(pool, "web")
        mark = pool.mark()
        pool.reload(yaml % (SLEEP, listen(p1, p2, p3)))
        pool.wait_for_log(r"reload failed, keeping the running pool: .*%d"
                          % p3, since=mark)
        self.assertEqual(self.pids(pool, "web"), before)
        self.assertEqual(listening_inode(p1), inode1)
        self.assertEqual(listening_inode(p2), inode2)
        with socket.create_connection(("127.0.0.1", p1), timeout=5):
            pass
        self.assertFalse(self.status(pool, "ls")["last_reload"]["ok"])

        # A removed address closes once the reactors holding it are gone.
        mark = self.reload(pool, yaml % (SLEEP, listen(p2)))
        self.assertIn("closing listen socket 127.0.0.1:%d" % p1,
                      pool.log_since(mark))
        self.assertIsNone(listening_inode(p1))
        self.assertEqual(listening_inode(p2), inode2)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p1), timeout=5).close()
        self.assertEqual(pool.stop(), 0)

    # -- no request lost across reloads under load

    def test_no_request_lost_across_20_reloads(self):
        yaml = """
pool: {name: load, stop_timeout: 5s}
groups:
  - name: front
    type: reactor
    processes: 1
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [echo]
  - name: echo
    type: job
    processes: %d
    max_inflight: %d
    command: %s
    env: {GEN: "%d"}
"""
        pool = self.pool(yaml % (wp_ipc.LINE_REACTOR, 2, 1, ECHO, 0))
        c = wp_ipc.LineClient(os.path.join(pool.tmp, "kit.sock"))
        self.addCleanup(c.close)
        c.request_until_ok("echo", "warm")
        self.ready(pool)
        front = self.pids(pool, "front")

        answers, bad = [], []
        stop = threading.Event()

        def load():
            n = 0
            while not stop.is_set():
                batch = [("echo", "sleep:%d" % (n % 3 * 10), None)
                         for n in range(n, n + 6)]
                n += 6
                for id_ in c.send_many(batch):
                    a = c.answer(id_)
                    answers.append(a)
                    if not a.ok:
                        bad.append(a)
        sender = threading.Thread(target=load, daemon=True)
        sender.start()
        generation = 0
        for i in range(20):
            processes = (2, 3, 1, 3)[i % 4]
            max_inflight = 1 + i % 2
            if i % 3 == 0:
                generation += 1  # rolling restart
            before = len(answers)
            self.reload(pool, yaml % (wp_ipc.LINE_REACTOR, processes,
                                      max_inflight, ECHO, generation))
            wp.wait_until(lambda: len(answers) > before + 6 or bad,
                          what="answers after reload %d" % (i + 1))
        stop.set()
        sender.join(wp.deadline())
        self.assertEqual(bad, [])
        self.assertGreater(len(answers), 20 * 6)
        self.assertEqual(self.pids(pool, "front"), front)
        self.assertEqual(len(pool.find_log(FINISHED)), 20)


if __name__ == "__main__":
    wp_ipc.require_kit()
    wp.main()
