"""The RabbitMQ service when the broker takes something away: a consumed
queue deleted under it, a memory alarm that blocks publishing, a job slower
than the broker's consumer_timeout; and quorum queues (delivery-limit,
x-delivery-count, the kill storm and the poison message again).

needs: rabbitmq (WORKERPOOL_TEST_AMQP_URL; rabbitmqctl settings from the
environment scripts/rabbitmq's env file exports). Some tests change the
broker's settings for their duration (a memory alarm, a short
consumer_timeout) and put them back, even on failure; the rabbitmq label's
resource lock keeps other broker tests from running meanwhile.

The helpers (MiniAmqp, the recorder job, service_pool) are test_rabbitmq's.
"""

import os
import random
import signal
import time

import wp
from test_rabbitmq import (AmqpError, MiniAmqp, RabbitmqTestCase, bodies,
                           queue_counts, rabbitmqctl)


def set_broker_env(key, value):
    """Sets the rabbit application's KEY on the running node (read by the
    channels opened afterwards)."""
    rabbitmqctl("eval", "application:set_env(rabbit, %s, %s)." % (key, value))


class QueueRecoveryTest(RabbitmqTestCase):

    def status_app(self, pool):
        return self.wait_service_figures(pool, lambda app: True)

    # ------------------------------------------------------------- deleted

    def test_queue_deleted_midstream_declared_again_and_consumed(self):
        queue = self.queue("deleted")
        prefetch = 10
        self.amqp.declare(queue)
        first = ["a%d" % n for n in range(300)]
        self.amqp.publish(queue, first)
        pool = self.service_pool(queue, prefetch=prefetch, delay_ms=10)
        wp.wait_until(lambda: len(bodies(pool.processed)) >= 40, 30,
                      "work under way")
        mark = pool.mark()
        deleted = self.amqp.delete(queue)
        pool.wait_for_log(
            r"warning: queue '%s' is no longer consumed: RabbitMQ cancelled "
            r"its consumer .*declaring it again" % queue, since=mark)
        pool.wait_for_log(r"consuming queue '%s' again \(declared it anew\)"
                          % queue, since=mark)
        # What was in flight was processed (and acked, harmlessly); what was
        # ready went with the queue: together, every message, and a message
        # at most once more than the window allows.
        seen = [b for b in bodies(pool.processed) if b.startswith("a")]
        wp.wait_until(lambda: len(set(
            b for b in bodies(pool.processed) if b.startswith("a"))) +
            deleted == len(first), 20,
            "in-flight deliveries finished: processed + deleted = published")
        seen = [b for b in bodies(pool.processed) if b.startswith("a")]
        self.assertLessEqual(len(seen) - len(set(seen)), prefetch)
        # Messages published after it is back are all processed.
        second = ["b%d" % n for n in range(200)]
        self.amqp.publish(queue, second)
        self.wait_processed(pool, second)
        self.wait_drained(queue)
        app = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["consumers"] == 1)
        figures = app["queues"][queue]
        self.assertEqual(figures["cancels"], 1)
        self.assertTrue(figures["consuming"])
        self.assertEqual(figures["error"], "")
        self.assertEqual(app["problem"], "")
        self.assertRegex(app["last_error"],
                         r"queue '%s': RabbitMQ cancelled its consumer" % queue)
        self.assertEqual(app["reconnects"], 0, "the connection stayed up")
        self.assertEqual(len(pool.find_log(r"no longer consumed")), 1,
                         "one warning line")
        self.assertEqual(pool.stop(), 0)

    def test_queue_deleted_without_declare_consumed_when_recreated(self):
        queue = self.queue("recreated")
        other = self.queue("other")
        self.amqp.declare(queue)
        self.amqp.declare(other)
        dead = self.queue("recreated-dead")
        pool = self.service_pool(queue, dead=dead, declare=False,
                                 max_retries=1, rabbitmq_keys={
                                     "queues": [queue, other]})
        pool.wait_for_log(r"rabbitmq-service: connected to")
        self.amqp.publish(queue, ["x%d" % n for n in range(50)])
        self.wait_processed(pool, ["x%d" % n for n in range(50)])
        # One delivery still with a job when the queue goes: it fails, and
        # its retry waits for the queue instead of being published into
        # nothing.
        # It fails once the test releases it, with the queue gone (a fixed
        # pause could end before the test saw it in flight and deleted the
        # queue: the figures lag by a second or two).
        release = os.path.join(pool.tmp, "release")
        failing = "holdfail:" + release
        self.amqp.publish(queue, [failing])
        # The 51st delivery: a report from while the 50 were in flight
        # may still stand.
        self.wait_service_figures(
            pool, lambda app: app["inflight"] == 1
            and app["queues"][queue]["deliveries"] == 51)
        mark = pool.mark()
        self.amqp.delete(queue)
        pool.wait_for_log(
            r"warning: queue '%s' is no longer consumed: .*looking for it "
            r"with backoff" % queue, since=mark)
        pool.wait_for_log(r"error: queue '%s' does not exist.*looking again "
                          r"in about" % queue, since=mark)
        open(release, "w").close()
        # Not silent: status shows the queue not consumed, and why. The
        # figures reach status about a second after a change, so a report
        # may show the cancel before the failed look the log line told of:
        # wait for the look's error itself.
        app = self.wait_service_figures(
            pool, lambda app: not app["queues"][queue]["consuming"]
            and "does not exist" in app["queues"][queue]["error"])
        self.assertEqual(app["connection"], "connected")
        self.assertEqual(app["queues"][queue]["consumers"], 0)
        self.assertRegex(app["queues"][queue]["error"], "does not exist")
        self.assertRegex(app["problem"], r"queue '%s' not consumed" % queue)
        self.assertRegex(app["last_error"], queue)
        self.assertTrue(app["queues"][other]["consuming"])
        # The status table flags the group and says why.
        code, out, _ = wp.run_cli(["status", "--socket",
                                   os.path.join(pool.tmp, "rmq.sock")])
        self.assertEqual(code, 0)
        self.assertRegex(out, r"intake +service .* running! ")
        self.assertIn("! intake[0]: queue '%s' not consumed: queue '%s' does "
                      "not exist" % (queue, queue), out)
        # The other queue is consumed meanwhile.
        self.amqp.publish(other, ["o1"])
        self.wait_processed(pool, ["o1"])
        time.sleep(5)  # as an operator would take to re-create it
        back = time.monotonic()
        self.amqp.declare(queue)
        pool.wait_for_log(r"consuming queue '%s' again \(it is back\)"
                          % queue, since=mark, timeout=15)
        # Looked for at most every 5 s (the backoff's ceiling), plus jitter.
        self.assertLess(time.monotonic() - back, 6.5 * wp.SCALE)
        second = ["y%d" % n for n in range(50)]
        self.amqp.publish(queue, second)
        self.wait_processed(pool, second)
        # The delivery that failed while its queue was gone was retried
        # once it was back (then dead-lettered: max_retries 1).
        self.wait_depth(dead, 1)
        letter = self.amqp.get(dead)
        self.assertEqual(letter.body, failing.encode())
        self.assertEqual(letter.headers["x-workerpool-retries"], 1)
        self.assertEqual(bodies(pool.processed).count(failing), 2)
        self.assertEqual(pool.find_log(r"returned a message"), [])
        app = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["consuming"] and
            app["problem"] == "")
        self.assertEqual(app["queues"][queue]["cancels"], 1)
        # Logged once per 30 s while it repeats, not once per look.
        self.assertLessEqual(
            len(pool.find_log(r"error: queue '%s' does not exist" % queue,
                              since=mark)), 2)
        self.assertEqual(pool.stop(), 0)

    def test_queue_missing_at_start_without_declare_consumed_when_created(self):
        queue = self.queue("late")
        other = self.queue("present")
        self.amqp.declare(other)
        pool = self.service_pool(queue, declare=False, rabbitmq_keys={
            "queues": [queue, other]})
        pool.wait_for_log(r"connected to .*; consuming '%s'" % other)
        pool.wait_for_log(r"error: queue '%s' does not exist" % queue)
        self.amqp.publish(other, ["p1"])
        self.wait_processed(pool, ["p1"])
        self.amqp.declare(queue)
        pool.wait_for_log(r"queue '%s' found: consuming it" % queue,
                          timeout=15)
        self.amqp.publish(queue, ["l1"])
        self.wait_processed(pool, ["l1"])
        self.assertEqual(pool.stop(), 0)

    def test_dead_letter_queue_deleted_letter_returned_not_lost(self):
        # Dead letters are published mandatory: with the dead-letter queue
        # deleted under the service, RabbitMQ returns the letter; the
        # delivery is requeued instead of acked, the queue declared again,
        # and the next attempt's letter lands there.
        queue = self.queue("dlq-gone")
        dead = self.queue("dlq-gone-dead")
        pool = self.service_pool(queue, dead=dead, max_retries=0)
        pool.wait_for_log(r"rabbitmq-service: connected to")
        self.amqp.delete(dead)
        self.amqp.publish(queue, ["fail-returned"])
        pool.wait_for_log(
            r"warning: RabbitMQ returned a message published to '%s' \(312 "
            r"NO_ROUTE: no such queue\); declaring the dead-letter queue "
            r"again; requeueing the delivery it was published for" % dead)
        # The line is logged before the declare it announces: a passive
        # declare now could meet NOT_FOUND (which closes the test's channel),
        # so wait for the broker to list the queue first.
        wp.wait_until(lambda: queue_counts(dead) is not None, 30,
                      "queue %s declared again" % dead, interval=0.2)
        self.wait_depth(dead, 1)
        letter = self.amqp.get(dead)
        self.assertEqual(letter.body, b"fail-returned")
        self.assertEqual(bodies(pool.processed).count("fail-returned"), 2)
        self.wait_drained(queue)
        app = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["dead_letters"] == 1)
        self.assertEqual(app["queues"][queue]["requeued"], 1)
        self.assertEqual(pool.stop(), 0)

    # ------------------------------------------------------------- blocked

    def test_memory_alarm_blocks_publishing_nothing_lost_resumes(self):
        # The messages wait in the queue; the alarm is raised; then the
        # service starts: it may consume (an alarm blocks publishers only)
        # but its first reply makes RabbitMQ block the connection.
        queue = self.queue("alarm")
        replies = self.queue("alarm-replies")
        prefetch = 10
        self.amqp.declare(queue)
        self.amqp.declare(replies)
        messages = ["m%d" % n for n in range(40)]
        self.amqp.publish(queue, messages, {"reply_to": replies})
        self.addCleanup(rabbitmqctl, "set_vm_memory_high_watermark", "0.4")
        rabbitmqctl("set_vm_memory_high_watermark", "0.0001")
        wp.wait_until(lambda: "memory" in rabbitmqctl(
            "eval", "rabbit_alarm:get_alarms()."), 20, "the memory alarm")
        pool = self.service_pool(queue, prefetch=prefetch, delay_ms=20)
        pool.wait_for_log(r"warning: RabbitMQ blocked this connection")
        app = self.wait_service_figures(pool, lambda app: app["blocked"])
        self.assertRegex(app["problem"], "RabbitMQ blocked the connection")
        # Replies wait, and so do the acks (each waits for its reply's
        # confirm): nothing is handed out beyond the prefetch window.
        time.sleep(1)
        self.assertLessEqual(len(set(bodies(pool.processed))), prefetch)
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        pool.wait_for_log(r"RabbitMQ unblocked this connection")
        self.wait_processed(pool, messages)
        self.wait_depth(replies, len(messages))
        answers = self.amqp.get_all(replies)
        self.assertEqual(sorted(a.body.decode() for a in answers),
                         sorted("done " + m for m in messages))
        self.wait_drained(queue)
        app = self.wait_service_figures(
            pool, lambda app: not app["blocked"] and app["problem"] == "")
        self.assertEqual(app["reconnects"], 0)
        self.assertEqual(pool.stop(), 0)

    # ------------------------------------------------------------- timeout

    def short_consumer_timeout(self, ms):
        """RabbitMQ's consumer_timeout at MS for the channels opened from
        now on, checked every 200 ms (a channel tick; 60 s by default);
        both put back after the test."""
        self.addCleanup(set_broker_env, "channel_tick_interval", 60000)
        self.addCleanup(set_broker_env, "consumer_timeout", 1800000)
        set_broker_env("consumer_timeout", ms)
        set_broker_env("channel_tick_interval", 200)

    def test_job_slower_than_unknown_consumer_timeout_learned_no_loop(self):
        # The service is not told the broker's consumer_timeout: the first
        # time it runs out RabbitMQ closes the channel; the service names
        # the message, learns the value, and from then on cuts the job off
        # in time: retried, then dead-lettered, never an endless loop.
        self.short_consumer_timeout(2000)
        queue = self.queue("ctimeout")
        dead = self.queue("ctimeout-dead")
        pool = self.service_pool(queue, dead=dead, max_retries=1, prefetch=5)
        pool.wait_for_log(r"rabbitmq-service: connected to")
        self.amqp.publish(queue, ["slow:4000"], {"message_id": "long-1"})
        pool.wait_for_log(
            r"warning: RabbitMQ's consumer_timeout \(2s\) ran out for message "
            r"'long-1' from '%s' \(with group 'work' for [\d.]+m?s\).*cuts a "
            r"job off at 1\.8s" % queue)
        self.wait_depth(dead, 1, timeout=40)
        letter = self.amqp.get(dead)
        self.assertEqual(letter.body, b"slow:4000")
        self.assertEqual(letter.headers["x-workerpool-error-code"],
                         "consumer_timeout")
        self.assertEqual(letter.headers["x-workerpool-retries"], 1)
        self.assertIn("consumer_timeout (2s)",
                      letter.headers["x-workerpool-error"])
        # Three attempts (the one RabbitMQ cut, two cut by the service),
        # each job run to its end (the python job ignores the cancel); then
        # no more. Waiting for the last one also keeps the stop below from
        # meeting a cancelled request still out (see the report on
        # PoolClient: its stop then waits for SIGKILL).
        wp.wait_until(lambda: bodies(pool.processed).count("slow:4000") >= 3,
                      20, "the attempts' jobs finished")
        time.sleep(0.5)
        self.assertEqual(bodies(pool.processed).count("slow:4000"), 3)
        # Quick messages still go through, and the channel closed once.
        self.amqp.publish(queue, ["quick"])
        self.wait_processed(pool, ["quick"])
        self.assertEqual(len(pool.find_log(r"consumer_timeout .* ran out")), 1)
        app = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["consumer_timeouts"] == 3)
        self.assertEqual(app["consumer_timeout_ms"], 2000)
        self.assertEqual(app["reconnects"], 1)
        self.wait_drained(queue)
        self.assertEqual(pool.stop(), 0)

    def test_job_slower_than_known_consumer_timeout_cut_off_in_time(self):
        # Told the broker's consumer_timeout (rabbitmq.consumer_timeout),
        # the service warns at start that the jobs may run longer, and cuts
        # a job off before RabbitMQ would close the channel: the channel
        # never closes, the message is retried, then dead-lettered.
        self.short_consumer_timeout(2000)
        queue = self.queue("ctold")
        dead = self.queue("ctold-dead")
        pool = self.service_pool(queue, dead=dead, max_retries=1,
                                 rabbitmq_keys={"consumer_timeout": "2s"})
        pool.wait_for_log(
            r"warning: group 'work' has request_timeout 30s, but RabbitMQ "
            r"closes the channel of a delivery unacked for 2s .*cut off")
        pool.wait_for_log(r"rabbitmq-service: connected to")
        self.amqp.publish(queue, ["slow:3000"], {"message_id": "long-2"})
        self.wait_depth(dead, 1, timeout=30)
        letter = self.amqp.get(dead)
        self.assertEqual(letter.headers["x-workerpool-error-code"],
                         "consumer_timeout")
        self.assertEqual(letter.headers["x-workerpool-retries"], 1)
        wp.wait_until(lambda: bodies(pool.processed).count("slow:3000") >= 2,
                      20, "the attempts' jobs finished")
        time.sleep(0.5)
        self.assertEqual(bodies(pool.processed).count("slow:3000"), 2)
        app = self.wait_service_figures(
            pool, lambda app: app["queues"][queue]["consumer_timeouts"] == 2)
        self.assertEqual(app["reconnects"], 0, "the channel never closed")
        self.assertEqual(pool.find_log(r"ran out|lost:"), [])
        self.assertEqual(pool.stop(), 0)

    # ------------------------------------------------------------- login

    def test_login_names_the_connection_and_advertises_capabilities(self):
        queue = self.queue("named")
        pool = self.service_pool(queue)
        pool.wait_for_log(r"rabbitmq-service: connected to")
        line = wp.wait_until(lambda: next(
            (l for l in rabbitmqctl("list_connections", "client_properties")
             .splitlines() if '"rmq/intake/0"' in l), None), 20,
            "the service's connection listed")
        self.assertIn('{"connection_name","rmq/intake/0"}', line)
        for capability in ("consumer_cancel_notify", "connection.blocked",
                           "publisher_confirms", "basic.nack",
                           "authentication_failure_close"):
            self.assertIn('{"%s",true}' % capability, line)
        self.assertEqual(pool.stop(), 0)


if __name__ == "__main__":
    wp.main()
