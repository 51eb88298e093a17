"""The control socket and the operator's commands, with the real binary:
`workerpool status [--json]`, `scale GROUP N`, `restart GROUP`, `reload`,
`stop`, their errors, the socket's mode and peer check, and garbage on the
socket. DESIGN.md: "Command line"; docs/OPERATIONS.md: "Control commands",
"The control socket"."""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import unittest

import wp

ECHO = "[workerpool, builtin, echo-job]"
SLEEP = '[sleep, "1000"]'
SYSTEM_PYTHON = "/usr/bin/python3"

POOL = """
pool: {name: ctl, stop_timeout: 5s}
groups:
  - {name: compute, type: job, processes: %(compute)d, command: %(echo)s}
  - {name: idle, type: service, processes: %(idle)d, command: %(sleep)s}
"""


def pool_yaml(compute=2, idle=1):
    return POOL % {"compute": compute, "idle": idle, "echo": ECHO,
                   "sleep": SLEEP}


def ask_raw(path, data, timeout=10):
    """Sends DATA on a new connection to PATH, half-closes, and returns
    everything the Watcher said before closing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(wp.deadline(timeout))
    try:
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


class ControlTest(wp.TestCase):

    def start(self, compute=2, idle=1):
        pool = self.pool(pool_yaml(compute, idle))
        pool.wait_for_children(compute + idle)
        pool.socket = os.path.join(pool.tmp, "ctl.sock")
        wp.wait_until(lambda: os.path.exists(pool.socket),
                      what="the control socket")
        return pool

    def cli(self, pool, *args, **kwargs):
        return wp.run_cli(list(args) + ["--socket", pool.socket], **kwargs)

    def status(self, pool):
        code, out, err = self.cli(pool, "status", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(err, "")
        return json.loads(out)

    def group(self, status, name):
        for g in status["groups"]:
            if g["name"] == name:
                return g
        self.fail("no group %s in %s" % (name, status))

    def wait_status(self, pool, predicate, what):
        return wp.wait_until(
            lambda: (lambda s: s if predicate(s) else None)(self.status(pool)),
            what=what, on_timeout=lambda: json.dumps(self.status(pool)))

    # -- status

    def test_status_json_field_by_field(self):
        pool = self.start()
        children = {c.pid: c for c in pool.children()}
        # The echo jobs say hello (ready); a plain `sleep` never does.
        status = self.wait_status(
            pool, lambda s: self.group(s, "compute")["ready"] == 2
            and s["state"] == "running", "the pool running")
        # Every documented field (docs/OPERATIONS.md); the Watcher may add
        # more.
        for key in ("pool", "config", "pid", "state", "uptime_ms",
                    "last_reload", "refused_routes", "groups"):
            self.assertIn(key, status)
        self.assertEqual(status["pool"], "ctl")
        self.assertEqual(status["config"], pool.path)
        self.assertEqual(status["pid"], pool.pid)
        self.assertEqual(status["state"], "running")
        self.assertIsInstance(status["uptime_ms"], int)
        self.assertGreaterEqual(status["uptime_ms"], 0)
        self.assertIsNone(status["last_reload"])
        self.assertEqual(status["refused_routes"], 0)
        self.assertEqual([g["name"] for g in status["groups"]],
                         ["compute", "idle"])
        for name, type_, count in (("compute", "job", 2),
                                   ("idle", "service", 1)):
            g = self.group(status, name)
            self.assertEqual(g["type"], type_)
            self.assertEqual(g["desired"], count)
            self.assertEqual(g["live"], count)
            self.assertEqual(g["restarts"], 0)
            self.assertEqual(g["state"], "running")
            self.assertIs(g["scaled_until_reload"], False)
            self.assertEqual(g["inflight"], 0)
            self.assertEqual(g["queued"], 0)
            self.assertIsInstance(g["requests"], dict)
            self.assertEqual(g["recycled"], 0)
            self.assertIsInstance(g["app"], list)
            self.assertEqual(sorted(c["index"] for c in g["children"]),
                             list(range(count)))
            for c in g["children"]:
                for key in ("draining", "index", "pid", "ready", "uptime_ms"):
                    self.assertIn(key, c)
                self.assertIn(c["pid"], children)
                self.assertEqual(children[c["pid"]].group, name)
                self.assertEqual(children[c["pid"]].index, c["index"])
                self.assertIs(c["draining"], False)
                self.assertIsInstance(c["uptime_ms"], int)
        self.assertEqual(self.group(status, "idle")["ready"], 0)
        self.assertEqual(pool.stop(), 0)

    def test_status_with_and_without_usage(self):
        pool = self.start()
        self.wait_status(pool, lambda s: s["state"] == "running",
                         "the pool to be running")
        # status --json: each child's memory and CPU time, and their sums.
        for g in self.status(pool)["groups"]:
            self.assertGreater(g["rss_bytes"], 0, g)
            self.assertIn("cpu_ms", g)
            for c in g["children"]:
                self.assertGreater(c["rss_bytes"], 0, c)
                self.assertIn("cpu_ms", c)
        # "usage": false: the same document without them (no /proc reads).
        answer = json.loads(ask_raw(
            pool.socket, b'{"command":"status","usage":false}\n'))
        self.assertIs(answer["ok"], True, answer)
        groups = answer["status"]["groups"]
        self.assertEqual([g["name"] for g in groups], ["compute", "idle"])
        for g in groups:
            self.assertNotIn("rss_bytes", g)
            self.assertNotIn("cpu_ms", g)
            self.assertEqual(len(g["children"]), g["live"], g)
            for c in g["children"]:
                self.assertNotIn("rss_bytes", c)
                self.assertIn("pid", c)
        self.assertIn("rss_bytes", answer["status"]["watcher"])
        # Garbage in the flag: an error naming it; the Watcher carries on.
        for value in (b'0', b'"no"', b'null', b'[false]'):
            answer = json.loads(ask_raw(
                pool.socket, b'{"command":"status","usage":%s}\n' % value))
            self.assertIs(answer["ok"], False, answer)
            self.assertIn('"usage" must be true or false', answer["error"])
        self.assertEqual(self.status(pool)["state"], "running")

    def test_status_table(self):
        pool = self.start()
        self.wait_status(pool, lambda s: s["state"] == "running",
                         "the pool to be running")
        code, out, err = self.cli(pool, "status")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^pool ctl \(pid %d, running, up \d+s, "
                                   r"config %s\)$" % (pool.pid,
                                                      re.escape(pool.path)))
        self.assertEqual(lines[1].split(),
                         ["GROUP", "TYPE", "DESIRED", "LIVE", "RESTARTS",
                          "STATE", "IN-FLIGHT", "QUEUED"])
        self.assertEqual(lines[2].split(),
                         ["compute", "job", "2", "2", "0", "running", "0",
                          "0"])
        self.assertEqual(lines[3].split(),
                         ["idle", "service", "1", "1", "0", "running", "0",
                          "0"])
        # Columns line up.
        self.assertEqual(lines[1].index("DESIRED"), lines[2].index("2"))

    def test_status_finds_the_socket_without_being_told(self):
        pool = self.start()
        code, out, err = wp.run_cli(["status", "--json"],
                                    env={"RUNTIME_DIRECTORY": pool.tmp})
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["pid"], pool.pid)
        code, out, err = wp.run_cli(["status", "--json", "--config",
                                     pool.path],
                                    env={"RUNTIME_DIRECTORY": pool.tmp})
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["pid"], pool.pid)

    # -- scale

    def test_scale_persists_until_the_next_reload(self):
        pool = self.start(compute=2)
        idle = pool.children("idle")
        before = {c.pid for c in pool.children("compute")}
        code, out, err = self.cli(pool, "scale", "compute", "4")
        self.assertEqual(code, 0, err)
        self.assertIn("until the next reload", out)
        after = pool.wait_for_children(4, "compute")
        self.assertTrue(before <= {c.pid for c in after},
                        "scaling up replaced children")
        g = self.group(self.status(pool), "compute")
        self.assertEqual(g["desired"], 4)
        self.assertIs(g["scaled_until_reload"], True)
        code, out, err = self.cli(pool, "status")
        self.assertRegex(out, r"(?m)^compute\s+job\s+4\*\s")
        self.assertIn("until the next reload", out)

        # Down to 1: the extra children drain and stop.
        code, out, err = self.cli(pool, "scale", "compute", "1")
        self.assertEqual(code, 0, err)
        pool.wait_for_children(1, "compute")

        # A reload of the unchanged file restores the file's count.
        code, out, err = self.cli(pool, "reload")
        self.assertEqual(code, 0, err)
        pool.wait_for_children(2, "compute")
        g = self.group(self.status(pool), "compute")
        self.assertEqual(g["desired"], 2)
        self.assertIs(g["scaled_until_reload"], False)
        self.assertEqual(pool.children("idle"), idle)
        self.assertEqual(pool.stop(), 0)

    def test_scale_to_zero_and_back(self):
        pool = self.start(compute=2)
        self.assertEqual(self.cli(pool, "scale", "compute", "0")[0], 0)
        wp.wait_until(lambda: not pool.children("compute"),
                      what="no compute child left")
        # /proc no longer lists an exited child before the Watcher has
        # reaped it and counted it out of "live": wait for the status.
        g = self.group(self.wait_status(
            pool, lambda s: self.group(s, "compute")["live"] == 0,
            "compute's live count at 0"), "compute")
        self.assertEqual((g["desired"], g["live"]), (0, 0))
        self.assertEqual(self.cli(pool, "scale", "compute", "3")[0], 0)
        pool.wait_for_children(3, "compute")

    def test_scale_errors(self):
        pool = self.start()
        before = pool.children()
        code, out, err = self.cli(pool, "scale", "nosuch", "3")
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertRegex(err, r"^workerpool scale: unknown group 'nosuch'")
        self.assertEqual(len(err.splitlines()), 1)
        for bad in ("-1", "three", "2.5", "1e3", "100001", ""):
            code, out, err = self.cli(pool, "scale", "compute", bad)
            self.assertEqual(code, 1, (bad, err))
            self.assertIn("N must be a whole number from 0 to 100000", err)
            self.assertIn("got '%s'" % bad, err)
        # Missing N: an argument error, exit 1.
        code, out, err = self.cli(pool, "scale", "compute")
        self.assertEqual(code, 1)
        self.assertIn("N", err)
        self.assertEqual(pool.children(), before)

    # -- restart

    def test_restart_replaces_every_child_one_at_a_time(self):
        pool = self.start(compute=3)
        old = {c.pid for c in pool.children("compute")}
        idle = pool.children("idle")

        def replaced():
            now = pool.children("compute")
            pids = {c.pid for c in now}
            return len(now) == 3 and not (pids & old)
        code, out, err = self.cli(pool, "restart", "compute")
        self.assertEqual(code, 0, err)
        self.assertIn("rolling restart", out)
        wp.wait_until(replaced, what="every compute child replaced",
                      interval=0.01)
        # Rolling: one at a time, each old child drained only once its
        # replacement is up, so the group never falls below the count minus
        # one. Read from the Watcher's log (sampling /proc cannot see a
        # restart of a few ms consistently).
        events = [("up", int(m.group(1))) if m.group(1) else
                  ("drain", int(m.group(2))) for m in pool.find_log(
                      r"compute\[\d+\] pid \d+ is up; it replaces pid (\d+)|"
                      r"draining compute\[\d+\] pid (\d+)")]
        # up (replacement of A), drain A, up (of B), drain B, ...
        self.assertEqual(len(events), 6, events)
        for step in range(0, 6, 2):
            self.assertEqual(events[step][0], "up", events)
            self.assertEqual(events[step + 1], ("drain", events[step][1]),
                             events)
        self.assertEqual({pid for _, pid in events}, old, events)
        self.assertEqual(pool.children("idle"), idle)
        self.assertEqual(self.group(self.status(pool), "compute")["restarts"],
                         0, "a rolling restart is not a crash")
        code, out, err = self.cli(pool, "restart", "nosuch")
        self.assertEqual(code, 1)
        self.assertRegex(err, r"^workerpool restart: unknown group 'nosuch'")

    # -- reload

    def test_reload_applies_a_valid_file(self):
        pool = self.start(compute=2, idle=1)
        compute = pool.children("compute")
        pool.write_config(pool_yaml(compute=2, idle=3))
        code, out, err = self.cli(pool, "reload")
        self.assertEqual(code, 0, err)
        pool.wait_for_children(3, "idle")
        self.assertEqual(pool.children("compute"), compute)
        last = self.status(pool)["last_reload"]
        self.assertIs(last["ok"], True)
        self.assertIsInstance(last["unix"], int)

    def test_reload_of_an_invalid_file_exits_1_and_keeps_the_pool(self):
        pool = self.start()
        before = pool.children()
        pool.write_config(pool_yaml() + "  - {name: bad, type: job, "
                          "processes: -4, command: [x]}\n")
        code, out, err = self.cli(pool, "reload")
        self.assertEqual(code, 1, out + err)
        self.assertEqual(out, "")
        # One error per line, each with file:line:col.
        self.assertRegex(err, r"^workerpool reload: %s:\d+:\d+: "
                         % re.escape(pool.path))
        self.assertIn("processes", err)
        self.assertEqual(pool.children(), before)
        status = self.status(pool)
        self.assertIs(status["last_reload"]["ok"], False)
        self.assertRegex(status["last_reload"]["error"],
                         r"%s:\d+:\d+" % re.escape(pool.path))
        code, out, err = self.cli(pool, "status")
        self.assertIn("last reload failed", out)
        # Not YAML at all.
        pool.write_config("pool: {name: ctl\ngroups: [\n")
        code, out, err = self.cli(pool, "reload")
        self.assertEqual(code, 1)
        self.assertRegex(err, r"%s:\d+:\d+" % re.escape(pool.path))
        self.assertEqual(pool.children(), before)
        self.assertTrue(pool.running())

    # -- stop

    def test_stop_returns_when_the_pool_has_stopped(self):
        pool = self.start()
        children = pool.children()
        code, out, err = self.cli(pool, "stop")
        self.assertEqual(code, 0, err)
        self.assertIn("stopped", out)
        self.assertEqual(pool.wait_exit(), 0)
        for child in children:
            self.assertFalse(wp.alive(child.pid), child)
        self.assertFalse(os.path.exists(pool.socket),
                         "the control socket outlived the Watcher")

    # -- errors and garbage

    def test_no_pool_at_that_socket(self):
        tmp = tempfile.mkdtemp(prefix="wp-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "none.sock")
        for args in (["status"], ["scale", "g", "1"], ["restart", "g"],
                     ["reload"], ["stop"]):
            code, out, err = wp.run_cli(args + ["--socket", path])
            self.assertEqual(code, 2, (args, err))
            self.assertEqual(err.strip(),
                             "workerpool %s: no workerpool is running at %s "
                             "(no such socket)" % (args[0], path))
        # A killed Watcher's socket file: nobody listens.
        pool = self.start()
        pool.signal(signal.SIGKILL)
        pool.wait_exit()
        code, out, err = self.cli(pool, "status")
        self.assertEqual(code, 2)
        self.assertIn("no workerpool is running at %s (connection refused)"
                      % pool.socket, err)

    def test_garbage_on_the_socket_gets_an_error_and_harms_nothing(self):
        pool = self.start()
        before = pool.children()
        for data in (b"hello\n", b"\x00\xff\xfe garbage\n", b"[1,2,3]\n",
                     b'{"command":"scale","group":"compute",'
                     b'"processes":-1}\n',
                     b'{"command":"scale","group":"compute",'
                     b'"processes":"9"}\n',
                     b'{"command":"restart"}\n', b'{"command":"launch"}\n',
                     b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"{" * 5000 + b"\n", b"x" * 100000):
            answer = ask_raw(pool.socket, data)
            self.assertTrue(answer.endswith(b"\n"), (data[:40], answer))
            self.assertEqual(answer.count(b"\n"), 1, answer)
            reply = json.loads(answer)
            self.assertIs(reply["ok"], False, reply)
            self.assertIsInstance(reply["error"], str)
            self.assertTrue(reply["error"], reply)
        # Clients that connect and leave, or send half a request.
        for data in (b"", b'{"command":'):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(pool.socket)
            s.sendall(data)
            s.close()
        self.assertTrue(pool.running())
        self.assertEqual(pool.children(), before)
        self.assertEqual(self.status(pool)["pid"], pool.pid)
        self.assertEqual(pool.stop(), 0)

    def test_raw_protocol_as_documented(self):
        pool = self.start()
        reply = json.loads(ask_raw(pool.socket, b'{"command":"status"}\n'))
        self.assertIs(reply["ok"], True)
        self.assertEqual(reply["status"]["pool"], "ctl")
        reply = json.loads(ask_raw(
            pool.socket,
            b'{"command":"scale","group":"compute","processes":3}\n'))
        self.assertEqual(reply, {"ok": True, "group": "compute",
                                 "processes": 3, "until_reload": True})
        pool.wait_for_children(3, "compute")

    # -- who may connect

    def test_socket_is_0600_and_other_uids_are_refused(self):
        pool = self.start()
        mode = os.stat(pool.socket).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        nobody = pwd.getpwnam("nobody")
        if os.geteuid() != 0:
            self.skipTest("needs root to act as nobody")
        # The CLI run as nobody: the file mode refuses it.
        proc = subprocess.run([wp.BIN, "status", "--socket", pool.socket],
                              capture_output=True, text=True, user=nobody.pw_uid,
                              group=nobody.pw_gid, extra_groups=[],
                              timeout=wp.deadline())
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("permission denied", proc.stderr)
        # With the mode opened up, SO_PEERCRED still refuses nobody: a
        # Python process that setuid()s to nobody before connecting.
        os.chmod(pool.socket, 0o666)
        mark = pool.mark()
        code = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "s.connect(sys.argv[1])\n"
            "s.sendall(b'{\"command\":\"stop\"}\\n')\n"
            "s.shutdown(socket.SHUT_WR)\n"
            "out = b''\n"
            "while True:\n"
            "    d = s.recv(4096)\n"
            "    if not d: break\n"
            "    out += d\n"
            "sys.stdout.write(out.decode())\n")
        # The system's python: nobody may not reach sys.executable.
        proc = subprocess.run([SYSTEM_PYTHON, "-c", code, pool.socket],
                              capture_output=True, text=True,
                              user=nobody.pw_uid, group=nobody.pw_gid,
                              extra_groups=[], timeout=wp.deadline())
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(json.loads(proc.stdout),
                         {"ok": False, "error": "permission denied"})
        pool.wait_for_log(r"refused uid %d pid \d+: only root and uid %d"
                          % (nobody.pw_uid, os.geteuid()), since=mark)
        # The CLI as nobody now reaches the Watcher and is refused by it.
        proc = subprocess.run([wp.BIN, "reload", "--socket", pool.socket],
                              capture_output=True, text=True,
                              user=nobody.pw_uid, group=nobody.pw_gid,
                              extra_groups=[], timeout=wp.deadline())
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("permission denied", proc.stderr)
        # Nothing was done for them.
        self.assertTrue(pool.running())
        self.assertIsNone(self.status(pool)["last_reload"])

    def test_a_second_watcher_on_the_same_socket_is_refused(self):
        pool = self.start()
        # The marker lets the teardown find its children, should it start
        # any.
        code, out, err = wp.run_cli(["run", pool.path],
                                    env={"RUNTIME_DIRECTORY": pool.tmp,
                                         wp.MARKER_VAR: pool.tmp})
        self.assertEqual(code, 2, err)
        self.assertIn("another workerpool is running at %s" % pool.socket,
                      err)
        self.assertEqual(self.status(pool)["pid"], pool.pid)


if __name__ == "__main__":
    wp.main()
