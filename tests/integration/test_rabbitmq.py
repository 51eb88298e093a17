"""The RabbitMQ service (`workerpool builtin rabbitmq-service`) against a
real broker: at-least-once consumption into a job group, retries and dead
letters, RPC replies, bad input, competing pools, a broker restart.

needs: rabbitmq (WORKERPOOL_TEST_AMQP_URL; the rabbitmqctl settings of the
node come from the environment scripts/rabbitmq's env file exports).

The test side talks AMQP 0-9-1 itself (MiniAmqp below, standard library
only: publish with confirms and any property, basic.get with properties,
queue declare/delete), so nothing here depends on the code under test to
publish or inspect. Jobs are small Python scripts (src/python/workerpool.py)
that append what they processed to a file: that file is the ground truth
of "processed". Every test uses its own queues and deletes them.

All tests are in one file on purpose: one of them restarts RabbitMQ, which
would disturb any other RabbitMQ test running at the same time.
"""

import json
import os
import random
import signal
import socket
import struct
import subprocess
import time
import unittest
import urllib.parse

import wp

URL = os.environ.get("WORKERPOOL_TEST_AMQP_URL", "")
PYTHON_DIR = os.path.join(wp.TOP, "src", "python")

# --- a minimal AMQP 0-9-1 client ---------------------------------------------

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"

# (name, flag bit, kind) in wire order.
PROPERTIES = [
    ("content_type", 0x8000, "shortstr"),
    ("content_encoding", 0x4000, "shortstr"),
    ("headers", 0x2000, "table"),
    ("delivery_mode", 0x1000, "octet"),
    ("priority", 0x0800, "octet"),
    ("correlation_id", 0x0400, "shortstr"),
    ("reply_to", 0x0200, "shortstr"),
    ("expiration", 0x0100, "shortstr"),
    ("message_id", 0x0080, "shortstr"),
    ("timestamp", 0x0040, "longlong"),
    ("type", 0x0020, "shortstr"),
    ("user_id", 0x0010, "shortstr"),
    ("app_id", 0x0008, "shortstr"),
    ("cluster_id", 0x0004, "shortstr"),
]


class AmqpError(Exception):
    pass


def _shortstr(value):
    data = value.encode() if isinstance(value, str) else value
    return bytes([len(data)]) + data


def _longstr(value):
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


def _encode_value(value):
    if isinstance(value, bool):
        return b"t" + bytes([1 if value else 0])
    if isinstance(value, int):
        return b"l" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, dict):
        return b"F" + _encode_table(value)
    return b"S" + _longstr(value)


def _encode_table(table):
    data = b"".join(_shortstr(k) + _encode_value(v) for k, v in table.items())
    return struct.pack(">I", len(data)) + data


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def shortstr(self):
        return self.take(self.unpack(">B")[0]).decode(errors="replace")

    def longstr(self):
        return self.take(self.unpack(">I")[0])

    def value(self):
        kind = self.take(1)
        simple = {b"t": ">B", b"b": ">b", b"B": ">B", b"s": ">h", b"u": ">H",
                  b"I": ">i", b"i": ">I", b"l": ">q", b"L": ">Q", b"f": ">f",
                  b"d": ">d", b"T": ">Q"}
        if kind in simple:
            value = self.unpack(simple[kind])[0]
            return bool(value) if kind == b"t" else value
        if kind == b"S":
            return self.longstr().decode(errors="replace")
        if kind == b"x":
            return self.longstr()
        if kind == b"D":
            decimals, raw = self.unpack(">BI")
            return raw / (10 ** decimals)
        if kind == b"F":
            return self.table()
        if kind == b"A":
            end = self.pos + 4 + self.unpack(">I")[0]
            items = []
            while self.pos < end:
                items.append(self.value())
            return items
        if kind == b"V":
            return None
        raise AmqpError("unknown field kind %r" % kind)

    def table(self):
        end = self.pos + 4 + self.unpack(">I")[0]
        table = {}
        while self.pos < end:
            key = self.shortstr()
            table[key] = self.value()
        return table


class Message:
    def __init__(self, body, properties, redelivered=False):
        self.body, self.properties, self.redelivered = (body, properties,
                                                        redelivered)

    @property
    def headers(self):
        return self.properties.get("headers") or {}


class MiniAmqp:
    """One connection, one channel (with publisher confirms)."""

    def __init__(self, url=None, timeout=30):
        parts = urllib.parse.urlsplit(url or URL)
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        vhost = urllib.parse.unquote(parts.path[1:]) if parts.path else "/"
        self.sock = socket.create_connection(
            (parts.hostname, parts.port or 5672), timeout=timeout)
        self.buffer = bytearray()
        self.frame_max = 131072
        self.next_seq = 1
        self.confirmed = 0  # every seq <= this was acked
        self.acked = set()  # acked seqs above it
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._expect(0, (10, 10))  # start
        self._method(0, 10, 11, _encode_table({}) + _shortstr("PLAIN") +
                     _longstr(b"\0" + user.encode() + b"\0" +
                              password.encode()) + _shortstr("en_US"))
        args = self._expect(0, (10, 30))  # tune
        _, frame_max, _ = args.unpack(">HIH")
        self.frame_max = min(frame_max or 131072, 131072)
        self._method(0, 10, 31, struct.pack(">HIH", 1, self.frame_max, 0))
        self._method(0, 10, 40, _shortstr(vhost) + _shortstr("") + b"\0")
        self._expect(0, (10, 41))
        self._method(1, 20, 10, _shortstr(""))
        self._expect(1, (20, 11))
        self._method(1, 85, 10, b"\0")  # confirm.select
        self._expect(1, (85, 11))

    def close(self):
        try:
            self._method(0, 10, 50, struct.pack(">H", 200) + _shortstr("bye") +
                         struct.pack(">HH", 0, 0))
            self._expect(0, (10, 51))
        except (OSError, AmqpError):
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- frames

    def _send_frame(self, type_, channel, payload):
        self.sock.sendall(struct.pack(">BHI", type_, channel, len(payload)) +
                          payload + FRAME_END)

    def _method(self, channel, class_id, method_id, args=b""):
        self._send_frame(FRAME_METHOD, channel,
                         struct.pack(">HH", class_id, method_id) + args)

    def _read_frame(self):
        while True:
            if len(self.buffer) >= 7:
                type_, channel, size = struct.unpack(">BHI", self.buffer[:7])
                if len(self.buffer) >= 8 + size:
                    payload = bytes(self.buffer[7:7 + size])
                    del self.buffer[:8 + size]
                    if type_ == FRAME_HEARTBEAT:
                        continue
                    return type_, channel, payload
            data = self.sock.recv(1 << 20)
            if not data:
                raise AmqpError("connection closed by the broker")
            self.buffer += data

    def _next_method(self, return_confirms=False):
        """The next method frame: (channel, (class, method), reader). Handles
        confirms (returned only when RETURN_CONFIRMS) and closes."""
        while True:
            type_, channel, payload = self._read_frame()
            if type_ != FRAME_METHOD:
                continue
            reader = _Reader(payload)
            ids = reader.unpack(">HH")
            if ids == (60, 80):  # basic.ack (a confirm)
                tag, multiple = reader.unpack(">QB")
                # Confirms may come out of order: keep the stragglers.
                if multiple:
                    self.confirmed = max(self.confirmed, tag)
                else:
                    self.acked.add(tag)
                while self.confirmed + 1 in self.acked:
                    self.confirmed += 1
                self.acked = {t for t in self.acked if t > self.confirmed}
                if return_confirms:
                    return channel, ids, reader
                continue
            if ids == (60, 120):
                raise AmqpError("the broker refused (nack) a publish")
            if ids in ((10, 50), (20, 40)):
                code, = reader.unpack(">H")
                text = reader.shortstr()
                raise AmqpError("%d %s" % (code, text))
            return channel, ids, reader

    def _expect(self, channel, ids):
        got_channel, got, reader = self._next_method()
        if got != ids or got_channel != channel:
            raise AmqpError("expected method %s, got %s" % (ids, got))
        return reader

    # -- operations

    def declare(self, queue, passive=False, durable=True, arguments=None):
        """(message count, consumer count)."""
        bits = (1 if passive else 0) | (2 if durable else 0)
        self._method(1, 50, 10, struct.pack(">H", 0) + _shortstr(queue) +
                     bytes([bits]) + _encode_table(arguments or {}))
        reader = self._expect(1, (50, 11))
        reader.shortstr()
        return reader.unpack(">II")

    def delete(self, queue):
        """The number of (ready) messages deleted with QUEUE."""
        self._method(1, 50, 40, struct.pack(">H", 0) + _shortstr(queue) + b"\0")
        return self._expect(1, (50, 41)).unpack(">I")[0]

    def publish(self, queue, bodies, properties=None, batch=500):
        """Publishes every body (persistent) to QUEUE through the default
        exchange and waits until the broker confirmed them all."""
        props = {"delivery_mode": 2}
        props.update(properties or {})
        flags, encoded = 0, b""
        for name, bit, kind in PROPERTIES:
            if name not in props:
                continue
            flags |= bit
            value = props[name]
            if kind == "shortstr":
                encoded += _shortstr(value)
            elif kind == "octet":
                encoded += bytes([value])
            elif kind == "longlong":
                encoded += struct.pack(">Q", value)
            else:
                encoded += _encode_table(value)
        args = (struct.pack(">HH", 60, 40) + struct.pack(">H", 0) +
                _shortstr("") + _shortstr(queue) + b"\0")
        method_frame = (struct.pack(">BHI", FRAME_METHOD, 1, len(args)) +
                        args + FRAME_END)
        chunk = self.frame_max - 8
        pending = []
        for body in bodies:
            body = body.encode() if isinstance(body, str) else body
            header = (struct.pack(">HHQH", 60, 0, len(body), flags) + encoded)
            parts = [method_frame,
                     struct.pack(">BHI", FRAME_HEADER, 1, len(header)),
                     header, FRAME_END]
            for start in range(0, len(body), chunk):
                piece = body[start:start + chunk]
                parts += [struct.pack(">BHI", FRAME_BODY, 1, len(piece)),
                          piece, FRAME_END]
            pending.append(b"".join(parts))
            self.next_seq += 1
            if len(pending) >= batch:
                self._flush_and_confirm(pending)
        self._flush_and_confirm(pending)

    def _flush_and_confirm(self, pending):
        if pending:
            self.sock.sendall(b"".join(pending))
            pending.clear()
        while self.confirmed < self.next_seq - 1:
            self._next_method(return_confirms=True)

    def get(self, queue):
        """One message (acked at once), or None when the queue is empty."""
        self._method(1, 60, 70, struct.pack(">H", 0) + _shortstr(queue) +
                     b"\1")
        channel, ids, reader = self._next_method()
        if ids == (60, 72):
            return None
        if ids != (60, 71):
            raise AmqpError("expected basic.get-ok, got %s" % (ids,))
        _, redelivered = reader.unpack(">QB")
        type_, _, payload = self._read_frame()
        header = _Reader(payload)
        _, _, size, flags = header.unpack(">HHQH")
        properties = {}
        for name, bit, kind in PROPERTIES:
            if not flags & bit:
                continue
            if kind == "shortstr":
                properties[name] = header.shortstr()
            elif kind == "octet":
                properties[name] = header.unpack(">B")[0]
            elif kind == "longlong":
                properties[name] = header.unpack(">Q")[0]
            else:
                properties[name] = header.table()
        body = bytearray()
        while len(body) < size:
            type_, _, payload = self._read_frame()
            body += payload
        return Message(bytes(body), properties, bool(redelivered))

    def get_all(self, queue):
        result = []
        while True:
            message = self.get(queue)
            if message is None:
                return result
            result.append(message)


def rabbitmqctl(*args, timeout=120):
    """Runs rabbitmqctl against the test node (settings from the env)."""
    node = os.environ.get("RABBITMQ_NODENAME")
    command = ["rabbitmqctl", "-q"] + (["-n", node] if node else []) + list(
        args)
    proc = subprocess.run(command, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (
            " ".join(command), proc.returncode, proc.stdout, proc.stderr))
    return proc.stdout


def queue_counts(name):
    """(ready, unacked, consumers) of queue NAME, from rabbitmqctl."""
    for line in rabbitmqctl("list_queues", "name", "messages_ready",
                            "messages_unacknowledged",
                            "consumers").splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[0] == name:
            return tuple(int(f) for f in fields[1:])
    return None


def queue_type(name):
    """"classic", "quorum", ... of queue NAME, from rabbitmqctl."""
    for line in rabbitmqctl("list_queues", "name", "type").splitlines():
        fields = line.split("\t")
        if len(fields) == 2 and fields[0] == name:
            return fields[1]
    return None


# --- the job: records what it processed ----------------------------------------

# Appends one JSON line per request to $OUT (one write(2), O_APPEND: atomic
# between processes), then answers. "fail..." -> error reply; "progress:N"
# -> N progress updates; "slow:MS" -> a pause of MS first; "slowfail:MS" ->
# a pause, then an error reply; "hold:PATH" -> a pause until PATH exists;
# "holdfail:PATH" -> that pause, then an error reply; $DELAY_MS: a pause per
# request.
RECORDER = r"""
import json, os, sys, time
sys.path.insert(0, %(pydir)r)
import workerpool

out = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
delay = int(os.environ.get("DELAY_MS", "0")) / 1000.0
full = os.environ.get("RECORD") == "full"

def handler(request):
    body = request.body
    if delay:
        time.sleep(delay)
    if body.startswith(b"slow:"):
        time.sleep(int(body[5:]) / 1000.0)
    if body.startswith(b"slowfail:"):
        time.sleep(int(body[9:]) / 1000.0)
    if body.startswith(b"hold:") or body.startswith(b"holdfail:"):
        while not os.path.exists(body.split(b":", 1)[1].decode()):
            time.sleep(0.02)
    record = {"body": body.decode(errors="replace"), "pid": os.getpid()}
    if full:
        record["meta"] = request.meta
        record["size"] = len(body)
    os.write(out, (json.dumps(record) + "\n").encode())
    text = body[:64].decode(errors="replace")
    if text.startswith(("fail", "slowfail", "holdfail")):
        raise RuntimeError("rejected " + text)
    if text.startswith("progress:"):
        steps = int(text[9:])
        for n in range(1, steps + 1):
            request.progress(n / steps, "step %%d" %% n)
    return b"done " + body

workerpool.serve(handler, with_request=True)
""" % {"pydir": PYTHON_DIR}


def records(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def bodies(path):
    return [r["body"] for r in records(path)]


_counter = [0]


def unique_name(what):
    _counter[0] += 1
    return "wp-test-%d-%d-%s" % (os.getpid(), _counter[0], what)


@unittest.skipUnless(URL, "WORKERPOOL_TEST_AMQP_URL is not set (needs a "
                     "RabbitMQ: scripts/test starts one)")
class RabbitmqTestCase(wp.TestCase):
    """What every RabbitMQ service test needs (no tests of its own): its
    own queues, deleted afterwards; a pool of a service group consuming
    them into a recorder job group; waits on the broker and on status."""

    def setUp(self):
        self.amqp = MiniAmqp()
        self.addCleanup(self.amqp.close)
        self.queues = []

    def tearDown(self):
        for queue in self.queues:
            try:
                self.amqp.delete(queue)
            except (OSError, AmqpError):
                self.amqp = MiniAmqp()  # a 404 closes the channel
                self.addCleanup(self.amqp.close)

    def queue(self, what):
        name = unique_name(what)
        self.queues.append(name)
        return name

    def service_pool(self, queue, dead=None, prefetch=20, max_retries=3,
                     jobs=2, delay_ms=0, record="body", url=None,
                     declare=True, extra_groups="", restart=None,
                     start=True, service_processes=1, rabbitmq_keys=None,
                     work_keys=""):
        """A pool of one service group (intake) consuming QUEUE into a
        recorder job group (work). The records land in pool.tmp/processed.
        RABBITMQ_KEYS: more keys of the rabbitmq section; WORK_KEYS: more
        keys of the work group, as YAML lines ("\n    request_timeout: 5s")."""
        rabbitmq = {"url": url or URL, "queues": [queue], "declare": declare,
                    "prefetch": prefetch, "max_retries": max_retries}
        if dead:
            rabbitmq["dead_letter_queue"] = dead
        rabbitmq.update(rabbitmq_keys or {})
        restart_text = ""
        if restart:
            restart_text = (
                "\n    restart: {backoff: {initial: 20ms, max: 200ms}, "
                "intensity: {max_restarts: 100000, period: 60s}}")
        yaml = """
pool: {name: rmq, stop_timeout: 10s}
groups:
  - name: intake
    type: service
    processes: %d
    routes_to: [work]
    rabbitmq: %s%s
  - name: work
    type: job
    processes: %d
    command: [python3, "{tmp}/recorder.py"]
    env: {OUT: "{tmp}/processed", DELAY_MS: "%d", RECORD: %s}%s%s
%s""" % (service_processes, json.dumps(rabbitmq), restart_text, jobs,
         delay_ms, record, work_keys, restart_text, extra_groups)
        pool = self.pool(yaml, start=False)
        pool.write("recorder.py", RECORDER)
        pool.processed = os.path.join(pool.tmp, "processed")
        if start:
            pool.start()
        return pool

    def wait_processed(self, pool, expected, timeout=60):
        """Waits until every body in EXPECTED was processed at least once;
        returns the list of processed bodies."""
        expected = set(expected)

        def done():
            seen = bodies(pool.processed)
            return seen if expected <= set(seen) else None
        return wp.wait_until(
            done, timeout, "%d messages processed" % len(expected),
            on_timeout=lambda: "processed %d distinct of %d\n%s" % (
                len(expected & set(bodies(pool.processed))), len(expected),
                pool.log_tail()), interval=0.2)

    def wait_depth(self, queue, messages, timeout=30):
        wp.wait_until(lambda: self.amqp.declare(queue, passive=True)[0] ==
                      messages, timeout, "queue %s to hold %d messages" %
                      (queue, messages), interval=0.2)

    def wait_drained(self, queue, timeout=30):
        """Waits until QUEUE is empty with nothing unacked and one consumer
        (the pool's service) still on it."""
        wp.wait_until(lambda: queue_counts(queue) == (0, 0, 1), timeout,
                      "queue empty, nothing unacked, one consumer",
                      interval=0.5)

    def wait_service_figures(self, pool, ready):
        """Waits until the service's figures in `workerpool status --json`
        satisfy READY (called with the service's "app" object); returns
        them."""
        def figures():
            code, out, _ = wp.run_cli(["status", "--json", "--socket",
                                       os.path.join(pool.tmp, "rmq.sock")])
            if code != 0:
                return None
            for group in json.loads(out)["groups"]:
                if group["name"] == "intake" and group["app"]:
                    app = group["app"][0]
                    if ready(app):
                        return app
            return None
        return wp.wait_until(figures, 30, "the service's figures in status",
                             interval=0.5)

    def service_pids(self, pool):
        return [c.pid for c in pool.children("intake")]

    def declare_like_the_service(self, queue, dead=None, keys=None):
        """Declares QUEUE as the service does for a rabbitmq section with
        dead_letter_queue DEAD and KEYS (queue_type, delivery_limit): a
        queue declared otherwise would be refused by a quorum service."""
        keys = keys or {}
        arguments = {}
        if keys.get("queue_type") == "quorum":
            arguments = {"x-queue-type": "quorum",
                         "x-delivery-limit": keys.get("delivery_limit", 20)}
            if dead:
                arguments.update({
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dead,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish"})
        self.amqp.declare(queue, arguments=arguments)

    def check_kill_storm(self, quorum=False):
        """Random SIGKILLs of the service and the jobs while 2000 messages
        go through: nothing lost, duplicates within the window. QUORUM: the
        queue is a quorum queue (with a delivery limit far above what the
        storm can reach)."""
        # 2000 messages (not 10,000) keeps the file's runtime modest; the
        # storm lasts as long as the work does.
        queue = self.queue("storm")
        dead = self.queue("storm-dead")
        prefetch = 10
        messages = ["s%d" % n for n in range(2000)]
        keys = {"queue_type": "quorum", "delivery_limit": 1000} if quorum \
            else {}
        self.declare_like_the_service(queue, dead, keys)
        self.amqp.publish(queue, messages)
        pool = self.service_pool(queue, dead=dead, prefetch=prefetch,
                                 max_retries=1000, jobs=2, delay_ms=2,
                                 restart=True, rabbitmq_keys=keys)
        pool.wait_for_children(3)
        rng = random.Random(5)
        kills = {"intake": 0, "work": 0}
        limit = time.monotonic() + wp.deadline(40)
        rounds = 0
        while time.monotonic() < limit:
            done = len(set(bodies(pool.processed)))
            # Not before both groups lost a process: a test process starved
            # on a loaded machine (each look at /proc reads every process's
            # status) could otherwise see 90% done before its second kill.
            if (done >= len(messages) * 0.9 and kills["intake"] > 0
                    and kills["work"] > 0):
                break
            time.sleep(rng.uniform(0.2, 0.4))
            # Every third victim is the service, the first one included: on
            # a loaded machine a storm of random picks could end without it.
            group = "intake" if rounds % 3 == 0 else "work"
            rounds += 1
            victims = pool.children(group)
            if not victims:
                continue
            victim = rng.choice(victims)
            if wp._kill(victim.pid, signal.SIGKILL):
                kills[victim.group] += 1
        self.assertGreater(kills["intake"], 0)
        self.assertGreater(kills["work"], 0)
        seen = self.wait_processed(pool, messages, timeout=90)
        duplicates = len(seen) - len(set(seen))
        # Each service death can replay at most its prefetch window; each
        # job death at most the request it was serving (max_inflight 1),
        # counted twice when the service also dies before acking its retry.
        window = kills["intake"] * prefetch + 2 * kills["work"]
        self.assertLessEqual(duplicates, window, "kills %s" % kills)
        # A message the last killed service had processed but not acked is
        # seen already, but comes back from RabbitMQ: wait for its second
        # pass before stopping.
        self.wait_drained(queue, timeout=60)
        self.assertEqual(pool.stop(), 0)
        self.assertEqual(self.amqp.declare(queue, passive=True)[0], 0,
                         "messages left unacked or unprocessed")
        self.assertEqual(self.amqp.declare(dead, passive=True)[0], 0)
        sys_note = "kill storm%s: %d messages, kills %s, duplicates %d" % (
            " (quorum queue)" if quorum else "", len(messages), kills,
            duplicates)
        print(sys_note)

    def check_poison_message(self, quorum=False):
        """A message whose job always fails: tried 1 + max_retries times,
        then dead-lettered with its reason and original properties. QUORUM:
        from a quorum queue the service declared."""
        queue = self.queue("poison")
        dead = self.queue("poison-dead")
        keys = {"queue_type": "quorum"} if quorum else {}
        pool = self.service_pool(queue, dead=dead, max_retries=2,
                                 rabbitmq_keys=keys)
        pool.wait_for_log(r"rabbitmq-service: connected to")
        self.assertEqual(queue_type(queue), "quorum" if quorum else "classic")
        self.amqp.publish(queue, ["fail-poison", "good-1"], {
            "message_id": "poison-1", "content_type": "text/plain",
            "headers": {"tenant": "acme"}})
        self.wait_depth(dead, 1)
        letter = self.amqp.get(dead)
        self.assertEqual(letter.body, b"fail-poison")
        self.assertEqual(letter.headers["x-workerpool-retries"], 2)
        self.assertIn("rejected fail-poison",
                      letter.headers["x-workerpool-error"])
        self.assertEqual(letter.headers["x-workerpool-error-code"],
                         "handler_error")
        self.assertEqual(letter.headers["x-workerpool-queue"], queue)
        # The original properties travel along.
        self.assertEqual(letter.properties["message_id"], "poison-1")
        self.assertEqual(letter.properties["content_type"], "text/plain")
        self.assertEqual(letter.headers["tenant"], "acme")
        # Tried 1 + max_retries times, the good one once.
        wp.wait_until(lambda: bodies(pool.processed).count("fail-poison") == 3,
                      what="three attempts")
        self.assertEqual(bodies(pool.processed).count("good-1"), 1)
        pool.wait_for_log(r"dead-lettered to '%s' after 2 retries" % dead)
        self.assertEqual(pool.stop(), 0)
        self.assertEqual(self.amqp.declare(queue, passive=True)[0], 0)


class RabbitmqServiceTest(RabbitmqTestCase):

    # ------------------------------------------------------------- volume

    def test_ten_thousand_messages_each_processed_once_and_acked(self):
        queue = self.queue("tasks")
        self.amqp.declare(queue)
        messages = ["m%d" % n for n in range(10000)]
        self.amqp.publish(queue, messages)
        pool = self.service_pool(queue, prefetch=100)
        seen = self.wait_processed(pool, messages, timeout=120)
        # Processed once each: no redelivery without a failure.
        self.assertEqual(len(seen), len(messages))
        # Empty and nothing unacked while the pool still runs.
        self.wait_drained(queue)
        # The figures reach the Watcher (`workerpool status --json`).
        app = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["acks"] == len(messages)
            and app["queues"][queue]["messages"] == 0)
        self.assertEqual(app["connection"], "connected")
        self.assertEqual(app["queues"][queue]["deliveries"], len(messages))
        self.assertEqual(app["queues"][queue]["consumers"], 1)
        self.assertEqual(app["queues"][queue]["dead_letters"], 0)
        self.assertEqual(pool.stop(), 0)
        self.assertEqual(self.amqp.declare(queue, passive=True)[0], 0)

    def test_bodies_of_every_size_arrive_whole_and_once(self):
        # The service's loop reads a delivery itself only when every byte of
        # it has arrived and it fits the 64 KiB it peeks at; the rest (and
        # anything behind them) goes to the AMQP thread and back. Sizes
        # around those bounds and librabbitmq's 128 KiB frames, interleaved
        # with small ones, so that both readers take turns mid-stream.
        queue = self.queue("sizes")
        self.amqp.declare(queue)
        sizes = [1, 100, 65000, 65536, 65537, 70000, 131072, 131073, 300000,
                 0, 2, 1000000]
        messages = []
        for n in range(72):
            size = sizes[n % len(sizes)]
            head = "b%d:" % n
            filler = "abcdefghijklmnopqrstuvwxyz"
            body = (head + filler * (size // len(filler) + 1))[:max(
                size, len(head))]
            messages.append(body)
        self.amqp.publish(queue, messages, batch=12)
        pool = self.service_pool(queue, prefetch=10)
        seen = self.wait_processed(pool, messages, timeout=120)
        self.assertEqual(sorted(seen), sorted(messages))
        self.wait_drained(queue)
        app = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["acks"] == len(messages))
        self.assertEqual(app["queues"][queue]["deliveries"], len(messages))
        self.assertEqual(app["queues"][queue]["redelivered"], 0)
        self.assertEqual(len(self.service_pids(pool)), 1)
        self.assertEqual(pool.stop(), 0)

    def test_kill_storm_loses_nothing_and_duplicates_stay_within_window(self):
        self.check_kill_storm()

    def test_acks_never_cover_a_delivery_still_in_flight(self):
        # Acks go out in batches (one multiple ack where the tags allow it):
        # a slow delivery still in flight must stay unacked while the fast
        # ones after it are acked, so when the service dies it comes back.
        queue = self.queue("inflight")
        self.amqp.declare(queue)
        fast = ["f%d" % n for n in range(20)]
        # The slow one runs until the test releases it after the kill (a
        # fixed pause could end first on a slow machine: then it would be
        # acked, and not come back).
        pool = self.service_pool(queue, prefetch=50, jobs=2, restart=True,
                                 start=False)
        release = os.path.join(pool.tmp, "release")
        slow = "hold:" + release
        self.amqp.publish(queue, [slow] + fast)
        pool.start()
        self.wait_processed(pool, fast, timeout=30)
        self.assertNotIn(slow, bodies(pool.processed),
                         "the slow message finished before the kill")
        # Its acks are out once the queue shows only the slow one unacked.
        wp.wait_until(lambda: queue_counts(queue) == (0, 1, 1), 30,
                      "only the slow message unacked")
        (service,) = self.service_pids(pool)
        os.kill(service, signal.SIGKILL)
        open(release, "w").close()
        # The first job still finishes it (its answer has nowhere to go);
        # RabbitMQ redelivers it to the new service, so it runs again.
        wp.wait_until(lambda: bodies(pool.processed).count(slow) >= 2,
                      60, "the slow message processed again after the kill")
        wp.wait_until(lambda: self.amqp.declare(queue, passive=True)[0] == 0,
                      30, "queue empty")
        self.assertEqual(pool.stop(), 0)
        self.assertEqual(queue_counts(queue)[:2], (0, 0))

    def test_prefetch_one_acks_and_dead_letters_interleaved_figures_exact(self):
        # At prefetch 1 the loop thread writes most acks itself (TryAck)
        # while dead letters (publish, confirm, then ack) go through the AMQP
        # thread: every message settled exactly once, in either path, and
        # the figures count both.
        queue = self.queue("p1")
        dead = self.queue("p1-dead")
        self.amqp.declare(queue)
        messages = [("fail-%d" if n % 10 == 3 else "ok-%d") % n
                    for n in range(200)]
        failing = [m for m in messages if m.startswith("fail")]
        self.amqp.publish(queue, messages)
        pool = self.service_pool(queue, dead=dead, prefetch=1, max_retries=0)
        seen = self.wait_processed(pool, messages, timeout=60)
        self.assertEqual(sorted(seen), sorted(messages), "processed once each")
        self.wait_depth(dead, len(failing))
        self.wait_drained(queue)
        q = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["acks"] +
            app["queues"][queue]["dead_letters"] == len(messages)
        )["queues"][queue]
        self.assertEqual(q["deliveries"], len(messages))
        self.assertEqual(q["acks"], len(messages) - len(failing))
        self.assertEqual(q["dead_letters"], len(failing))
        self.assertEqual(pool.stop(), 0)
        self.assertEqual(self.amqp.declare(queue, passive=True)[0], 0)

    # ------------------------------------------------------------- failures

    def test_poison_message_dead_lettered_after_max_retries_with_reason(self):
        self.check_poison_message()

    def test_body_over_frame_limit_dead_lettered_with_reason(self):
        queue = self.queue("huge")
        dead = self.queue("huge-dead")
        pool = self.service_pool(queue, dead=dead)
        pool.wait_for_log(r"rabbitmq-service: connected to")
        huge = b"x" * (17 * 1024 * 1024)
        self.amqp.publish(queue, [huge, b"small-after-huge"])
        self.wait_depth(dead, 1, timeout=60)
        letter = self.amqp.get(dead)
        self.assertEqual(len(letter.body), len(huge))
        self.assertEqual(letter.headers["x-workerpool-error-code"],
                         "too_large")
        self.assertIn("frame limit", letter.headers["x-workerpool-error"])
        self.wait_processed(pool, ["small-after-huge"])
        self.assertNotIn(len(huge), [len(b) for b in bodies(pool.processed)])
        self.assertEqual(len(self.service_pids(pool)), 1)
        self.assertEqual(pool.stop(), 0)

    # ------------------------------------------------------------- RPC

    def test_reply_to_gets_reply_progress_and_errors_with_correlation_id(self):
        queue = self.queue("rpc")
        replies = self.queue("rpc-replies")
        self.amqp.declare(replies)
        pool = self.service_pool(queue, max_retries=0, dead=self.queue("d"))
        pool.wait_for_log(r"rabbitmq-service: connected to")
        self.amqp.publish(queue, ["ask"], {"reply_to": replies,
                                           "correlation_id": "c-1"})
        self.wait_depth(replies, 1)
        reply = self.amqp.get(replies)
        self.assertEqual(reply.body, b"done ask")
        self.assertEqual(reply.properties["correlation_id"], "c-1")
        self.assertEqual(reply.headers["x-workerpool-status"], "ok")

        self.amqp.publish(queue, ["progress:2"], {"reply_to": replies,
                                                  "correlation_id": "c-2"})
        self.wait_depth(replies, 3)
        answers = self.amqp.get_all(replies)
        self.assertEqual([a.properties["correlation_id"] for a in answers],
                         ["c-2"] * 3)
        self.assertEqual([a.headers["x-workerpool-status"] for a in answers],
                         ["progress", "progress", "ok"])
        self.assertEqual([a.body for a in answers],
                         [b"step 1", b"step 2", b"done progress:2"])
        self.assertAlmostEqual(answers[0].headers["x-workerpool-progress"],
                               0.5)

        self.amqp.publish(queue, ["fail-rpc"], {"reply_to": replies,
                                                "correlation_id": "c-3"})
        self.wait_depth(replies, 1)
        error = self.amqp.get(replies)
        self.assertEqual(error.properties["correlation_id"], "c-3")
        self.assertEqual(error.headers["x-workerpool-status"], "error")
        self.assertIn("rejected fail-rpc", error.headers["x-workerpool-error"])
        self.assertEqual(pool.stop(), 0)

    # ------------------------------------------------------------- bad input

    def assert_clear_error_and_no_crash_loop(self, pool, regex):
        pool.wait_for_children(3)
        before = self.service_pids(pool)
        pool.wait_for_log(regex)
        time.sleep(2 * wp.SCALE)  # reconnect attempts happen meanwhile
        self.assertEqual(self.service_pids(pool), before,
                         "the service was restarted\n" + pool.log_tail())
        self.assertTrue(pool.running())
        # Logged once per interval, not once per attempt.
        self.assertLessEqual(len(pool.find_log(regex)), 2, pool.log_tail())
        self.assertEqual(pool.stop(), 0)

    def url_with(self, user=None, password=None, vhost=None, port=None):
        parts = urllib.parse.urlsplit(URL)
        netloc = "%s:%s@%s:%d" % (user or parts.username,
                                  password or parts.password, parts.hostname,
                                  port or parts.port)
        path = "" if vhost is None else "/" + urllib.parse.quote(vhost, "")
        return "amqp://%s%s" % (netloc, path)

    def test_wrong_credentials_clear_error_pool_stays_up(self):
        pool = self.service_pool(self.queue("q"),
                                 url=self.url_with(password="wrong"))
        self.assert_clear_error_and_no_crash_loop(
            pool, r"rabbitmq-service: error: login to .* as 'guest' refused"
            r".*check the user and password")

    def test_unknown_vhost_clear_error_pool_stays_up(self):
        pool = self.service_pool(self.queue("q"),
                                 url=self.url_with(vhost="no-such-vhost"))
        self.assert_clear_error_and_no_crash_loop(
            pool, r"rabbitmq-service: error: .*vhost 'no-such-vhost'")

    def test_unknown_queue_without_declare_clear_error_pool_stays_up(self):
        queue = self.queue("missing")
        pool = self.service_pool(queue, declare=False)
        self.assert_clear_error_and_no_crash_loop(
            pool, r"rabbitmq-service: error: queue '%s' does not exist.*"
            r"declare: true" % queue)

    def test_unreachable_host_clear_error_pool_stays_up(self):
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        pool = self.service_pool(self.queue("q"), url=self.url_with(port=port))
        self.assert_clear_error_and_no_crash_loop(
            pool, r"rabbitmq-service: error: cannot connect to 127\.0\.0\.1:%d"
            % port)

    def test_malformed_url_is_a_config_error_at_check(self):
        pool = self.service_pool("q", url="amqp//guest@localhost",
                                 start=False)
        code, out, err = wp.run_cli(["check", pool.path])
        self.assertEqual(code, 1, out + err)
        self.assertRegex(err, r"pool\.yaml:\d+:\d+: .*invalid RabbitMQ URL")

    # ------------------------------------------------------------- many pools

    def test_two_pools_share_work_and_survivor_finishes_after_sigkill(self):
        queue = self.queue("shared")
        messages = ["p%d" % n for n in range(3000)]
        self.amqp.declare(queue)
        self.amqp.publish(queue, messages)
        first = self.service_pool(queue, prefetch=10, delay_ms=3)
        second = self.service_pool(queue, prefetch=10, delay_ms=3)
        # Both take part before one dies.
        wp.wait_until(lambda: len(records(first.processed)) >= 200 and
                      len(records(second.processed)) >= 200, 60,
                      "both pools working")
        first.kill_everything()
        taken_by_first = set(bodies(first.processed))
        seen = self.wait_processed(second, set(messages) - taken_by_first,
                                   timeout=90)
        self.assertEqual(set(seen) | taken_by_first, set(messages))
        self.assertEqual(second.stop(), 0)
        self.assertEqual(self.amqp.declare(queue, passive=True)[0], 0)

    def test_two_service_processes_in_one_pool_share_the_queue(self):
        queue = self.queue("two")
        messages = ["t%d" % n for n in range(1000)]
        self.amqp.declare(queue)
        self.amqp.publish(queue, messages)
        pool = self.service_pool(queue, prefetch=10, delay_ms=1,
                                 service_processes=2)
        seen = self.wait_processed(pool, messages)
        self.assertEqual(len(seen), len(messages))
        self.assertEqual(pool.stop(), 0)
        self.assertEqual(self.amqp.declare(queue, passive=True)[0], 0)

    # ------------------------------------------------------------- the broker

    def test_broker_restart_midrun_service_reconnects_and_finishes(self):
        queue = self.queue("restart")
        messages = ["r%d" % n for n in range(3000)]
        self.amqp.declare(queue)
        self.amqp.publish(queue, messages)
        self.amqp.close()
        pool = self.service_pool(queue, prefetch=20, delay_ms=3)
        wp.wait_until(lambda: len(records(pool.processed)) >= 300, 60,
                      "work under way")
        mark = pool.mark()
        rabbitmqctl("stop_app")
        try:
            pool.wait_for_log(r"rabbitmq-service: error: connection to .* "
                              r"lost", since=mark)
            time.sleep(1)
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        pool.wait_for_log(r"rabbitmq-service: connected to", since=mark,
                          timeout=60)
        self.wait_processed(pool, messages, timeout=90)
        self.assertEqual(len(self.service_pids(pool)), 1)
        self.assertEqual(pool.stop(), 0)
        self.amqp = MiniAmqp()
        self.addCleanup(self.amqp.close)
        self.assertEqual(self.amqp.declare(queue, passive=True)[0], 0)


if __name__ == "__main__":
    wp.main()
