#!/usr/bin/env python3
"""Autoscaling a job group fed by a RabbitMQ service (groups[].autoscale):
a backlog of slow messages grows the group; once it is worked off the group
shrinks back to min, and nothing is lost on the way: every message processed
once, the queue empty with nothing unacked. With min 0 the group starts at
no process and grows when messages arrive (the service holds them meanwhile).

needs: rabbitmq (WORKERPOOL_TEST_AMQP_URL). The helpers are test_rabbitmq's.
"""

import collections
import json
import os

import wp
from test_rabbitmq import RabbitmqTestCase, bodies


class AutoscaleRabbitmqTest(RabbitmqTestCase):

    def work(self, pool):
        """The work group in status --json; None while the Watcher's
        control socket is not up yet."""
        code, out, err = wp.run_cli(
            ["status", "--json", "--socket", os.path.join(pool.tmp, "rmq.sock")])
        if code != 0:
            self.assertIn("no workerpool is running", err)
            return None
        for group in json.loads(out)["groups"]:
            if group["name"] == "work":
                return group
        self.fail("no group work")

    def wait_work(self, pool, predicate, what, timeout=None):
        return wp.wait_until(
            lambda: (lambda g: g if g and predicate(g) else None)(
                self.work(pool)),
            timeout, what, on_timeout=lambda: json.dumps(self.work(pool)))

    def run_backlog(self, min_, count):
        queue = self.queue("autoscale")
        # Declared before anything is published: the service declares it
        # too, but maybe only after the first publish (which would be lost).
        self.amqp.declare(queue)
        pool = self.service_pool(
            queue, prefetch=50, jobs=min_,
            work_keys="\n    autoscale: {min: %d, max: 6, up_after: 200ms, "
                      "down_after: 2s}" % min_)
        self.wait_work(pool, lambda g: g["autoscale"] is not None,
                       "the pool answering")
        # Distinct bodies the recorder reads as 40 ms each.
        sent = ["slow:" + "0" * n + "40" for n in range(count)]
        self.amqp.publish(queue, sent)
        grown = self.wait_work(pool, lambda g: g["autoscale"]["target"] >= 3,
                               "the work group to grow")
        self.assertLessEqual(grown["autoscale"]["target"], 6)
        self.wait_processed(pool, sent, timeout=120)
        self.wait_drained(queue)
        self.wait_work(pool, lambda g: g["live"] == min_ and
                       g["autoscale"]["target"] == min_, "back at min")
        seen = collections.Counter(bodies(pool.processed))
        self.assertEqual(set(seen), set(sent))
        self.assertEqual([b for b, n in seen.items() if n > 1], [])
        self.assertEqual(pool.find_log(r"work\[\d+\] pid \d+ (exited with "
                                       r"code [1-9]|killed by signal)"), [])
        self.assertEqual(pool.stop(), 0)

    def test_a_backlog_grows_the_group_and_nothing_is_lost(self):
        self.run_backlog(min_=1, count=600)

    def test_from_zero_processes(self):
        self.run_backlog(min_=0, count=200)


if __name__ == "__main__":
    wp.main()
