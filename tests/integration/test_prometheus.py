"""The Prometheus kit (config/prometheus/), checked by Prometheus itself
(Debian's `prometheus` package):

- `promtool check rules` and `promtool test rules` pass on the alert rules,
  `promtool check config` on the example configuration;
- a real pool's /metrics (reactors, jobs, a service reporting queue
  figures, a failed group, after traffic) passes `promtool check metrics`
  without a warning;
- a real Prometheus server on loopback scrapes a real pool with the rules
  loaded: a workerpool series reads back through its HTTP API, the target
  is up, every rule evaluates without error, and WorkerpoolGroupFailed
  fires for the group that failed.
Issue 21; docs/OPERATIONS.md, "Alert rules".
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import wp

KIT = os.path.join(wp.TOP, "config", "prometheus")
RULES = os.path.join(KIT, "workerpool.rules.yml")
FAKE_SERVICE = os.path.join(wp.HERE, "fake_queue_service.py")

POOL = """
pool: {name: promtest, stop_timeout: 2s, metrics: "127.0.0.1:%(metrics)d"}
groups:
  - name: web
    type: reactor
    processes: 1
    command: [%(bin)s, builtin, http-reactor]
    listen: ["127.0.0.1:%(http)d"]
    routes_to: [echo]
  - name: echo
    type: job
    processes: 2
    command: [%(bin)s, builtin, echo-job]
  - name: intake
    type: service
    processes: 1
    command: [%(python)s, %(fake_service)s]
  - name: broken
    type: job
    processes: 1
    command: ["false"]
    restart:
      backoff: {initial: 10ms, max: 10ms}
      intensity: {max_restarts: 1, period: 60s}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def promtool(*args, cwd=None):
    return subprocess.run(["promtool"] + list(args), capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@unittest.skipUnless(shutil.which("promtool") and shutil.which("prometheus"),
                     "Prometheus is not installed (scripts/setup installs "
                     "the Debian package prometheus)")
class PrometheusTest(wp.TestCase):

    def test_rules_and_config_pass_promtool(self):
        proc = promtool("check", "rules", RULES)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("SUCCESS: 9 rules found", proc.stdout)
        proc = promtool("test", "rules", "workerpool.rules.test.yml", cwd=KIT)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("SUCCESS", proc.stdout)
        proc = promtool("check", "config", "prometheus.yml", cwd=KIT)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def start_pool(self):
        self.metrics_port = free_port()
        self.http_port = free_port()
        pool = self.pool(POOL % {
            "metrics": self.metrics_port, "http": self.http_port,
            "bin": wp.BIN, "python": shutil.which("python3"),
            "fake_service": FAKE_SERVICE},
            allow_critical=[r"group broken failed"])
        pool.wait_for_log(r"group broken failed")
        # A request sent before echo's processes said hello fails (no live
        # process) and would count as one more failure of web: wait for
        # them first.
        def echo_ready():
            try:
                text = self.metrics()
            except OSError:
                return None
            return ('workerpool_group_ready_processes{group="echo"} 2\n'
                    in text)
        wp.wait_until(echo_ready, what="echo's processes ready in /metrics",
                      on_timeout=pool.log_tail)
        # Traffic: answers, an error reply, so every request family exists.
        for body in (b"hello", b"hello", b"fail-now"):
            c = http.client.HTTPConnection("127.0.0.1", self.http_port,
                                           timeout=10)
            c.request("POST", "/jobs/echo", body=body)
            c.getresponse().read()
            c.close()
        return pool

    def metrics(self):
        return get("http://127.0.0.1:%d/metrics" % self.metrics_port)

    def test_live_endpoint_passes_promtool_check_metrics(self):
        self.start_pool()
        # Children report their counters and figures once a second.
        wanted = ("workerpool_service_queue_deliveries{",
                  'workerpool_group_requests_served_total{group="echo",'
                  'outcome="error"} 1',
                  'workerpool_group_requests_total{group="web",'
                  'outcome="failed"} 1',
                  "workerpool_group_request_duration_seconds_bucket{")

        def complete():
            text = self.metrics()
            return text if all(w in text for w in wanted) else None
        text = wp.wait_until(
            complete, what="the service's and the requests' figures in "
            "/metrics", on_timeout=self.metrics)
        proc = subprocess.run(["promtool", "check", "metrics"], input=text,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual(proc.stdout + proc.stderr, "",
                         "promtool check metrics warns")
        for family in ("workerpool_group_failed", "process_cpu_seconds_total",
                       "workerpool_group_resident_memory_bytes",
                       "workerpool_group_request_duration_seconds_bucket",
                       "workerpool_service_queue_messages"):
            self.assertTrue(family in text, family)

    def test_a_real_prometheus_scrapes_the_pool(self):
        self.start_pool()
        tmp = tempfile.mkdtemp(prefix="wp-prometheus-")
        self.addCleanup(shutil.rmtree, tmp, True)
        port = free_port()
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "rule_files: [%s]\n"
                    "scrape_configs:\n"
                    "  - job_name: workerpool\n"
                    "    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n"
                    % (json.dumps(RULES), self.metrics_port))
        log = open(os.path.join(tmp, "prometheus.log"), "wb")
        self.addCleanup(log.close)
        server = subprocess.Popen(
            ["prometheus", "--config.file=" + os.path.join(tmp, "prometheus.yml"),
             "--storage.tsdb.path=" + os.path.join(tmp, "data"),
             "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)

        def stop():
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        self.addCleanup(stop)

        def log_tail():
            with open(os.path.join(tmp, "prometheus.log"), "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        api = "http://127.0.0.1:%d/api/v1/" % port

        def ready():
            if server.poll() is not None:
                raise AssertionError("prometheus exited %d:\n%s"
                                     % (server.returncode, log_tail()))
            try:
                return get("http://127.0.0.1:%d/-/ready" % port, 1)
            except OSError:
                return None
        wp.wait_until(ready, 60, what="Prometheus to be ready",
                      on_timeout=log_tail)

        def query(expression):
            answer = json.loads(get(api + "query?" + urllib.parse.urlencode(
                {"query": expression})))
            self.assertEqual(answer["status"], "success", answer)
            return answer["data"]["result"]

        # A workerpool series, read back through the HTTP API.
        live = wp.wait_until(
            lambda: query('workerpool_group_live_processes{group="echo"}'),
            30, what="workerpool_group_live_processes in Prometheus",
            on_timeout=log_tail)
        self.assertEqual(live[0]["metric"]["job"], "workerpool")
        self.assertEqual(live[0]["metric"]["instance"],
                         "127.0.0.1:%d" % self.metrics_port)
        self.assertEqual(live[0]["value"][1], "2")
        targets = json.loads(get(api + "targets"))["data"]["activeTargets"]
        self.assertEqual([t["health"] for t in targets], ["up"])

        # Every rule evaluated, none in error; the failed group's alert.
        def evaluated():
            groups = json.loads(get(api + "rules"))["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if len(rules) == 9 and all(r.get("lastEvaluation", "").find(
                    "0001-") != 0 for r in rules):
                return rules
            return None
        rules = wp.wait_until(evaluated, 30, what="the rules to be evaluated")
        for rule in rules:
            self.assertEqual(rule["health"], "ok",
                             "%s: %s" % (rule["name"], rule.get("lastError")))

        def firing():
            alerts = json.loads(get(api + "alerts"))["data"]["alerts"]
            return [a for a in alerts if a["state"] == "firing"
                    and a["labels"]["alertname"] == "WorkerpoolGroupFailed"]
        alert = wp.wait_until(firing, 30, what="WorkerpoolGroupFailed to fire",
                              on_timeout=lambda: get(api + "alerts"))[0]
        self.assertEqual(alert["labels"]["group"], "broken")
        self.assertEqual(alert["labels"]["severity"], "critical")
        self.assertIn("workerpool restart broken",
                      alert["annotations"]["description"])


if __name__ == "__main__":
    wp.main()
