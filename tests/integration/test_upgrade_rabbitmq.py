"""In-place upgrades of the Watcher while the built-in RabbitMQ service
streams messages into a job group: every message is processed and acked,
no child is restarted, the service keeps its broker connection.

needs: rabbitmq (WORKERPOOL_TEST_AMQP_URL). The AMQP client, the recorder
job and the helpers are test_rabbitmq's (standard library only). Two
"builds" are wrapper scripts that exec the same binary with another
$WORKERPOOL_TEST_VERSION (test_upgrade.py says why).
"""

import os
import threading
import time
import unittest

import wp
from test_rabbitmq import (URL, RECORDER, MiniAmqp, AmqpError, bodies,
                           unique_name)

WRAPPER = """#!/bin/sh
WORKERPOOL_TEST_VERSION=%(version)s exec %(bin)s "$@"
"""


@unittest.skipUnless(URL, "WORKERPOOL_TEST_AMQP_URL is not set (needs a "
                     "RabbitMQ: scripts/test starts one)")
class UpgradeRabbitmqTest(wp.TestCase):

    def setUp(self):
        self.amqp = MiniAmqp()
        self.addCleanup(self.amqp.close)
        self.queue_name = unique_name("upgrade")

    def tearDown(self):
        try:
            self.amqp.delete(self.queue_name)
        except (OSError, AmqpError):
            pass

    def test_upgrades_while_a_service_streams_lose_no_message(self):
        import json
        rabbitmq = {"url": URL, "queues": [self.queue_name], "declare": True,
                    "prefetch": 20, "max_retries": 3}
        pool = self.pool("""
pool: {name: rmqup, stop_timeout: 10s, control_socket: "{tmp}/up.sock"}
groups:
  - name: intake
    type: service
    processes: 1
    routes_to: [work]
    rabbitmq: %s
  - name: work
    type: job
    processes: 2
    command: [python3, "{tmp}/recorder.py"]
    env: {OUT: "{tmp}/processed", DELAY_MS: "1", RECORD: body}
""" % json.dumps(rabbitmq), start=False)
        pool.write("recorder.py", RECORDER)
        processed = os.path.join(pool.tmp, "processed")
        pool.start()
        pool.wait_for_children(3)
        sock = os.path.join(pool.tmp, "up.sock")
        builds = []
        for name in ("a", "b"):
            path = pool.write("build-" + name, WRAPPER % {
                "version": "upgrade-" + name, "bin": wp.BIN})
            os.chmod(path, 0o755)
            builds.append(path)
        # The service declared the queue once it is up.
        wp.wait_until(lambda: self.declared(), what="the queue declared")
        before = sorted(c.pid for c in pool.children())
        watcher = pool.pid

        # Published in batches all through the upgrades, and a little after.
        expected = []
        publisher = MiniAmqp()
        self.addCleanup(publisher.close)
        upgrading = threading.Event()
        upgrading.set()

        def publish():
            while upgrading.is_set() or len(expected) < 1000:
                batch = ["m%06d" % (len(expected) + i) for i in range(50)]
                publisher.publish(self.queue_name, [b.encode() for b in batch])
                expected.extend(batch)
                time.sleep(0.02)
        thread = threading.Thread(target=publish)
        thread.start()
        try:
            for round_ in range(20):
                code, out, err = wp.run_cli(
                    ["upgrade", "--socket", sock, "--binary",
                     builds[round_ % 2]])
                self.assertEqual(code, 0, out + err)
        finally:
            upgrading.clear()
            thread.join()

        def done():
            seen = set(bodies(processed))
            return seen >= set(expected)
        wp.wait_until(done, 120, "every message processed", interval=0.2)
        self.assertEqual(sorted(c.pid for c in pool.children()), before)
        self.assertEqual(pool.pid, watcher)
        # Every message once: no redelivery (the service's connection and
        # deliveries never noticed), and nothing left in the queue.
        self.assertEqual(len(bodies(processed)), len(expected))
        time.sleep(0.5)
        self.assertIsNone(self.amqp.get(self.queue_name))
        self.assertEqual(len(pool.find_log(r"upgrade done")), 20)

    def declared(self):
        try:
            self.amqp.declare(self.queue_name, passive=True)
            return True
        except (OSError, AmqpError):
            self.amqp.close()
            self.amqp = MiniAmqp()
            self.addCleanup(self.amqp.close)
            return False


if __name__ == "__main__":
    wp.main()
