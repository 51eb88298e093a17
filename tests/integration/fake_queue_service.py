"""A service child for tests, without RabbitMQ: it says hello on its pool
channel, then once a second reports queue figures the way the built-in
rabbitmq-service does (its "app" stats: {"queues": {"tasks": {...}}}), with
40 more deliveries and acks each time and a depth that goes down. Exits on
EOF (the Watcher is gone) or SIGTERM. Used by test_top and
test_prometheus: `command: [python3, .../fake_queue_service.py]`."""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "src", "python"))
import workerpool  # noqa: E402  (src/python/workerpool.py of this tree)


def main():
    sock = socket.socket(fileno=int(os.environ["WORKERPOOL_IPC_FD"]))
    sock.sendall(workerpool.encode_frame(
        workerpool.FrameType.HELLO,
        body=json.dumps({"pid": os.getpid(), "protocol": 1})))
    delivered = 0
    while True:
        delivered += 40
        figures = {"messages": max(0, 5000 - delivered), "consumers": 1,
                   "deliveries": delivered, "acks": delivered,
                   "dead_letters": 0}
        stats = {"app": {"connection": "open",
                         "queues": {"tasks": figures}}}
        sock.sendall(workerpool.encode_frame(workerpool.FrameType.STATS,
                                             body=json.dumps(stats)))
        # At most one stats frame a second (docs/PROTOCOL.md); read and
        # drop what the pool sends meanwhile.
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            sock.settimeout(max(0.01, until - time.monotonic()))
            try:
                if not sock.recv(65536):
                    return
            except socket.timeout:
                pass


if __name__ == "__main__":
    main()
