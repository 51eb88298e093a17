"""The Prometheus endpoint (`pool.metrics`), scraped over HTTP from the real
binary and parsed line by line as a scraper would: per group desired, live,
restarts and failed state; requests by outcome; in-flight and queued; the
RabbitMQ service's figures. docs/OPERATIONS.md: "Metrics".

needs: rabbitmq (only RabbitMqMetricsTest, through WORKERPOOL_TEST_AMQP_URL;
the other tests need no broker).
"""

import json
import math
import os
import re
import socket
import subprocess
import unittest
import urllib.error
import urllib.request
import uuid

import wp
import wp_ipc

ECHO = "[workerpool, builtin, echo-job]"
AMQP_URL = os.environ.get("WORKERPOOL_TEST_AMQP_URL", "")

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(r"^(%s)(?:\{(%s(?:,%s)*)?\})? (\S+)(?: (-?\d+))?$"
                     % (_NAME, _LABEL, _LABEL))
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def parse_labels(text):
    labels = {}
    for m in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                         text or ""):
        value = m.group(2).replace("\\n", "\n").replace('\\"', '"').replace(
            "\\\\", "\\")
        labels[m.group(1)] = value
    return labels


def parse_exposition(text, test):
    """Parses the text format 0.0.4 strictly; returns (types, samples) with
    samples {(name, frozenset(labels)): value}. Every line must be a HELP,
    a TYPE or a sample; a family's TYPE comes before its samples, which
    stay together; no series repeats; values are numbers."""
    test.assertTrue(text.endswith("\n"), "the exposition must end in \\n")
    types, helps, samples = {}, {}, {}
    finished, current = set(), None
    for number, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d: %r" % (number, line)
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            test.assertRegex(name, "^%s$" % _NAME, where)
            test.assertNotIn(name, helps, "second HELP, " + where)
            helps[name] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            test.assertRegex(name, "^%s$" % _NAME, where)
            test.assertIn(kind, _TYPES, where)
            test.assertNotIn(name, types, "second TYPE, " + where)
            test.assertNotIn(name, finished, where)
            if current is not None:
                finished.add(current)
            types[name], current = kind, name
            continue
        test.assertFalse(line.startswith("#"), "unknown comment, " + where)
        m = _SAMPLE.match(line)
        test.assertIsNotNone(m, "not a sample line, " + where)
        name, label_text, value = m.group(1), m.group(2), m.group(3)
        family = name
        if family not in types:
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[:-len(suffix)] in types:
                    family = name[:-len(suffix)]
        test.assertIn(family, types, "sample before its TYPE, " + where)
        test.assertEqual(family, current, "family not together, " + where)
        try:
            number_value = float(value)
        except ValueError:
            test.fail("value is not a number, " + where)
        key = (name, frozenset(parse_labels(label_text).items()))
        test.assertNotIn(key, samples, "repeated series, " + where)
        samples[key] = number_value
    for name, kind in types.items():
        if kind == "counter":
            for (sample, _), value in samples.items():
                if sample == name:
                    test.assertGreaterEqual(value, 0, name)
    check_histograms(types, samples, test)
    return types, samples


def check_histograms(types, samples, test):
    """Buckets are cumulative, end with le="+Inf", and equal _count."""
    for name, kind in types.items():
        if kind != "histogram":
            continue
        series = {}
        for (sample, labels), value in samples.items():
            if sample != name + "_bucket":
                continue
            labels = dict(labels)
            le = labels.pop("le")
            series.setdefault(frozenset(labels.items()), []).append(
                (math.inf if le == "+Inf" else float(le), value))
        for labels, buckets in series.items():
            buckets.sort()
            test.assertEqual(buckets[-1][0], math.inf, name)
            counts = [count for _, count in buckets]
            test.assertEqual(counts, sorted(counts), "%s not cumulative"
                             % name)
            test.assertEqual(samples[(name + "_count", labels)], counts[-1])
            test.assertIn((name + "_sum", labels), samples)


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def http(method, url):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=wp.deadline(10)) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


class MetricsTest(wp.TestCase):

    def start(self):
        self.port = free_port()
        pool = self.pool("""
pool: {name: met, stop_timeout: 3s, metrics: "127.0.0.1:%d"}
groups:
  - name: front
    type: reactor
    processes: 1
    command: ["%s"]
    env: {KIT_SOCKET: "{tmp}/kit.sock"}
    routes_to: [compute]
  - {name: compute, type: job, processes: 2, command: %s}
  - name: broken
    type: job
    processes: 1
    command: [/bin/false]
    restart:
      backoff: {initial: 10ms, max: 10ms}
      intensity: {max_restarts: 2, period: 60s}
""" % (self.port, wp_ipc.LINE_REACTOR, ECHO))
        pool.url = "http://127.0.0.1:%d/metrics" % self.port
        # The CLI needs the control socket: wait until the Watcher bound it.
        sock = os.path.join(pool.tmp, "met.sock")
        wp.wait_until(lambda: os.path.exists(sock),
                      what="the control socket " + sock)
        return pool

    def scrape(self, pool):
        status, headers, body = http("GET", pool.url)
        self.assertEqual(status, 200, body)
        self.assertTrue(headers["Content-Type"].startswith(
            "text/plain; version=0.0.4"), headers)
        return parse_exposition(body, self)

    def wait_metrics(self, pool, predicate, what):
        last = {}

        def check():
            try:
                last["samples"] = self.scrape(pool)[1]
            except urllib.error.URLError:  # not listening yet
                return None
            return last["samples"] if predicate(last["samples"]) else None
        return wp.wait_until(check, what=what, on_timeout=lambda: "\n".join(
            "%s%s %s" % (name, dict(labels), v)
            for (name, labels), v in sorted(last.get("samples", {}).items(),
                                            key=str)))

    def test_group_figures_and_requests_by_outcome(self):
        wp_ipc.require_kit()
        pool = self.start()
        samples = self.wait_metrics(
            pool, lambda s: value(s, "workerpool_group_failed",
                                  group="broken") == 1
            and value(s, "workerpool_group_live_processes",
                      group="compute") == 2,
            "the broken group failed and compute up")
        types, samples = self.scrape(pool)
        for group, desired, type_ in (("front", 1, "reactor"),
                                      ("compute", 2, "job"),
                                      ("broken", 1, "job")):
            self.assertEqual(value(samples, "workerpool_group_info",
                                   group=group, type=type_), 1)
            self.assertEqual(value(samples,
                                   "workerpool_group_desired_processes",
                                   group=group), desired)
            for name in ("workerpool_group_live_processes",
                         "workerpool_group_restarts_total",
                         "workerpool_group_failed",
                         "workerpool_group_inflight_requests",
                         "workerpool_group_queued_requests"):
                self.assertIsNotNone(value(samples, name, group=group),
                                     "%s{group=%s}" % (name, group))
        self.assertEqual(types["workerpool_group_restarts_total"], "counter")
        self.assertEqual(types["workerpool_group_live_processes"], "gauge")
        self.assertEqual(value(samples, "workerpool_group_failed",
                               group="compute"), 0)
        self.assertEqual(value(samples, "workerpool_group_live_processes",
                               group="broken"), 0)
        self.assertGreaterEqual(value(samples,
                                      "workerpool_group_restarts_total",
                                      group="broken"), 2)
        self.assertEqual(value(samples, "workerpool_group_restarts_total",
                               group="compute"), 0)
        info = [dict(labels) for (name, labels) in samples
                if name == "workerpool_info"]
        self.assertEqual(len(info), 1)
        self.assertEqual(info[0]["pool"], "met")
        self.assertRegex(info[0]["version"], r"^\d+\.\d+")

        # Requests through the front reactor. Until compute said hello a
        # request may fail (no workers): count those, they are outcomes too.
        client = wp_ipc.LineClient(os.path.join(pool.tmp, "kit.sock"))
        self.addCleanup(client.close)
        early = {"failed": 0, "refused": 0}

        def warm_up():
            answer = client.request("compute", "warm")
            if answer.ok:
                return True
            early["refused" if answer.code == wp_ipc.REFUSED
                  else "failed"] += 1
            return False
        wp.wait_until(warm_up, what="an answer from compute", interval=0.1)
        for i in range(5):
            answer = client.request("compute", "hi%d" % i)
            self.assertTrue(answer.ok, answer)
        for i in range(3):
            answer = client.request("compute", "fail%d" % i)
            self.assertFalse(answer.ok, answer)
            self.assertEqual(answer.code, wp_ipc.HANDLER_ERROR)
        expected = {"replied": 6, "failed": early["failed"] + 3,
                    "refused": early["refused"], "cancelled": 0,
                    "timed_out": 0}
        # compute's served figures are the sum of its two children's
        # reports, each sent on its own schedule: the errors may show
        # before the other child's last ok does, so wait for both.
        samples = self.wait_metrics(
            pool, lambda s: all(
                value(s, "workerpool_group_requests_total", group="front",
                      outcome=outcome) == count
                for outcome, count in expected.items())
            and value(s, "workerpool_group_requests_served_total",
                      group="compute", outcome="error") == 3
            and value(s, "workerpool_group_requests_served_total",
                      group="compute", outcome="ok") == 6,
            "the request counters %s" % expected)
        self.assertEqual(value(samples,
                               "workerpool_group_requests_served_total",
                               group="compute", outcome="ok"), 6)
        self.assertEqual(value(samples, "workerpool_group_requests_sent_total",
                               group="front"), sum(expected.values()))
        self.assertEqual(value(samples, "workerpool_group_inflight_requests",
                               group="front"), 0)

    def test_latency_histogram(self):
        wp_ipc.require_kit()
        pool = self.start()
        client = wp_ipc.LineClient(os.path.join(pool.tmp, "kit.sock"))
        self.addCleanup(client.close)
        for i in range(4):
            self.assertTrue(client.request_until_ok("compute", "x%d" % i).ok)
        # The histogram belongs to the target group: the time from its
        # senders' Send() to the answer, summed over every sender.
        samples = self.wait_metrics(
            pool, lambda s: (value(
                s, "workerpool_group_request_duration_seconds_count",
                group="compute") or 0) >= 4, "4 requests in the histogram")
        self.assertGreaterEqual(value(
            samples, "workerpool_group_request_duration_seconds_bucket",
            group="compute", le="+Inf"), 4)
        self.assertIsNotNone(value(
            samples, "workerpool_group_request_duration_seconds_sum",
            group="compute"))
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     os.path.join(pool.tmp, "met.sock")])
        self.assertEqual(code, 0, err)
        (compute,) = [g for g in json.loads(out)["groups"]
                      if g["name"] == "compute"]
        self.assertEqual(len(compute["latency"]["counts"]),
                         len(compute["latency"]["bounds_ms"]) + 1)

    def test_scale_shows_in_metrics(self):
        pool = self.start()
        code, out, err = wp.run_cli(["scale", "compute", "3", "--socket",
                                     os.path.join(pool.tmp, "met.sock")])
        self.assertEqual(code, 0, err)
        self.wait_metrics(
            pool, lambda s: value(s, "workerpool_group_live_processes",
                                  group="compute") == 3
            and value(s, "workerpool_group_desired_processes",
                      group="compute") == 3
            and value(s, "workerpool_group_scaled_until_reload",
                      group="compute") == 1,
            "compute scaled to 3")

    def test_other_paths_and_methods(self):
        pool = self.start()
        self.wait_metrics(pool, lambda s: True, "the endpoint")
        status, _, body = http("GET", "http://127.0.0.1:%d/" % self.port)
        self.assertEqual(status, 404)
        self.assertIn("/metrics", body)
        status, headers, _ = http("POST", pool.url)
        self.assertEqual(status, 405)
        self.assertIn("GET", headers.get("Allow", ""))
        status, headers, body = http("HEAD", pool.url)
        self.assertEqual((status, body), (200, ""))
        # Garbage instead of HTTP: a 400, and the endpoint carries on.
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        answer = s.recv(4096)
        s.close()
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer)
        self.scrape(pool)
        # curl, as an operator would.
        proc = subprocess.run(["curl", "-sS", "-f", pool.url],
                              capture_output=True, text=True,
                              timeout=wp.deadline())
        if proc.returncode != 127:
            self.assertEqual(proc.returncode, 0, proc.stderr)
            parse_exposition(proc.stdout, self)
        self.assertTrue(pool.running())
        self.assertEqual(pool.stop(), 0)

    def test_a_taken_metrics_port_fails_the_start_clearly(self):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        pool = self.pool("""
pool: {name: busy, metrics: "127.0.0.1:%d"}
groups:
  - {name: compute, type: job, processes: 1, command: %s}
""" % (taken.getsockname()[1], ECHO), allow_critical=[r"metrics endpoint"])
        self.assertEqual(pool.wait_exit(), 2)
        self.assertRegex(pool.log_text(), r"metrics endpoint: .*127\.0\.0\.1:%d"
                         % taken.getsockname()[1])


@unittest.skipUnless(AMQP_URL, "needs WORKERPOOL_TEST_AMQP_URL (ctest label "
                     "rabbitmq: scripts/test starts a private node)")
class RabbitMqMetricsTest(wp.TestCase):

    def test_service_figures(self):
        queue = "wp-metrics-" + uuid.uuid4().hex[:8]
        port = free_port()
        pool = self.pool("""
pool: {name: rmq, stop_timeout: 5s, metrics: "127.0.0.1:%d"}
groups:
  - {name: compute, type: job, processes: 1, command: %s}
  - name: intake
    type: service
    processes: 1
    routes_to: [compute]
    rabbitmq:
      url: %s
      queues: [%s]
      declare: true
      prefetch: 4
      max_retries: 1
      dead_letter_queue: %s.dead
""" % (port, ECHO, AMQP_URL, queue, queue))
        self.addCleanup(self.delete_queues, queue, queue + ".dead")
        url = "http://127.0.0.1:%d/metrics" % port

        def scrape():
            status, _, body = http("GET", url)
            self.assertEqual(status, 200)
            return parse_exposition(body, self)[1]

        def connected():
            try:
                s = scrape()
            except (OSError, AssertionError):
                return None
            return value(s, "workerpool_service_connected", group="intake",
                         index="0") == 1
        wp.wait_until(connected, timeout=60, what="the service connected",
                      on_timeout=pool.log_tail)
        for body in ["hello%d" % i for i in range(5)] + ["fail1", "fail2"]:
            subprocess.run(["amqp-publish", "-u", AMQP_URL, "-r", queue,
                            "-p", "-b", body], check=True,
                           timeout=wp.deadline())

        def settled():
            s = scrape()
            figures = {figure: value(s, "workerpool_service_queue_" + figure,
                                     group="intake", index="0", queue=queue)
                       for figure in ("acks", "deliveries", "retries",
                                      "dead_letters")}
            if (figures["acks"] or 0) >= 5 and (figures["dead_letters"]
                                                or 0) >= 2:
                return s, figures
            return None
        samples, figures = wp.wait_until(
            settled, timeout=60, what="5 acks and 2 dead letters in the "
            "metrics", on_timeout=lambda: "\n".join(
                l for l in http("GET", url)[2].splitlines()
                if "service" in l))
        self.assertGreaterEqual(figures["deliveries"], 7)
        self.assertGreaterEqual(figures["retries"], 2)
        self.assertIsNotNone(value(samples, "workerpool_service_queue_messages",
                                   group="intake", index="0", queue=queue))
        self.assertEqual(value(samples, "workerpool_group_live_processes",
                               group="intake"), 1)

    def delete_queues(self, *queues):
        for queue in queues:
            subprocess.run(["amqp-delete-queue", "-u", AMQP_URL, "-q", queue],
                           capture_output=True, timeout=60)


if __name__ == "__main__":
    wp.main()
