"""Start order, readiness and one-shot groups (issue 19): depends_on,
restart.policy never/on-failure (done), ready and health probes, {index},
reverse-order stop, `restart --with-dependents`. Real processes: small sh
and python3 programs as children."""

import json
import os
import pwd
import re
import signal
import socket
import time

import wp

HERE = os.path.dirname(os.path.abspath(__file__))


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path="/", timeout=2.0):
    """The status code of GET PATH, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(("GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path).encode())
            data = s.recv(100)
        return int(data.split()[1])
    except (OSError, ValueError, IndexError):
        return None

# A TCP/HTTP server that starts listening DELAY seconds after it starts (or,
# with DELAY "listen", once {tmp}/listen exists), logs each connection to
# {tmp}/conns-PORT, and, while {tmp}/hang exists, accepts connections without
# ever answering (a hung server whose process lives on).
SERVER = r"""
import os, socket, sys, time
port, delay, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if delay == "listen":
    while not os.path.exists(os.path.join(tmp, "listen")):
        time.sleep(0.02)
else:
    time.sleep(float(delay))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(64)
held = []
while True:
    c, _ = s.accept()
    with open(os.path.join(tmp, "conns-%d" % port), "a") as log:
        log.write("c\n")
    if os.path.exists(os.path.join(tmp, "hang")):
        held.append(c)
        continue
    c.settimeout(1)
    try:
        c.recv(1000)
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except OSError:
        pass
    c.close()
"""


def port_prefix():
    """A number P such that ports P*10 and P*10+1 are free."""
    for _ in range(200):
        prefix = int.from_bytes(os.urandom(2), "big") % 3000 + 2000
        try:
            for i in range(2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", prefix * 10 + i))
            return prefix
        except OSError:
            continue
    raise RuntimeError("no free ports")


class StartOrderTest(wp.TestCase):

    def socket_of(self, pool):
        path = os.path.join(pool.tmp, "ctl.sock")
        wp.wait_until(lambda: os.path.exists(path), what="the control socket")
        return path

    def status(self, pool):
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     self.socket_of(pool)])
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def group(self, pool, name, must=True):
        for g in self.status(pool)["groups"]:
            if g["name"] == name:
                return g
        if must:
            self.fail("no group " + name)
        return None

    def wait_group(self, pool, name, state, detail=None):
        def check():
            g = self.group(pool, name, must=False)  # a reload may be on its way
            if g is None or g["state"] != state:
                return None
            if detail is not None and g["state_detail"] != detail:
                return None
            return g
        return wp.wait_until(
            check, what="group %s %s" % (name, detail or state),
            on_timeout=lambda: json.dumps(self.status(pool)["groups"]))

    def line_of(self, pool, regex):
        """The index of the first log line matching REGEX."""
        for number, line in enumerate(pool.log_lines()):
            if re.search(regex, line):
                return number
        self.fail("no log line matches %r" % regex)

    def test_a_chain_starts_in_order_and_stops_in_reverse(self):
        pool = self.pool('''
pool: {name: chain, stop_timeout: 5s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: web
    type: reactor
    command: [sleep, "1000"]
    depends_on: [cache]
  - name: cache
    type: job
    processes: 2
    command: [sleep, "1000"]
    depends_on: [migrate]
  - name: migrate
    type: job
    command: [sh, -c, "sleep 0.3; touch {tmp}/migrated"]
    restart: {policy: never}
''')
        pool.wait_for_log(r"pool chain ready")
        self.assertTrue(os.path.exists(os.path.join(pool.tmp, "migrated")))
        done = self.line_of(pool, r"migrate\[0\] done")
        cache = self.line_of(pool, r"spawned cache\[0\]")
        web = self.line_of(pool, r"spawned web\[0\]")
        self.assertLess(self.line_of(pool, r"spawned migrate\[0\]"), done)
        self.assertLess(done, cache)
        self.assertLess(cache, web)
        self.assertEqual(len(pool.children("web")), 1)
        self.assertEqual(len(pool.children("migrate")), 0)
        status = self.status(pool)
        states = {g["name"]: g["state"] for g in status["groups"]}
        self.assertEqual(states, {"web": "running", "cache": "running",
                                  "migrate": "done"})
        code, out, err = wp.run_cli(["status", "--socket",
                                     self.socket_of(pool)])
        self.assertRegex(out, r"(?m)^migrate .* done")
        self.assertEqual(pool.stop(), 0)
        # Dependents first: web, then cache (migrate has no child left).
        self.assertLess(self.line_of(pool, r"stopping group web"),
                        self.line_of(pool, r"stopping group cache"))
        self.assertLess(self.line_of(pool, r"web\[0\] pid \d+ killed by"),
                        self.line_of(pool, r"stopping group cache"))

    def test_a_failed_one_shot_holds_its_dependents_until_fixed(self):
        pool = self.pool('''
pool: {name: oneshot, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: migrate
    type: job
    command: [sh, -c, "test -e {tmp}/fixed || exit 1"]
    restart: {policy: never}
  - name: web
    type: job
    command: [sleep, "1000"]
    depends_on: [migrate]
''')
        self.wait_group(pool, "migrate", "failed",
                        "failed: migrate exited with code 1")
        web = self.wait_group(pool, "web", "waiting",
                              "waiting for migrate (migrate failed)")
        self.assertEqual(web["live"], 0)
        pool.wait_for_log(r"group web does not start: it depends on migrate")
        # The pool is as ready as it can be: it says so, and stays up.
        pool.wait_for_log(r"pool oneshot ready")
        code, out, err = wp.run_cli(["status", "--socket",
                                     self.socket_of(pool)])
        self.assertIn("failed: migrate exited with code 1", out)
        self.assertIn("waiting for migrate", out)
        self.assertTrue(pool.running())
        self.assertEqual(pool.children("web"), [])
        # Fixed, then reloaded: the one-shot runs again and web starts.
        open(os.path.join(pool.tmp, "fixed"), "w").close()
        pool.reload()
        self.wait_group(pool, "migrate", "done")
        pool.wait_for_children(1, group="web")
        self.wait_group(pool, "web", "running")
        self.assertEqual(pool.stop(), 0)

    def test_on_failure_restarts_failures_and_keeps_a_success(self):
        pool = self.pool('''
pool: {name: onfail, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: flaky
    type: job
    command: [sh, -c, "if test -e {tmp}/once; then exit 0; fi; touch {tmp}/once; exit 3"]
    restart: {policy: on-failure}
''')
        self.wait_group(pool, "flaky", "done")
        g = self.group(pool, "flaky")
        self.assertEqual(g["restarts"], 1)
        pool.wait_for_log(r"flaky\[0\] pid \d+ exited with code 3")
        self.assertEqual(pool.stop(), 0)

    def test_index_expands_in_command_env_and_cwd(self):
        pool = self.pool('''
pool: {name: idx, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: a
    type: job
    processes: 2
    command: [sh, -c, "echo $PORT:$(pwd):{index} > {tmp}/out{index}; exec sleep 1000"]
    env: {PORT: "70{index}"}
    cwd: "{tmp}/d{index}"
''', start=False)
        for i in range(2):
            os.mkdir(os.path.join(pool.tmp, "d%d" % i))
        pool.start()
        pool.wait_for_children(2, group="a")
        for i in range(2):
            path = os.path.join(pool.tmp, "out%d" % i)
            wp.wait_until(lambda: read(path).endswith("\n"), what=path)
            self.assertEqual(read(path).strip(),
                             "70%d:%s/d%d:%d" % (i, pool.tmp, i, i))
        self.assertEqual(pool.stop(), 0)

    def test_reload_adds_a_group_that_waits_and_a_dependency_changes_nothing(self):
        base = '''
pool: {name: rl, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: a
    type: job
    command: [sleep, "1000"]
  - name: b
    type: job
    command: [sleep, "1000"]
'''
        pool = self.pool(base)
        pool.wait_for_log(r"pool rl ready")
        before = {c.group: c.pid for c in pool.children()}
        # b now depends on a: no process changes.
        pool.reload(base.replace('''  - name: b
    type: job
''', '''  - name: b
    type: job
    depends_on: [a]
'''))
        pool.wait_for_log(r"reload finished")
        self.assertEqual({c.group: c.pid for c in pool.children()}, before)
        # A new group waits for a new one-shot that runs once.
        pool.reload(base + '''
  - name: c
    type: job
    command: [sleep, "1000"]
    depends_on: [m]
  - name: m
    type: job
    command: [sh, -c, "sleep 0.5"]
    restart: {policy: never}
''')
        self.wait_group(pool, "m", "done")
        pool.wait_for_children(1, group="c")
        self.assertLess(self.line_of(pool, r"m\[0\] done"),
                        self.line_of(pool, r"spawned c\[0\]"))
        self.assertEqual(pool.stop(), 0)

    # -- ready and health probes

    def test_ready_tcp_holds_dependents_until_every_process_listens(self):
        prefix = port_prefix()
        web_port = free_port()
        pool = self.pool("""
pool: {name: ready, stop_timeout: 5s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: web
    type: reactor
    command: [python3, -m, http.server, "{web}", --bind, 127.0.0.1]
    depends_on: [cache, migrate]
  - name: cache
    type: job
    processes: 2
    command: [python3, "{tmp}/server.py", "{prefix}{index}", listen, "{tmp}"]
    ready: {tcp: "127.0.0.1:{prefix}{index}", timeout: 30s}
  - name: migrate
    type: job
    command: [sh, -c, "sleep 0.2"]
    restart: {policy: never}
""", start=False, subst={"prefix": prefix, "web": web_port})
        pool.write("server.py", SERVER)
        pool.start()
        self.wait_group(pool, "cache", "starting")
        g = self.wait_group(pool, "web", "waiting")
        self.assertEqual(g["live"], 0)
        self.assertIsNone(http_get(web_port, timeout=0.5))
        # Only now may cache listen (a fixed delay could run out before the
        # checks above on a slow machine).
        open(os.path.join(pool.tmp, "listen"), "w").close()
        pool.wait_for_log(r"pool ready ready")
        wp.wait_until(lambda: http_get(web_port) == 200, what="web answers")
        ready = [self.line_of(pool, r"cache\[%d\] pid \d+ is ready \(tcp "
                              r"probe passed\)" % i) for i in range(2)]
        web = self.line_of(pool, r"spawned web\[0\]")
        self.assertLess(max(ready), web)
        self.assertLess(self.line_of(pool, r"migrate\[0\] done"), web)
        self.assertEqual(pool.stop(), 0)
        self.assertLess(self.line_of(pool, r"stopping group web"),
                        self.line_of(pool, r"stopping group cache"))

    def test_ready_exec_and_after(self):
        pool = self.pool("""
pool: {name: probes, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: x
    type: job
    processes: 2
    command: [sleep, "1000"]
    ready: {exec: [sh, -c, "test -e {tmp}/ready{index}"], timeout: 60s}
  - name: later
    type: job
    command: [sleep, "1000"]
    ready: {after: 1s}
    depends_on: [x]
""")
        self.wait_group(pool, "later", "waiting", "waiting for x")
        open(os.path.join(pool.tmp, "ready1"), "w").close()
        pool.wait_for_log(r"x\[1\] pid \d+ is ready \(exec probe passed\)")
        self.assertEqual(self.group(pool, "x")["state"], "starting")
        self.assertEqual(self.group(pool, "later")["state"], "waiting")
        open(os.path.join(pool.tmp, "ready0"), "w").close()
        pool.wait_for_log(r"later\[0\] pid \d+ is ready \(after probe passed\)")
        pool.wait_for_log(r"pool probes ready")
        self.assertEqual(pool.stop(), 0)

    def test_exec_probe_runs_as_its_child_would(self):
        # The probe of a group's child runs with what the child runs with:
        # the group's cwd, env and (the Watcher being root) user, plus the
        # pid of the child probed; never with the Watcher's own rights.
        root = os.geteuid() == 0
        pool = self.pool("""
pool: {name: probeenv, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: x
    type: job
    processes: 2
    command: [sleep, "1000"]
    cwd: "{tmp}/work"
%s    env: {PROBE_MARK: "mark{index}"}
    ready:
      exec: [sh, -c, 'echo "$(id -u) $PROBE_MARK $WORKERPOOL_CHILD_PID $(pwd)" > probe{index}.out']
""" % ("    user: nobody\n" if root else ""), start=False)
        work = os.path.join(pool.tmp, "work")
        os.mkdir(work)
        os.chmod(work, 0o777)
        pool.start()
        pool.wait_for_log(r"pool probeenv ready")
        uid = pwd.getpwnam("nobody").pw_uid if root else os.geteuid()
        pids = pool.children("x")
        for index in range(2):
            with open(os.path.join(work, "probe%d.out" % index)) as f:
                words = f.read().split()
            self.assertEqual(words[:2], [str(uid), "mark%d" % index])
            self.assertIn(int(words[2]), [c.pid for c in pids])
            self.assertEqual(words[3], work)
        self.assertEqual(pool.stop(), 0)

    def test_not_ready_in_time_is_a_failed_start(self):
        pool = self.pool("""
pool: {name: slow, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: x
    type: job
    command: [sleep, "1000"]
    ready: {exec: [sleep, "1000"], timeout: 500ms}
    restart: {policy: never}
""")
        pool.wait_for_log(r"x\[0\] pid \d+ not ready within 500ms: a failed "
                          r"start")
        self.wait_group(pool, "x", "failed", "failed: x not ready within 500ms")
        self.assertEqual(pool.stop(), 0)

    def test_health_failures_restart_a_hung_child(self):
        prefix = port_prefix()
        pool = self.pool("""
pool: {name: health, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: srv
    type: job
    command: [python3, "{tmp}/server.py", "{prefix}{index}", "0", "{tmp}"]
    ready: {tcp: "127.0.0.1:{prefix}{index}"}
    health:
      http: "http://127.0.0.1:{prefix}{index}/healthz"
      every: 300ms
      timeout: 300ms
      failures: 2
""", start=False, subst={"prefix": prefix})
        pool.write("server.py", SERVER)
        pool.start()
        pool.wait_for_log(r"pool health ready")
        (first,) = pool.children("srv")
        # Probes pass while it answers.
        conns = os.path.join(pool.tmp, "conns-%d" % (prefix * 10))
        wp.wait_until(lambda: read(conns).count("c") >= 3,
                      what="three health probes")
        self.assertFalse(pool.find_log(r"health probe failed"))
        # It stops answering, its process alive: two probes time out, then
        # it is stopped and restarted.
        open(os.path.join(pool.tmp, "hang"), "w").close()
        pool.wait_for_log(r"srv\[0\] pid %d health probe failed \(1 of 2\): "
                          r"no answer within 300ms" % first.pid)
        pool.wait_for_log(r"srv\[0\] pid %d is hung: 2 health probes failed"
                          % first.pid)
        os.unlink(os.path.join(pool.tmp, "hang"))
        wp.wait_until(lambda: pool.child("srv", 0) and
                      pool.child("srv", 0).pid != first.pid,
                      what="a new srv[0]")
        pool.wait_for_log(r"srv\[0\] pid \d+ is ready", count=2)
        self.assertFalse(wp.alive(first.pid))
        self.assertEqual(pool.stop(), 0)

    def test_health_probes_of_an_idle_pool_wake_it_only_at_every(self):
        prefix = port_prefix()
        pool = self.pool("""
pool: {name: idleprobe, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: srv
    type: job
    command: [python3, "{tmp}/server.py", "{prefix}{index}", "0", "{tmp}"]
    health: {tcp: "127.0.0.1:{prefix}{index}", every: 2s}
""", start=False, subst={"prefix": prefix})
        pool.write("server.py", SERVER)
        pool.start()
        pool.wait_for_log(r"pool idleprobe ready")
        conns = os.path.join(pool.tmp, "conns-%d" % (prefix * 10))
        wp.wait_until(lambda: read(conns).count("c") >= 1,
                      what="a first health probe")

        def switches(pid):
            total = 0
            for task in os.listdir("/proc/%d/task" % pid):
                status = wp.proc_status(int(task))
                total += int(status.get("voluntary_ctxt_switches", 0))
                total += int(status.get("nonvoluntary_ctxt_switches", 0))
            return total

        probes_before = read(conns).count("c")
        before = switches(pool.pid)
        time.sleep(4.2)
        probes = read(conns).count("c") - probes_before
        woke = switches(pool.pid) - before
        # Two probes in 4 s (one more at the edge), each a handful of
        # wake-ups (timer, connect); a busier timer would show far more.
        self.assertLessEqual(probes, 3)
        self.assertGreaterEqual(probes, 1)
        self.assertLessEqual(woke, 6 * probes + 2,
                             "the Watcher woke %d times for %d probes"
                             % (woke, probes))
        self.assertEqual(pool.stop(), 0)

    # -- restart --with-dependents

    def test_restart_with_dependents_restarts_the_chain_in_order(self):
        pool = self.pool("""
pool: {name: chainrs, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - {name: web, type: job, command: [sleep, "1000"], depends_on: [cache]}
  - {name: cache, type: job, processes: 2, command: [sleep, "1000"],
     depends_on: [db]}
  - {name: db, type: job, command: [sleep, "1000"]}
  - {name: other, type: job, command: [sleep, "1000"]}
""")
        pool.wait_for_log(r"pool chainrs ready")
        before = {(c.group, c.index): c.pid for c in pool.children()}
        code, out, err = wp.run_cli(["restart", "db", "--with-dependents",
                                     "--socket", self.socket_of(pool)])
        self.assertEqual(code, 0, err)
        self.assertIn("then of the groups that depend on it", out)

        def all_new():
            now = {(c.group, c.index): c.pid for c in pool.children()}
            return all(now.get(k) not in (None, v) for k, v in before.items()
                       if k[0] != "other") and len(now) == len(before)
        wp.wait_until(all_new, what="db, cache and web replaced")
        self.assertEqual(pool.child("other", 0).pid, before[("other", 0)])
        db = self.line_of(pool, r"rolling restart of db: replacing")
        cache = self.line_of(pool, r"rolling restart of cache: replacing")
        web = self.line_of(pool, r"rolling restart of web: replacing")
        self.assertLess(db, cache)
        self.assertLess(cache, web)
        # cache starts once db's new child is up.
        self.assertLess(self.line_of(pool, r"db\[0\] pid \d+ is up; it "
                                     r"replaces"), cache)
        # Without the flag, only the group.
        code, out, err = wp.run_cli(["restart", "db", "--socket",
                                     self.socket_of(pool)])
        self.assertEqual(code, 0, err)
        self.assertEqual(pool.stop(), 0)

    def test_reload_that_drops_a_dependency_starts_a_waiting_group(self):
        text = """
pool: {name: drop, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - {name: m, type: job, command: [sh, -c, "exit 2"],
     restart: {policy: never}}
  - {name: web, type: job, command: [sleep, "1000"], depends_on: [m]}
"""
        pool = self.pool(text)
        self.wait_group(pool, "m", "failed", "failed: m exited with code 2")
        self.wait_group(pool, "web", "waiting")
        pool.reload(text.replace(", depends_on: [m]", ""))
        pool.wait_for_children(1, group="web")
        self.wait_group(pool, "web", "running")
        self.assertEqual(pool.stop(), 0)

    def test_reload_applies_a_health_section_to_running_children(self):
        prefix = port_prefix()
        text = """
pool: {name: rh, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: srv
    type: job
    command: [python3, "{tmp}/server.py", "{prefix}{index}", "0", "{tmp}"]
"""
        pool = self.pool(text, start=False, subst={"prefix": prefix})
        pool.write("server.py", SERVER)
        pool.start()
        pool.wait_for_log(r"pool rh ready")
        (child,) = pool.children("srv")
        conns = os.path.join(pool.tmp, "conns-%d" % (prefix * 10))
        pool.reload(text + """    health: {tcp: "127.0.0.1:{prefix}{index}", every: 200ms}
""")
        wp.wait_until(lambda: read(conns).count("c") >= 2,
                      what="health probes after the reload")
        self.assertEqual(pool.children("srv"), [child])
        pool.reload(text)
        pool.wait_for_log(r"reload finished", count=2)
        time.sleep(0.5)
        seen = read(conns).count("c")
        time.sleep(1)
        self.assertLessEqual(read(conns).count("c") - seen, 0)
        self.assertEqual(pool.children("srv"), [child])
        self.assertEqual(pool.stop(), 0)

    # -- bad files

    def test_check_run_and_reload_refuse_a_cycle_and_an_unknown_group(self):
        good = """
pool: {name: bad, stop_timeout: 2s, control_socket: "{tmp}/ctl.sock"}
groups:
  - {name: a, type: job, command: [sleep, "1000"]}
  - {name: b, type: job, command: [sleep, "1000"], depends_on: [a]}
"""
        cycle = good.replace("command: [sleep, \"1000\"]}",
                             "command: [sleep, \"1000\"], depends_on: [b]}", 1)
        unknown = good.replace("depends_on: [a]", "depends_on: [aa]")
        pool = self.pool(good, start=False)
        for text, message in ((cycle, r"5:\d+: groups\[1\]\.depends_on\[0\]: "
                               r"dependency cycle: a -> b -> a"),
                              (unknown, r"5:\d+: groups\[1\]\.depends_on\[0\]: "
                               r"unknown group 'aa'")):
            path = pool.write("bad.yaml", text)
            code, out, err = wp.run_cli(["check", path])
            self.assertEqual(code, 1, out + err)
            self.assertRegex(err, re.escape(path) + ":" + message)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            code, out, err = wp.run_cli(["run", path])
            self.assertEqual(code, 1, out + err)
            self.assertRegex(err, message)
        pool.start()
        pool.wait_for_log(r"pool bad ready")
        before = pool.children()
        pool.write_config(cycle)
        code, out, err = wp.run_cli(["reload", "--socket",
                                     self.socket_of(pool)])
        self.assertEqual(code, 1, out + err)
        self.assertRegex(err, "dependency cycle: a -> b -> a")
        pool.wait_for_log(r"reload refused, keeping the running pool|"
                          r"reload failed, keeping the running pool")
        self.assertEqual(pool.children(), before)
        self.assertEqual(pool.stop(), 0)


if __name__ == "__main__":
    wp.main()
