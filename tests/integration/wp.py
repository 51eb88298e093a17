"""Integration test harness for workerpool (standard library only).

Modeled on nginx-tests' lib/Test/Nginx.pm: a test writes a pool definition,
starts the real binary on it, pokes it (signals, reloads, killing children)
and asserts on what it can see from outside: the Watcher's log, its exit code
and its children in /proc. Waits poll against generous deadlines; tests assert
behaviour, never speed.

    import wp

    class T(wp.TestCase):
        def test_something(self):
            pool = self.pool('''
    pool: {name: t, stop_timeout: 1s}
    groups:
      - {name: a, type: job, processes: 2, command: [sleep, "1000"], cwd: "{tmp}"}
    ''')
            pool.wait_for_children(2)
            self.assertEqual(pool.stop(), 0)

    if __name__ == "__main__":
        wp.main()

Every pool made with TestCase.pool() is torn down after its test, pass or
fail: the Watcher and everything it started are SIGKILLed, then its log is
checked, and the test fails if the log has a line at level "critical" or a
sanitizer report (as nginx-tests fails on alerts). A failing test prints the
log's tail and keeps the pool's directory (WP_TEST_KEEP=1 keeps it always).

Environment: WORKERPOOL_BIN (the binary; default build/workerpool of this
tree), WP_TEST_TIMEOUT_SCALE (multiplies every deadline, e.g. 3 under
sanitizers; default 1), WP_TEST_KEEP=1.
"""

import atexit
import collections
import faulthandler
import json
import os
import re
import shutil
import signal as _signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("WORKERPOOL_BIN") or os.path.join(TOP, "build", "workerpool")

SCALE = float(os.environ.get("WP_TEST_TIMEOUT_SCALE", "1") or 1)
# The default deadline of every wait. Generous on purpose: the machine is
# small and shared; a deadline only bounds a test that is already failing.
DEADLINE = 20.0 * SCALE
# Whole-file watchdog, below ctest's 900 s (tests/CMakeLists.txt): dump
# stacks, kill, exit. Scaled like every deadline: a sanitized build on two
# busy cores runs the biggest files in two minutes or more.
FILE_DEADLINE = float(os.environ.get("WP_TEST_FILE_DEADLINE", "280")) * SCALE

# The marker put in the Watcher's environment; children inherit it (the
# Watcher passes its environment on, minus WORKERPOOL_* variables), and so
# do their own children. Cleanup finds leftovers, orphans included, by it.
MARKER_VAR = "WP_TEST_POOL_ID"

Child = collections.namedtuple("Child", "group index pid")

_live_pools = []  # every Pool not yet closed, for the emergency cleanups


def deadline(seconds=None):
    """Seconds for a wait: the default deadline, or SECONDS scaled."""
    return DEADLINE if seconds is None else seconds * SCALE


def wait_until(predicate, timeout=None, what="condition", interval=0.05,
               on_timeout=None):
    """Polls PREDICATE until it returns a true value, which is returned.
    Fails the test after TIMEOUT seconds (scaled), naming WHAT; ON_TIMEOUT()
    may add detail to the message."""
    limit = time.monotonic() + deadline(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= limit:
            detail = ""
            if on_timeout is not None:
                try:
                    detail = "\n" + on_timeout()
                except Exception as e:  # the detail must not hide the failure
                    detail = "\n(no detail: %r)" % (e,)
            raise AssertionError("timed out after %.0fs waiting for %s%s"
                                 % (deadline(timeout), what, detail))
        time.sleep(interval)


# --- /proc -------------------------------------------------------------------

def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError,
            NotADirectoryError):
        return None
    except OSError:
        return None


def proc_status(pid):
    """/proc/PID/status as a dict (empty when the process is gone)."""
    text = _read("/proc/%d/status" % pid)
    result = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        result[key] = value.strip()
    return result


def proc_environ_list(pid):
    """/proc/PID/environ as a list of (key, value) in order, duplicates kept
    (empty when gone, a zombie, or unreadable)."""
    data = _read("/proc/%d/environ" % pid, "rb")
    result = []
    for item in (data or b"").split(b"\0"):
        if b"=" in item:
            key, _, value = item.partition(b"=")
            result.append((key.decode(errors="replace"),
                           value.decode(errors="replace")))
    return result


def proc_environ(pid):
    """/proc/PID/environ as a dict; for a duplicated name the first value,
    the one getenv() returns."""
    result = {}
    for key, value in proc_environ_list(pid):
        result.setdefault(key, value)
    return result


def proc_start_time(pid):
    """Start time of PID in clock ticks (to tell a reused pid apart), or None."""
    text = _read("/proc/%d/stat" % pid)
    if not text:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def proc_state(pid):
    """One letter (R, S, Z, ...) or None when the process is gone."""
    text = _read("/proc/%d/stat" % pid)
    if not text:
        return None
    return text[text.rfind(")") + 2:].split()[0]


def proc_cwd(pid):
    try:
        return os.readlink("/proc/%d/cwd" % pid)
    except OSError:
        return None


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pids_with_parent(ppid):
    result = []
    for pid in all_pids():
        if proc_status(pid).get("PPid") == str(ppid):
            result.append(pid)
    return result


def alive(pid):
    """True while PID exists and is not a zombie."""
    state = proc_state(pid)
    return state is not None and state != "Z"


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# --- the command line --------------------------------------------------------

def run_cli(args, timeout=None, input=None, env=None, cwd=None):
    """Runs `workerpool ARGS...` to completion: (exit code, stdout, stderr)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run([BIN] + [str(a) for a in args], input=input,
                          capture_output=True, text=True, errors="replace",
                          timeout=deadline(timeout), env=full_env, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


# --- the pool ----------------------------------------------------------------

_CRITICAL_TEXT = re.compile(r"^[^\[{]*\[(critical|crit)\]")
_SANITIZER = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer|MemorySanitizer)"
    r"|: runtime error: |SUMMARY: UndefinedBehaviorSanitizer")


def critical_lines(text):
    """Log lines at level critical (text or JSON format) and sanitizer reports."""
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if _SANITIZER.search(line):
            found.append(line)
        elif stripped.startswith("{"):
            try:
                record = json.loads(stripped)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in (
                    "critical", "crit"):
                found.append(line)
        elif _CRITICAL_TEXT.search(line):
            found.append(line)
    return found


class Pool:
    """One Watcher run on a pool definition in a private temporary directory.

    YAML_TEXT may use {tmp} for that directory (and any {NAME} given in
    SUBST); other braces are left alone, so flow mappings are fine.
    """

    def __init__(self, yaml_text, start=True, env=None, subst=None,
                 allow_critical=None, file_name="pool.yaml"):
        self.tmp = tempfile.mkdtemp(prefix="wp-test-")
        os.chmod(self.tmp, 0o755)  # children may run as another user
        self.subst = {"tmp": self.tmp}
        self.subst.update(subst or {})
        self.path = os.path.join(self.tmp, file_name)
        self.log_path = os.path.join(self.tmp, "watcher.log")
        self.stdout_path = os.path.join(self.tmp, "watcher.stdout")
        self.extra_env = dict(env or {})
        # Regexes of critical lines this test expects (not counted as bad).
        self.allow_critical = [re.compile(r) for r in (allow_critical or [])]
        self.proc = None
        self.exit_code = None
        self.closed = False
        self._seen = {}  # pid -> start time, of every child ever seen
        self.write_config(yaml_text)
        _live_pools.append(self)
        if start:
            self.start()

    # -- files

    def expand(self, text):
        for key, value in self.subst.items():
            text = text.replace("{%s}" % key, str(value))
        return text

    def write_config(self, yaml_text):
        """(Re)writes the pool definition, atomically."""
        self.write(os.path.basename(self.path), yaml_text)

    def write(self, name, text):
        """Writes TEXT ({tmp} expanded) to NAME in the pool's directory."""
        path = os.path.join(self.tmp, name)
        with open(path + ".new", "w") as f:
            f.write(self.expand(text))
        os.replace(path + ".new", path)
        return path

    # -- the process

    def start(self):
        env = dict(os.environ)
        for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                    "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(var, None)
        # The default control socket lands in our directory, so parallel
        # tests never share one.
        env["RUNTIME_DIRECTORY"] = self.tmp
        env[MARKER_VAR] = self.tmp
        env.update(self.extra_env)
        self._log_file = open(self.log_path, "ab")
        self._stdout_file = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(
            [BIN, "run", self.path], stdin=subprocess.DEVNULL,
            stdout=self._stdout_file, stderr=self._log_file, env=env,
            cwd=self.tmp, start_new_session=True)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        """True while the Watcher has not exited."""
        if self.proc is None or self.exit_code is not None:
            return False
        code = self.proc.poll()
        if code is None:
            return True
        self.exit_code = code
        return False

    def signal(self, sig):
        """Sends SIG to the Watcher."""
        self.proc.send_signal(sig)

    def reload(self, new_yaml=None):
        """Rewrites the pool definition (when given) and sends SIGHUP."""
        if new_yaml is not None:
            self.write_config(new_yaml)
        self.signal(_signal.SIGHUP)

    def wait_exit(self, timeout=None):
        """Waits for the Watcher to exit on its own; returns its exit code
        (negative: killed by that signal)."""
        try:
            self.exit_code = self.proc.wait(timeout=deadline(timeout))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "the Watcher (pid %d) did not exit within %.0fs\n%s"
                % (self.pid, deadline(timeout), self.log_tail()))
        return self.exit_code

    def stop(self, timeout=None, sig=_signal.SIGTERM):
        """Graceful stop: SIG (SIGTERM), then waits; returns the exit code."""
        if self.running():
            self.signal(sig)
        return self.wait_exit(timeout)

    # -- the log

    def log_text(self):
        data = _read(self.log_path, "rb") or b""
        return data.decode(errors="replace")

    def log_lines(self):
        return self.log_text().splitlines()

    def mark(self):
        """A position in the log: pass it as SINCE to look only after it."""
        return len(_read(self.log_path, "rb") or b"")

    def log_since(self, since=0):
        data = _read(self.log_path, "rb") or b""
        return data[since:].decode(errors="replace")

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 200 * lines))
                data = f.read()
        except OSError:
            data = b""
        tail = data.decode(errors="replace").splitlines()[-lines:]
        tail = [line if len(line) <= 400 else "%s...(%d more chars)"
                % (line[:400], len(line) - 400) for line in tail]
        return "--- last %d lines of %s:\n%s" % (len(tail), self.log_path,
                                                 "\n".join(tail))

    def find_log(self, regex, since=0):
        """Every match of REGEX (multiline) in the log after SINCE."""
        return list(re.finditer(regex, self.log_since(since), re.M))

    def wait_for_log(self, regex, timeout=None, count=1, since=0):
        """Waits until REGEX matches COUNT times in the log after SINCE (a
        mark()); returns the first match. REGEX is matched line by line
        (re.M), reading only what is new at each poll, so a log of
        hundreds of MB costs one pass. Fails at once if the Watcher exited
        without writing it."""
        rx = re.compile(regex, re.M)
        state = {"pos": since, "matches": []}

        def scan():
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(state["pos"])
                    data = f.read()
            except OSError:
                return False
            cut = data.rfind(b"\n") + 1  # whole lines only
            if cut:
                state["matches"].extend(
                    rx.finditer(data[:cut].decode(errors="replace")))
                state["pos"] += cut
            return len(state["matches"]) >= count

        def found():
            if scan():
                return state["matches"]
            if not self.running():
                if scan():  # the exit may have flushed the line
                    return state["matches"]
                raise AssertionError(
                    "the Watcher exited (code %s) before the log showed %r%s"
                    "\n%s" % (self.exit_code, regex,
                               "" if count == 1 else " %d times" % count,
                               self.log_tail()))
            return None
        matches = wait_until(found, timeout, "log line %r%s" % (
            regex, "" if count == 1 else " x%d" % count),
            on_timeout=self.log_tail, interval=0.1)
        return matches[0]

    def check_log(self):
        """Fails if the log has a critical line or a sanitizer report that
        the test did not allow."""
        bad = [line for line in critical_lines(self.log_text())
               if not any(r.search(line) for r in self.allow_critical)]
        if bad:
            raise AssertionError(
                "the Watcher's log has %d critical line(s) or sanitizer "
                "report(s):\n%s\n%s" % (len(bad), "\n".join(bad[:20]),
                                        self.log_tail()))

    # -- children

    def children(self, group=None):
        """The Watcher's live children that carry WORKERPOOL_GROUP and
        WORKERPOOL_INDEX (so a forked child not yet exec'd is not counted),
        as sorted (group, index, pid)."""
        if self.proc is None:
            return []
        result = []
        for pid in pids_with_parent(self.pid):
            if proc_state(pid) in (None, "Z"):
                continue
            env = proc_environ(pid)
            if "WORKERPOOL_GROUP" not in env or "WORKERPOOL_INDEX" not in env:
                continue
            if group is not None and env["WORKERPOOL_GROUP"] != group:
                continue
            try:
                index = int(env["WORKERPOOL_INDEX"])
            except ValueError:
                index = env["WORKERPOOL_INDEX"]
            start = proc_start_time(pid)
            if start is not None:
                self._seen[pid] = start
            result.append(Child(env["WORKERPOOL_GROUP"], index, pid))
        return sorted(result, key=lambda c: (c.group, str(c.index), c.pid))

    def child(self, group, index):
        """The live child in GROUP's slot INDEX, or None."""
        for c in self.children(group):
            if c.index == index:
                return c
        return None

    def zombies(self):
        """Pids of the Watcher's children that are zombies (not reaped)."""
        if self.proc is None:
            return []
        return [pid for pid in pids_with_parent(self.pid)
                if proc_state(pid) == "Z"]

    def wait_for_children(self, count, group=None, timeout=None):
        """Waits until exactly COUNT children (of GROUP) are up; returns them."""
        seen = []

        def enough():
            found = self.children(group)
            if len(found) == count:
                seen[:] = [found]
                return True  # (found itself may be [], which means "not yet")
            if not self.running():
                raise AssertionError(
                    "the Watcher exited (code %s) while waiting for %d "
                    "children%s\n%s" % (self.exit_code, count,
                                        " of " + group if group else "",
                                        self.log_tail()))
            return None
        wait_until(
            enough, timeout, "%d children%s" % (count, " of group " + group
                                                 if group else ""),
            on_timeout=lambda: "have %d: %s\n%s" % (
                len(self.children(group)), self.children(group)[:20],
                self.log_tail()),
            interval=0.1)
        return seen[0]

    def marked_pids(self):
        """Every live process carrying this pool's marker (children, their
        children, orphans), the Watcher included."""
        marker = self.tmp
        result = []
        for pid in all_pids():
            if pid == os.getpid():
                continue
            if proc_environ(pid).get(MARKER_VAR) == marker:
                result.append(pid)
        return result

    def leftovers(self):
        """Live processes of this pool other than the Watcher itself."""
        pids = set(self.marked_pids())
        for pid, start in self._seen.items():
            if alive(pid) and proc_start_time(pid) == start:
                pids.add(pid)
        if self.proc is not None:
            pids.discard(self.pid)
        return sorted(p for p in pids if alive(p))

    # -- teardown

    def kill_everything(self):
        """SIGKILLs the Watcher and every process it left, and reaps it."""
        if self.proc is not None and self.running():
            _kill(self.pid, _signal.SIGKILL)
        for _ in range(100):
            victims = set(self.marked_pids())
            for pid, start in self._seen.items():
                if proc_start_time(pid) == start:
                    victims.add(pid)
            if self.proc is not None and alive(self.pid):
                for pid in pids_with_parent(self.pid):
                    victims.add(pid)
            victims = [p for p in victims if alive(p)]
            if self.proc is not None and self.proc.poll() is not None:
                if self.exit_code is None:
                    self.exit_code = self.proc.returncode
            if not victims:
                break
            for pid in victims:
                _kill(pid, _signal.SIGKILL)
            time.sleep(0.05)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def close(self, check=True):
        """Stops everything; then, when CHECK, checks the log."""
        if self.closed:
            return
        self.closed = True
        try:
            self.kill_everything()
        finally:
            for f in (getattr(self, "_log_file", None),
                      getattr(self, "_stdout_file", None)):
                if f is not None:
                    f.close()
            if self in _live_pools:
                _live_pools.remove(self)
        if check:
            self.check_log()

    def remove(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def _emergency_cleanup():
    for pool in list(_live_pools):
        try:
            pool.kill_everything()
        except Exception:
            pass


atexit.register(_emergency_cleanup)


def _on_sigterm(signum, frame):
    _emergency_cleanup()
    os._exit(128 + signum)


# --- unittest glue -----------------------------------------------------------

class TestCase(unittest.TestCase):
    """A TestCase whose pools are torn down and checked after each test."""

    maxDiff = None

    def pool(self, yaml_text, **kwargs):
        """A started Pool (see Pool), closed and log-checked after the test."""
        pool = Pool(yaml_text, **kwargs)
        self._pools.append(pool)
        self.addCleanup(pool.close)
        return pool

    def run(self, result=None):
        self._pools = []
        if result is None:
            result = self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        try:
            return super().run(result)
        finally:
            failed = len(result.failures) + len(result.errors) > before
            keep = os.environ.get("WP_TEST_KEEP") == "1"
            for pool in self._pools:
                pool.close(check=False)  # the cleanup did it, unless skipped
                if failed:
                    sys.stderr.write("\n%s\n(pool directory kept: %s)\n"
                                     % (pool.log_tail(60), pool.tmp))
                elif not keep:
                    pool.remove()


def require_binary():
    if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
        sys.stderr.write("workerpool binary not found: %s (set WORKERPOOL_BIN "
                         "or build it with scripts/setup)\n" % BIN)
        sys.exit(1)


def main():
    """unittest.main with the harness' guards: the binary must exist; a
    watchdog kills everything and exits if the file runs too long; SIGTERM
    kills every pool before exiting."""
    require_binary()
    _signal.signal(_signal.SIGTERM, _on_sigterm)

    def watchdog():
        sys.stderr.write("\n*** %s: still running after %.0fs: stacks, then "
                         "killing every pool\n" % (sys.argv[0], FILE_DEADLINE))
        faulthandler.dump_traceback(file=sys.stderr)
        for pool in list(_live_pools):
            sys.stderr.write(pool.log_tail(30) + "\n")
        _emergency_cleanup()
        os._exit(3)

    timer = threading.Timer(FILE_DEADLINE, watchdog)
    timer.daemon = True
    timer.start()
    unittest.main(verbosity=2)
