"""Helpers for the IPC integration tests (test_ipc.py, test_python_job.py),
beside wp.py (standard library only).

LineClient speaks the line protocol of the test-kit reactor
(tests/kit/line_reactor.cc) on its Unix socket:

    ID send GROUP PAYLOAD            -> "ID ok BODY" | "ID error CODE TEXT"
    ID sendp GROUP PRIORITY PAYLOAD  (same, with a priority)
    ID cancel OTHER_ID
    progress updates: "ID progress FRACTION TEXT"

Also: where the kit lives (WORKERPOOL_KIT_DIR), where src/python/workerpool.py
lives, and the raw frame encoding for tests that must misbehave on purpose.
"""

import os
import socket
import struct
import sys
import threading
import time

import wp

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
KIT_DIR = os.environ.get("WORKERPOOL_KIT_DIR") or os.path.join(
    TOP, "build", "tests")
LINE_REACTOR = os.path.join(KIT_DIR, "line_reactor")
PYTHON_DIR = os.path.join(TOP, "src", "python")
EXAMPLES_DIR = os.path.join(TOP, "src", "examples")
PYTHON = sys.executable or "python3"

# Error codes (include/workerpool/wire.h).
HANDLER_ERROR = 1
WORKER_DIED = 2
TIMEOUT = 3
QUEUE_FULL = 4
NO_WORKERS = 5
REFUSED = 6
CANCELLED = 7
TOO_LARGE = 8
PROTOCOL = 9
SHUTTING_DOWN = 10

HEADER = struct.Struct("<IBBHQII")


def frame(type_, body=b"", id_=0, aux=0, meta=b"", version=1, length=None):
    """The bytes of one frame; LENGTH overrides payload_length (to lie)."""
    if isinstance(body, str):
        body = body.encode()
    if isinstance(meta, str):
        meta = meta.encode()
    payload = len(meta) + len(body) if length is None else length
    return HEADER.pack(payload, version, type_, 0, id_, aux, len(meta)) + \
        meta + body


def require_kit():
    if not os.access(LINE_REACTOR, os.X_OK):
        sys.stderr.write("test kit not found: %s (set WORKERPOOL_KIT_DIR to "
                         "the directory of line_reactor)\n" % LINE_REACTOR)
        sys.exit(1)


def yaml_list(argv):
    """A YAML flow list of ARGV, every item quoted."""
    return "[" + ", ".join('"%s"' % a.replace("\\", "\\\\").replace('"', '\\"')
                           for a in argv) + "]"


def python_command(script):
    """The YAML command running a Python SCRIPT (absolute path)."""
    return yaml_list([PYTHON, script])


class Answer:
    """One final answer of the line reactor: ok with a body, or an error
    with a code and a text; PROGRESS holds the progress lines before it."""

    def __init__(self, line, progress):
        self.line = line
        self.progress = progress
        _, _, rest = line.partition(" ")
        kind, _, rest = rest.partition(" ")
        self.ok = kind == "ok"
        if self.ok:
            self.code = 0
            self.body = rest
        else:
            code, _, text = rest.partition(" ")
            try:
                self.code = int(code)
            except ValueError:
                self.code = -1
            self.body = text

    def __repr__(self):
        return "Answer(%r)" % self.line


class LineClient:
    """A connection to a line_reactor. A reader thread collects lines by id;
    send() returns the id, answer() waits for its final line."""

    def __init__(self, path, timeout=None):
        self.path = path
        self.sock = None
        self._lock = threading.Condition()
        self._answers = {}
        self._progress = {}
        self._order = []  # ids in the order their answers arrived
        self._next = 0
        self._closed = False

        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return s
            except OSError:
                s.close()
                return None
        self.sock = wp.wait_until(connect, timeout,
                                  "the line reactor to listen on %s" % path)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        buffer = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            buffer += data
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                self._line(line.decode(errors="replace"))

    def _line(self, line):
        id_, _, rest = line.partition(" ")
        with self._lock:
            if rest.startswith("progress "):
                self._progress.setdefault(id_, []).append(rest)
            else:
                self._answers[id_] = Answer(line,
                                            self._progress.pop(id_, []))
                self._order.append(id_)
            self._lock.notify_all()

    def _id(self):
        self._next += 1
        return "r%d" % self._next

    def write(self, text):
        self.sock.sendall(text.encode())

    def send(self, group, payload, priority=None):
        """Sends PAYLOAD to GROUP; returns the line id."""
        id_ = self._id()
        if priority is None:
            self.write("%s send %s %s\n" % (id_, group, payload))
        else:
            self.write("%s sendp %s %d %s\n" % (id_, group, priority, payload))
        return id_

    def send_many(self, items):
        """Sends every (group, payload, priority-or-None) in ONE write, so
        the reactor handles them in one go; returns their ids."""
        ids, lines = [], []
        for group, payload, priority in items:
            id_ = self._id()
            ids.append(id_)
            if priority is None:
                lines.append("%s send %s %s\n" % (id_, group, payload))
            else:
                lines.append("%s sendp %s %d %s\n"
                             % (id_, group, priority, payload))
        self.write("".join(lines))
        return ids

    def flood(self, group, count, window, payload):
        """The reactor sends PAYLOAD to GROUP COUNT times, WINDOW in flight;
        the answer is "ok COUNT" or the first error."""
        id_ = self._id()
        self.write("%s flood %s %d %d %s\n" % (id_, group, count, window,
                                               payload))
        return id_

    def cancel(self, other_id):
        self.write("%s cancel %s\n" % (self._id(), other_id))

    def answer(self, id_, timeout=None):
        limit = time.monotonic() + wp.deadline(timeout)
        with self._lock:
            while id_ not in self._answers:
                left = limit - time.monotonic()
                if left <= 0 or self._closed:
                    raise AssertionError(
                        "no answer to %s within %.0fs%s" % (
                            id_, wp.deadline(timeout),
                            " (connection closed)" if self._closed else ""))
                self._lock.wait(min(left, 0.5))
            return self._answers[id_]

    def progress_of(self, id_):
        with self._lock:
            return list(self._progress.get(id_, []))

    def order(self):
        with self._lock:
            return list(self._order)

    def request(self, group, payload, priority=None, timeout=None):
        return self.answer(self.send(group, payload, priority), timeout)

    def request_until_ok(self, group, payload, timeout=None):
        """Retries until an ok answer (children may still be starting: until
        they said hello a group has no live process, code 5)."""
        last = []

        def attempt():
            a = self.request(group, payload)
            last[:] = [a]
            if a.ok:
                return a
            time.sleep(0.1)
            return None
        return wp.wait_until(attempt, timeout,
                             "an ok answer from %s" % group,
                             on_timeout=lambda: "last: %r" % (last,))

    def close(self):
        """Closes the connection (a reactor being stopped waits for its
        connections to close). shutdown() first: close() alone does not end
        a connection another thread is blocked reading."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


# --- a fake pool, to drive one child by hand ---------------------------------

class FrameReader:
    """Reads whole frames from a blocking socket: (type, id, aux, meta,
    body); None at EOF."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def _fill(self, size, timeout):
        self.sock.settimeout(wp.deadline(timeout))
        while len(self.buffer) < size:
            data = self.sock.recv(65536)
            if not data:
                return False
            self.buffer += data
        return True

    def read(self, timeout=None):
        if not self._fill(HEADER.size, timeout):
            return None
        length, version, type_, _, id_, aux, meta = HEADER.unpack_from(
            self.buffer)
        if not self._fill(HEADER.size + length, timeout):
            return None
        payload = self.buffer[HEADER.size:HEADER.size + length]
        self.buffer = self.buffer[HEADER.size + length:]
        return type_, id_, aux, payload[:meta], payload[meta:]

    def read_until(self, type_, timeout=None):
        """Skips frames until one of TYPE_ (an int or a tuple)."""
        wanted = type_ if isinstance(type_, tuple) else (type_,)
        while True:
            f = self.read(timeout)
            if f is None or f[0] in wanted:
                return f


class FakePool:
    """Plays the Watcher for one child: a pool channel (socketpair) passed
    to COMMAND as WORKERPOOL_IPC_FD; links made by add_link()."""

    def __init__(self, command, group="py", index=0, env=None):
        import subprocess
        self.ours, theirs = socket.socketpair(socket.AF_UNIX,
                                              socket.SOCK_STREAM)
        full_env = dict(os.environ)
        full_env.update({"WORKERPOOL_IPC_FD": str(theirs.fileno()),
                         "WORKERPOOL_GROUP": group,
                         "WORKERPOOL_TYPE": "job",
                         "WORKERPOOL_INDEX": str(index),
                         "WORKERPOOL_POOL": "fake"})
        full_env.update(env or {})
        self.proc = subprocess.Popen(command, env=full_env,
                                     pass_fds=[theirs.fileno()],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        theirs.close()
        self.reader = FrameReader(self.ours)

    def send(self, type_, body, fd=None):
        import json
        data = frame(type_, json.dumps(body))
        if fd is None:
            self.ours.sendall(data)
        else:
            socket.send_fds(self.ours, [data], [fd])

    def add_link(self, role="server", group="front", index=0, pid=1):
        """Gives the child a link on which its role is ROLE; returns our
        end as a blocking socket."""
        mine, its = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.send(19, {"role": role, "group": group, "index": index,
                       "pid": pid}, fd=its.fileno())
        its.close()
        return mine

    def wait_exit(self, timeout=None):
        import subprocess
        try:
            return self.proc.wait(wp.deadline(timeout))
        except subprocess.TimeoutExpired:
            return None

    def output(self):
        return self.proc.stdout.read().decode(errors="replace") \
            if self.proc.poll() is not None else ""

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        try:
            self.ours.close()
        except OSError:
            pass
