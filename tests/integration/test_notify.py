"""sd_notify to systemd, against a real NOTIFY_SOCKET datagram socket made
here: READY=1 once every group is up, RELOADING=1 then READY=1 around a
reload (a failed one too), STATUS= lines, STOPPING=1, WATCHDOG=1 only when
WATCHDOG_USEC asks for it. DESIGN.md: "systemd"; issue 7."""

import os
import shutil
import socket
import tempfile
import threading

import wp

SLEEP = '[sleep, "1000"]'


class NotifyListener:
    """A bound AF_UNIX datagram socket collecting every message, in order."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode(errors="replace"))
                self._lock.notify_all()

    def fields(self):
        """Every message as a dict of its KEY=VALUE lines."""
        with self._lock:
            return [dict(line.partition("=")[::2]
                         for line in m.splitlines() if "=" in line)
                    for m in self.messages]

    def wait_for(self, predicate, what):
        return wp.wait_until(lambda: predicate(self.fields()), what=what,
                             on_timeout=lambda: repr(self.messages))

    def close(self):
        self.sock.close()


def states(messages):
    """The lifecycle keys in order (WATCHDOG and STATUS-only left out)."""
    result = []
    for m in messages:
        for key in ("READY", "RELOADING", "STOPPING"):
            if m.get(key) == "1":
                result.append(key)
    return result


class NotifyTest(wp.TestCase):

    def listener(self, tmp_name):
        directory = tempfile.mkdtemp(prefix="wp-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, tmp_name)
        listener = NotifyListener(path)
        self.addCleanup(listener.close)
        return listener

    def test_ready_reload_status_stopping_in_order(self):
        notify = self.listener("notify.sock")
        yaml = """
pool: {name: nt, stop_timeout: 2s}
groups:
  - {name: a, type: job, processes: %d, command: %s}
"""
        pool = self.pool(yaml % (2, SLEEP),
                         env={"NOTIFY_SOCKET": notify.path})
        notify.wait_for(lambda ms: "READY" in states(ms), "READY=1")
        ready = [m for m in notify.fields() if m.get("READY") == "1"][0]
        # Sent once every group is up, with a one-line summary.
        self.assertIn("nt: 2/2 children up in 1 groups", ready["STATUS"])
        self.assertEqual(len(pool.children("a")), 2)
        for child in pool.children("a"):
            self.assertNotIn("NOTIFY_SOCKET", wp.proc_environ(child.pid))

        pool.reload(yaml % (3, SLEEP))
        notify.wait_for(lambda ms: states(ms).count("READY") == 2,
                        "READY=1 after the reload")
        reloading = [m for m in notify.fields() if m.get("RELOADING") == "1"]
        self.assertEqual(len(reloading), 1)
        self.assertTrue(reloading[0]["MONOTONIC_USEC"].isdigit())
        last = [m for m in notify.fields() if m.get("READY") == "1"][-1]
        self.assertIn("3/3 children up", last["STATUS"])

        # A failed reload still ends with READY=1, and STATUS says why.
        pool.reload(yaml % (3, SLEEP) + "  - {name: b, type: nope}\n")
        notify.wait_for(lambda ms: states(ms).count("READY") == 3,
                        "READY=1 after the failed reload")
        last = [m for m in notify.fields() if m.get("READY") == "1"][-1]
        self.assertRegex(last["STATUS"],
                         r"last reload failed: .*pool\.yaml:\d+:\d+: ")

        self.assertEqual(pool.stop(), 0)
        notify.wait_for(lambda ms: "STOPPING" in states(ms), "STOPPING=1")
        self.assertEqual(states(notify.fields()),
                         ["READY", "RELOADING", "READY", "RELOADING", "READY",
                          "STOPPING"])
        # No watchdog was asked for: none sent.
        self.assertEqual([m for m in notify.fields() if "WATCHDOG" in m], [])

    def test_watchdog_at_half_the_interval(self):
        notify = self.listener("notify.sock")
        pool = self.pool("""
pool: {name: wd, stop_timeout: 2s}
groups:
  - {name: a, type: job, processes: 1, command: %s}
""" % SLEEP, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
        notify.wait_for(
            lambda ms: sum(1 for m in ms if m.get("WATCHDOG") == "1") >= 3,
            "three WATCHDOG=1")
        pool.wait_for_log(r"systemd watchdog: WATCHDOG=1 every 200ms")
        for child in pool.children("a"):
            env = wp.proc_environ(child.pid)
            self.assertNotIn("WATCHDOG_USEC", env)
        self.assertEqual(pool.stop(), 0)


if __name__ == "__main__":
    wp.main()
