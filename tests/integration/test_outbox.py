"""The RabbitMQ service's publishing side (a service group with
`rabbitmq.publish`, "the outbox"): an http-reactor's requests go through
RabbitMQ to a pool that consumes them, and come back (rpc), or are answered
202 once RabbitMQ has them (enqueue). docs/RABBITMQ.md, "Publishing";
issue 16.

needs: rabbitmq (WORKERPOOL_TEST_AMQP_URL; the rabbitmqctl settings of the
node come from the environment scripts/rabbitmq's env file exports).

Two pools on one broker, as two hosts would run them: pool A has the
http-reactor and the outbox, pool B consumes the queue with a
rabbitmq-service into echo-jobs. Many requests are pipelined over a few
connections (the http-reactor reads up to 16 ahead on each), so 10,000 take
seconds. The queue is inspected with test_rabbitmq's small AMQP client,
independent of the code under test.
"""

import json
import os
import signal
import socket
import threading
import time
import unittest

import wp
from test_rabbitmq import MiniAmqp, AmqpError, URL, queue_counts, rabbitmqctl

PYTHON_DIR = os.path.join(wp.TOP, "src", "python")

# Answers with the request's meta (the AMQP delivery as rabbitmq-service
# describes it) for "meta", fails "fail...", sleeps "sleep:MS", else echoes.
META_JOB = r"""
import json, sys, time
sys.path.insert(0, %(pydir)r)
import workerpool

def handler(body, meta):
    if body == b"meta":
        return json.dumps(meta).encode()
    if body.startswith(b"fail"):
        raise RuntimeError(body.decode())
    return body

workerpool.serve(handler)
""" % {"pydir": PYTHON_DIR}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "%d %r %r" % (self.status, self.headers, self.body[:200])


def read_responses(sock, count):
    """COUNT HTTP/1.1 responses (Content-Length framed) from SOCK."""
    buffer = b""
    out = []
    while len(out) < count:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            data = sock.recv(1 << 16)
            if not data:
                break
            buffer += data
            continue
        head = buffer[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(buffer) < end + 4 + length:
            data = sock.recv(1 << 16)
            if not data:
                break
            buffer += data
        body = buffer[end + 4:end + 4 + length]
        buffer = buffer[end + 4 + length:]
        out.append(Response(status, headers, body))
    return out


def pipeline(port, group, bodies, connections=50, timeout=60, headers=""):
    """POSTs every body to /jobs/GROUP, pipelined over CONNECTIONS
    connections; returns the responses in the order of BODIES (None for a
    request whose connection ended before its answer)."""
    results = [None] * len(bodies)
    deadline = time.monotonic() + wp.deadline(timeout)

    def worker(start):
        indexes = list(range(start, len(bodies), connections))
        if not indexes:
            return
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(max(1, deadline - time.monotonic()))
            requests = []
            for i in indexes:
                body = bodies[i].encode()
                requests.append(
                    ("POST /jobs/%s HTTP/1.1\r\nHost: x\r\n%s"
                     "Content-Length: %d\r\n\r\n" % (group, headers,
                                                     len(body))).encode() +
                    body)
            sender = threading.Thread(
                target=lambda: sock.sendall(b"".join(requests)), daemon=True)
            sender.start()
            try:
                responses = read_responses(sock, len(indexes))
            except socket.timeout:
                responses = []
            for i, response in zip(indexes, responses):
                results[i] = response

    threads = [threading.Thread(target=worker, args=(n,), daemon=True)
               for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def post(port, group, body, headers="", timeout=30):
    return pipeline(port, group, [body], connections=1, timeout=timeout,
                    headers=headers)[0]


_counter = [0]


def unique(what):
    _counter[0] += 1
    return "wp-outbox-%d-%d-%s" % (os.getpid(), _counter[0], what)


@unittest.skipUnless(URL, "WORKERPOOL_TEST_AMQP_URL is not set (needs a "
                     "RabbitMQ: scripts/test starts one)")
class OutboxTest(wp.TestCase):

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
        name = unique(what)
        self.queues.append(name)
        return name

    # -- the two pools

    def consumer_pool(self, queue, job="echo", jobs=2, prefetch=100,
                      max_retries=0, restart=False):
        """Pool B: a rabbitmq-service consuming QUEUE (declared) into a job
        group (`workerpool builtin echo-job`, or META_JOB)."""
        command = ('[workerpool, builtin, echo-job]' if job == "echo" else
                   '[python3, "{tmp}/meta_job.py"]')
        restart_text = ("\n    restart: {backoff: {initial: 20ms, max: 200ms},"
                        " intensity: {max_restarts: 1000, period: 60s}}"
                        if restart else "")
        pool = self.pool("""
pool: {name: consumer, stop_timeout: 10s}
groups:
  - name: intake
    type: service
    routes_to: [work]
    rabbitmq: %s%s
  - name: work
    type: job
    processes: %d
    max_inflight: 16
    command: %s
""" % (json.dumps({"url": URL, "queues": [queue], "declare": True,
                   "prefetch": prefetch, "max_retries": max_retries}),
       restart_text, jobs, command), start=False)
        pool.write("meta_job.py", META_JOB)
        pool.start()
        # Consuming: the queue has its consumer.
        wp.wait_until(lambda: (queue_counts(queue) or (0, 0, 0))[2] >= 1, 30,
                      "pool B consuming %s" % queue, interval=0.2)
        return pool

    def front_pool(self, publish, extra=""):
        """Pool A: an http-reactor routing to `outbox` (publishing with
        PUBLISH, a dict) and to `queued` when EXTRA defines it."""
        self.port = free_port()
        groups = "[outbox, queued]" if "name: queued" in extra else "[outbox]"
        pool = self.pool("""
pool: {name: front, stop_timeout: 10s}
groups:
  - name: web
    type: reactor
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:%d"]
    routes_to: %s
  - name: outbox
    type: service
    rabbitmq: {url: "%s", publish: %s}
%s""" % (self.port, groups, URL, json.dumps(publish), extra))
        pool.wait_for_log(r"outbox\[0\].*publisher: connected", timeout=30)
        return pool

    def app(self, pool, group="outbox"):
        """The publishing figures of GROUP's process 0 (status --json)."""
        code, out, _ = wp.run_cli(["status", "--json", "--socket",
                                   os.path.join(pool.tmp, "front.sock")])
        self.assertEqual(code, 0)
        for entry in json.loads(out)["groups"]:
            if entry["name"] == group and entry["app"]:
                return entry["app"][0]["publish"]
        return None

    def wait_figures(self, pool, ready, group="outbox"):
        return wp.wait_until(lambda: (lambda app: app if app and ready(app)
                                      else None)(self.app(pool, group)),
                             30, "the outbox's figures", interval=0.3)

    # ------------------------------------------------------------- rpc

    def test_rpc_reply_error_and_timeout_through_another_pool(self):
        queue = self.queue("rpc")
        self.consumer_pool(queue)
        front = self.front_pool({"routing_key": queue, "timeout": "2s"})

        r = post(self.port, "outbox", "hello")
        self.assertEqual((r.status, r.body), (200, b"hello"), r)
        self.assertTrue(r.headers.get("x-message-id", "").startswith("wp-"), r)

        # Pool B's job fails (max_retries 0): its error comes back as the
        # error of this request, code and text.
        r = post(self.port, "outbox", "fail-on-purpose")
        self.assertEqual(r.status, 502, r)
        self.assertEqual(r.json(), {"code": 1, "error": "fail-on-purpose"})

        # Past publish.timeout: 504 after about 2 s, never a hang; the late
        # reply is dropped and counted.
        started = time.monotonic()
        r = post(self.port, "outbox", "sleep:3000")
        elapsed = time.monotonic() - started
        self.assertEqual(r.status, 504, r)
        self.assertEqual(r.json()["code"], 3)
        self.assertIn("no reply within 2s", r.json()["error"])
        self.assertGreater(elapsed, 1.8)
        self.assertLess(elapsed, 3.5)
        figures = self.wait_figures(front, lambda a: a["late_replies"] >= 1)
        self.assertEqual(figures["timeouts"], 1)
        self.assertEqual(figures["replies"], 1)
        self.assertEqual(figures["error_replies"], 1)
        self.assertEqual(figures["pending"], 0)
        front.check_log()

    def test_message_carries_id_priority_and_request_headers(self):
        queue = self.queue("meta")
        self.consumer_pool(queue, job="meta", jobs=1)
        self.front_pool({"routing_key": queue, "timeout": "10s",
                         "persistent": False})
        r = post(self.port, "outbox", "meta",
                 headers="X-Priority: -7\r\nX-Request-Id: req-42\r\n"
                         "Content-Type: text/plain\r\n")
        self.assertEqual(r.status, 200, r)
        meta = r.json()
        properties = meta["properties"]
        self.assertEqual(meta["queue"], queue)
        self.assertEqual(properties["message_id"], r.headers["x-message-id"])
        self.assertEqual(properties["correlation_id"],
                         properties["message_id"])
        self.assertTrue(properties["reply_to"].startswith(
            "amq.rabbitmq.reply-to."), properties)
        self.assertEqual(properties["priority"], 7)
        self.assertEqual(properties["delivery_mode"], 1)
        self.assertEqual(properties["expiration"], "10000")
        self.assertEqual(properties["content_type"], "text/plain")
        headers = properties["headers"]
        self.assertEqual(headers["x-workerpool-header-x-request-id"], "req-42")
        self.assertEqual(headers["x-workerpool-header-content-type"],
                         "text/plain")

    def test_ten_thousand_pipelined_rpc_requests_all_answered(self):
        queue = self.queue("many")
        self.consumer_pool(queue, jobs=2, prefetch=200)
        front = self.front_pool({"routing_key": queue, "timeout": "60s",
                                 "max_pending": 10000})
        bodies = ["r%d" % n for n in range(10000)]
        started = time.monotonic()
        responses = pipeline(self.port, "outbox", bodies, connections=200)
        elapsed = time.monotonic() - started
        bad = [(b, r) for b, r in zip(bodies, responses)
               if r is None or r.status != 200 or r.body != b.encode()]
        self.assertEqual(bad[:5], [], "%d of 10000 wrong" % len(bad))
        ids = {r.headers["x-message-id"] for r in responses}
        self.assertEqual(len(ids), 10000)
        print("10,000 rpc requests through RabbitMQ in %.1f s" % elapsed)
        figures = self.wait_figures(front, lambda a: a["replies"] == 10000)
        self.assertEqual(figures["late_replies"], 0)
        self.assertEqual(figures["pending"], 0)

    # ------------------------------------------------------------- enqueue

    def test_enqueue_ten_thousand_202_and_exactly_those_messages_queued(self):
        queue = self.queue("enqueue")
        self.amqp.declare(queue)
        front = self.front_pool({"routing_key": queue, "mode": "enqueue",
                                 "max_pending": 10000})
        bodies = ["e%d" % n for n in range(10000)]
        responses = pipeline(self.port, "outbox", bodies, connections=50)
        statuses = {}
        for r in responses:
            key = None if r is None else r.status
            statuses[key] = statuses.get(key, 0) + 1
        self.assertEqual(statuses, {202: 10000})
        sent = {}
        for body, r in zip(bodies, responses):
            answer = r.json()
            self.assertEqual(answer["message_id"], r.headers["x-message-id"])
            self.assertEqual(answer["routing_key"], queue)
            sent[answer["message_id"]] = body.encode()
        self.assertEqual(len(sent), 10000)
        self.assertEqual(queue_counts(queue)[0], 10000)
        queued = {}
        for message in self.amqp.get_all(queue):
            self.assertEqual(message.properties["delivery_mode"], 2)
            self.assertNotIn("reply_to", message.properties)
            queued[message.properties["message_id"]] = message.body
        self.assertEqual(queued, sent)
        figures = self.wait_figures(front, lambda a: a["confirmed"] == 10000)
        self.assertEqual(figures["published"], 10000)

    def test_no_queue_for_the_routing_key_is_a_clear_503(self):
        queue = unique("nobody")  # never declared
        self.front_pool({"routing_key": queue, "mode": "enqueue"})
        r = post(self.port, "outbox", "lost?")
        self.assertEqual(r.status, 503, r)
        self.assertIn("no queue takes the message", r.json()["error"])
        self.assertIn("not queued", r.json()["error"])

    # ------------------------------------------------------------- limits

    def test_beyond_max_pending_answered_queue_full_at_once(self):
        queue = self.queue("full")
        # Nobody consumes the queue yet, so the two requests stay pending
        # for as long as the test needs: the figures reach status a second
        # or two after a change, and two 2 s jobs could have been answered
        # by the time the test saw them pending (then the five below would
        # have been published, not refused).
        self.amqp.declare(queue)
        front = self.front_pool({"routing_key": queue, "max_pending": 2,
                                 "timeout": "%ds" % wp.deadline(60)})
        slow = []
        thread = threading.Thread(target=lambda: slow.extend(
            pipeline(self.port, "outbox", ["sleep:2000"] * 2, connections=2)))
        thread.start()
        self.wait_figures(front, lambda a: a["pending"] == 2)
        started = time.monotonic()
        responses = pipeline(self.port, "outbox",
                             ["x%d" % n for n in range(5)], connections=5)
        # At once: well within the publish timeout the two pending wait on.
        self.assertLess(time.monotonic() - started, wp.deadline(1.5))
        self.assertEqual([r.status for r in responses], [503] * 5, responses)
        self.assertIn("publish.max_pending", responses[0].json()["error"])
        self.assertEqual(responses[0].headers.get("retry-after"), "1")
        self.consumer_pool(queue, jobs=2)
        thread.join(wp.deadline(60))
        self.assertEqual([(r.status, r.body) for r in slow],
                         [(200, b"sleep:2000")] * 2)
        figures = self.wait_figures(front, lambda a: a["pending"] == 0)
        self.assertEqual(figures["rejected_full"], 5)

    def test_connection_blocked_answers_queue_full_not_a_hang(self):
        queue = self.queue("blocked")
        self.amqp.declare(queue)
        front = self.front_pool({"routing_key": queue, "mode": "enqueue",
                                 "timeout": "20s"})
        self.assertEqual(post(self.port, "outbox", "before").status, 202)
        rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            # The publish that meets the alarm waits for its confirm (the
            # broker reads nothing more); RabbitMQ says it blocked us, and
            # from then on requests are refused at once.
            held = []
            thread = threading.Thread(
                target=lambda: held.append(post(self.port, "outbox", "held")))
            thread.start()
            self.wait_figures(front, lambda a: a["blocked"])
            started = time.monotonic()
            r = post(self.port, "outbox", "refused")
            self.assertLess(time.monotonic() - started, 2)
            self.assertEqual(r.status, 503, r)
            self.assertIn("RabbitMQ blocks publishing", r.json()["error"])
        finally:
            rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        thread.join(30)
        self.assertEqual(held[0].status, 202, held)
        self.wait_figures(front, lambda a: not a["blocked"])
        self.assertEqual(post(self.port, "outbox", "after").status, 202)
        queued = sorted(m.body for m in self.amqp.get_all(queue))
        self.assertEqual(queued, [b"after", b"before", b"held"])

    def test_no_broker_answers_at_once(self):
        port = free_port()  # nothing listens there
        self.port = free_port()
        pool = self.pool("""
pool: {name: front, stop_timeout: 5s}
groups:
  - name: web
    type: reactor
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:%d"]
    routes_to: [outbox]
  - name: outbox
    type: service
    rabbitmq: {url: "amqp://guest:guest@127.0.0.1:%d",
               publish: {routing_key: q}}
""" % (self.port, port))
        pool.wait_for_log(r"publisher: cannot connect", timeout=30)
        r = post(self.port, "outbox", "anyone?")
        self.assertEqual(r.status, 503, r)
        self.assertIn("not connected to RabbitMQ", r.json()["error"])
        self.assertIn("cannot connect", r.json()["error"])

    def test_one_service_publishes_and_consumes_and_stops_cleanly(self):
        # The service publishes to the queue it consumes: a round trip
        # through RabbitMQ within one process, each half on its connection.
        queue = self.queue("loop")
        self.port = free_port()
        pool = self.pool("""
pool: {name: front, stop_timeout: 10s}
groups:
  - name: web
    type: reactor
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:%d"]
    routes_to: [outbox]
  - name: outbox
    type: service
    routes_to: [work]
    rabbitmq: {url: "%s", queues: [%s], declare: true, max_retries: 0,
               publish: {routing_key: %s, timeout: 10s}}
  - {name: work, type: job, command: [workerpool, builtin, echo-job]}
""" % (self.port, URL, queue, queue))
        pool.wait_for_log(r"outbox\[0\].*publisher: connected", timeout=30)
        pool.wait_for_log(r"outbox\[0\].*consuming", timeout=30)
        responses = pipeline(self.port, "outbox",
                             ["x%d" % n for n in range(200)] + ["fail-x"],
                             connections=10)
        self.assertEqual([(r.status, r.body) for r in responses[:200]],
                         [(200, ("x%d" % n).encode()) for n in range(200)])
        self.assertEqual(responses[200].status, 502, responses[200])
        def both():
            code, out, _ = wp.run_cli(["status", "--json", "--socket",
                                       os.path.join(pool.tmp, "front.sock")])
            for group in json.loads(out)["groups"] if code == 0 else []:
                if group["name"] == "outbox" and group["app"]:
                    app = group["app"][0]
                    figures = app.get("queues", {}).get(queue, {})
                    # The failure is rejected (max_retries 0, no dead
                    # letter queue), after its error reply.
                    if (figures.get("acks") == 200 and
                            figures.get("rejected") == 1 and
                            app["publish"]["replies"] == 200):
                        return app
            return None
        app = wp.wait_until(both, 30, "both halves' figures", interval=0.3,
                            on_timeout=lambda: wp.run_cli(
                                ["status", "--json", "--socket",
                                 os.path.join(pool.tmp, "front.sock")])[1])
        self.assertEqual(app["connection"], "connected")  # the consumer's
        self.assertEqual(app["publish"]["error_replies"], 1)
        # Each half's connection has a name of its own.
        names = rabbitmqctl("list_connections", "client_properties")
        self.assertIn('{"connection_name","front/outbox/0"}', names)
        self.assertIn('{"connection_name","front/outbox/0/publish"}', names)
        # SIGTERM: both halves stop, the process exits 0, in time.
        started = time.monotonic()
        pool.stop()
        self.assertLess(time.monotonic() - started, 8)
        self.assertTrue(pool.find_log(r"outbox\[0\].*publisher: stopped"),
                        pool.log_tail())
        self.assertTrue(pool.find_log(r"outbox\[0\].*rabbitmq-service: "
                                      r"stopped \("), pool.log_tail())
        self.assertFalse(pool.find_log(r"outbox\[0\].*(signal|SIGKILL)"),
                         pool.log_tail())

    def test_missing_exchange_is_logged_and_requests_refused(self):
        exchange = unique("no-such-exchange")
        self.port = free_port()
        pool = self.pool("""
pool: {name: front, stop_timeout: 5s}
groups:
  - name: web
    type: reactor
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:%d"]
    routes_to: [outbox]
  - name: outbox
    type: service
    rabbitmq: {url: "%s", publish: {exchange: %s, routing_key: k}}
""" % (self.port, URL, exchange))
        pool.wait_for_log(r"exchange '%s' \(publish.exchange\) does not "
                          r"exist" % exchange, timeout=30)
        r = post(self.port, "outbox", "anyone?")
        self.assertEqual(r.status, 503, r)
        self.assertIn("does not exist", r.json()["error"])

    # ------------------------------------------------------------- demo

    def test_demo_outbox_goes_through_rabbitmq_and_back(self):
        import urllib.parse
        import wp_ipc
        self.queues += ["demo.tasks", "demo.dead"]
        with open(os.path.join(wp.TOP, "config", "demo.yaml")) as f:
            text = f.read()
        self.port = free_port()
        broker = urllib.parse.urlsplit(URL)
        text = text.replace("127.0.0.1:8080", "127.0.0.1:%d" % self.port)
        text = text.replace("amqp://guest:guest@127.0.0.1:5673", URL)
        text = text.replace("src/examples/python_job.py", os.path.join(
            wp_ipc.EXAMPLES_DIR, "python_job.py"))
        text = text.replace("src/node/", os.path.join(wp.TOP, "src/node/"))
        self.assertIn(broker.netloc, text)
        pool = self.pool(text)
        pool.wait_for_log(r"outbox\[0\].*publisher: connected", timeout=30)
        pool.wait_for_log(r"intake\[0\].*consuming", timeout=30)
        r = post(self.port, "outbox", "hi")
        self.assertEqual((r.status, r.body), (200, b"hi"), r)
        r = post(self.port, "later", "hi later")
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json()["message_id"], r.headers["x-message-id"])

    # ------------------------------------------------------------- failures

    def stream(self, port, count, connections=20, job_ms=20):
        """Sends COUNT requests in the background, each taking pool B's job
        JOB_MS (so that the stream lasts a few seconds); returns (thread,
        list the responses land in)."""
        bodies = ["sleep:%d" % job_ms] * count
        out = []
        thread = threading.Thread(target=lambda: out.append(
            (bodies, pipeline(port, "outbox", bodies, connections=connections,
                              timeout=90))))
        thread.start()
        return thread, out

    def check_stream(self, thread, out, allowed_error):
        """Every request answered: the right body, or an error whose text
        says what happened (ALLOWED_ERROR, a regex)."""
        thread.join(wp.deadline(120))
        self.assertFalse(thread.is_alive(), "requests still unanswered")
        bodies, responses = out[0]
        ok = errors = 0
        for body, r in zip(bodies, responses):
            self.assertIsNotNone(r, "a request of the stream got no answer")
            if r.status == 200:
                self.assertEqual(r.body, body.encode())
                ok += 1
            else:
                self.assertIn(r.status, (502, 503, 504), r)
                self.assertRegex(r.json()["error"], allowed_error)
                errors += 1
        return ok, errors

    def test_sigkill_of_the_consuming_service_mid_stream(self):
        queue = self.queue("kill")
        consumer = self.consumer_pool(queue, jobs=2, prefetch=50, restart=True)
        self.front_pool({"routing_key": queue,
                         "timeout": "%ds" % wp.deadline(20),
                         "max_pending": 5000})
        # About 5 s of work (two jobs, 16 requests each at a time, 50 ms
        # each): the kill must come while the service holds deliveries,
        # which the broker shows as unacked (rabbitmqctl takes most of a
        # second to tell).
        thread, out = self.stream(self.port, 3000, job_ms=50)
        wp.wait_until(lambda: (queue_counts(queue) or (0, 0, 0))[1] > 0, 30,
                      "the service holding deliveries of the stream",
                      interval=0.1)
        victim = consumer.child("intake", 0).pid
        os.kill(victim, signal.SIGKILL)
        ok, errors = self.check_stream(thread, out, "timeout")
        # RabbitMQ redelivers what the killed service held to its successor,
        # whose replies still reach this process's reply-to.
        self.assertEqual(errors, 0, "%d errors" % errors)
        self.assertEqual(ok, 3000)
        # The stream was still going when the service died: its successor
        # got deliveries back.
        def redelivered():
            code, out, _ = wp.run_cli(["status", "--json", "--socket",
                                       os.path.join(consumer.tmp,
                                                    "consumer.sock")])
            for group in json.loads(out)["groups"] if code == 0 else []:
                if group["name"] == "intake" and group["app"]:
                    figures = group["app"][0]["queues"][queue]
                    return figures["redelivered"] > 0 or None
            return None
        wp.wait_until(redelivered, 10, "redeliveries to the new service",
                      interval=0.3)

    def test_broker_restart_mid_stream_fails_clearly_then_recovers(self):
        queue = self.queue("restart")
        self.consumer_pool(queue, jobs=2, prefetch=50)
        front = self.front_pool({"routing_key": queue, "timeout": "20s",
                                 "max_pending": 5000})
        # About 5 s of work; rabbitmqctl itself takes a second or two to
        # stop the broker.
        thread, out = self.stream(self.port, 5000, job_ms=30)
        rabbitmqctl("stop_app")
        try:
            time.sleep(1)
        finally:
            rabbitmqctl("start_app")
        ok, errors = self.check_stream(
            thread, out, "connection to RabbitMQ lost|not connected to "
            "RabbitMQ|timeout|shutting down")
        print("broker restart mid-stream: %d answered, %d clear errors"
              % (ok, errors))
        self.assertGreater(errors, 0, "the restart came after the stream")
        self.assertGreater(ok, 0)
        # The publisher reconnects (and pool B too): requests work again.
        def works():
            r = post(self.port, "outbox", "again")
            return r.status == 200 and r.body == b"again"
        wp.wait_until(works, 60, "the outbox working after the restart",
                      interval=0.5)
        self.wait_figures(front, lambda a: a["pending"] == 0 and
                          a["reconnects"] >= 1 and a["lost"] + a[
                              "rejected_disconnected"] >= 1)


if __name__ == "__main__":
    wp.main()
