"""Output through one socket per group (issue 17): when the pool does not
fit RLIMIT_NOFILE with a pipe per child (core/file_limit.h), a group's
children write their stdout and stderr to one Unix stream socket and the
Watcher names each line after its writer's pid (SCM_CREDENTIALS). Forced
here with a low limit (prlimit) and 400 children: every child's lines carry
its own name, a grandchild's carry its ancestor's, a line written right
before a child dies is logged, long lines and lines written in pieces come
out whole, and the stop is clean. A pool that fits keeps a pipe per child
until `scale` takes it past the line.
"""

import os
import re
import subprocess

import wp

CHILDREN = 400
CHATTY = 20
LINES = 200
TOTAL = CHILDREN + 1 + CHATTY
LIMIT = 800  # a pipe each allows (800 - 256) / 2 = 272; shared: 538
KILLED = 50

# Long lines, each in three writes, from many writers at once: the kernel
# must never hand the Watcher two writers' bytes in one read.
CHATTY_CHILD = r"""
import os
pid = os.getpid()
for seq in range(%d):
    line = b"chatty %%d %%d " %% (pid, seq) + b"x" * 3000 + b" end\n"
    for at in (0, 1000, 2000):
        os.write(1, line[at:at + 1000] if at < 2000 else line[at:])
os.write(1, b"chatty done\n")
import time
time.sleep(1000)
""" % LINES

SPECIAL = r"""
import os, subprocess, sys, time
tmp = sys.argv[1]
out = sys.stdout
if os.path.exists(os.path.join(tmp, "died")):
    out.write("after restart\n"); out.flush()
    time.sleep(1000)
# Alive while its line is read: the Watcher finds its ancestor in /proc.
subprocess.run(["sh", "-c", 'echo "grandchild $$ says hi"; sleep 1'])
# A long line in pieces, and a short one in three writes.
for i in range(10):
    os.write(1, (b"%d" % i) * 1000)
    time.sleep(0.01)
os.write(1, b"|long end\n")
for piece in (b"par", b"tial ", b"line\n"):
    os.write(1, piece)
    time.sleep(0.05)
# Garbage on the socket: descriptors sent with a line (the Watcher must
# close them, not keep them).
import array, socket
sock = socket.socket(fileno=os.dup(1))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(20)]
sock.sendmsg([b"with descriptors\n"],
             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
os.write(1, b"ready for the trigger\n")
while not os.path.exists(os.path.join(tmp, "die")):
    time.sleep(0.05)
open(os.path.join(tmp, "died"), "w").close()
os.write(2, b"last words\nno newline at death")
os._exit(3)
"""

POOL = """
pool: {name: outsock, stop_timeout: 10s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: talk
    type: job
    processes: %d
    command: [sh, -c, 'echo "hello $$ index $WORKERPOOL_INDEX"; exec sleep 1000']
    restart:
      backoff: {initial: 100ms, max: 1s, reset_after: 0ms}
      intensity: {max_restarts: 100000, period: 1s}
  - name: special
    type: job
    processes: 1
    command: [python3, "{tmp}/special.py", "{tmp}"]
    restart:
      backoff: {initial: 100ms, max: 1s}
  - name: chatty
    type: job
    processes: %d
    command: [python3, "{tmp}/chatty.py"]
""" % (CHILDREN, CHATTY)


class OutputSocketTest(wp.TestCase):
    def limited_binary(self, pool):
        """A workerpool that runs under RLIMIT_NOFILE LIMIT (hard too)."""
        script = os.path.join(pool.tmp, "workerpool-limited")
        with open(script, "w") as f:
            f.write("#!/bin/sh\nexec prlimit --nofile=%d:%d -- %s \"$@\"\n"
                    % (LIMIT, LIMIT, wp.BIN))
        os.chmod(script, 0o755)
        return script

    def test_shared_output_names_every_writer(self):
        pool = self.pool(POOL, start=False)
        pool.write("special.py", SPECIAL)
        pool.write("chatty.py", CHATTY_CHILD)
        binary = wp.BIN
        wp.BIN = self.limited_binary(pool)
        try:
            # `check` says so too.
            code = subprocess.run(
                [wp.BIN, "check", pool.path], capture_output=True, text=True,
                timeout=30)
            self.assertEqual(code.returncode, 0, code.stderr)
            self.assertIn("output of %d children through one socket per "
                          "group: RLIMIT_NOFILE %d allows 272 children"
                          % (TOTAL, LIMIT), code.stdout)
            pool.start()
        finally:
            wp.BIN = binary
        pool.wait_for_log(r"output of %d children through one socket per "
                          r"group: RLIMIT_NOFILE %d allows 272 children; the "
                          r"pool has up to %d with a pipe each, 538 with 1 "
                          r"descriptor per child"
                          % (TOTAL, LIMIT, TOTAL))
        children = pool.wait_for_children(TOTAL, timeout=120)
        talk = [c for c in children if c.group == "talk"]
        self.assertEqual(len(talk), CHILDREN)

        # Every child's line under its own name.
        for child in talk:
            pool.wait_for_log(r"talk\[%d\] %d: hello %d index %d$"
                              % (child.index, child.pid, child.pid,
                                 child.index), timeout=30)
        text = pool.log_text()
        self.assertEqual(len(re.findall(r": hello \d+ index", text)),
                         CHILDREN)
        for line in text.splitlines():
            m = re.search(r"talk\[(\d+)\] (\d+): hello (\d+) index (\d+)$",
                          line)
            if m:
                self.assertEqual(m.group(1), m.group(4), line)
                self.assertEqual(m.group(2), m.group(3), line)

        # One descriptor per child, not two (plus the reserve).
        fds = len(os.listdir("/proc/%d/fd" % pool.pid))
        self.assertLess(fds, TOTAL + 256, "fds: %d" % fds)

        # Every chatty line whole, under its writer's name.
        chatty = [c for c in children if c.group == "chatty"]
        pool.wait_for_log(r"chatty\[\d+\] \d+: chatty done$", count=CHATTY,
                          timeout=60)
        seen = {}
        for m in pool.find_log(r"^.*chatty\[(\d+)\] (\d+): (.*)$"):
            text = m.group(3)
            if text == "chatty done":
                continue
            w = re.fullmatch(r"chatty (\d+) (\d+) x{3000} end", text)
            self.assertIsNotNone(w, "a line cut or mixed: %.200r" % text)
            self.assertEqual(w.group(1), m.group(2), "named after its writer")
            seen.setdefault(int(m.group(2)), []).append(int(w.group(2)))
        self.assertEqual(sorted(seen), sorted(c.pid for c in chatty))
        for pid, seqs in seen.items():
            self.assertEqual(seqs, list(range(LINES)), "in order, all")

        (special,) = [c for c in children if c.group == "special"]
        name = r"special\[0\] %d" % special.pid
        # The grandchild's line under its ancestor's name.
        pool.wait_for_log(r"%s: grandchild \d+ says hi$" % name)
        # Written in pieces, logged whole.
        long_line = "".join(str(i) * 1000 for i in range(10)) + "|long end"
        pool.wait_for_log(r"%s: %s$" % (name, re.escape(long_line)))
        pool.wait_for_log(r"%s: partial line$" % name)
        pool.wait_for_log(r"%s: with descriptors$" % name)
        pool.wait_for_log(r"%s: ready for the trigger$" % name)
        devnull = [fd for fd in os.listdir("/proc/%d/fd" % pool.pid)
                   if os.readlink("/proc/%d/fd/%s" % (pool.pid, fd))
                   == "/dev/null"]
        # Its stdin and the children's (20 would be the ones sent).
        self.assertLessEqual(len(devnull), 2, "descriptors a child sent on "
                             "its stdout are closed")

        # Its last words, and the unfinished line, before its exit.
        mark = pool.mark()
        open(os.path.join(pool.tmp, "die"), "w").close()
        pool.wait_for_log(r"special\[0\] pid %d exited with code 3"
                          % special.pid, since=mark)
        since = pool.log_since(mark)
        self.assertRegex(since, r"%s: last words\n" % name)
        self.assertRegex(since, r"%s: no newline at death\n" % name)
        self.assertLess(since.index("no newline at death"),
                        since.index("exited with code 3"))
        pool.wait_for_log(r"special\[0\] \d+: after restart$", since=mark)

        # A storm of deaths: every replacement's line under its own name.
        mark = pool.mark()
        victims = talk[::CHILDREN // KILLED][:KILLED]
        for child in victims:
            os.kill(child.pid, 9)
        pool.wait_for_log(r"talk\[\d+\] \d+: hello", count=KILLED,
                          since=mark, timeout=60)
        for m in pool.find_log(r"talk\[(\d+)\] (\d+): hello (\d+) index "
                               r"(\d+)$", since=mark):
            self.assertEqual(m.group(1), m.group(4))
            self.assertEqual(m.group(2), m.group(3))

        self.assertEqual(pool.stop(timeout=60), 0)
        self.assertEqual(pool.leftovers(), [])

    def test_a_pool_that_fits_keeps_a_pipe_per_child(self):
        pool = self.pool(POOL.replace("processes: %d" % CHILDREN,
                                      "processes: 3"), start=False)
        pool.write("special.py", SPECIAL)
        pool.write("chatty.py", CHATTY_CHILD)
        binary = wp.BIN
        wp.BIN = self.limited_binary(pool)
        try:
            pool.start()
        finally:
            wp.BIN = binary
        pool.wait_for_log(r"RLIMIT_NOFILE %d allows 272 children; the pool "
                          r"has up to %d$" % (LIMIT, 4 + CHATTY))
        children = pool.wait_for_children(4 + CHATTY)
        for child in children:
            if child.group == "talk":
                pool.wait_for_log(r"talk\[%d\] %d: hello" % (child.index,
                                                            child.pid))
        self.assertNotIn("socket per group", pool.log_text())
        piped = [c for c in children if c.group == "talk"]

        # `scale` past what a pipe each allows: children spawned from now
        # on share the group's socket, those running keep their pipes.
        mark = pool.mark()
        code, out, err = wp.run_cli(["scale", "talk", "300", "--socket",
                                     os.path.join(pool.tmp, "ctl.sock")])
        self.assertEqual(code, 0, out + err)
        pool.wait_for_log(r"output of %d children through one socket per "
                          r"group" % (300 + 1 + CHATTY), since=mark)
        now = pool.wait_for_children(300 + 1 + CHATTY, timeout=60)
        for child in now:
            if child.group == "talk":
                pool.wait_for_log(r"talk\[%d\] %d: hello %d index %d$"
                                  % (child.index, child.pid, child.pid,
                                     child.index))
        self.assertTrue({c.pid for c in piped} <= {c.pid for c in now})
        self.assertEqual(pool.stop(), 0)
        self.assertEqual(pool.leftovers(), [])


if __name__ == "__main__":
    wp.main()
