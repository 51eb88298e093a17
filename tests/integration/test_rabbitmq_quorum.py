"""The RabbitMQ service on quorum queues (`queue_type: quorum`): the kill
storm and the poison message again; RabbitMQ's own delivery limit
dead-lettering into dead_letter_queue; retries counting RabbitMQ's
x-delivery-count; a queue declared otherwise refused clearly.

needs: rabbitmq (WORKERPOOL_TEST_AMQP_URL; rabbitmqctl settings from the
environment scripts/rabbitmq's env file exports). The helpers are
test_rabbitmq's.
"""

import os
import signal
import time

import wp
from test_rabbitmq import RabbitmqTestCase, bodies, queue_counts

QUORUM = {"queue_type": "quorum"}


class QuorumQueueTest(RabbitmqTestCase):

    def test_kill_storm_on_a_quorum_queue_loses_nothing(self):
        self.check_kill_storm(quorum=True)

    def test_poison_message_on_a_quorum_queue_dead_lettered_with_reason(self):
        self.check_poison_message(quorum=True)

    def kill_service_while_it_holds(self, pool, queue, killed=()):
        """SIGKILLs the service once it holds QUEUE's one message (sent to
        a job, or waiting for one), a process not in KILLED; the pool
        restarts it. Returns the pid killed. (RabbitMQ's own figures of a
        quorum queue lag by seconds: the service's are asked instead.)"""
        app = self.wait_service_figures(
            pool, lambda app: app["pid"] not in killed and
            app["queues"][queue]["deliveries"] == 1 and
            app["inflight"] + app["held"] == 1)
        os.kill(app["pid"], signal.SIGKILL)
        return app["pid"]

    def test_delivery_limit_dead_letters_through_the_broker(self):
        # The service dies with the message three times: RabbitMQ counts the
        # deliveries and, past delivery_limit 2, dead-letters the message to
        # dead_letter_queue itself (x-death reason delivery_limit).
        queue = self.queue("limit")
        dead = self.queue("limit-dead")
        pool = self.service_pool(
            queue, dead=dead, max_retries=10, restart=True,
            rabbitmq_keys=dict(QUORUM, delivery_limit=2))
        pool.wait_for_log(r"rabbitmq-service: connected to")
        self.amqp.publish(queue, ["slow:60000"], {"message_id": "doomed"})
        killed = []
        for _ in range(3):
            killed.append(self.kill_service_while_it_holds(pool, queue,
                                                           killed))
        self.wait_depth(dead, 1)
        letter = self.amqp.get(dead)
        self.assertEqual(letter.body, b"slow:60000")
        self.assertEqual(letter.properties["message_id"], "doomed")
        self.assertEqual(letter.headers["x-first-death-reason"],
                         "delivery_limit")
        self.assertEqual(letter.headers["x-death"][0]["queue"], queue)
        self.assertEqual(self.amqp.declare(queue, passive=True)[0], 0)
        pool.kill_everything()  # the jobs still sleep on it

    def test_retries_count_rabbitmq_delivery_count(self):
        # Lost once with the service (x-delivery-count 1), then failing:
        # with max_retries 1 that is its last attempt, dead-lettered at
        # once, not retried.
        queue = self.queue("counted")
        dead = self.queue("counted-dead")
        pool = self.service_pool(queue, dead=dead, max_retries=1,
                                 restart=True, rabbitmq_keys=QUORUM,
                                 record="full")
        pool.wait_for_log(r"rabbitmq-service: connected to")
        # The job holds it until the service is killed (a fixed pause could
        # end before the service's figures, a second or two late, showed it
        # held).
        release = os.path.join(pool.tmp, "release")
        failing = "holdfail:" + release
        self.amqp.publish(queue, [failing])
        self.kill_service_while_it_holds(pool, queue)
        open(release, "w").close()
        self.wait_depth(dead, 1)
        letter = self.amqp.get(dead)
        self.assertEqual(letter.headers["x-workerpool-retries"], 1)
        self.assertEqual(letter.headers["x-workerpool-error-code"],
                         "handler_error")
        # Run twice (the first run's answer went nowhere), no retry copy.
        wp.wait_until(lambda: bodies(pool.processed).count(failing)
                      >= 2, 20, "both runs recorded")
        time.sleep(0.5)
        self.assertEqual(bodies(pool.processed).count(failing), 2)
        self.assertEqual(pool.stop(), 0)

    def test_queue_declared_otherwise_is_a_clear_error_pool_stays_up(self):
        queue = self.queue("classic")
        self.amqp.declare(queue)  # classic, durable
        pool = self.service_pool(queue, rabbitmq_keys=QUORUM)
        regex = (r"rabbitmq-service: error: queue '%s' exists on .* declared "
                 r"otherwise than the group's rabbitmq section asks "
                 r"\(PRECONDITION_FAILED - inequivalent arg 'x-queue-type'.*"
                 r"delete it" % queue)
        pool.wait_for_log(regex)
        app = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["error"] != "")
        self.assertFalse(app["queues"][queue]["consuming"])
        self.assertRegex(app["problem"], "inequivalent arg")
        before = [c.pid for c in pool.children("intake")]
        time.sleep(1.5 * wp.SCALE)  # looks again meanwhile, quietly
        self.assertEqual([c.pid for c in pool.children("intake")], before)
        self.assertEqual(len(pool.find_log(regex)), 1, pool.log_tail())
        self.assertEqual(pool.stop(), 0)


if __name__ == "__main__":
    wp.main()
