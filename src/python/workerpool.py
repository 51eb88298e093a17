"""workerpool for Python: take part in a workerpool pool as a child process.

Standard library only (Python 3.9+). Implements the wire protocol of
docs/PROTOCOL.md: the serving side (a job, or a service that serves
reactors) and the sending side (a reactor or service sending requests to the
groups in its routes_to).

A job in three lines:

    import workerpool

    def handler(body, meta):          # bytes, dict
        return body.upper()           # bytes (or str); raise to answer an error

    workerpool.serve(handler)

With progress and cancellation:

    def handler(request):
        for step in range(10):
            if request.cancelled:
                raise RuntimeError("cancelled")
            request.progress((step + 1) / 10, "step %d" % step)
            ...
        return b"done"

    workerpool.serve(handler, with_request=True)

Sending (from a reactor or service; from inside a handler, use
request.client.send):

    client = workerpool.Client()      # WORKERPOOL_IPC_FD
    client.start()                    # I/O on a background thread
    reply = client.send("compute", b"payload", timeout=30)
    if reply.ok: ... reply.body ... else: ... reply.code, reply.text ...

With asyncio (many requests in flight in one process, one thread):

    async def handler(request):
        await request.progress(0.5, "half way")   # cancel: CancelledError
        reply = await request.client.asend("other", request.body)
        return reply.body

    workerpool.serve(handler, with_request=True)

Threading: one I/O thread owns every socket, and plain handlers run on it,
up to max_inflight at once (no hand-off per request: that cost ~290 us of
CPU each). A handler still running after HANDOFF_AFTER (10 ms), or one that
waits (request.wait_cancelled, client.send), gives the I/O loop to a new
thread and finishes on its own, so a slow handler never stops heartbeats or
the reading of cancels. serve(handler, threads=True) runs every handler on
a thread of its own instead. Before it sleeps, the I/O loop busy-polls
the links that just brought bytes for up to the group's busy_poll_us, as
the C++ library does (docs/PROTOCOL.md, "Busy polling"); a request's meta
is parsed from its JSON only when the handler reads it. Every public
method may be called from any thread except send(), which blocks and so
must not be called from the I/O thread outside a handler (callbacks given
to send_async run there; use asend() with asyncio).
"""

import asyncio
import collections
import enum
import heapq
import inspect
import itertools
import json
import math
import os
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time

__all__ = [
    "FrameType", "ErrorCode", "Frame", "FrameDecoder", "ProtocolError",
    "encode_frame", "Reply", "Request", "Client", "serve", "WIRE_VERSION",
    "HEADER_SIZE", "MAX_PAYLOAD", "PROGRESS_SCALE",
]

# --- the wire format (include/workerpool/wire.h) ---------------------------

WIRE_VERSION = 1
HEADER = struct.Struct("<IBBHQII")  # length, version, type, flags, id, aux, meta
HEADER_SIZE = HEADER.size  # 24
MAX_PAYLOAD = 16 * 1024 * 1024
PROGRESS_SCALE = 1000000

# Same limits as the C++ library.
CANCEL_GRACE = 5.0          # a server ignoring a cancel this long is killed
POOL_GONE_EXIT = 2.0        # after the pool channel closes, exit within this
STATS_INTERVAL = 1.0        # counters reach the Watcher at most this often
MAX_ERROR_TEXT = 64 * 1024
MAX_PROGRESS_TEXT = 4096
# Busy polling (docs/PROTOCOL.md, "Busy polling"), as the C++ library does
# it: the config's busy_poll_us when not told, at most this.
DEFAULT_BUSY_POLL_US = 50
MAX_BUSY_POLL_US = 10000
# A handler runs on the I/O thread (no hand-off to another thread: a few
# microseconds instead of a few hundred); one that is still running after
# this long gives the I/O loop to a new thread, so heartbeats, cancels and
# other requests go on while it blocks.
HANDOFF_AFTER = 0.01
# After a hand-off, handlers start on threads of their own for this long: a
# process whose handlers block often would otherwise stall its loop for up
# to 2 x HANDOFF_AFTER on each of them.
THREADS_AFTER_HANDOFF = 1.0


class FrameType(enum.IntEnum):
    REQUEST = 1
    REPLY = 2
    ERROR = 3
    PROGRESS = 4
    CANCEL = 5
    HELLO = 16
    ROUTE_OPEN = 17
    ROUTE_REFUSED = 18
    PEER_ADDED = 19
    PEER_GONE = 20
    PEER_DRAINING = 21
    KILL_PEER = 22
    HEARTBEAT = 23
    STATS = 24
    DRAIN = 25
    CONFIG = 26
    ROUTE_OPENED = 27


class ErrorCode(enum.IntEnum):
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


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)

Frame = collections.namedtuple("Frame", "type flags id aux meta body")


class ProtocolError(Exception):
    """A malformed frame: the stream it came on is unusable."""


def encode_frame(type_, id_=0, aux=0, meta=b"", body=b"", flags=0):
    """The bytes of one frame. META and BODY are bytes (str is UTF-8)."""
    if isinstance(meta, str):
        meta = meta.encode()
    if isinstance(body, str):
        body = body.encode()
    if len(meta) + len(body) > MAX_PAYLOAD:
        raise ValueError("frame payload of %d bytes is over the limit of %d"
                         % (len(meta) + len(body), MAX_PAYLOAD))
    return b"".join((HEADER.pack(len(meta) + len(body), WIRE_VERSION,
                                 int(type_), flags, id_,
                                 aux & 0xFFFFFFFF, len(meta)), meta, body))


class FrameDecoder:
    """Incremental decoder: feed() what recv() returned, then take frames
    with next() until it returns None. Raises ProtocolError on a bad header
    (version, unknown type, length over MAX_PAYLOAD, meta longer than the
    payload); the stream is then unusable."""

    def __init__(self):
        self._buffer = bytearray()
        self._offset = 0

    def feed(self, data):
        if self._offset and self._offset * 2 >= len(self._buffer):
            del self._buffer[:self._offset]
            self._offset = 0
        self._buffer += data

    def buffered(self):
        return len(self._buffer) - self._offset

    def next(self):
        if self.buffered() < HEADER_SIZE:
            return None
        (length, version, type_, flags, id_, aux,
         meta_length) = HEADER.unpack_from(self._buffer, self._offset)
        if version != WIRE_VERSION:
            raise ProtocolError("unsupported protocol version %d (expected %d)"
                                % (version, WIRE_VERSION))
        if type_ not in _KNOWN_TYPES:
            raise ProtocolError("unknown frame type %d" % type_)
        if length > MAX_PAYLOAD:
            raise ProtocolError("frame of %d bytes is over the limit of %d"
                                % (length, MAX_PAYLOAD))
        if meta_length > length:
            raise ProtocolError("frame metadata length %d is larger than its "
                                "payload %d" % (meta_length, length))
        if self.buffered() < HEADER_SIZE + length:
            return None
        start = self._offset + HEADER_SIZE
        meta = bytes(self._buffer[start:start + meta_length])
        body = bytes(self._buffer[start + meta_length:start + length])
        self._offset = start + length
        return Frame(FrameType(type_), flags, id_, aux, meta, body)


def _json_object(data):
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# The key a _LazyMeta holds until it is read (see there).
_UNREAD = object()


class _LazyMeta(dict):
    """A request's meta, parsed from its JSON on first use: most handlers
    never look at it, and parsing the rabbitmq-service's meta cost a
    quarter of a request's CPU. A dict in every way a handler can tell
    (every method reads it first; copy and pickle give a plain dict).
    Until read it holds one private key, so that C code that looks at the
    size first (json.dumps) sees it non-empty and asks items()."""

    __slots__ = ("_raw",)

    def __init__(self, raw=b""):
        # (dict.__init__ with no arguments does nothing: not called)
        self._raw = raw or None
        if raw:
            dict.__setitem__(self, _UNREAD, None)

    def _read(self):
        raw, self._raw = self._raw, None
        dict.clear(self)
        dict.update(self, _json_object(raw))

    def __reduce_ex__(self, protocol):
        return dict, (dict(self.items()),)

    def __reduce__(self):
        return self.__reduce_ex__(2)


def _read_first(name):
    method = getattr(dict, name)

    def read_first(self, *args, **kwargs):
        if self._raw is not None:
            self._read()
        return method(self, *args, **kwargs)
    read_first.__name__ = name
    return read_first


for _name in ("__getitem__", "__setitem__", "__delitem__", "__contains__",
              "__iter__", "__reversed__", "__len__", "__eq__", "__ne__",
              "__repr__", "__or__", "__ror__", "__ior__", "get", "keys",
              "values", "items", "copy", "setdefault", "pop", "popitem",
              "update", "clear"):
    setattr(_LazyMeta, _name, _read_first(_name))
del _name


def _signed32(value):
    return value - (1 << 32) if value >= (1 << 31) else value


def _as_bytes(value):
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError("a handler must return bytes or str, not %s"
                    % type(value).__name__)


def _meta_bytes(meta):
    if meta is None:
        return b""
    if isinstance(meta, str):
        return meta.encode()
    if isinstance(meta, (bytes, bytearray)):
        return bytes(meta)
    return json.dumps(meta).encode()


def _log(message):
    # The Watcher captures stderr and logs it line by line, prefixed with
    # the group, index and pid.
    try:
        sys.stderr.write("workerpool: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# --- public value types ------------------------------------------------------

class Reply:
    """The outcome of a request, as the sender sees it. ok: the body is the
    answer; else code (ErrorCode) and text say what went wrong."""

    __slots__ = ("ok", "code", "body", "meta")

    def __init__(self, ok, code=None, body=b"", meta=b""):
        self.ok = ok
        self.code = None if ok else ErrorCode(code) if code in _ERROR_CODES \
            else code
        self.body = body
        self.meta = meta

    @property
    def text(self):
        """The body as text (the error message when not ok)."""
        return self.body.decode(errors="replace")

    def __repr__(self):
        if self.ok:
            return "Reply(ok, %r)" % (self.body[:80],)
        return "Reply(error %s, %r)" % (int(self.code), self.text[:200])


_ERROR_CODES = frozenset(int(c) for c in ErrorCode)


class Request:
    """A request being served (what a with_request handler receives)."""

    # Defaults as class attributes: set on the instance only when they
    # change, which most requests never do (a request's CPU counts).
    _meta = None
    # Made only when a handler waits for a cancel: most requests are
    # answered at once, and a threading.Event costs more than the rest of
    # a request together.
    _cancel_flag = False
    _cancel_event = None
    _callbacks = None
    _task = None  # asyncio: the handler's task
    _task_began = False
    _answered = False
    _started = False
    _sequence = 0

    def __init__(self, client, link, id_, priority, meta_raw, body):
        self.client = client  # the Client: request.client.send(...)
        self.id = id_
        self.priority = priority
        self.body = body
        self.meta_raw = meta_raw
        self.sender_group = link.peer_group
        self._link = link

    @property
    def meta(self):
        """The request's metadata as a dict ({} when none or not JSON),
        parsed when first read."""
        meta = self._meta
        if meta is None:
            meta = self._meta = _LazyMeta(self.meta_raw) if self.meta_raw \
                else {}
        return meta

    @property
    def cancelled(self):
        """True once the sender cancelled; the answer is then discarded."""
        return self._cancel_flag

    def _event(self):
        with _CANCEL_LOCK:
            if self._cancel_event is None:
                self._cancel_event = threading.Event()
                if self._cancel_flag:
                    self._cancel_event.set()
            return self._cancel_event

    def _mark_cancelled(self):
        with _CANCEL_LOCK:
            self._cancel_flag = True
            event = self._cancel_event
        if event is not None:
            event.set()

    def wait_cancelled(self, timeout=None):
        """Sleeps up to TIMEOUT seconds, waking early on a cancel; returns
        True when cancelled (a cancellable time.sleep). Called from a
        handler running on the I/O thread, it first gives the loop to
        another thread (the cancel must be read while this one waits)."""
        if self._cancel_flag:
            return True
        self.client._hand_off_if_inline()
        return self._event().wait(timeout)

    def on_cancel(self, callback):
        """Calls CALLBACK() (on the I/O thread) when the sender cancels."""
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)
        if self.cancelled:
            callback()

    def progress(self, fraction, text=""):
        """Sends a progress update (FRACTION 0..1, TEXT) before the answer.
        Returns an awaitable: an async handler may `await` it, which waits
        until the frame left this process (a flood of progress then does
        not grow the output buffer without bound); others ignore it."""
        client = self.client
        if client._on_loop_thread():
            return client._send_progress(self, fraction, text)
        client._call_soon(client._send_progress, self, fraction, text)
        return _DONE

    def __repr__(self):
        return "Request(id=%d from %s, %d bytes)" % (
            self.id, self.sender_group, len(self.body))


_CANCEL_LOCK = threading.Lock()


class _Done:
    """An awaitable that is already complete (progress() outside asyncio)."""

    def __await__(self):
        return
        yield  # noqa: unreachable: makes this a generator


_DONE = _Done()


class _HandedOff(BaseException):
    """Unwinds a thread whose handler ran on the I/O thread for longer than
    HANDOFF_AFTER (or waited): another thread runs the I/O loop now, and
    this one must touch nothing of it on its way out."""


# --- internals ---------------------------------------------------------------

_READ_SIZE = 262144  # one recv on a link

class _Conn:
    """A non-blocking stream socket with an output buffer and a decoder."""

    def __init__(self, sock):
        self.sock = sock
        self.out = bytearray()
        self.decoder = FrameDecoder()
        self.closed = False
        self.reading = True
        self.events = 0
        self.drained = []  # asyncio futures waiting for `out` to empty


def _proc_stat_cpu(path):
    """The CPU a task last ran on (field 39 of a /proc stat file), or
    None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            line = os.read(fd, 1024)
        finally:
            os.close(fd)
        return int(line.rsplit(b")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


class _Placement:
    """Whether a peer last ran on another CPU than this thread
    (src/client/peer_placement.h): /proc/<pid>/stat, re-read at most every
    RECHECK seconds; unknown for good once /proc cannot tell. A hint: the
    kernel may move either process at any time."""

    RECHECK = 0.1  # a steady stream keeps processes in place far longer

    def __init__(self, pid):
        self._path = "/proc/%d/stat" % pid if pid > 0 else None
        self._checked = None
        self._other = False

    def other_cpu(self, now):
        if self._path is None:
            return False
        if self._checked is not None and now - self._checked < self.RECHECK:
            return self._other
        self._checked = now
        peer = _proc_stat_cpu(self._path)
        own = _proc_stat_cpu("/proc/thread-self/stat")
        if peer is None or own is None:
            self._path = None  # cannot tell: not asked again
            self._other = False
        else:
            self._other = peer != own
        return self._other


class _Link(_Conn):
    SENDER = "sender"  # our role: we send requests to the peer
    SERVER = "server"  # our role: we serve the peer's requests
    # Busy polling: bytes came last turn; polls in a row that found none,
    # and chances left to skip because of them (busy_poll_backoff.h).
    hot = False
    busy_misses = 0
    busy_skips = 0
    placement = None

    def __init__(self, sock, role, group, index, pid):
        super().__init__(sock)
        self.role = role
        self.peer_group = group
        self.peer_index = index
        self.peer_pid = pid
        self.route = None      # SENDER
        self.inflight = {}     # SENDER: id -> _Out
        self.serving = {}      # SERVER: id -> Request
        self.draining = False  # the peer takes no new requests
        self.condemned = False  # we asked the pool to kill the peer

    def describe(self):
        return "%s[%d] pid %d" % (self.peer_group, self.peer_index,
                                  self.peer_pid)


class _EpollSelector:
    """What Client's loop needs of a selector, on epoll directly: select()
    returns (data, mask) pairs, without the SelectorKey per event that
    selectors.DefaultSelector builds (a job wakes up once per request)."""

    def __init__(self):
        self._epoll = select.epoll()
        self._keys = {}  # fd -> SelectorKey
        self._data = {}  # fd -> data

    @staticmethod
    def _mask(events):
        return (select.EPOLLIN if events & selectors.EVENT_READ else 0) | (
            select.EPOLLOUT if events & selectors.EVENT_WRITE else 0)

    def register(self, fileobj, events, data):
        fd = fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._epoll.register(fd, self._mask(events))
        self._keys[fd] = key
        self._data[fd] = data
        return key

    def unregister(self, fileobj):
        fd = fileobj.fileno()
        key = self._keys.pop(fd)
        del self._data[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed meanwhile: epoll forgot it already
        return key

    def modify(self, fileobj, events, data):
        fd = fileobj.fileno()
        self._epoll.modify(fd, self._mask(events))
        key = self._keys[fd] = selectors.SelectorKey(fileobj, fd, events,
                                                     data)
        self._data[fd] = data
        return key

    def select(self, timeout=None):
        """[(data, EVENT_READ|EVENT_WRITE)] of the ready files; an error or
        hang-up counts as both, as in selectors."""
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            # epoll counts milliseconds: round up, or a timer due in less
            # than one would spin.
            timeout = math.ceil(timeout * 1e3) * 1e-3
        try:
            ready = self._epoll.poll(timeout, max(1, len(self._data)))
        except InterruptedError:
            return []
        data = self._data
        out = []
        for fd, event in ready:
            if fd in data:
                out.append((data[fd], (
                    selectors.EVENT_READ if event & ~select.EPOLLOUT else 0)
                    | (selectors.EVENT_WRITE if event & ~select.EPOLLIN
                       else 0)))
        return out

    def get_map(self):
        return dict(self._keys)

    def close(self):
        self._keys.clear()
        self._data.clear()
        self._epoll.close()


class _AsyncioSelector:
    """What Client's loop needs of a selector (register, modify, unregister,
    get_map), on an asyncio event loop: readiness calls CALLBACK(data,
    mask) from the loop."""

    def __init__(self, loop, callback):
        self._loop = loop
        self._callback = callback
        self._keys = {}  # fd -> SelectorKey

    def register(self, fileobj, events, data):
        fd = fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        if events & selectors.EVENT_READ:
            self._loop.add_reader(fd, self._callback, data,
                                  selectors.EVENT_READ)
        if events & selectors.EVENT_WRITE:
            self._loop.add_writer(fd, self._callback, data,
                                  selectors.EVENT_WRITE)
        return key

    def unregister(self, fileobj):
        fd = fileobj.fileno()
        key = self._keys.pop(fd)
        if key.events & selectors.EVENT_READ:
            self._loop.remove_reader(fd)
        if key.events & selectors.EVENT_WRITE:
            self._loop.remove_writer(fd)
        return key

    def modify(self, fileobj, events, data):
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def get_map(self):
        return dict(self._keys)

    def close(self):
        for key in list(self._keys.values()):
            self.unregister(key.fileobj)


class _Route:
    OPENING, OPEN, REFUSED = "opening", "open", "refused"

    def __init__(self, group):
        self.group = group
        self.state = _Route.OPENING
        self.refusal = ""
        self.max_inflight = 1
        self.queue_limit = 1000
        self.request_timeout = 30.0
        self.peers = []
        self.queue = []  # heap of (priority, sequence, _Out)
        self.queued = 0  # live entries in the heap


class _Out:
    """A request this process sent (or will send)."""

    def __init__(self, id_, group, body, meta, priority, done, on_progress):
        self.id = id_
        self.group = group
        self.body = body
        self.meta = meta
        self.priority = priority
        self.done = done
        self.on_progress = on_progress
        self.route = None
        self.link = None
        self.queued = False
        self.deadline = None
        self.cancelled = False  # answered CANCELLED; waiting for the server
        self.finished = False


class Client:
    """This process's connection to its pool (the pool channel at
    WORKERPOOL_IPC_FD, or FD).

    serve(handler) runs the I/O loop in the calling thread until the process
    should exit; start() runs it on a background thread instead (for a
    sender that does not serve). send() and send_async() send requests."""

    def __init__(self, fd=None, handle_sigterm=True):
        if fd is None:
            text = os.environ.get("WORKERPOOL_IPC_FD", "")
            if not text:
                raise RuntimeError(
                    "WORKERPOOL_IPC_FD is not set; this program is a "
                    "workerpool child and must be started by `workerpool run`")
            try:
                fd = int(text)
                if fd < 0:
                    raise ValueError
            except ValueError:
                raise RuntimeError("WORKERPOOL_IPC_FD is not a file descriptor "
                                   "number: %r" % text) from None
        try:
            pool_sock = socket.socket(fileno=fd)
        except OSError as e:
            raise RuntimeError("cannot use pool channel fd %d: %s"
                               % (fd, e.strerror or e)) from None
        os.set_inheritable(pool_sock.fileno(), False)
        pool_sock.setblocking(False)
        self.group = os.environ.get("WORKERPOOL_GROUP", "")
        self.type = os.environ.get("WORKERPOOL_TYPE", "")
        self.pool_name = os.environ.get("WORKERPOOL_POOL", "")
        try:
            self.index = int(os.environ.get("WORKERPOOL_INDEX", "-1"))
        except ValueError:
            self.index = -1

        self._sel = _EpollSelector()
        self._pool = _Conn(pool_sock)
        self._pool_open = True
        self._pending_fds = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._register(self._pool)
        self._calls = collections.deque()
        self._calls_lock = threading.Lock()
        self._dirty = set()
        self._links = set()
        self._loop_thread = None
        self._ready = threading.Event()     # config received
        self._finished = threading.Event()  # the loop ended

        # Serving side.
        self._handler = None
        self._with_request = False
        self._threads = False    # every handler on a thread of its own
        self._is_async = False   # handlers are coroutines on an asyncio loop
        self._aio = None         # that loop
        self._aio_timer = None   # (when, TimerHandle) of our next timer
        self._aio_finished = None
        self._serve_limit = 1
        self._running = 0
        self._in_serve_next = False
        self._answered_count = 0   # served + served_errors
        self._recycle_after = 0    # config's max_requests (0: never)
        self._recycle_reported = False
        # Which thread runs the I/O loop: a handler running on it
        # (_inline) that outlives HANDOFF_AFTER makes the watchdog start a
        # new loop thread (_owner_gen changes); the old one, once its
        # handler returns, posts the answer and leaves.
        self._owner_lock = threading.Lock()
        self._owner_gen = 0
        self._inline = None
        self._inline_seq = 0
        self._threads_until = 0.0  # monotonic time; 0: inline
        self._watchdog = None
        self._watchdog_idle = True
        self._watchdog_event = threading.Event()
        self._serve_queue = []  # heap of (priority, sequence, Request)
        self._sequence = itertools.count(1)
        self._on_ready = None
        # Busy polling (threaded loop only: asyncio polls for itself).
        self._busy_budget = DEFAULT_BUSY_POLL_US / 1e6  # seconds; 0: never
        self._hot = []  # links that brought bytes this turn

        # Sending side.
        self._routes = {}
        self._requests = {}
        self._next_id = itertools.count(1)
        self._deadlines = []  # heap of (when, id)

        # Timers.
        self._heartbeat_every = None
        self._next_heartbeat = None
        self._stats_due = None
        # When stats last went, and when a route's queue starting to fill
        # last sent them at once (see _stats_changed).
        self._stats_sent_at = float("-inf")
        self._rising_sent_at = float("-inf")
        self._exit_at = None

        self._stopping = False
        self._on_stop = []
        self.exit_code = 0
        self.stats = collections.Counter()

        # SIGTERM is a drain; handled from before the hello, so a child told
        # to stop as soon as it is known does not die mid-request.
        if handle_sigterm and threading.current_thread() is \
                threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
        self._send_pool(FrameType.HELLO,
                        {"pid": os.getpid(), "protocol": WIRE_VERSION})
        self._flush_all()

    # -- public ---------------------------------------------------------------

    def serve(self, handler, with_request=False, on_ready=None,
              threads=False):
        """Serves requests with HANDLER until the process should exit (the
        pool drained it, SIGTERM, or the pool is gone); returns the exit
        code (0). HANDLER(body, meta) -> bytes|str, or with WITH_REQUEST
        HANDLER(request) -> bytes|str; an exception answers an error
        (ErrorCode.HANDLER_ERROR) with its text. A (body, meta_dict) tuple
        replies with metadata too. ON_READY() is called once the pool sent
        its configuration.

        Where handlers run: a plain function runs on the I/O thread, up to
        max_inflight at once: one that answers at once costs no hand-off,
        and one still running after HANDOFF_AFTER (10 ms), or one that
        waits (request.wait_cancelled, client.send), hands the I/O loop to
        a new thread and goes on as a thread of its own; for the next
        THREADS_AFTER_HANDOFF (1 s), handlers then start on threads of
        their own, as handlers that block often are served best.
        THREADS=True starts every handler on a thread of its own instead
        (what the library did before, for handlers that all block). An
        `async def` handler runs as a task on an asyncio event loop that
        also does the I/O (one thread, up to max_inflight tasks at once); a
        cancel reaches it as asyncio.CancelledError."""
        self._handler = handler
        self._with_request = with_request
        self._on_ready = on_ready
        self._is_async = inspect.iscoroutinefunction(handler) or (
            not inspect.isfunction(handler) and not inspect.ismethod(handler)
            and inspect.iscoroutinefunction(getattr(handler, "__call__",
                                                    None)))
        if self._is_async and threads:
            raise ValueError("an async handler runs on the event loop; "
                             "threads=True is for plain functions")
        self._threads = bool(threads)
        if self._is_async:
            asyncio.run(self._serve_async())
            return self.exit_code
        self._loop()
        # This thread may have handed the loop to another while it ran a
        # long handler: wait for that one to finish (in slices, so that a
        # signal handler runs on this, the main, thread).
        while not self._finished.wait(0.5):
            pass
        return self.exit_code

    def start(self):
        """Runs the I/O loop on a daemon thread (for a process that only
        sends). Returns self."""
        self._in_loop = True  # from now on: send() may wait for the loop
        self._loop_thread = threading.Thread(target=self._loop,
                                             name="workerpool-io", daemon=True)
        self._loop_thread.start()
        return self

    def wait(self, timeout=None):
        """Waits until the loop ended (drained, stopped or the pool is gone);
        True when it did."""
        return self._finished.wait(timeout)

    def wait_ready(self, timeout=None):
        """Waits until the pool sent this process its configuration."""
        return self._ready.wait(timeout)

    @property
    def stopping(self):
        return self._stopping

    def on_stop(self, callback):
        """CALLBACK() runs (on the I/O thread) when the pool asks this process
        to stop taking work (drain, SIGTERM) or the pool is gone."""
        self._on_stop.append(callback)

    def stop(self):
        """Stop taking work, finish what is in flight, then end the loop.
        Safe from a signal handler."""
        self._stop_requested = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def send(self, group, body, meta=None, priority=0, timeout=None,
             on_progress=None):
        """Sends BODY to a process of GROUP and waits for the Reply. Never
        raises for pool errors: a refused route, a full queue, a group with
        no live process, ... come back as a Reply with a code. TIMEOUT
        (seconds) only bounds this call's wait (the pool's request_timeout
        applies anyway); on expiry the request is cancelled."""
        self._hand_off_if_inline()  # a handler on the I/O thread may wait
        if threading.get_ident() == self._loop_ident:
            raise RuntimeError("Client.send() would block the I/O thread; use "
                               "send_async() (or asend() with asyncio) there")
        if not self._in_loop:
            raise RuntimeError("the I/O loop is not running: call start() "
                               "(or send from inside a handler)")
        done = threading.Event()
        box = []

        def finished(reply):
            box.append(reply)
            done.set()
        id_ = self.send_async(group, body, finished, meta=meta,
                              priority=priority, on_progress=on_progress)
        limit = None if timeout is None else time.monotonic() + timeout
        cancelled = False
        while not done.wait(0.2):
            if self._finished.is_set() and not done.is_set():
                return Reply(False, ErrorCode.SHUTTING_DOWN,
                             b"this process is stopping")
            if not cancelled and limit is not None and \
                    time.monotonic() >= limit:
                self.cancel(id_)
                cancelled = True
        return box[0]

    def send_async(self, group, body, done, meta=None, priority=0,
                   on_progress=None):
        """Sends BODY to GROUP; DONE(reply) is called exactly once on the I/O
        thread. ON_PROGRESS(fraction, text) too. Returns the request id."""
        id_ = next(self._next_id)
        out = _Out(id_, group, _as_bytes(body), _meta_bytes(meta),
                   int(priority), done, on_progress)
        self._call_soon(self._submit, out)
        return id_

    async def asend(self, group, body, meta=None, priority=0, timeout=None,
                    on_progress=None):
        """send() for asyncio: awaits the Reply without blocking the event
        loop. TIMEOUT (seconds) cancels the request when it passes (the
        Reply is then ErrorCode.CANCELLED); cancelling the awaiting task
        cancels the request too. Works from the loop serving async handlers
        and from any other asyncio loop (a sender that called start())."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        here = loop is self._aio

        def finished(reply):
            if here:
                if not future.done():
                    future.set_result(reply)
            else:
                loop.call_soon_threadsafe(
                    lambda: future.done() or future.set_result(reply))
        progress = on_progress
        if on_progress is not None and not here:
            def progress(fraction, text):
                loop.call_soon_threadsafe(on_progress, fraction, text)
        if here:
            id_ = next(self._next_id)
            self._submit(_Out(id_, group, _as_bytes(body),
                              _meta_bytes(meta), int(priority), finished,
                              progress))
            self._flush_all()
        else:
            id_ = self.send_async(group, body, finished, meta=meta,
                                  priority=priority, on_progress=progress)
        try:
            if timeout is None:
                return await asyncio.shield(future)
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            self._cancel_from(here, id_)
            return await future
        except asyncio.CancelledError:
            self._cancel_from(here, id_)
            raise

    def _cancel_from(self, here, id_):
        if here:
            self._cancel(id_)
            self._flush_all()
        else:
            self.cancel(id_)

    def cancel(self, request_id):
        """Cancels a request: a queued one is dropped, a running one's server
        is told (and killed if it does not answer within 5 s). Its DONE gets
        ErrorCode.CANCELLED. No-op for an unknown or finished id."""
        self._call_soon(self._cancel, request_id)

    # -- the loop ---------------------------------------------------------------

    _in_loop = False
    _loop_ident = None
    _stop_requested = False

    def _call_soon(self, function, *args):
        with self._calls_lock:
            self._calls.append((function, args))
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (or closed)

    def _on_loop_thread(self):
        return threading.get_ident() == self._loop_ident

    def _loop(self):
        """The I/O loop, until the process should exit or (returning
        early) a handler on this thread outlived HANDOFF_AFTER and another
        thread took the loop over."""
        self._in_loop = True
        self._loop_ident = threading.get_ident()
        try:
            self._resume()
            while not self._finished.is_set():
                timeout = self._next_timeout()
                if self._hot and timeout != 0 and self._busy_poll():
                    timeout = 0  # one turn for the rest, then poll again
                for conn, mask in self._sel.select(timeout):
                    self._on_io_event(conn, mask)
                self._end_turn()
        except _HandedOff:
            return  # another thread runs the loop: touch nothing on the way
        except BaseException:
            self._in_loop = False
            self._loop_ident = None
            self._finished.set()
            raise
        self._in_loop = False
        self._loop_ident = None

    def _resume(self):
        """What a thread that takes the loop over finishes first: frames a
        previous owner decoded but did not reach, requests it queued, calls
        posted meanwhile."""
        for conn in [self._pool] + list(self._links):
            if not conn.closed and conn.decoder.buffered():
                if conn is self._pool:
                    self._pool_frames()
                else:
                    self._link_frames(conn)
        self._serve_next()
        self._end_turn()
        self._maybe_finish_stop()

    def _on_io_event(self, conn, mask):
        if conn is None:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and not conn.closed:
            if conn is self._pool:
                self._read_pool()
            else:
                self._read_link(conn)

    def _end_turn(self):
        self._run_calls()
        self._run_timers()
        self._flush_all()

    # -- asyncio: the same loop, driven by an event loop ---------------------

    async def _serve_async(self):
        loop = asyncio.get_running_loop()
        self._aio = loop
        self._aio_finished = loop.create_future()
        threaded = self._sel
        self._sel = _AsyncioSelector(loop, self._on_aio_event)
        for key in list(threaded.get_map().values()):
            self._sel.register(key.fileobj, key.events, key.data)
        threaded.close()
        self._in_loop = True
        self._loop_ident = threading.get_ident()
        try:
            self._resume()
            self._aio_rearm()
            if not self._finished.is_set():
                await self._aio_finished
        finally:
            self._in_loop = False
            self._loop_ident = None
            self._finished.set()
            self._sel.close()
            # Handlers still running (the pool is gone): end them.
            for task in asyncio.all_tasks(loop):
                if task is not asyncio.current_task():
                    task.cancel()

    def _on_aio_event(self, conn, mask):
        self._on_io_event(conn, mask)
        self._end_turn()
        self._aio_rearm()

    def _aio_rearm(self):
        # Our timers (heartbeat, stats, deadlines, exit) as one call_at.
        if self._finished.is_set():
            if self._aio_finished is not None and \
                    not self._aio_finished.done():
                self._aio_finished.set_result(None)
            return
        timeout = self._next_timeout()
        if timeout is None:
            return
        when = self._aio.time() + timeout
        if self._aio_timer is not None:
            if self._aio_timer[0] <= when:
                return  # an earlier one comes anyway, and rearms
            self._aio_timer[1].cancel()
        self._aio_timer = (when, self._aio.call_at(when, self._on_aio_timer))

    def _on_aio_timer(self):
        self._aio_timer = None
        self._end_turn()
        self._aio_rearm()

    # -- handing the loop to another thread ---------------------------------

    def _hand_off_locked(self):
        # Under _owner_lock, while the owner runs a handler (_inline set).
        self._owner_gen += 1
        self._inline = None
        self._threads_until = time.monotonic() + THREADS_AFTER_HANDOFF
        self._in_serve_next = False  # the old owner left it mid-way
        self._loop_ident = None
        threading.Thread(target=self._loop, name="workerpool-io",
                         daemon=True).start()

    def _hand_off_if_inline(self):
        """From a handler about to wait: when it runs on the I/O thread,
        another thread takes the loop over at once."""
        if self._inline is None or not self._on_loop_thread():
            return
        with self._owner_lock:
            if self._inline is not None and self._on_loop_thread():
                self._hand_off_locked()

    def _watch(self):
        # The watchdog: while handlers run on the I/O thread, looks every
        # HANDOFF_AFTER whether the same one is still running.
        while True:
            self._watchdog_event.wait()
            seq = self._inline_seq
            time.sleep(HANDOFF_AFTER)
            if self._finished.is_set():
                return
            with self._owner_lock:
                if self._inline is not None and self._inline_seq == seq:
                    self._hand_off_locked()
                    continue
            if self._inline_seq == seq and self._inline is None:
                # No handler ran for a whole period: sleep until one does.
                self._watchdog_idle = True
                self._watchdog_event.clear()
                if self._inline is not None:  # one started meanwhile
                    self._watchdog_idle = False
                    self._watchdog_event.set()

    def _wake_watchdog(self):
        self._watchdog_idle = False
        self._watchdog_event.set()
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="workerpool-watchdog", daemon=True)
            self._watchdog.start()

    def _run_calls(self):
        if self._stop_requested:
            self._stop_requested = False
            self._begin_stop()
        if not self._calls:
            return  # most turns; a call posted after this wakes the loop
        while True:
            with self._calls_lock:
                if not self._calls:
                    return
                function, args = self._calls.popleft()
            try:
                function(*args)
            except Exception as e:  # a callback must not kill the loop
                _log("error in %s: %r" % (getattr(function, "__name__", "?"),
                                          e))
            self._flush_all()

    def _next_timeout(self):
        when = [t for t in (self._next_heartbeat, self._stats_due,
                            self._exit_at) if t is not None]
        if self._deadlines:
            when.append(self._deadlines[0][0])
        if not when:
            return None
        return max(0.0, min(when) - time.monotonic())

    def _run_timers(self):
        now = time.monotonic()
        if self._exit_at is not None and now >= self._exit_at:
            _log("the pool is gone and work is still running; exiting")
            os._exit(0)
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            self._send_pool(FrameType.HEARTBEAT, {})
            self._next_heartbeat = now + self._heartbeat_every
        if self._stats_due is not None and now >= self._stats_due:
            self._stats_due = None
            self._send_stats()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, id_ = heapq.heappop(self._deadlines)
            self._on_deadline(id_, now)

    # -- sockets ------------------------------------------------------------------

    def _register(self, conn):
        events = (selectors.EVENT_READ if conn.reading else 0) | (
            selectors.EVENT_WRITE if conn.out else 0)
        if events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _write(self, conn, data):
        if conn.closed:
            return
        conn.out += data
        self._dirty.add(conn)

    def _flush_all(self):
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            self._flush(conn)

    def _flush(self, conn):
        if conn.closed:
            return
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                conn.out.clear()
                self._conn_failed(conn, "write failed: %s" % (e.strerror or e))
                return
            del conn.out[:sent]
        if conn.drained and not conn.out:
            self._resolve_drained(conn)
        self._register(conn)

    @staticmethod
    def _resolve_drained(conn):
        waiting, conn.drained = conn.drained, []
        for future in waiting:
            if not future.done():
                future.set_result(None)

    def _conn_failed(self, conn, why):
        if conn is self._pool:
            self._pool_gone(why)
        else:
            self._link_eof(conn, why)

    def _close_conn(self, conn):
        if conn.closed:
            return
        conn.closed = True
        if conn.drained:
            self._resolve_drained(conn)
        if conn.events:
            self._sel.unregister(conn.sock)
            conn.events = 0
        try:
            conn.sock.close()
        except OSError:
            pass

    # -- the pool channel -------------------------------------------------------------

    def _send_pool(self, type_, body):
        if self._pool_open:
            self._write(self._pool, encode_frame(type_,
                                                 body=json.dumps(body)))

    def _read_pool(self):
        conn = self._pool
        while self._pool_open:
            try:
                data, fds, flags, _ = socket.recv_fds(
                    conn.sock, 65536, 16,
                    getattr(socket, "MSG_CMSG_CLOEXEC", 0))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._pool_gone(e.strerror or str(e))
                return
            self._pending_fds.extend(fds)
            if flags & getattr(socket, "MSG_CTRUNC", 0):
                _log("passed file descriptors were truncated")
            if not data:
                self._pool_gone("the pool closed its channel")
                return
            conn.decoder.feed(data)
            self._pool_frames()

    def _pool_frames(self):
        decoder = self._pool.decoder
        try:
            while self._pool_open:
                frame = decoder.next()
                if frame is None:
                    break
                self._on_pool_frame(frame)
        except ProtocolError as e:
            _log("bad frame from the pool: %s" % e)
            self._pool_gone("protocol error")

    def _on_pool_frame(self, frame):
        body = _json_object(frame.body)
        t = frame.type
        if t == FrameType.CONFIG:
            try:
                self._serve_limit = max(1, int(body.get("max_inflight", 1)))
            except (TypeError, ValueError):
                self._serve_limit = 1
            try:
                heartbeat_ms = int(body.get("heartbeat_ms", 0))
            except (TypeError, ValueError):
                heartbeat_ms = 0
            if heartbeat_ms > 0:
                self._heartbeat_every = max(1, heartbeat_ms // 3) / 1000.0
                self._next_heartbeat = time.monotonic() + self._heartbeat_every
            else:
                self._heartbeat_every = self._next_heartbeat = None
            try:
                self._recycle_after = max(0, int(body.get("max_requests", 0)))
            except (TypeError, ValueError):
                self._recycle_after = 0
            try:
                busy_us = int(body.get("busy_poll_us", DEFAULT_BUSY_POLL_US))
            except (TypeError, ValueError):
                busy_us = DEFAULT_BUSY_POLL_US
            self._busy_budget = min(max(0, busy_us), MAX_BUSY_POLL_US) / 1e6
            first = not self._ready.is_set()
            self._ready.set()
            if first and self._on_ready is not None:
                self._on_ready()
            self._report_recycle_limit()
            self._serve_next()
        elif t == FrameType.PEER_ADDED:
            self._adopt_link(body)
        elif t in (FrameType.ROUTE_OPENED, FrameType.ROUTE_REFUSED):
            route = self._routes.get(body.get("group", ""))
            if route is None:
                return
            if t == FrameType.ROUTE_REFUSED:
                route.state = _Route.REFUSED
                route.refusal = str(body.get("error", "refused"))
                self._fail_route(route, ErrorCode.REFUSED, route.refusal)
                return
            route.state = _Route.OPEN
            try:
                route.max_inflight = max(1, int(body.get("max_inflight", 1)))
                route.queue_limit = max(0, int(body.get("queue_limit", 1000)))
                route.request_timeout = int(
                    body.get("request_timeout_ms", 30000)) / 1000.0
            except (TypeError, ValueError):
                pass
            self._dispatch(route)
        elif t in (FrameType.PEER_GONE, FrameType.PEER_DRAINING):
            pid = body.get("pid", 0)
            how = str(body.get("how", "exited"))
            for link in [l for l in self._links if l.peer_pid == pid]:
                if t == FrameType.PEER_DRAINING:
                    link.draining = True
                    if link.role == _Link.SENDER and not link.inflight:
                        self._close_link(link)
                    continue
                self._fail_link_requests(
                    link, ErrorCode.WORKER_DIED,
                    "worker died: %s %s" % (link.describe(), how))
                self._close_link(link)
        elif t == FrameType.DRAIN:
            self._begin_stop()
        # Anything else is ignored (forward compatible).

    def _pool_gone(self, why):
        if not self._pool_open:
            return
        self._pool_open = False
        _log("%s; exiting" % why)
        self._close_conn(self._pool)
        for route in list(self._routes.values()):
            self._fail_route(route, ErrorCode.SHUTTING_DOWN,
                             "the pool is gone")
        self._exit_at = time.monotonic() + POOL_GONE_EXIT
        self._begin_stop()

    def _send_stats(self):
        queued = sum(1 for o in self._requests.values()
                     if o.link is None and not o.cancelled)
        inflight = sum(1 for o in self._requests.values()
                       if o.link is not None)
        body = {k: self.stats[k] for k in (
            "sent", "replied", "failed", "refused", "cancelled", "timed_out",
            "served", "served_errors", "busy_poll_reads",
            "busy_poll_misses")}
        # Requests this process serves now, running or waiting here: the
        # Watcher drains idle processes first, and sizes autoscaled groups.
        serving = self._running + sum(
            1 for _, _, r in self._serve_queue
            if not r._answered and r._link is not None)
        body.update(queued=queued, inflight=inflight, serving=serving)
        self._stats_sent_at = time.monotonic()
        self._send_pool(FrameType.STATS, body)

    def _report_recycle_limit(self):
        # Past max_requests the Watcher starts a replacement and drains this
        # process; it learns the count from stats, so send them now.
        if (self._recycle_after and not self._recycle_reported
                and self._answered_count >= self._recycle_after
                and self._pool_open):
            self._recycle_reported = True
            self._stats_due = None
            self._send_stats()

    def _count(self, key):
        self.stats[key] += 1
        self._stats_changed()

    def _stats_changed(self, rising=False):
        """A counter moved: the stats go at once when none went for
        STATS_INTERVAL (the first sign of load after a quiet spell), else
        within the interval. RISING: a route's queue went from empty to not
        (the load outgrows the group it is sent to): at once, at most once
        per interval, so that an autoscaler starts timing it now."""
        if not self._pool_open or (self._stats_due is not None
                                   and not rising):
            return  # they go soon anyway (most requests end here)
        now = time.monotonic()
        if rising and now - self._rising_sent_at >= STATS_INTERVAL:
            self._rising_sent_at = now
            self._stats_due = now
        elif self._stats_due is None:
            self._stats_due = max(now, self._stats_sent_at + STATS_INTERVAL)

    # -- links ----------------------------------------------------------------------

    def _adopt_link(self, info):
        if not self._pending_fds:
            _log("peer announced without a socket")
            return
        fd = self._pending_fds.popleft()
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            os.close(fd)
            _log("cannot use a passed socket: %s" % e)
            return
        sock.setblocking(False)

        def number(key):
            try:
                return int(info.get(key, -1))
            except (TypeError, ValueError):
                return -1
        role = _Link.SERVER if info.get("role") == "server" else _Link.SENDER
        link = _Link(sock, role, str(info.get("group", "")), number("index"),
                     number("pid"))
        self._links.add(link)
        self._register(link)
        if role == _Link.SENDER:
            link.route = self._route_to(link.peer_group)
            link.route.peers.append(link)
            self._dispatch(link.route)

    def _read_link(self, link):
        while not link.closed and link.reading:
            try:
                data = link.sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._link_eof(link, e.strerror or str(e))
                return
            if not data:
                self._link_eof(link, "closed")
                return
            self._link_input(link, data)
            if len(data) < _READ_SIZE:
                # All there was: epoll says when more comes (another recv
                # would cost a syscall and an exception per wake-up).
                return

    def _link_input(self, link, data):
        link.decoder.feed(data)
        self._link_frames(link)
        # The answers to all of it in one send, before anything else.
        if link.out:
            self._flush(link)
            self._dirty.discard(link)
        if not link.hot and self._busy_budget and self._aio is None:
            link.hot = True
            self._hot.append(link)

    def _busy_worth(self, link, now):
        # busy_poll.h's WorthPolling: a peer on this CPU cannot answer
        # while we spin; a sender waits for replies only while it has
        # requests out; a link that keeps missing is polled ever more
        # rarely.
        if link.closed or link.draining or not link.reading:
            return False
        if link.role == _Link.SENDER and not link.inflight:
            return False
        if link.placement is None:
            link.placement = _Placement(link.peer_pid)
        if not link.placement.other_cpu(now):
            return False
        if link.busy_skips:
            link.busy_skips -= 1
            return False
        return True

    def _busy_poll(self):
        """Before the loop sleeps, when links that just brought bytes are
        worth it: polls without blocking, round after round, until
        something is ready or busy_poll_us passed (docs/PROTOCOL.md, "Busy
        polling"): waking a process that sleeps costs more than a request.
        True when something was ready (and is handled: frames answered)."""
        hot, self._hot = self._hot, []
        now = time.monotonic()
        links = []
        for link in hot:
            link.hot = False
            if self._busy_worth(link, now):
                links.append(link)
        if not links or self._finished.is_set():
            return False
        end = now + self._busy_budget
        # Each round asks epoll without waiting rather than recv on each
        # link: an empty recv costs Python an exception. Whatever is ready
        # (these links, or the pool channel) is handled as the loop would.
        while True:
            ready = self._sel.select(0)
            if ready:
                for conn, mask in ready:
                    self._on_io_event(conn, mask)
                break
            if time.monotonic() >= end:
                break
            # Polite spinning: a process waiting for this CPU runs first.
            os.sched_yield()
        delivered = [link for link in links if link.hot]
        if delivered:
            self.stats["busy_poll_reads"] += 1
            for link in delivered:
                link.busy_misses = 0
        else:
            self.stats["busy_poll_misses"] += 1
            for link in links:
                link.busy_misses = min(link.busy_misses + 1, 6)
                link.busy_skips = (1 << link.busy_misses) - 1
        self._stats_changed()
        return bool(ready)

    def _link_frames(self, link):
        decoder = link.decoder
        try:
            if link.role == _Link.SERVER:
                self._server_frames(link, decoder)
                return
            while not link.closed:
                frame = decoder.next()
                if frame is None:
                    break
                self._on_link_frame(link, frame)
        except ProtocolError as e:
            _log("bad frame from %s: %s" % (link.describe(), e))
            self._fail_link_requests(link, ErrorCode.PROTOCOL,
                                     "protocol error from %s"
                                     % link.describe())
            self._close_link(link)

    def _on_link_frame(self, link, frame):
        if link.role == _Link.SERVER:
            if frame.type == FrameType.REQUEST:
                self._on_request(link, frame.id, frame.aux, frame.meta,
                                 frame.body)
            elif frame.type == FrameType.CANCEL:
                self._on_cancel_frame(link, frame.id)
            return
        # We are the sender on this link: answers to our requests.
        if frame.type == FrameType.REQUEST:
            # The peer only serves us; a request from it breaks the rules.
            self._count("refused")
            self._write(link, encode_frame(
                FrameType.ERROR, frame.id, ErrorCode.REFUSED,
                body="refused: %s may not send requests to %s"
                % (link.peer_group, self.group)))
            return
        out = link.inflight.get(frame.id)
        if out is None:
            return  # a late answer to a timeout
        if frame.type == FrameType.PROGRESS:
            if out.on_progress is not None and not out.cancelled:
                out.on_progress(frame.aux / PROGRESS_SCALE,
                                frame.body.decode(errors="replace"))
            return
        if frame.type not in (FrameType.REPLY, FrameType.ERROR):
            return
        del link.inflight[frame.id]
        out.link = None
        if frame.type == FrameType.REPLY:
            reply = Reply(True, body=frame.body, meta=frame.meta)
        else:
            reply = Reply(False, frame.aux, frame.body, frame.meta)
        route = out.route
        self._complete(out, reply)
        if link.draining and not link.inflight:
            self._close_link(link)
        self._dispatch(route)

    def _link_eof(self, link, why):
        if link.closed:
            return
        if link.role == _Link.SENDER and link.inflight and self._pool_open:
            # The peer died; the pool's peer_gone names how: keep the
            # requests until then.
            link.draining = True
            if link.route is not None and link in link.route.peers:
                link.route.peers.remove(link)
            link.reading = False
            self._register(link)
            return
        if link.role == _Link.SENDER and link.inflight:
            self._fail_link_requests(link, ErrorCode.WORKER_DIED,
                                     "worker died: %s (%s)"
                                     % (link.describe(), why))
        self._close_link(link)

    def _fail_link_requests(self, link, code, text):
        for out in list(link.inflight.values()):
            out.link = None
            self._complete(out, Reply(False, code, text.encode()))
        link.inflight.clear()
        # Requests this link was serving: their answers have nowhere to go.
        for request in link.serving.values():
            request._link = None

    def _close_link(self, link):
        if link.closed:
            return
        self._fail_link_requests(link, ErrorCode.WORKER_DIED,
                                 "worker died: %s" % link.describe())
        link.serving.clear()
        self._close_conn(link)
        self._links.discard(link)
        self._dirty.discard(link)
        route = link.route
        if route is not None:
            link.route = None
            if link in route.peers:
                route.peers.remove(link)
            self._dispatch(route)
        self._maybe_finish_stop()

    # -- serving ------------------------------------------------------------------------

    def _server_frames(self, link, decoder):
        # The hot path of a job: FrameDecoder.next() unrolled (the header
        # read once, no Frame built); a bad header is left to next(), which
        # raises. The decoder's offset moves past a frame before it is
        # handled: its handler may hand the loop to another thread, which
        # goes on from there.
        unpack_from = HEADER.unpack_from
        buffer = decoder._buffer
        while not link.closed:
            offset = decoder._offset
            available = len(buffer) - offset
            if available < HEADER_SIZE:
                return
            (length, version, type_, _, id_, aux,
             meta_length) = unpack_from(buffer, offset)
            if (version != WIRE_VERSION or length > MAX_PAYLOAD
                    or meta_length > length or type_ not in _KNOWN_TYPES):
                decoder.next()  # raises ProtocolError
                return
            if available < HEADER_SIZE + length:
                return
            start = offset + HEADER_SIZE
            end = start + length
            decoder._offset = end
            if type_ == 1:  # FrameType.REQUEST
                if meta_length:
                    meta = bytes(buffer[start:start + meta_length])
                    start += meta_length
                else:
                    meta = b""
                self._on_request(link, id_, aux, meta,
                                 bytes(buffer[start:end]))
            elif type_ == 5:  # FrameType.CANCEL
                self._on_cancel_frame(link, id_)
            # Anything else a sender may not send to its server: ignored.

    def _on_request(self, link, id_, aux, meta, body):
        if self._handler is None:
            self._write(link, encode_frame(
                FrameType.ERROR, id_, ErrorCode.REFUSED,
                body="group %s does not serve requests" % self.group))
            return
        request = Request(self, link, id_,
                          aux - 0x100000000 if aux >= 0x80000000 else aux,
                          meta, body)
        link.serving[id_] = request
        if self._running < self._serve_limit and not self._serve_queue:
            self._start(request)
        else:
            request._sequence = next(self._sequence)
            heapq.heappush(self._serve_queue,
                           (request.priority, request._sequence, request))

    def _on_cancel_frame(self, link, id_):
        request = link.serving.get(id_)
        if request is None:
            return
        if not request._started:
            # Still queued here: drop it (lazily removed from the heap).
            request._answered = True
            del link.serving[id_]
            self._write(link, encode_frame(
                FrameType.ERROR, id_, ErrorCode.CANCELLED,
                body="cancelled before it started"))
            return
        request._mark_cancelled()
        if request._task is not None and request._task_began:
            # asyncio.CancelledError in the handler. A task that has not
            # begun yet is not cancelled (it would end without running a
            # line, unanswered): it sees the flag when it begins.
            request._task.cancel()
        for callback in request._callbacks or ():
            try:
                callback()
            except Exception as e:
                _log("error in a cancel callback: %r" % e)

    def _serve_next(self):
        # Not re-entered: a handler answered on this thread comes back here
        # through _answer, and the loop below takes the next one.
        if self._in_serve_next:
            return
        self._in_serve_next = True
        try:
            while self._running < self._serve_limit and self._serve_queue:
                _, _, request = heapq.heappop(self._serve_queue)
                if request._answered or request._link is None:
                    continue  # cancelled, or its sender went away
                self._start(request)
        except _HandedOff:
            raise  # the next owner resets the flag
        except BaseException:
            self._in_serve_next = False
            raise
        self._in_serve_next = False

    def _start(self, request):
        request._started = True
        self._running += 1
        if self._is_async:
            request._task = self._aio.create_task(self._run_async(request))
        elif self._threads or (self._threads_until and
                               self._blocking_lately()):
            threading.Thread(target=self._run_handler, args=(request,),
                             name="workerpool-request-%d" % request.id,
                             daemon=True).start()
        else:
            self._run_inline(request)

    def _blocking_lately(self):
        if time.monotonic() < self._threads_until:
            return True
        self._threads_until = 0.0
        return False

    def _run_inline(self, request):
        # On the I/O thread; the watchdog hands the loop to a new thread
        # when this handler outlives HANDOFF_AFTER.
        gen = self._owner_gen
        self._inline = request
        self._inline_seq += 1
        if self._watchdog_idle:
            self._wake_watchdog()
        answer = self._call_handler(request)
        with self._owner_lock:
            owner = gen == self._owner_gen
            if owner:
                self._inline = None
        if owner:
            self._answer(request, *answer)
            return
        self._call_soon(self._answer, request, *answer)
        raise _HandedOff()

    def _call_handler(self, request):
        """(ok, body, meta) of running the handler on REQUEST."""
        meta = b""
        try:
            if self._with_request:
                result = self._handler(request)
            else:
                result = self._handler(request.body, request.meta)
            # The common answers first, without a call.
            if type(result) is bytes:
                return True, result, meta
            if type(result) is str:
                return True, result.encode(), meta
            if isinstance(result, tuple):
                result, meta = result
                if isinstance(meta, dict):
                    meta = json.dumps(meta)
                meta = _as_bytes(meta)
            return True, _as_bytes(result), meta
        except Exception as e:
            text = str(e) or type(e).__name__
            return False, text.encode(errors="replace")[:MAX_ERROR_TEXT], b""
        except BaseException as e:  # SystemExit, KeyboardInterrupt
            return False, ("handler exited: %r" % e).encode(), b""

    def _run_handler(self, request):
        # On a thread of its own (serve(threads=True)).
        self._call_soon(self._answer, request, *self._call_handler(request))

    async def _run_async(self, request):
        # A task on the event loop that also does the I/O.
        request._task_began = True
        meta = b""
        try:
            if request._cancel_flag:
                raise asyncio.CancelledError()  # before it began
            if self._with_request:
                result = await self._handler(request)
            else:
                result = await self._handler(request.body, request.meta)
            if isinstance(result, tuple):
                result, meta = result
                if isinstance(meta, dict):
                    meta = json.dumps(meta)
                meta = _as_bytes(meta)
            answer = (True, _as_bytes(result), meta)
        except asyncio.CancelledError:
            # The sender's cancel (answered as ErrorCode.CANCELLED below),
            # or the loop shutting down.
            answer = (False, b"cancelled", b"")
        except Exception as e:
            text = str(e) or type(e).__name__
            answer = (False, text.encode(errors="replace")[:MAX_ERROR_TEXT],
                      b"")
        except BaseException as e:
            answer = (False, ("handler exited: %r" % e).encode(), b"")
        request._task = None
        self._answer(request, *answer)
        self._flush_all()
        self._aio_rearm()

    def _answer(self, request, ok, body, meta):
        self._running -= 1
        if not request._answered:
            request._answered = True
            link = request._link
            if ok and not meta and len(body) <= MAX_PAYLOAD and \
                    link is not None and not link.closed:
                # The common case, short.
                link.out += HEADER.pack(len(body), WIRE_VERSION, 2, 0,
                                        request.id, 0, 0)
                link.out += body
                self._dirty.add(link)
                link.serving.pop(request.id, None)
                self.stats["served"] += 1  # _count, unrolled
                if self._stats_due is None:
                    self._stats_changed()
                self._answered_count += 1
                if self._recycle_after and not self._recycle_reported:
                    self._report_recycle_limit()
                if self._serve_queue:
                    self._serve_next()
                if self._stopping:
                    self._maybe_finish_stop()
                return
            if ok and len(body) + len(meta) > MAX_PAYLOAD:
                ok, meta = False, b""
                body = ("reply of %d bytes is over the frame limit"
                        % len(body)).encode()
                code = ErrorCode.TOO_LARGE
            else:
                code = ErrorCode.HANDLER_ERROR
            if request._cancel_flag and not ok:
                code, body = ErrorCode.CANCELLED, b"cancelled"
            if link is not None and not link.closed:
                if ok:
                    frame = HEADER.pack(len(meta) + len(body), WIRE_VERSION,
                                        2, 0, request.id, 0, len(meta))
                    link.out += frame
                    if meta:
                        link.out += meta
                    link.out += body
                    self._dirty.add(link)
                else:
                    self._write(link, encode_frame(FrameType.ERROR,
                                                   request.id, code,
                                                   body=body))
                link.serving.pop(request.id, None)
            self._count("served" if ok else "served_errors")
            self._answered_count += 1
            if self._recycle_after and not self._recycle_reported:
                self._report_recycle_limit()
        self._serve_next()
        if self._stopping:
            self._maybe_finish_stop()

    def _send_progress(self, request, fraction, text):
        link = request._link
        if request._answered or link is None or link.closed:
            return _DONE
        try:
            fraction = float(fraction)
        except (TypeError, ValueError):
            fraction = 0.0
        if not fraction >= 0:
            fraction = 0.0  # also NaN
        fraction = min(fraction, 1.0)
        text = _as_bytes(text)[:MAX_PROGRESS_TEXT]
        self._write(link, encode_frame(FrameType.PROGRESS, request.id,
                                       int(fraction * PROGRESS_SCALE),
                                       body=text))
        # Out now: the handler may go on working for a while.
        self._flush(link)
        if self._aio is None:
            return _DONE
        # asyncio: an awaitable that ends once the frame left.
        future = self._aio.create_future()
        if link.out and not link.closed:
            link.drained.append(future)
        else:
            future.set_result(None)
        return future

    # -- sending -----------------------------------------------------------------------

    def _route_to(self, group):
        route = self._routes.get(group)
        if route is None:
            route = self._routes[group] = _Route(group)
            self._send_pool(FrameType.ROUTE_OPEN, {"group": group})
        return route

    def _complete_now(self, out, code, text):
        self._complete(out, Reply(False, code, text.encode()))

    def _submit(self, out):
        self._requests[out.id] = out
        self._count("sent")
        if len(out.meta) + len(out.body) > MAX_PAYLOAD:
            return self._complete_now(
                out, ErrorCode.TOO_LARGE,
                "request of %d bytes is over the frame limit of %d"
                % (len(out.body), MAX_PAYLOAD))
        if self._stopping or not self._pool_open:
            return self._complete_now(out, ErrorCode.SHUTTING_DOWN,
                                      "this process is stopping")
        route = self._route_to(out.group)
        out.route = route
        if route.state == _Route.REFUSED:
            return self._complete_now(out, ErrorCode.REFUSED, route.refusal)
        if route.state == _Route.OPEN and route.queued >= route.queue_limit:
            has_room = any(not p.draining and not p.condemned and
                           len(p.inflight) < route.max_inflight
                           for p in route.peers)
            if not has_room:
                return self._complete_now(
                    out, ErrorCode.QUEUE_FULL,
                    "queue of group %s is full (%d)"
                    % (out.group, route.queue_limit))
        out.queued = True
        route.queued += 1
        heapq.heappush(route.queue, (out.priority, out.id, out))
        self._dispatch(route)
        if route.queued == 1:
            self._stats_changed(rising=True)

    def _dispatch(self, route):
        if route.state != _Route.OPEN:
            return
        while route.queued:
            best = None
            for peer in route.peers:
                if peer.draining or peer.condemned or peer.closed:
                    continue
                if len(peer.inflight) >= route.max_inflight:
                    continue
                if best is None or len(peer.inflight) < len(best.inflight):
                    best = peer
            if best is None:
                break
            _, _, out = heapq.heappop(route.queue)
            if not out.queued:
                continue  # cancelled while queued
            out.queued = False
            route.queued -= 1
            out.link = best
            best.inflight[out.id] = out
            self._write(best, encode_frame(FrameType.REQUEST, out.id,
                                           out.priority, out.meta, out.body))
            out.body = b""
            if route.request_timeout > 0:
                out.deadline = time.monotonic() + route.request_timeout
                heapq.heappush(self._deadlines, (out.deadline, out.id))
        if route.queued and not any(
                not p.draining and not p.condemned and not p.closed
                for p in route.peers):
            self._fail_route(route, ErrorCode.NO_WORKERS,
                             "group %s has no live process" % route.group)

    def _fail_route(self, route, code, text):
        failed = [out for _, _, out in route.queue if out.queued]
        route.queue = []
        route.queued = 0
        for out in failed:
            out.queued = False
            self._complete_now(out, code, text)

    def _complete(self, out, reply):
        if out.finished:
            return
        out.finished = True
        self._requests.pop(out.id, None)
        if out.link is not None:
            out.link.inflight.pop(out.id, None)
            out.link = None
        if out.cancelled:
            return  # already answered CANCELLED
        if reply.ok:
            self._count("replied")
        elif reply.code == ErrorCode.REFUSED:
            self._count("refused")
        elif reply.code == ErrorCode.TIMEOUT:
            self._count("timed_out")
        elif reply.code == ErrorCode.CANCELLED:
            self._count("cancelled")
        else:
            self._count("failed")
        self._deliver(out, reply)
        self._maybe_finish_stop()

    def _deliver(self, out, reply):
        if out.done is not None:
            try:
                out.done(reply)
            except Exception as e:
                _log("error in a reply callback: %r" % e)

    def _cancel(self, id_):
        out = self._requests.get(id_)
        if out is None or out.cancelled or out.finished:
            return
        if out.link is None:
            if out.queued and out.route is not None:
                out.queued = False
                out.route.queued -= 1
            self._complete_now(out, ErrorCode.CANCELLED,
                               "cancelled while queued")
            return
        # Running: tell the server, answer now, and give the server a grace
        # period to answer before it is killed.
        self._write(out.link, encode_frame(FrameType.CANCEL, out.id))
        self._count("cancelled")
        out.cancelled = True
        out.deadline = time.monotonic() + CANCEL_GRACE
        heapq.heappush(self._deadlines, (out.deadline, out.id))
        self._deliver(out, Reply(False, ErrorCode.CANCELLED, b"cancelled"))

    def _on_deadline(self, id_, now):
        out = self._requests.get(id_)
        if out is None or out.deadline is None or out.deadline > now:
            return  # finished, or a newer deadline replaced this one
        link = out.link
        if link is None:
            return
        if out.cancelled:
            reason = "ignored a cancel for %ds" % CANCEL_GRACE
        else:
            reason = "request timed out after %dms" % round(
                out.route.request_timeout * 1000)
        link.condemned = True
        self._send_pool(FrameType.KILL_PEER, {"pid": link.peer_pid,
                                              "reason": reason})
        self._complete(out, Reply(False, ErrorCode.TIMEOUT, (
            "timeout: %s; %s killed" % (reason, link.describe())).encode()))
        if link.route is not None:
            self._dispatch(link.route)

    # -- stopping ---------------------------------------------------------------------

    def _begin_stop(self):
        if self._stopping:
            return
        self._stopping = True
        for callback in self._on_stop:
            try:
                callback()
            except Exception as e:
                _log("error in a stop callback: %r" % e)
        self._maybe_finish_stop()

    def _maybe_finish_stop(self):
        if not self._stopping or self._finished.is_set():
            return
        if self._is_async and self._aio_finished is None:
            return
        if self._requests or self._running > 0:
            return
        if self._pool_open and any(link.role == _Link.SERVER
                                   for link in self._links):
            return  # senders still linked to us may have requests on the way
        self._flush_all()
        conns = list(self._links)
        if self._pool_open:
            self._pool_open = False
            conns.append(self._pool)
        for conn in conns:
            if conn.out and not conn.closed:
                # Last words (answers, stats): give them a moment to go out.
                try:
                    conn.sock.settimeout(1.0)
                    conn.sock.sendall(conn.out)
                except OSError:
                    pass
                conn.out.clear()
            self._close_conn(conn)
        self._links.clear()
        self._finished.set()
        if self._aio_finished is not None and not self._aio_finished.done():
            self._aio_finished.set_result(None)


def serve(handler, with_request=False, on_ready=None, threads=False):
    """Serves requests from the pool with HANDLER until this process should
    exit; returns the exit code (0). See Client.serve."""
    return Client().serve(handler, with_request=with_request,
                          on_ready=on_ready, threads=threads)
