#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into corpus/<target>/.

Run it again after changing the seeds; files it did not write (crash
reproducers, inputs the fuzzer found and someone kept) are left alone.
Seeds are named seed-*; regression inputs crash-<target>-<what>.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


# --- fuzz_config: pool definitions, valid and broken
CONFIGS = {
    "demo.yaml": open(os.path.join(HERE, "..", "..", "config", "demo.yaml")).read(),
    "full.yaml": """pool:
  name: demo
  control_socket: /tmp/wp-fuzz.sock
  stop_timeout: 10s
  metrics: 127.0.0.1:9464
  log: {level: info, format: json}
groups:
  - name: web
    type: reactor
    processes: 2
    command: [workerpool, builtin, http-reactor]
    listen: ["127.0.0.1:8080", "[::1]:8081"]
    routes_to: [compute, intake]
  - name: compute
    type: job
    processes: 4
    command: [./my_job, --flag]
    env: {MODEL: small, X: "1"}
    cwd: /tmp
    user: root
    max_inflight: 1
    queue_limit: 1000
    request_timeout: 30s
    heartbeat_timeout: 10s
    max_requests: 10000
    max_rss: 512MB
    restart:
      backoff: {initial: 100ms, max: 30s, reset_after: 1m}
      intensity: {max_restarts: 10, period: 60s}
  - name: intake
    type: service
    processes: 1
    routes_to: [compute]
    rabbitmq:
      url: amqp://guest:guest@127.0.0.1:5672
      queues: [tasks, other]
      declare: true
      prefetch: 32
      max_retries: 5
      dead_letter_queue: tasks.dead
""",
    "empty-groups.yaml": "pool: {name: t}\ngroups: []\n",
    "errors.yaml": """pool: {name: "", stop_timeout: -1s, bogus: 1}
groups:
  - {name: a, type: job, processes: -3, command: []}
  - {name: a, type: weird, processes: 1.5, command: x, routes_to: [nowhere]}
  - name: r
    type: reactor
    command: [x]
    listen: ["999.1.1.1:99999"]
    routes_to: [r]
    max_rss: 12XB
    request_timeout: 10 parsecs
""",
    "anchors.yaml": """base: &b {type: job, processes: 2, command: [sleep, "1"]}
pool: {name: t}
groups:
  - <<: *b
    name: one
  - {<<: *b, name: two}
""",
    "flow.yaml": '{"pool": {"name": "t"}, "groups": [{"name": "a", "type": "service", "command": ["x"], "rabbitmq": {"url": "amqp://u:p@h:1/v", "queues": ["q"]}}]}',
    "tabs-and-unicode.yaml": "pool:\n\tname: t\ngroups:\n  - name: \u00e9\u00e9\n    command: [\"\\u0000\", \"\\xff\"]\n",
    "deep.yaml": "pool: {name: t}\ngroups: " + "[" * 200 + "]" * 200 + "\n",
    "multi-doc.yaml": "pool: {name: t}\ngroups: []\n---\npool: {name: u}\n",
}
for name, text in CONFIGS.items():
    write("fuzz_config", name, text)


# --- fuzz_frame_decoder: [read size, read size, frames...]
def frame(ftype, ident, aux, meta=b"", body=b"", flags=0, version=1,
          payload_length=None, meta_length=None):
    if payload_length is None:
        payload_length = len(meta) + len(body)
    if meta_length is None:
        meta_length = len(meta)
    return struct.pack("<IBBHQII", payload_length, version, ftype, flags,
                       ident, aux, meta_length) + meta + body


def stream(*frames, reads=(7, 255)):
    return bytes(reads) + b"".join(frames)


write("fuzz_frame_decoder", "request-reply",
      stream(frame(1, 1, 0, b'{"k":1}', b"hello"), frame(2, 1, 0, b"", b"hello")))
write("fuzz_frame_decoder", "control",
      stream(frame(16, 0, 0, b"", b'{"pid":1,"protocol":1}'),
             frame(17, 0, 0, b"", b'{"group":"g"}'),
             frame(23, 0, 0, b"", b"{}"), frame(3, 9, 4, b"", b"queue full"),
             reads=(0, 0)))
write("fuzz_frame_decoder", "bad-version", stream(frame(1, 1, 0, version=2)))
write("fuzz_frame_decoder", "bad-type", stream(frame(99, 1, 0)))
write("fuzz_frame_decoder", "too-big",
      stream(frame(1, 1, 0, payload_length=16 * 1024 * 1024 + 1)))
write("fuzz_frame_decoder", "meta-over-payload",
      stream(frame(1, 1, 0, b"ab", b"", meta_length=3)))
write("fuzz_frame_decoder", "partial",
      stream(frame(4, 5, 500000, b"", b"x" * 40))[:-10])

# --- fuzz_http_request: [read size] + the bytes of one connection
HTTP = {
    "post-job": b"POST /jobs/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 5\r\nX-Priority: -3\r\n\r\nhello",
    "pipelined": b"GET /healthz HTTP/1.1\r\n\r\nHEAD /healthz HTTP/1.1\r\n\r\n"
                 b"POST /jobs/a%2Db HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "chunked": b"POST /jobs/echo?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
               b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "http10": b"POST /jobs/echo HTTP/1.0\r\nConnection: keep-alive\r\n"
              b"Content-Length: 2\r\n\r\nhi",
    "too-large": b"POST /jobs/echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    "bad-version": b"GET / HTTP/2.0\r\n\r\n",
    "upgrade": b"GET /x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nrest",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
    "json-meta": b'POST /jobs/echo HTTP/1.1\r\nContent-Length: 30\r\n\r\n{"content_type":"text/x\\r\\ny"}',
    "garbage": b"\x00\xff\r\n\r\nGET",
    "priority": b"POST /jobs/x HTTP/1.1\r\nX-Priority: 99999999999\r\n"
                b"User-Agent: \xff\xfe\r\nContent-Length: 0\r\n\r\n",
}
for name, data in HTTP.items():
    write("fuzz_http_request", name, bytes([len(data) % 7 + 1]) + data)
    write("fuzz_http_request", name + "-whole", b"\xff" + data)

# --- fuzz_control_socket: what a client writes
CONTROL = {
    "status": '{"command":"status"}\n',
    "scale": '{"command":"scale","group":"web","processes":4}\n',
    "scale-bad": '{"command":"scale","group":"web","processes":-1}\n',
    "scale-huge": '{"command":"scale","group":"web","processes":1e300}\n',
    "restart": '{"command":"restart","group":"web"}',
    "reload": '{"command":"reload"}\r\n',
    "stop": '{"command":"stop"}\n',
    "unknown": '{"command":"dance"}\n',
    "not-object": '[1,2,3]\n',
    "bad-json": '{"command":\n',
    "two-lines": '{"command":"status"}\n{"command":"stop"}\n',
    "group-types": '{"command":"restart","group":{"a":[null,true,1.5]}}\n',
    "empty": "",
}
for name, text in CONTROL.items():
    write("fuzz_control_socket", name, text)
    write("fuzz_control_request", name, text.rstrip("\r\n"))

# --- fuzz_amqp_frame_scan: 2 bytes of channel, then what the broker sends
def amqp_frame(ftype, channel, payload):
    return (struct.pack(">BHI", ftype, channel, len(payload)) + payload +
            b"\xce")


def amqp_shortstr(text):
    return bytes([len(text)]) + text


def amqp_delivery(channel, tag, body, body_frames=1):
    deliver = (struct.pack(">HH", 60, 60) + amqp_shortstr(b"amq.ctag-1") +
               struct.pack(">QB", tag, 0) + amqp_shortstr(b"") +
               amqp_shortstr(b"work"))
    header = struct.pack(">HHQH", 60, 0, len(body), 0)
    out = amqp_frame(1, channel, deliver) + amqp_frame(2, channel, header)
    step = max(1, -(-len(body) // body_frames))
    for at in range(0, len(body), step):
        out += amqp_frame(3, channel, body[at:at + step])
    return out


HEARTBEAT = amqp_frame(8, 0, b"")
AMQP = {
    "one": amqp_delivery(1, 1, b"x" * 100),
    "two-with-heartbeat": amqp_delivery(1, 1, b"a") + HEARTBEAT +
                          amqp_delivery(1, 2, b"b" * 300, body_frames=3),
    "empty-body": amqp_delivery(1, 7, b""),
    "partial": amqp_delivery(1, 1, b"y" * 50)[:-20],
    "other-channel": amqp_delivery(2, 1, b"z"),
    "then-close": amqp_delivery(1, 1, b"q") +
                  amqp_frame(1, 1, struct.pack(">HH", 20, 40) + b"\x00" * 8),
    "bad-frame-end": amqp_delivery(1, 1, b"w")[:-1] + b"\x00",
}
for name, data in AMQP.items():
    write("fuzz_amqp_frame_scan", name, b"\x00\x01" + data)

# --- fuzz_child_protocol: operations on a simulated pool (the Op and
# FrameKind enums of fuzz_child_protocol.cc). It starts with 8 children,
# pids 1000..1007, in slots 0..7: web 0-1, intake 2-3, compute 4-6, batch 7.
# A child is picked by its index among the live pids in order (among those
# with an open channel for frames and raw bytes). Inputs that once broke an
# invariant are kept beside the seeds as crash-<what>.
OP_FRAME, OP_RAW, OP_EXIT, OP_REAP, OP_TIMER, OP_EVENT, OP_RELOAD, \
    OP_ADD_SLOT, OP_STRAY = range(9)
STOP, REPLACE, EVICT, POOL_STOP, RETRY = range(5)  # OP_EVENT's events
WEB, INTAKE, COMPUTE, BATCH, NOWHERE = range(5)  # route_open variants
LATER, NOW, FAILED = range(3)  # the restart policy's verdicts
SPAWN_REUSE_PID, SPAWN_NEW_PID, SPAWN_FAIL = 0, 4, 3  # a spawn's outcome


def hello(child, variant=0):
    return bytes([OP_FRAME, child, 0, variant])


def heartbeat(child, variant=0):
    return bytes([OP_FRAME, child, 1, variant])


def route_open(child, variant):
    return bytes([OP_FRAME, child, 2, variant])


def kill_peer(child, target, reason=1):
    return bytes([OP_FRAME, child, 3, target, reason])


def stats(child, variant):
    return bytes([OP_FRAME, child, 4, variant])


def raw_frame(child, type_index, meta_length, payload):
    return bytes([OP_FRAME, child, 5, type_index, meta_length,
                  len(payload)]) + payload


def raw_bytes(child, data):
    return bytes([OP_RAW, child, len(data)]) + data


def op(*args):
    return bytes(args)


ALL_HELLO = b"".join(hello(child) for child in range(8))
CHILD_PROTOCOL = {
    "hello-routes": ALL_HELLO + heartbeat(0) +
    b"".join(route_open(0, g) for g in (COMPUTE, INTAKE, BATCH, WEB, NOWHERE)) +
    route_open(0, COMPUTE) + route_open(2, COMPUTE) + route_open(2, WEB) +
    route_open(7, COMPUTE) + route_open(4, 7) + route_open(1, 11),
    "kill-peer": ALL_HELLO + route_open(0, COMPUTE) + kill_peer(0, 4) +
    kill_peer(0, 4) + kill_peer(0, 8) + kill_peer(0, 9) + kill_peer(0, 1) +
    kill_peer(0, 2, reason=2) + op(OP_REAP, 0, NOW, SPAWN_NEW_PID) +
    kill_peer(0, 4, reason=3),
    "lifecycle": hello(0) + op(OP_TIMER, 1) +
    op(OP_EVENT, 0, REPLACE, SPAWN_NEW_PID) + hello(7) +
    op(OP_EVENT, 2, EVICT) + op(OP_TIMER, 2) + op(OP_REAP, 0, LATER) +
    op(OP_TIMER, 2, SPAWN_FAIL, NOW, SPAWN_NEW_PID) + op(OP_EVENT, 3, STOP) +
    op(OP_EXIT, 2) + op(OP_EXIT, 3, FAILED) +
    op(OP_EVENT, 5, RETRY, SPAWN_REUSE_PID) +
    op(OP_ADD_SLOT, 1, SPAWN_NEW_PID) + op(OP_STRAY, 3, 0) +
    op(OP_STRAY, 3, 1) + op(OP_STRAY, 3, 2) + op(OP_EVENT, 5, POOL_STOP),
    "offence-flood": hello(3) + stats(3, 2) * 64 + op(OP_TIMER, 3) +
    op(OP_REAP, 0, NOW, SPAWN_NEW_PID) + hello(3),
    # Variant 10 (a line break in a counter's name) is
    # crash-offence-detail-newline.
    # 14 reaches max_requests: the child is replaced (a spawn byte follows).
    "stats": hello(0) + hello(1) +
    b"".join(stats(0, v) for v in range(14) if v != 10) + stats(0, 14) +
    op(SPAWN_NEW_PID) + stats(1, 15) + stats(1, 16) + stats(1, 0),
    "reload": ALL_HELLO + route_open(0, COMPUTE) + route_open(0, INTAKE) +
    route_open(2, COMPUTE) + route_open(2, BATCH) + route_open(2, WEB) +
    op(OP_RELOAD) + kill_peer(0, 4) + route_open(0, COMPUTE) +
    op(OP_RELOAD) + kill_peer(2, 5),
    "raw": hello(0) + raw_frame(0, 11, 0, b'{"pid":1003}') +
    raw_frame(0, 0, 3, b"abcdef") + raw_frame(0, 0xf0, 0, b"") +
    raw_bytes(1, frame(16, 0, 0, b"", b"{}")[:20]) +
    raw_bytes(0, frame(23, 0, 0, b"", b"{}")) +
    raw_bytes(2, frame(16, 0, 0, version=9)),
}
for name, data in CHILD_PROTOCOL.items():
    write("fuzz_child_protocol", name, data)

# --- fuzz_upgrade_state: states one Watcher hands to the next (version 1,
# every member present; version 2, defaults left out, new members)
UPGRADE_SLOT = {
    "index": 0, "state": "up", "pid": 1234, "serial": 7, "age_ms": 5000,
    "generation": 1, "outgoing": False, "replaces_serial": 0,
    "backoff_ms": 0, "timer_ms": -1, "ready": True, "heartbeat": False,
    "recycle_after": 0, "routes": ["work"], "refused_routes": [],
    "counters": {"served": 3}, "app": {}, "offences": 0,
    "channel_pending": "", "output_pending": "6869",
    "fds": {"channel": 9, "output": 10, "output_write": -1,
            "channel_child": -1}}
UPGRADE_STATE = {
    "workerpool_upgrade_state": 1, "from_version": "0.1.0",
    "config_path": "/etc/workerpool/demo.yaml",
    "config_content": "pool: {name: demo}\ngroups: []\n",
    "pool_name": "demo", "control_socket": "/run/workerpool/demo.sock",
    "metrics": "", "phase": "running", "uptime_ms": 1000,
    "started_unix": 1700000000, "last_reload": None,
    "reload_generation": 0, "reload_queued": False, "refused_routes": 0,
    "spawns": 7, "upgrades": 1, "last_upgrade_unix": 1700000100,
    "last_upgrade_error": "",
    "fds": {"control": 5, "metrics": -1, "fallback_exe": 3,
            "listen": {"127.0.0.1:8080": 6}},
    "groups": [{
        "name": "web", "type": "reactor", "command": ["workerpool"],
        "processes": 1, "scaled": False, "failed": False, "removing": False,
        "speaks_protocol": True, "generation": 1, "recycled": 0,
        "protocol_errors": 0, "rolling": [],
        "policy": {"quick_deaths": [0], "recent_ages_ms": [],
                   "failed": False, "restarts": 0},
        "autoscale": {"ups": 0, "downs": 0, "last_unix": 0},
        "slots": [UPGRADE_SLOT, dict(UPGRADE_SLOT, index=1, state="backoff",
                                     pid=0, timer_ms=250,
                                     fds={"channel": -1, "output": -1,
                                          "output_write": -1,
                                          "channel_child": -1})]}]}
UPGRADE_TEXT = json.dumps(UPGRADE_STATE)
write("fuzz_upgrade_state", "valid", UPGRADE_TEXT)
write("fuzz_upgrade_state", "truncated", UPGRADE_TEXT[:len(UPGRADE_TEXT) // 2])
write("fuzz_upgrade_state", "newer",
      json.dumps(dict(UPGRADE_STATE, workerpool_upgrade_state=3)))
UPGRADE_V2 = dict(
    UPGRADE_STATE, workerpool_upgrade_state=2, handing_since_ns=5000000000,
    spawner={"pid": 4321, "fd": 17},
    groups=[dict(UPGRADE_STATE["groups"][0],
                 output={"fd": 15, "child_fd": 16},
                 slots=[{"index": 0, "state": "up", "pid": 1234,
                         "serial": 7, "ready": True, "heartbeat": True,
                         "heartbeat_ms": 800, "routes": ["work"],
                         "counters": {"served": 3},
                         "latency": {"work": {"bounds_ms": [5, 50],
                                              "counts": [3, 2, 1],
                                              "sum_ms": 77}},
                         "route_load": {"work": {"queued": 4,
                                                 "inflight": 2}},
                         "fds": {"channel": 9}},
                        {"index": 1, "state": "backoff", "timer_ms": 250}])])
UPGRADE_V2_TEXT = json.dumps(UPGRADE_V2)
write("fuzz_upgrade_state", "valid-v2", UPGRADE_V2_TEXT)
write("fuzz_upgrade_state", "truncated-v2",
      UPGRADE_V2_TEXT[:len(UPGRADE_V2_TEXT) * 2 // 3])
write("fuzz_upgrade_state", "wrong-types-v2",
      UPGRADE_V2_TEXT.replace('"sum_ms": 77', '"sum_ms": -77'))
write("fuzz_upgrade_state", "wrong-types",
      UPGRADE_TEXT.replace('"pid": 1234', '"pid": "1234"'))
write("fuzz_upgrade_state", "empty", "")
