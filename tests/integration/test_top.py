"""`workerpool top` in a real terminal: tmux runs it against a real pool,
`capture-pane` reads the screen, `send-keys` presses the keys.

- the pool line and one row per group, every column at 80 columns, figures
  that move under load (requests/s, CPU%, RSS, a service's queue);
- Down + Enter shows a group's processes (their real pids);
- `q` and Ctrl-C quit with exit 0 and give back the terminal as it was
  (the shell's screen is back, echo and canonical mode on);
- a narrow terminal keeps the most useful columns;
- a pool that goes away is said so on the last line, and `top` carries on;
- no pool at the socket: the same one-line error and exit 2 as `status`;
- not a terminal: one screen on stdout.
DESIGN.md: "workerpool top"; issue 21.
"""

import http.client
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import unittest

import wp

FAKE_SERVICE = os.path.join(wp.HERE, "fake_queue_service.py")

POOL = """
pool: {name: toptest, stop_timeout: 2s}
groups:
  - name: web
    type: reactor
    processes: 2
    command: [%(bin)s, builtin, http-reactor]
    listen: ["127.0.0.1:%(port)d"]
    routes_to: [echo]
  - name: echo
    type: job
    processes: 2
    command: [%(bin)s, builtin, echo-job]
  - name: intake
    type: service
    processes: 1
    command: [%(python)s, %(fake_service)s]
"""

TITLES = ["GROUP", "TYPE", "LIVE", "STATE", "RST", "REQ/s", "ERR/s", "P50",
          "P99", "INFL", "QUEUE", "RSS", "CPU%"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Tmux:
    """A private tmux server (its own socket, no user config) running one
    command in a WIDTH x HEIGHT window."""

    def __init__(self, test, command, width=80, height=24):
        self.name = "wp-top-%d-%d" % (os.getpid(), id(self))
        self.test = test
        self._tmux("-f", "/dev/null", "new-session", "-d", "-x", str(width),
                   "-y", str(height), command)
        test.addCleanup(self.kill)

    def _tmux(self, *args, check=True):
        proc = subprocess.run(["tmux", "-L", self.name] + list(args),
                              capture_output=True, text=True,
                              errors="replace", timeout=wp.deadline(10))
        if check and proc.returncode != 0:
            raise AssertionError("tmux %s: %s" % (" ".join(args),
                                                  proc.stderr))
        return proc

    def screen(self):
        """The visible lines, trailing spaces removed."""
        text = self._tmux("capture-pane", "-p").stdout
        if text.endswith("\n"):
            text = text[:-1]
        return [line.rstrip() for line in text.split("\n")]

    def text(self):
        return "\n".join(self.screen())

    def keys(self, *keys):
        self._tmux("send-keys", *keys)

    def wait_for(self, predicate, what, timeout=None):
        """Waits until PREDICATE(screen lines) is true; returns its value."""
        return wp.wait_until(lambda: predicate(self.screen()), timeout,
                             what=what, interval=0.1,
                             on_timeout=lambda: "screen:\n" + self.text())

    def kill(self):
        self._tmux("kill-server", check=False)


def row(lines, group):
    """The table row of GROUP ('>' marks the selected one), as cells."""
    for line in lines:
        if re.match(r"^[ >]%s\s" % re.escape(group), line):
            return line[1:].split()
    return None


def titles(lines):
    for line in lines:
        if line.strip().startswith("GROUP"):
            return line.split()
    return None


def number(cell):
    """A rate, percent or size cell as a float ("-" is None)."""
    m = re.match(r"^>?([\d.]+)([kMKG]?)(?:us|ms|s)?$", cell)
    return float(m.group(1)) if m else None


@unittest.skipUnless(shutil.which("tmux"), "tmux is not installed "
                     "(scripts/setup installs it)")
class TopTest(wp.TestCase):

    def start_pool(self):
        self.port = free_port()
        pool = self.pool(POOL % {"bin": wp.BIN, "port": self.port,
                                 "python": shutil.which("python3"),
                                 "fake_service": FAKE_SERVICE})
        pool.wait_for_children(5)
        self.socket = os.path.join(pool.tmp, "toptest.sock")
        wp.wait_until(lambda: os.path.exists(self.socket),
                      what="the control socket")
        return pool

    def top(self, extra="", width=80, height=24):
        """tmux running `top` from a shell that first prints a marker and
        afterwards says how top exited and how the terminal is set."""
        command = ("printf 'before top\\n'; %s top --socket %s %s; "
                   "echo \"top exited $?\"; "
                   "stty -a | tr ' ;' '\\n\\n' | grep -x -e '-\\?icanon' "
                   "-e '-\\?echo' | tr '\\n' ' '; echo; sleep 60"
                   % (wp.BIN, self.socket, extra))
        return Tmux(self, command, width, height)

    def load(self, seconds):
        """Sends HTTP requests through the reactors to echo in a thread."""
        stop = time.monotonic() + seconds
        finished = threading.Event()

        def send():
            while time.monotonic() < stop and not finished.is_set():
                try:
                    c = http.client.HTTPConnection("127.0.0.1", self.port,
                                                   timeout=5)
                    c.request("POST", "/jobs/echo", body=b"hello")
                    c.getresponse().read()
                    c.close()
                except OSError:
                    time.sleep(0.05)
        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(finished.set)  # cleanups run last-in first-out

    def exited(self, tmux):
        """Waits for `top` to exit; returns the shell's lines after it."""
        def done(lines):
            text = "\n".join(lines)
            return "top exited" in text and re.search(r"echo\s*$", text, re.M)
        tmux.wait_for(done, "top to exit and the shell to report")
        return tmux.screen()

    def assert_terminal_restored(self, lines):
        text = "\n".join(lines)
        # The alternate screen is gone: the shell's own lines are back,
        # and no line of top's screen is left on it.
        self.assertIn("before top", text)
        self.assertNotIn("GROUP", text)
        self.assertRegex(text, r"(?m)^top exited 0$")
        # stty: canonical mode and echo back on.
        self.assertRegex(text, r"(?m)^icanon echo\s*$")

    def test_screen_figures_keys_and_quit(self):
        pool = self.start_pool()
        self.load(30)
        tmux = self.top("--interval 500ms")
        # Rates appear from the second answer on, under load. The served
        # counts and the latency histogram come in different reports of a
        # child, so one screen may show a rate before its P99: wait for both.
        # web's sent/s comes from the reactors' own reports, once a second
        # each, and a screen's rate covers only the last interval: wait for
        # it too.
        def busy(lines):
            echo, web = row(lines, "echo"), row(lines, "web")
            if (echo and len(echo) == 13 and (number(echo[5]) or 0) > 0
                    and number(echo[8]) is not None
                    and web and len(web) == 13 and (number(web[5]) or 0) > 0):
                return lines
            return None
        lines = tmux.wait_for(busy, "echo's requests/s and P99, and web's "
                              "requests/s to show")
        for line in lines:
            self.assertLessEqual(len(line), 80, line)
        self.assertRegex(lines[0], r"^pool toptest  running  up \S+  gen 0  "
                                   r"workerpool \S+  pid %d$" % pool.pid)
        self.assertIn("5/5 children in 3 groups", lines[1])
        self.assertEqual(titles(lines), TITLES)
        web, echo, intake = (row(lines, g) for g in ("web", "echo", "intake"))
        self.assertEqual(web[:4], ["web", "reactor", "2/2", "running"])
        self.assertEqual(echo[:4], ["echo", "job", "2/2", "running"])
        self.assertEqual(intake[:4], ["intake", "service", "1/1", "running"])
        # Latency of echo's requests, and the memory of real processes.
        self.assertIsNotNone(number(echo[8]), echo)       # P99
        self.assertGreater(number(echo[11]) or 0, 0, echo)  # RSS
        self.assertIsNotNone(number(echo[12]), echo)      # CPU%
        self.assertGreater(number(web[5]) or 0, 0, web)   # requests sent/s
        # The service's queue, under its row.
        queue = tmux.wait_for(
            lambda ls: next((re.search(r"queue tasks: depth (\d+), ([\d.]+) "
                                       r"msgs/s", l) for l in ls
                             if "queue tasks" in l and
                             not re.search(r"depth \d+, (0|-) msgs/s", l)),
                            None),
            "the queue's msgs/s to show")
        self.assertGreater(float(queue.group(2)), 0)

        # Down selects echo; Enter shows its processes with their pids.
        tmux.keys("Down")
        tmux.wait_for(lambda ls: any(l.startswith(">echo") for l in ls),
                      "echo to be selected")
        tmux.keys("Enter")
        pids = sorted(c.pid for c in pool.children("echo"))
        def listed(lines):
            text = "\n".join(lines)
            return "IDX PID" in text and all(
                re.search(r"(?m)^\s+\d+ %d\s+\S+\s+ready\s" % p, text)
                for p in pids)
        tmux.wait_for(listed, "echo's processes %s" % pids)
        # Enter again hides them.
        tmux.keys("Enter")
        tmux.wait_for(lambda ls: "IDX PID" not in "\n".join(ls),
                      "echo's processes to be hidden")

        tmux.keys("q")
        self.assert_terminal_restored(self.exited(tmux))

    def test_ctrl_c_quits_and_restores_the_terminal(self):
        self.start_pool()
        tmux = self.top()
        tmux.wait_for(lambda ls: row(ls, "intake"), "the screen")
        tmux.keys("C-c")
        self.assert_terminal_restored(self.exited(tmux))

    def test_narrow_terminal_keeps_the_most_useful_columns(self):
        self.start_pool()
        tmux = self.top(width=50, height=12)
        lines = tmux.wait_for(lambda ls: row(ls, "intake") and ls,
                              "the screen")
        for line in lines:
            self.assertLessEqual(len(line), 50, line)
        shown = titles(lines)
        self.assertEqual(shown[:3], ["GROUP", "LIVE", "STATE"])
        self.assertIn("REQ/s", shown)
        self.assertNotIn("P50", shown)
        self.assertIn("q quit", lines[-1])
        tmux.keys("q")
        self.exited(tmux)

    def test_a_pool_that_goes_away_is_said_so(self):
        pool = self.start_pool()
        tmux = self.top("--interval 200ms")
        tmux.wait_for(lambda ls: row(ls, "echo"), "the screen")
        pool.stop()
        tmux.wait_for(lambda ls: ls[-1].startswith("no answer: ") or
                      any(l.startswith("no answer: ") for l in ls),
                      "top to say the pool is gone")
        tmux.keys("q")
        self.assert_terminal_restored(self.exited(tmux))

    def test_no_pool_exits_2_with_the_error_status_gives(self):
        missing = os.path.join(self.pool_dir(), "none.sock")
        code, out, err = wp.run_cli(["top", "--socket", missing])
        s_code, _, s_err = wp.run_cli(["status", "--socket", missing])
        self.assertEqual((code, s_code), (2, 2))
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(err.replace("workerpool top:", ""),
                         s_err.replace("workerpool status:", ""))
        code, _, err = wp.run_cli(["top", "--socket", missing,
                                   "--interval", "5"])
        self.assertEqual(code, 1, err)
        self.assertIn("--interval", err)

    def test_not_a_terminal_prints_one_screen(self):
        self.start_pool()
        code, out, err = wp.run_cli(["top", "--socket", self.socket,
                                     "--interval", "200ms"],
                                    env={"COLUMNS": "100"})
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("pool toptest"), out)
        self.assertEqual(titles(lines), TITLES)
        self.assertIsNotNone(row(lines, "intake"), out)
        self.assertNotIn("\x1b", out)

    def pool_dir(self):
        import tempfile
        path = tempfile.mkdtemp(prefix="wp-top-")
        self.addCleanup(shutil.rmtree, path, True)
        return path


if __name__ == "__main__":
    wp.main()
