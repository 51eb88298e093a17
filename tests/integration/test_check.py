"""`workerpool check FILE` (and `run` on a bad file): exit 0 and "FILE: ok"
on a valid pool definition; exit 1 and one "FILE:LINE:COL: KEY: message"
line per error on stderr otherwise (DESIGN.md, "Command line" and "Pool
definition")."""

import os
import re
import tempfile
import unittest

import wp

# A small valid pool; the cases below each break one thing in it.
VALID = """\
pool:
  name: checked
  stop_timeout: 2s
  log: {level: info, format: text}
groups:
  - name: web
    type: reactor
    processes: 2
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:18080"]
    routes_to: [compute, intake]
  - name: compute
    type: job
    processes: 3
    command: [sleep, "1000"]
    env: {MODEL: small}
    restart:
      backoff: {initial: 100ms, max: 30s}
      intensity: {max_restarts: 10, period: 60s}
  - name: intake
    type: service
    processes: 1
    command: [sleep, "1000"]
    routes_to: [compute]
"""

# DESIGN.md's example, as printed there (cwd changed to a directory that
# exists here).
DESIGN_EXAMPLE = """\
pool:
  name: demo
  control_socket: /run/workerpool/demo.sock  # default: $RUNTIME_DIRECTORY/<name>.sock, else /tmp/workerpool-<name>.sock; mode 0600
  stop_timeout: 10s           # SIGTERM, then SIGKILL after this
  metrics: 127.0.0.1:9464     # optional Prometheus text endpoint
  log: {level: info, format: text}   # text | json
groups:
  - name: web
    type: reactor
    processes: 2
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:8080"]   # bound once by the Watcher, inherited by every reactor
    routes_to: [compute]
  - name: compute
    type: job
    processes: 4
    command: [./build/examples/my_job, --flag]
    env: {MODEL: small}
    cwd: /tmp
    user: nobody                  # optional drop of privileges
    max_inflight: 1               # requests handed to one job process at once
    queue_limit: 1000             # requests waiting for a free job; beyond it, an error reply
    request_timeout: 30s          # a job past this is killed and the request fails or retries
    heartbeat_timeout: 10s        # a child silent this long is hung: killed and restarted
    max_requests: 10000           # recycle a job after this many (with jitter)
    max_rss: 512MB                # recycle a job whose resident memory passes this
    restart:
      backoff: {initial: 100ms, max: 30s}
      intensity: {max_restarts: 10, period: 60s}   # over this the group is marked failed
  - name: intake
    type: service
    processes: 1
    routes_to: [compute]
    rabbitmq:                     # gives the built-in rabbitmq-service as the command
      url: amqp://guest:guest@127.0.0.1:5672   # no trailing slash: "/" would name the empty vhost
      queues: [tasks]
      declare: true               # declare the queues durable if absent
      prefetch: 32
      max_retries: 5
      dead_letter_queue: tasks.dead
"""


def replace_line(text, old, new):
    """TEXT with the one line containing OLD replaced by NEW (lines of NEW
    keep their own indentation); fails if OLD is not exactly on one line."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if old in line]
    assert len(hits) == 1, "%r is on %d lines" % (old, len(hits))
    lines[hits[0]] = new if new.endswith("\n") else new + "\n"
    return "".join(lines)


def line_of(text, needle, nth=1):
    """1-based number of the NTH line of TEXT containing NEEDLE."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) >= nth, "%r is on %d lines" % (needle, len(hits))
    return hits[nth - 1]


class CheckTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory(prefix="wp-check-")
        self.addCleanup(self.dir.cleanup)

    def write(self, text, name="pool.yaml", mode="w"):
        path = os.path.join(self.dir.name, name)
        with open(path, mode) as f:
            f.write(text)
        return path

    def check(self, path):
        return wp.run_cli(["check", path])

    def assert_ok(self, text):
        path = self.write(text)
        code, out, err = self.check(path)
        self.assertEqual(code, 0, "check failed on a valid file:\n" + err)
        self.assertTrue(out.startswith(path + ": ok"),
                        "stdout should start with %r: %r" % (path + ": ok", out))

    def assert_one_error(self, path, line=None, key=None, message=None,
                         with_key=True):
        """Exit 1 and exactly one "PATH:LINE:COL: KEY: message" line; LINE
        and a KEY containing KEY when given. WITH_KEY=False accepts
        "PATH:LINE:COL: message" (a YAML syntax error names no key).
        Returns (line, col, key or None, message)."""
        code, out, err = self.check(path)
        self.assertEqual(code, 1, "expected exit 1; stdout %r stderr %r"
                         % (out, err))
        lines = err.splitlines()
        self.assertEqual(len(lines), 1,
                         "expected exactly one error line, got:\n" + err)
        if not with_key:
            m = re.match(r"^%s:(\d+):(\d+): (\S.*)$" % re.escape(path),
                         lines[0])
            self.assertIsNotNone(
                m, "not in the form FILE:LINE:COL: message: %r" % lines[0])
            if line is not None:
                self.assertEqual(int(m.group(1)), line,
                                 "wrong line in: " + lines[0])
            return int(m.group(1)), int(m.group(2)), None, m.group(3)
        m = re.match(r"^%s:(\d+):(\d+): (\S+): (\S.*)$" % re.escape(path),
                     lines[0])
        self.assertIsNotNone(
            m, "not in the form FILE:LINE:COL: KEY: message: %r" % lines[0])
        got_line, got_col, got_key, got_msg = (int(m.group(1)),
                                               int(m.group(2)), m.group(3),
                                               m.group(4))
        self.assertGreaterEqual(got_col, 1, lines[0])
        if line is not None:
            self.assertEqual(got_line, line, "wrong line in: " + lines[0])
        if key is not None:
            self.assertIn(key, got_key, "wrong key in: " + lines[0])
        if message is not None:
            self.assertRegex(got_msg, message)
        return got_line, got_col, got_key, got_msg

    def assert_one_line_error(self, path):
        """Exit 1 and exactly one line on stderr that names PATH (for errors
        that have no position: missing file, directory...)."""
        code, out, err = self.check(path)
        self.assertEqual(code, 1, "expected exit 1; stdout %r stderr %r"
                         % (out, err))
        lines = err.splitlines()
        self.assertEqual(len(lines), 1,
                         "expected exactly one error line, got:\n" + err)
        self.assertTrue(lines[0].startswith(path + ":"),
                        "the error should start with the file name: %r"
                        % lines[0])
        self.assertGreater(len(lines[0]), len(path) + 5,
                           "the error should say what is wrong: %r" % lines[0])
        return lines[0]

    # -- valid files

    def test_valid_file(self):
        self.assert_ok(VALID)

    def test_design_example_is_valid(self):
        self.assert_ok(DESIGN_EXAMPLE)

    def test_units(self):
        text = VALID.replace("stop_timeout: 2s", "stop_timeout: 1500ms")
        text = text.replace("{initial: 100ms, max: 30s}",
                            "{initial: 1s, max: 2m}")
        text = text.replace("period: 60s", "period: 1h")
        self.assert_ok(text)

    def test_zero_processes_is_valid(self):
        self.assert_ok(VALID.replace("processes: 3", "processes: 0"))

    # -- one error each

    def test_unknown_group_key(self):
        text = replace_line(VALID, "processes: 3", "    procesess: 3")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "procesess"),
                              key="procesess")

    def test_unknown_pool_key(self):
        text = replace_line(VALID, "stop_timeout: 2s", "  stop_timout: 2s")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "stop_timout"),
                              key="stop_timout")

    def test_unknown_top_level_key(self):
        text = VALID + "extra: true\n"
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "extra: true"), key="extra")

    def test_wrong_type(self):
        text = replace_line(VALID, "processes: 3", "    processes: many")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "processes: many"),
                              key="processes")

    def test_wrong_type_list_for_scalar(self):
        text = replace_line(VALID, "name: web", "  - name: [web]")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "name: [web]"), key="name")

    def test_missing_command(self):
        text = VALID.replace('    command: [sleep, "1000"]\n    env:',
                             "    env:")
        path = self.write(text)
        self.assert_one_error(path, key="command")

    def test_negative_processes(self):
        text = replace_line(VALID, "processes: 3", "    processes: -1")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "processes: -1"),
                              key="processes")

    def test_duplicate_group_name(self):
        text = VALID + """\
  - name: compute
    type: job
    processes: 1
    command: [sleep, "1000"]
"""
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "name: compute", nth=2))

    def test_bad_duration(self):
        text = replace_line(VALID, "stop_timeout: 2s",
                            "  stop_timeout: 2 fortnights")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "fortnights"),
                              key="stop_timeout")

    def test_duration_without_unit(self):
        text = replace_line(VALID, "stop_timeout: 2s", "  stop_timeout: soon")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "stop_timeout: soon"),
                              key="stop_timeout")

    def test_bad_size(self):
        text = replace_line(VALID, "processes: 3",
                            "    processes: 3\n    max_rss: lots")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "max_rss: lots"),
                              key="max_rss")

    def test_unknown_type(self):
        text = replace_line(VALID, "type: job", "    type: worker")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "type: worker"), key="type")

    def test_bad_log_format(self):
        text = replace_line(VALID, "log: {level: info, format: text}",
                            "  log: {level: info, format: xml}")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "format: xml"), key="format")

    def test_unknown_user(self):
        text = replace_line(VALID, "processes: 3",
                            "    processes: 3\n    user: no-such-user-wp")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "no-such-user-wp"),
                              key="user")

    def test_routes_to_unknown_group(self):
        text = replace_line(VALID, "routes_to: [compute, intake]",
                            "    routes_to: [compute, nowhere]")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "nowhere"), key="routes_to",
                              message="nowhere")

    def test_job_may_not_route(self):
        # A job never initiates: a job with routes_to breaks the rules.
        text = replace_line(VALID, "env: {MODEL: small}",
                            "    env: {MODEL: small}\n    routes_to: [intake]")
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "routes_to: [intake]"),
                              key="routes_to")

    def test_job_may_not_route_to_job(self):
        text = VALID + """\
  - name: other
    type: job
    processes: 1
    command: [sleep, "1000"]
    routes_to: [compute]
"""
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "routes_to: [compute]", 2),
                              key="routes_to")

    def test_reactor_may_not_route_to_reactor(self):
        text = VALID + """\
  - name: edge
    type: reactor
    processes: 1
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:18081"]
    routes_to: [web]
"""
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "routes_to: [web]"),
                              key="routes_to")

    def test_service_may_not_route_to_service(self):
        text = VALID + """\
  - name: intake2
    type: service
    processes: 1
    command: [sleep, "1000"]
    routes_to: [intake]
"""
        path = self.write(text)
        self.assert_one_error(path, line_of(text, "routes_to: [intake]"),
                              key="routes_to")

    # -- groups[].autoscale

    def with_autoscale(self, autoscale, processes="    processes: 3"):
        """VALID with compute's processes line replaced by PROCESSES and an
        autoscale line after it (AUTOSCALE is the text after "autoscale:")."""
        return replace_line(VALID, "processes: 3",
                            processes + "\n    autoscale: " + autoscale)

    def test_autoscale_is_valid(self):
        self.assert_ok(self.with_autoscale(
            "{min: 1, max: 16, up_after: 1s, down_after: 30s}"))
        self.assert_ok(self.with_autoscale("{min: 2, max: 4}", processes=""))

    def test_autoscale_min_and_max_required(self):
        text = self.with_autoscale("{max: 4}")
        self.assert_one_error(self.write(text),
                              line_of(text, "autoscale:"),
                              key="autoscale.min",
                              message="missing required key 'min'")

    def test_autoscale_min_above_max(self):
        text = self.with_autoscale("{min: 8, max: 4}")
        self.assert_one_error(self.write(text), line_of(text, "autoscale:"),
                              key="autoscale.max",
                              message="max 4 is below min 8")

    def test_autoscale_negative_count(self):
        text = self.with_autoscale("{min: -1, max: 4}")
        self.assert_one_error(self.write(text), line_of(text, "autoscale:"),
                              key="autoscale.min",
                              message="must be an integer from 0 to 100000")

    def test_autoscale_processes_outside_bounds(self):
        text = self.with_autoscale("{min: 4, max: 8}")
        self.assert_one_error(self.write(text), line_of(text, "processes: 3"),
                              key="processes",
                              message=r"outside autoscale's bounds \[4, 8\]")

    def test_autoscale_unknown_key(self):
        text = self.with_autoscale("{min: 1, max: 4, upafter: 1s}")
        self.assert_one_error(self.write(text), line_of(text, "autoscale:"),
                              key="autoscale.upafter",
                              message="did you mean 'up_after'")

    def test_autoscale_duration_without_unit(self):
        text = self.with_autoscale("{min: 1, max: 4, down_after: 30}")
        self.assert_one_error(self.write(text), line_of(text, "autoscale:"),
                              key="autoscale.down_after",
                              message="has no unit")

    def test_autoscale_on_a_reactor_says_why_not(self):
        text = replace_line(VALID, "processes: 2",
                            "    processes: 2\n    autoscale: {min: 1, max: 4}")
        self.assert_one_error(self.write(text), line_of(text, "autoscale:"),
                              key="autoscale",
                              message="a reactor is not autoscaled: no "
                              "signal fits it")

    def test_autoscale_on_a_service_is_refused(self):
        text = replace_line(VALID, "processes: 1",
                            "    processes: 1\n    autoscale: {min: 1, max: 4}")
        self.assert_one_error(self.write(text), line_of(text, "autoscale:"),
                              key="autoscale",
                              message="a service is not autoscaled")

    def test_autoscale_min_zero_behind_a_reactor(self):
        # compute is fed by the reactor web as well as by the service.
        text = self.with_autoscale("{min: 0, max: 4}", processes="")
        self.assert_one_error(self.write(text), line_of(text, "autoscale:"),
                              key="autoscale.min",
                              message="group 'web' also routes to 'compute'")
        fed_by_service = text.replace("routes_to: [compute, intake]",
                                      "routes_to: [intake]")
        self.assert_ok(fed_by_service)

    def test_yaml_syntax_error(self):
        text = replace_line(VALID, "env: {MODEL: small}",
                            "    env: {MODEL: small")
        path = self.write(text)
        self.assert_one_error(path, with_key=False)

    # -- files that are not pool definitions

    def test_empty_file(self):
        self.assert_one_line_error(self.write(""))

    def test_only_a_comment(self):
        self.assert_one_line_error(self.write("# nothing here\n"))

    def test_directory(self):
        self.assert_one_line_error(self.dir.name)

    def test_missing_file(self):
        self.assert_one_line_error(os.path.join(self.dir.name, "absent.yaml"))

    def test_binary_garbage(self):
        garbage = bytes((i * 7919 + 13) % 256 for i in range(4096))
        path = self.write(b"\x7fELF\x02\x01\x01\x00" + garbage, mode="wb")
        self.assert_one_line_error(path)

    def test_not_a_mapping(self):
        self.assert_one_line_error(self.write("- just\n- a list\n"))

    # -- several errors, and `run`

    def test_every_error_line_has_the_form(self):
        text = replace_line(VALID, "processes: 3", "    processes: -4")
        text = replace_line(text, "stop_timeout: 2s", "  stop_timeout: never")
        path = self.write(text)
        code, _, err = self.check(path)
        self.assertEqual(code, 1)
        self.assertTrue(err.strip(), "no error printed")
        for line in err.splitlines():
            self.assertRegex(line, r"^%s:\d+:\d+: \S+: \S" % re.escape(path))

    def test_run_refuses_a_bad_file(self):
        text = replace_line(VALID, "processes: 3", "    processes: -1")
        path = self.write(text)
        code, _, err = wp.run_cli(["run", path],
                                  env={"RUNTIME_DIRECTORY": self.dir.name})
        self.assertEqual(code, 1, err)
        self.assertRegex(err, r"%s:%d:\d+: \S*processes\S*: " % (
            re.escape(path), line_of(text, "processes: -1")))

    def test_check_without_file_is_bad_input(self):
        code, _, err = wp.run_cli(["check"])
        self.assertEqual(code, 1, err)


if __name__ == "__main__":
    wp.main()
