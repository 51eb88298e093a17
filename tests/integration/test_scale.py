"""A large pool (issue 17): 2,000 children start, 200 killed at once all
come back, the spawner's death is survived (its children keep running, new
spawns work and a new spawner starts), and the stop leaves no process. A
pool larger than the descriptor limit allows is an error at start and in
`check`. The 10,000 case is in scripts/bench (--only scale), not here.
"""

import os
import shutil
import signal
import subprocess

import wp

CHILDREN = 2000
KILLED = 200

POOL = """
pool: {name: scale, stop_timeout: 10s}
groups:
  - name: many
    type: job
    processes: %d
    command: [sleep, "1000"]
    restart:
      backoff: {initial: 100ms, max: 1s, reset_after: 0ms}
      intensity: {max_restarts: 100000, period: 1s}
"""


def spawners(pool):
    """The Watcher's workerpool-spawner children."""
    found = []
    for pid in wp.pids_with_parent(pool.pid):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith(b"workerpool-spawner") and wp.proc_state(pid) != "Z":
            found.append(pid)
    return found


class ScaleTest(wp.TestCase):
    def test_two_thousand_children_kill_storm_spawner_death_and_stop(self):
        pool = self.pool(POOL % CHILDREN)
        pool.wait_for_log(r"RLIMIT_NOFILE \d+ allows \d+ children; the pool "
                          r"has up to %d" % CHILDREN)
        before = pool.wait_for_children(CHILDREN, timeout=120)
        pool.wait_for_log(r"pool scale ready: %d children" % CHILDREN,
                          timeout=60)
        self.assertEqual(len(spawners(pool)), 1, "one spawner runs")

        # 200 at once: every one comes back, in its own slot.
        victims = before[::CHILDREN // KILLED][:KILLED]
        for child in victims:
            os.kill(child.pid, signal.SIGKILL)
        victim_pids = {c.pid for c in victims}

        def all_back():
            now = pool.children()
            if len(now) != CHILDREN:
                return None
            if victim_pids & {c.pid for c in now}:
                return None
            return now
        after = wp.wait_until(all_back, timeout=120,
                              what="the %d killed children replaced" % KILLED,
                              interval=0.2)
        self.assertEqual(sorted(c.index for c in after), list(range(CHILDREN)))

        # The spawner dies: the children it made keep running, spawning
        # goes on (directly, then through a new spawner).
        (spawner,) = spawners(pool)
        mark = pool.mark()
        os.kill(spawner, signal.SIGKILL)
        pool.wait_for_log(r"spawner pid %d was killed by SIGKILL" % spawner,
                          since=mark)
        survivors = {c.pid for c in pool.children()}
        self.assertEqual(len(survivors), CHILDREN)
        by_index = {c.index: c.pid for c in pool.children()}
        for index in (0, 1):
            os.kill(by_index[index], signal.SIGKILL)
            pool.wait_for_log(r"spawned many\[%d\] pid" % index, since=mark)
        pool.wait_for_log(r"spawner pid \d+ started", since=mark, timeout=30)
        new_spawners = wp.wait_until(lambda: spawners(pool),
                                     what="a new spawner")
        self.assertNotIn(spawner, new_spawners)
        # One more restart goes through the new spawner.
        mark = pool.mark()
        os.kill(by_index[5], signal.SIGKILL)
        pool.wait_for_log(r"spawned many\[5\] pid", since=mark)
        self.assertNotIn("spawning directly", pool.log_since(mark))
        still = {c.pid for c in pool.children()}
        self.assertEqual(len(still), CHILDREN)
        self.assertGreaterEqual(len(survivors & still), CHILDREN - 3,
                                "children outlive their spawner")

        self.assertEqual(pool.stop(timeout=60), 0)
        self.assertEqual(pool.leftovers(), [])

    def test_without_a_spawner_the_watcher_spawns_directly(self):
        for how in ("WORKERPOOL_SPAWN=direct", "no workerpool-spawner"):
            with self.subTest(how):
                env = {"WORKERPOOL_SPAWN": "direct"} if "=" in how else {}
                pool = self.pool(POOL % 3, start=False, env=env)
                binary = wp.BIN
                if "=" not in how:
                    # A workerpool binary with no spawner beside it.
                    lone = os.path.join(pool.tmp, "bin")
                    os.mkdir(lone)
                    shutil.copy(binary, lone)
                    wp.BIN = os.path.join(lone, "workerpool")
                try:
                    pool.start()
                finally:
                    wp.BIN = binary
                (victim, _, _) = pool.wait_for_children(3)
                pool.wait_for_log(r"spawns its children itself|"
                                  r"workerpool-spawner is missing")
                self.assertEqual(spawners(pool), [])
                mark = pool.mark()
                os.kill(victim.pid, signal.SIGKILL)
                pool.wait_for_log(r"spawned many\[%d\] pid" % victim.index,
                                  since=mark)
                self.assertEqual(pool.stop(), 0)
                self.assertEqual(pool.leftovers(), [])

    def kill_and_wait_back(self, pool, count, killed):
        """Kills every KILLED-th of COUNT children at once; all come back in
        their slots, and none stays a zombie."""
        before = pool.wait_for_children(count, timeout=120)
        victims = before[::killed]
        for child in victims:
            os.kill(child.pid, signal.SIGKILL)
        gone = {c.pid for c in victims}

        def all_back():
            now = pool.children()
            if len(now) != count or gone & {c.pid for c in now}:
                return None
            return now
        after = wp.wait_until(all_back, timeout=120, interval=0.2,
                              what="%d killed children replaced" % len(gone),
                              on_timeout=pool.log_tail)
        self.assertEqual(sorted(c.index for c in after), list(range(count)))
        wp.wait_until(lambda: not pool.zombies(), what="no zombie children")
        self.assertEqual(pool.stop(timeout=60), 0)
        self.assertEqual(pool.leftovers(), [])

    def test_reaping_by_pidfd_restarts_killed_children(self):
        pool = self.pool(POOL % 300)
        pool.wait_for_log(r"children reaped by pidfd, one each")
        self.kill_and_wait_back(pool, 300, 3)

    def test_reaping_by_waitpid_restarts_killed_children(self):
        # Forced: every child reaped on SIGCHLD, by a waitpid(-1) sweep (with
        # fewer than half of them lacking a pidfd, those are reaped by their
        # pid: the partial case below).
        pool = self.pool(POOL % 300, env={"WORKERPOOL_REAP": "waitpid"})
        pool.wait_for_log(r"children reaped on SIGCHLD by waitpid "
                          r"\(WORKERPOOL_REAP=waitpid\)")
        self.kill_and_wait_back(pool, 300, 3)

    def test_reaping_with_pidfds_for_some_restarts_every_killed_child(self):
        # RLIMIT_NOFILE 800: 300 children share an output socket (272 fit
        # with a pipe each) and 800 - 256 - 2 - 300 = 242 get a pidfd; the
        # other 58 are reaped by their pid on SIGCHLD. All 300 killed.
        pool = self.pool(POOL % 300, start=False)
        script = os.path.join(pool.tmp, "workerpool-limited")
        with open(script, "w") as f:
            f.write("#!/bin/sh\nexec prlimit --nofile=800:800 -- %s \"$@\"\n"
                    % wp.BIN)
        os.chmod(script, 0o755)
        # `check` under the same limit says so too.
        check = subprocess.run([script, "check", pool.path],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn("242 of 300 children reaped by pidfd", check.stdout)
        binary = wp.BIN
        wp.BIN = script
        try:
            pool.start()
        finally:
            wp.BIN = binary
        pool.wait_for_log(r"242 of 300 children reaped by pidfd, the rest on "
                          r"SIGCHLD by waitpid \(no room for more under "
                          r"RLIMIT_NOFILE 800\)")
        self.kill_and_wait_back(pool, 300, 1)

    def test_a_pool_over_the_file_limit_is_an_error_at_start(self):
        # More than fs.nr_open could ever hold: too many for any limit.
        groups = "".join(
            "  - {name: g%d, type: job, processes: 100000, "
            "command: [sleep, '1000']}\n" % i for i in range(11))
        path = os.path.join(self.tmp_dir(), "big.yaml")
        with open(path, "w") as f:
            f.write("pool: {name: big, control_socket: %s/c.sock}\ngroups:\n"
                    % os.path.dirname(path) + groups)
        code, out, err = wp.run_cli(["check", path])
        self.assertEqual(code, 1, out + err)
        self.assertIn("too many", err)
        self.assertIn("LimitNOFILE=", err)
        code, out, err = wp.run_cli(["run", path], timeout=30)
        self.assertEqual(code, 2, out + err)
        self.assertIn("cannot start", err)
        self.assertIn("too many", err)

    def test_check_says_how_many_children_the_limit_allows(self):
        path = os.path.join(self.tmp_dir(), "small.yaml")
        with open(path, "w") as f:
            f.write(POOL % 3)
        code, out, err = wp.run_cli(["check", path])
        self.assertEqual(code, 0, out + err)
        self.assertRegex(out, r"RLIMIT_NOFILE \d+ allows \d+ children; the "
                              r"pool has up to 3\n")
        self.assertIn("children reaped by pidfd, one each\n", out)
        code, out, err = wp.run_cli(["check", path],
                                    env={"WORKERPOOL_REAP": "waitpid"})
        self.assertEqual(code, 0, out + err)
        self.assertIn("children reaped on SIGCHLD by waitpid "
                      "(WORKERPOOL_REAP=waitpid)\n", out)

    def tmp_dir(self):
        import tempfile
        d = tempfile.mkdtemp(prefix="wp-scale-")
        self.addCleanup(lambda: __import__("shutil").rmtree(d, True))
        return d


if __name__ == "__main__":
    wp.main()
