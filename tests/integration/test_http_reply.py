"""What the http-reactor tells jobs and clients (issue 20, item 4;
docs/HTTP.md): a job's reply meta sets the answer's status and headers, and
garbage in it is a 502 that says what is wrong, on a connection that goes
on serving; the request meta carries the method, path, query, remote and
the allowed and X- headers, no others; a client that disconnects cancels
its request, and echo-job's sleep answers that cancel at once (the job is
not killed); progress reaches a client that asks for server-sent events,
then the reply (or the error) as the last event, and is ignored otherwise."""

import http.client
import json
import os
import re
import socket

import wp
import wp_ipc
from test_http import RawConnection, free_port, post_request

# Answers with the request's body as its reply meta (raw bytes, whatever
# they are) and "payload" as its body; "meta?" answers the request meta.
META_JOB = r"""
import json, sys
sys.path.insert(0, %(pydir)r)
import workerpool

def handler(body, meta):
    if body == b"meta?":
        return json.dumps(meta)
    return b"payload", body

workerpool.serve(handler)
"""


def events(body):
    """[(event, data as JSON)] of a text/event-stream body."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields["event"], json.loads(fields["data"])))
    return out


class HttpReplyTest(wp.TestCase):

    def setUp(self):
        self.port = free_port()
        self.p = self.pool("""
pool: {name: reply, stop_timeout: 5s, control_socket: "{tmp}/ctl.sock"}
groups:
  - name: web
    type: reactor
    processes: 1
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:%d"]
    routes_to: [echo, py]
  - name: echo
    type: job
    processes: 1
    command: [workerpool, builtin, echo-job]
  - name: py
    type: job
    processes: 1
    command: %s
""" % (self.port, wp_ipc.python_command("{tmp}/meta_job.py")), start=False)
        self.p.write("meta_job.py", META_JOB % {"pydir": wp_ipc.PYTHON_DIR})
        self.p.start()
        self.p.socket = os.path.join(self.p.tmp, "ctl.sock")
        for group in ("echo", "py"):
            wp.wait_until(lambda: self.try_post(group), what=group + " up")

    def try_post(self, group):
        try:
            return self.post(group, "meta?")[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def conn(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port,
                                       timeout=wp.deadline())
        self.addCleanup(c.close)
        return c

    def post(self, group, body, headers=None, conn=None, path=None):
        c = conn or self.conn()
        c.request("POST", path or "/jobs/" + group, body=body,
                  headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def status(self):
        code, out, err = wp.run_cli(["status", "--json", "--socket",
                                     self.p.socket])
        self.assertEqual(code, 0, err)
        return {g["name"]: g for g in json.loads(out)["groups"]}

    # -- reply meta

    def test_reply_meta_sets_status_and_headers(self):
        meta = {"http_status": 201, "content_type": "application/json",
                "headers": {"Cache-Control": "no-store", "X-Job": "py"},
                "own": "a job's own key is ignored"}
        status, headers, body = self.post("py", json.dumps(meta))
        self.assertEqual((status, body), (201, b"payload"))
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertEqual(headers["x-job"], "py")
        for code in (200, 202, 400, 404, 409, 422, 500, 503, 599):
            self.assertEqual(
                self.post("py", json.dumps({"http_status": code}))[0], code)
        # No meta at all: 200, application/octet-stream.
        status, headers, _ = self.post("py", "")
        self.assertEqual((status, headers["content-type"]),
                         (200, "application/octet-stream"))

    def test_garbage_reply_meta_is_a_502_that_says_why(self):
        many = {"X-H%d" % i: "v" for i in range(65)}
        cases = [
            ("not json", "not a JSON object"),
            ("[1, 2]", "not a JSON object"),
            ('{"http_status": 99}', "http_status 99"),
            ('{"http_status": 600}', "http_status 600"),
            ('{"http_status": "201"}', 'http_status "201"'),
            ('{"http_status": 201.5}', "http_status 201.5"),
            ('{"http_status": 204}', "not 204, 205 or 304"),
            ('{"http_status": -1}', "http_status -1"),
            ('{"content_type": "text/plain\\r\\nX-Evil: 1"}', "content_type"),
            ('{"content_type": 5}', "content_type"),
            ('{"headers": []}', "headers must be an object"),
            ('{"headers": {"Bad Name": "x"}}', 'header name "Bad Name"'),
            ('{"headers": {"": "x"}}', 'header name ""'),
            ('{"headers": {"X-A": "a\\r\\nX-Evil: 1"}}', 'header "X-A"'),
            ('{"headers": {"X-A": 5}}', 'header "X-A"'),
            ('{"headers": {"X-A": "%s"}}' % ("v" * 8193), 'header "X-A"'),
            ('{"headers": {"Content-Length": "1"}}', "the reactor's to write"),
            ('{"headers": {"content-type": "a/b"}}', "use content_type"),
            ('{"headers": {"Connection": "close"}}', "the reactor's to write"),
            ('{"headers": {"Transfer-Encoding": "chunked"}}',
             "the reactor's to write"),
            (json.dumps({"headers": many}), "more than 64 headers"),
        ]
        reactor = self.p.child("web", 0).pid
        c = self.conn()  # one keep-alive connection through all of them
        for meta, why in cases:
            status, headers, body = self.post("py", meta, conn=c)
            self.assertEqual(status, 502, meta)
            answer = json.loads(body)
            self.assertIn("bad reply meta from group py", answer["error"])
            self.assertIn(why, answer["error"], meta)
            self.assertEqual(answer["code"], 9)  # protocol
            self.assertNotIn("x-evil", headers)
            self.assertNotEqual(headers.get("connection"), "close")
        # Nothing lost: the connection, the reactor and the job go on.
        self.assertEqual(self.post("py", '{"http_status": 202}', conn=c)[:3:2],
                         (202, b"payload"))
        self.assertEqual(self.p.child("web", 0).pid, reactor)
        self.p.wait_for_log(r"web\[0\] \d+: http-reactor: bad reply meta "
                            r"from group py: reply meta is not a JSON object")
        self.p.wait_for_log(r"further ones are not logged")

    # -- request meta

    def test_request_meta_carries_allowed_and_x_headers_only(self):
        status, _, body = self.post(
            "py", "meta?", path="/jobs/py?a=1&b=two",
            headers={"X-Custom": "yes", "X-Request-Id": "r1",
                     "User-Agent": "ua/1", "Accept": "text/plain",
                     "Content-Type": "text/x-test",
                     "Authorization": "Bearer secret", "Cookie": "c=1",
                     "Host": "example"})
        self.assertEqual(status, 200)
        meta = json.loads(body)["http"]
        self.assertEqual(meta["method"], "POST")
        self.assertEqual(meta["path"], "/jobs/py")
        self.assertEqual(meta["query"], "a=1&b=two")
        self.assertRegex(meta["remote"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(meta["headers"], {
            "x-custom": "yes", "x-request-id": "r1", "user-agent": "ua/1",
            "accept": "text/plain", "content-type": "text/x-test"})

    # -- cancel

    def test_client_that_disconnects_cancels_its_request(self):
        job = self.p.child("echo", 0).pid
        mark = self.p.mark()
        c = RawConnection(("127.0.0.1", self.port))
        c.send(post_request("echo", "sleep:600000"))
        wp.wait_until(lambda: self.status()["web"]["inflight"] == 1,
                      what="the request in flight")
        c.close()
        # The reactor cancels; echo-job's sleep answers the cancel at once
        # (error 7), so the job is not killed after the cancel grace.
        wp.wait_until(lambda: self.status()["echo"]["requests"].get(
            "served_errors", 0) >= 1, what="the job answering the cancel")
        status = self.status()
        self.assertGreaterEqual(status["web"]["requests"].get("cancelled", 0),
                                1)
        self.assertEqual(status["web"]["inflight"], 0)
        self.assertEqual(self.p.child("echo", 0).pid, job)
        self.assertEqual(status["echo"]["restarts"], 0)
        self.p.wait_for_log(r"web\[0\] \d+: POST /jobs/echo 499 0 ",
                            since=mark)
        # The job is free again.
        self.assertEqual(self.post("echo", "next")[::2], (200, b"next"))

    # -- progress

    def test_progress_reaches_a_client_that_asks_for_events(self):
        c = self.conn()
        status, headers, body = self.post(
            "echo", "progress:5", headers={"Accept": "text/event-stream"},
            conn=c)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/event-stream")
        self.assertEqual(headers["transfer-encoding"], "chunked")
        got = events(body)
        self.assertEqual([e for e, _ in got], ["progress"] * 5 + ["reply"])
        self.assertEqual([d["text"] for _, d in got[:5]],
                         ["step %d" % i for i in range(1, 6)])
        self.assertAlmostEqual(got[4][1]["fraction"], 1.0)
        self.assertEqual(got[5][1], {"status": 200, "body": "progress:5",
                                     "content_type":
                                         "application/octet-stream"})
        # Keep-alive: the connection serves the next request.
        self.assertEqual(self.post("echo", "again", conn=c)[::2],
                         (200, b"again"))

    def test_progress_is_ignored_without_accept_event_stream(self):
        status, headers, body = self.post("echo", "progress:5")
        self.assertEqual((status, body), (200, b"progress:5"))
        self.assertEqual(headers["content-type"], "application/octet-stream")

    def test_event_stream_ends_with_the_error_or_a_binary_body(self):
        accept = {"Accept": "text/event-stream"}
        status, _, body = self.post("echo", "fail on purpose", headers=accept)
        self.assertEqual(status, 200)
        self.assertEqual(events(body), [("error", {
            "status": 502, "error": "fail on purpose", "code": 1})])
        status, _, body = self.post("echo", b"\xff\xfe", headers=accept)
        self.assertEqual(events(body)[-1][1]["body_base64"], "//4=")
        status, _, body = self.post("py", '{"http_status": 99}',
                                    headers=accept)
        kind, data = events(body)[-1]
        self.assertEqual((kind, data["status"], data["code"]),
                         ("error", 502, 9))

    def test_event_stream_client_that_disconnects_cancels(self):
        c = socket.create_connection(("127.0.0.1", self.port))
        c.sendall(post_request("echo", "sleep:600000",
                               "Accept: text/event-stream\r\n"))
        wp.wait_until(lambda: self.status()["web"]["inflight"] == 1,
                      what="the request in flight")
        c.close()
        wp.wait_until(lambda: self.status()["echo"]["requests"].get(
            "served_errors", 0) >= 1, what="the job answering the cancel")


if __name__ == "__main__":
    wp.main()
