"""systemd/workerpool@.service under systemd, as an operator runs it.

1. `systemd-analyze verify` passes on the unit (no warnings either).
2. A real systemd as PID 1 in a systemd-nspawn container (Debian 12 minbase
   root made with debootstrap, cached between runs under
   /var/cache/workerpool-nspawn): the test installs workerpool with
   scripts/install, writes /etc/workerpool/demo.yaml, then
   - `systemctl start workerpool@demo` reaches active, and `systemctl status`
     shows the Watcher's STATUS= line;
   - editing the file + `systemctl reload` applies the difference (untouched
     pids kept);
   - a broken file on reload leaves the unit active on the old pool;
   - `systemctl stop` leaves no process of the pool;
   - SIGKILL of the Watcher makes systemd restart it (no child outlives it);
   - `systemctl kill --kill-who=main -s USR2` upgrades the Watcher in place:
     the unit stays active with the same main pid and the same children.
DESIGN.md: "systemd"; issue 7.

Needs root. The packages debootstrap and systemd-container are installed
when missing (apt-get, idempotent). The container part is skipped, loudly,
only when this machine cannot boot a container (no root, no network for the
first debootstrap, nspawn refused).

Environment: WORKERPOOL_NSPAWN_CACHE (default /var/cache/workerpool-nspawn),
WORKERPOOL_NSPAWN_MIRROR (default: the host's Debian mirror, else
http://deb.debian.org/debian).
"""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import wp

TOP = wp.TOP
UNIT = os.path.join(TOP, "systemd", "workerpool@.service")
INSTALL = os.path.join(TOP, "scripts", "install")
CACHE = os.environ.get("WORKERPOOL_NSPAWN_CACHE",
                       "/var/cache/workerpool-nspawn")
HOST_PACKAGES = ["debootstrap", "systemd-container"]
# Beyond minbase: systemd as PID 1, and what `ps`/`pgrep` need in the tests.
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "procps"]


def log(message):
    sys.stderr.write("test_systemd: %s\n" % message)
    sys.stderr.flush()


def run(args, timeout=120, check=True, input=None):
    proc = subprocess.run(args, capture_output=True, text=True,
                          errors="replace", timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError("%s exited %d\nstdout: %s\nstderr: %s" % (
            " ".join(args), proc.returncode, proc.stdout[-3000:],
            proc.stderr[-3000:]))
    return proc


# --- the unit file, statically ------------------------------------------------

def unit_settings(text):
    """{(section, key): [values]} of a unit file."""
    settings = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


class UnitFileTest(unittest.TestCase):

    def test_unit_has_the_contract_settings(self):
        with open(UNIT) as f:
            settings = unit_settings(f.read())

        def get(key):
            return settings.get(("Service", key), [None])[-1]
        self.assertEqual(get("Type"), "notify")
        self.assertRegex(get("ExecStart"),
                         r"^/\S*/workerpool run /etc/workerpool/%i\.yaml$")
        self.assertEqual(get("ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(get("KillMode"), "mixed")
        self.assertEqual(get("Restart"), "on-failure")
        self.assertRegex(get("WatchdogSec") or "", r"^\d+s?$")
        self.assertEqual(get("RuntimeDirectory"), "workerpool")
        self.assertEqual(get("NoNewPrivileges"), "yes")
        self.assertEqual(get("ProtectSystem"), "strict")
        self.assertEqual(get("ProtectHome"), "yes")
        self.assertEqual(get("PrivateTmp"), "yes")

    def test_systemd_analyze_verify_passes_without_warnings(self):
        if shutil.which("systemd-analyze") is None:
            self.fail("systemd-analyze is not installed (package systemd)")
        tmp = tempfile.mkdtemp(prefix="wp-verify-")
        self.addCleanup(shutil.rmtree, tmp, True)
        # verify checks that ExecStart's binary exists: point it at ours.
        with open(UNIT) as f:
            text = f.read()
        text = re.sub(r"^ExecStart=\S+", "ExecStart=" + wp.BIN, text,
                      flags=re.M)
        with open(os.path.join(tmp, "workerpool@.service"), "w") as f:
            f.write(text)
        for name in ("workerpool@.service", "workerpool@demo.service"):
            proc = run(["systemd-analyze", "verify",
                        os.path.join(tmp, name)], check=False)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(proc.stderr.strip(), "",
                             "warnings from systemd-analyze verify")


# --- a real systemd in a container --------------------------------------------

def host_mirror():
    mirror = os.environ.get("WORKERPOOL_NSPAWN_MIRROR")
    if mirror:
        return mirror
    for path in ("/etc/apt/sources.list.d/debian.sources",
                 "/etc/apt/sources.list"):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+bookworm\s",
                      text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def runtime_packages(binary):
    """The Debian packages holding the shared libraries BINARY links."""
    proc = run(["ldd", binary])
    packages = set()
    for line in proc.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line)
        if not m:
            continue
        path = m.group(1)
        candidates = {path, os.path.realpath(path)}
        for candidate in list(candidates):
            # usrmerge: dpkg may know it under /lib or /usr/lib.
            if candidate.startswith("/usr/lib/"):
                candidates.add(candidate[len("/usr"):])
            elif candidate.startswith("/lib/"):
                candidates.add("/usr" + candidate)
        for candidate in candidates:
            found = run(["dpkg", "-S", candidate], check=False)
            if found.returncode == 0:
                packages.add(found.stdout.split(":")[0].strip())
                break
    return sorted(packages)


def ensure_host_packages():
    missing = [p for p in HOST_PACKAGES if run(
        ["dpkg-query", "-W", "-f=${Status}", p], check=False).stdout.find(
            "install ok installed") < 0]
    if not missing:
        return
    log("installing %s (apt-get)" % " ".join(missing))
    env_args = ["env", "DEBIAN_FRONTEND=noninteractive"]
    if run(env_args + ["apt-get", "install", "-y", "-qq",
                       "--no-install-recommends"] + missing,
           timeout=600, check=False).returncode != 0:
        run(["apt-get", "update", "-qq"], timeout=600)
        run(env_args + ["apt-get", "install", "-y", "-qq",
                        "--no-install-recommends"] + missing, timeout=600)


def ensure_root_tree(packages):
    """The cached Debian 12 root holding PACKAGES; built on first use.
    A lock keeps two test runs from building it at once; the tree is
    renamed into place only when debootstrap finished."""
    key = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:12]
    root = os.path.join(CACHE, "bookworm-" + key)
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(root, ".complete")):
            return root
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        mirror = host_mirror()
        log("building the container root %s with debootstrap from %s "
            "(once; about a minute)" % (root, mirror))
        started = time.monotonic()
        proc = run(["debootstrap", "--variant=minbase",
                    "--include=" + ",".join(packages), "bookworm", partial,
                    mirror], timeout=900, check=False)
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise unittest.SkipTest(
                "debootstrap failed (no network or mirror?): %s"
                % (proc.stdout + proc.stderr)[-1500:])
        # The tests talk to the container's systemd through nsenter; no
        # console login is wanted.
        for unit in ("console-getty.service", "getty@tty1.service",
                     "systemd-networkd-wait-online.service"):
            target = os.path.join(partial, "etc/systemd/system", unit)
            if not os.path.lexists(target):
                os.symlink("/dev/null", target)
        with open(os.path.join(partial, ".complete"), "w") as f:
            f.write("%s\n" % " ".join(packages))
        shutil.rmtree(root, ignore_errors=True)
        os.rename(partial, root)
        log("container root built in %.0f s" % (time.monotonic() - started))
        return root


class Container:
    """systemd booted in systemd-nspawn on the cached root, with a tmpfs
    overlay (--volatile=overlay): the cache is never written to."""

    def __init__(self, root, binds):
        self.root = root
        self.name = "wp-test-%d" % os.getpid()
        self.log_path = tempfile.mktemp(prefix="wp-nspawn-", suffix=".log")
        self.proc = None
        self.leader = None
        self.binds = binds

    def start(self):
        # nspawn refuses to start when /run/systemd/nspawn is not a tmpfs
        # (../shared/NOTES.md).
        os.makedirs("/run/systemd/nspawn", exist_ok=True)
        if run(["findmnt", "-n", "-o", "FSTYPE", "/run/systemd/nspawn"],
               check=False).stdout.strip() != "tmpfs":
            run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd/nspawn"])
        args = ["systemd-nspawn", "-q", "-D", self.root, "--register=no",
                "--keep-unit", "--link-journal=no", "--volatile=overlay",
                "-M", self.name, "--console=passive"]
        for host, inside in self.binds:
            args.append("--bind-ro=%s:%s" % (host, inside))
        args.append("-b")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log,
                                     start_new_session=True)
        # The container's PID 1 is the child of the nspawn process.
        def leader():
            if self.proc.poll() is not None:
                raise unittest.SkipTest(
                    "systemd-nspawn exited %s: this machine cannot boot a "
                    "container:\n%s" % (self.proc.returncode, self.log_tail()))
            # nspawn forks a short-lived helper first: wait for the child
            # that is systemd.
            for pid in wp.pids_with_parent(self.proc.pid):
                if wp._read("/proc/%d/comm" % pid) == "systemd\n":
                    return pid
            return None
        self.leader = wp.wait_until(leader, 60, "the container's systemd")
        def booted():
            proc = self.sh("systemctl is-system-running", check=False)
            return proc.stdout.strip() in ("running", "degraded")
        wp.wait_until(booted, 120, "the container to finish booting",
                      interval=0.5, on_timeout=lambda: self.sh(
                          "systemctl is-system-running; systemctl --failed "
                          "--no-pager", check=False).stdout + self.log_tail())

    def sh(self, script, check=True, timeout=60):
        """Runs SCRIPT with sh inside the container."""
        return run(["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c",
                    script], timeout=timeout, check=check)

    def write(self, path, text):
        """Writes TEXT to PATH inside the container, atomically."""
        directory = os.path.dirname(path)
        run(["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c",
             "mkdir -p '%s' && cat > '%s.new' && mv '%s.new' '%s'"
             % (directory, path, path, path)], input=text)

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader:
            run(["nsenter", "-t", str(self.leader), "-a", "systemctl",
                 "poweroff"], check=False, timeout=30)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)
            # The container's PID 1 would outlive a killed nspawn.
            if self.leader and wp.alive(self.leader):
                os.kill(self.leader, 9)
        self._log.close()
        os.unlink(self.log_path)


POOL = """\
pool:
  name: demo
  stop_timeout: 5s
groups:
  - name: echo
    type: job
    processes: 2
    command: [/usr/local/bin/workerpool, builtin, echo-job]
  - name: sleepers
    type: service
    processes: %(sleepers)d
    command: [sleep, "100000"]
"""

SERVICE = "workerpool@demo.service"


@unittest.skipUnless(os.geteuid() == 0, "needs root to boot a container "
                     "(systemd-nspawn)")
class NspawnTest(unittest.TestCase):
    container = None

    @classmethod
    def setUpClass(cls):
        try:
            ensure_host_packages()
        except AssertionError as e:
            raise unittest.SkipTest("cannot install %s: %s" % (
                " ".join(HOST_PACKAGES), e))
        builtin = os.path.join(os.path.dirname(wp.BIN), "workerpool-builtin")
        packages = sorted(set(BASE_PACKAGES + runtime_packages(wp.BIN)
                              + runtime_packages(builtin)))
        root = ensure_root_tree(packages)
        cls.container = Container(root, [
            (TOP + "/scripts", "/src/scripts"),
            (TOP + "/systemd", "/src/systemd"),
            (TOP + "/config", "/src/config"),
            (TOP + "/docs", "/src/docs"),
            (wp.BIN, "/src/bin/workerpool"),
            (builtin, "/src/bin/workerpool-builtin"),
        ])
        try:
            cls.container.start()
        except BaseException:
            log(cls.container.log_tail())
            cls.container.stop()
            raise
        # Installed as an operator does.
        proc = cls.container.sh(
            "/src/scripts/install --binary /src/bin/workerpool", check=False)
        if proc.returncode != 0:
            cls.container.stop()
            raise AssertionError("scripts/install failed in the container:\n"
                                 + proc.stdout + proc.stderr)

    @classmethod
    def tearDownClass(cls):
        if cls.container is not None:
            cls.container.stop()

    # -- helpers

    def sh(self, script, check=True, timeout=60):
        return self.container.sh(script, check=check, timeout=timeout)

    def write_pool(self, text):
        self.container.write("/etc/workerpool/demo.yaml", text)

    def active_state(self):
        return self.sh("systemctl show -p ActiveState --value " + SERVICE,
                       check=False).stdout.strip()

    def main_pid(self):
        text = self.sh("systemctl show -p MainPID --value " + SERVICE,
                       check=False).stdout.strip()
        return int(text) if text.isdigit() else 0

    def unit_pids(self):
        """Every process in the unit's cgroup (container pids)."""
        proc = self.sh(
            "cg=$(systemctl show -p ControlGroup --value %s); "
            "[ -n \"$cg\" ] || exit 0; "
            "for d in /sys/fs/cgroup/systemd$cg /sys/fs/cgroup/unified$cg "
            "/sys/fs/cgroup$cg; do "
            "[ -f $d/cgroup.procs ] && { cat $d/cgroup.procs; exit 0; }; "
            "done; exit 0" % SERVICE, check=False)
        return sorted(int(p) for p in proc.stdout.split() if p.isdigit())

    def children(self, group):
        """Pids of the Watcher's children of GROUP, from the container's
        /proc (WORKERPOOL_GROUP in their environment)."""
        proc = self.sh(
            "m=$(systemctl show -p MainPID --value %s); "
            "for p in $(pgrep -P $m); do "
            "tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | "
            "grep -qx 'WORKERPOOL_GROUP=%s' && echo $p; done; exit 0"
            % (SERVICE, group), check=False)
        return sorted(int(p) for p in proc.stdout.split() if p.isdigit())

    def wait_children(self, group, count):
        return wp.wait_until(
            lambda: (lambda found: found if len(found) == count else None)(
                self.children(group)),
            what="%d children of %s" % (count, group),
            on_timeout=self.journal)

    def journal(self):
        return self.sh("systemctl status --no-pager -n 0 %s; journalctl "
                       "--no-pager -n 40 -u %s" % (SERVICE, SERVICE),
                       check=False).stdout

    def start_pool(self, sleepers=2):
        self.write_pool(POOL % {"sleepers": sleepers})
        self.sh("systemctl reset-failed %s 2>/dev/null; systemctl start %s"
                % (SERVICE, SERVICE), timeout=90)
        self.addCleanup(lambda: self.sh("systemctl stop " + SERVICE,
                                        check=False, timeout=90))
        self.assertEqual(self.active_state(), "active", self.journal())
        self.wait_children("echo", 2)
        self.wait_children("sleepers", sleepers)

    # -- the tests

    def test_start_reaches_active_with_status_line(self):
        self.start_pool()
        status = self.sh("systemctl status --no-pager " + SERVICE,
                         check=False).stdout
        self.assertIn("Active: active (running)", status)
        m = re.search(r"^\s*Status: \"(.+)\"$", status, re.M)
        self.assertIsNotNone(m, "no Status: line (STATUS= from the "
                                "Watcher) in:\n" + status)
        self.assertIn("demo", m.group(1))
        # The operator's CLI finds the pool's control socket by itself.
        cli = self.sh("workerpool status", check=False)
        self.assertEqual(cli.returncode, 0, cli.stderr)
        self.assertRegex(cli.stdout, r"(?m)^echo\s+job\s+2\s+2\s")
        self.assertRegex(cli.stdout, r"(?m)^sleepers\s+service\s+2\s+2\s")
        mode = self.sh("stat -c %a /run/workerpool/demo.sock").stdout.strip()
        self.assertEqual(mode, "600")

    def test_reload_applies_the_difference_and_keeps_untouched_pids(self):
        self.start_pool(sleepers=2)
        echo_before = self.children("echo")
        sleepers_before = self.children("sleepers")
        main_before = self.main_pid()
        self.write_pool(POOL % {"sleepers": 3})
        self.sh("systemctl reload " + SERVICE, timeout=90)
        sleepers_after = self.wait_children("sleepers", 3)
        self.assertEqual(self.children("echo"), echo_before)
        self.assertTrue(set(sleepers_before) <= set(sleepers_after),
                        "%s not kept in %s" % (sleepers_before,
                                               sleepers_after))
        self.assertEqual(self.main_pid(), main_before)
        self.assertEqual(self.active_state(), "active")

    def test_broken_file_on_reload_keeps_the_unit_active(self):
        self.start_pool()
        before = self.children("echo") + self.children("sleepers")
        main_before = self.main_pid()
        self.write_pool("pool: {name: demo\ngroups: [oops\n")
        self.sh("systemctl reload " + SERVICE, check=False, timeout=90)
        # The Watcher answers the reload with READY=1 and a STATUS= naming
        # the failure.
        wp.wait_until(lambda: "reload failed" in self.sh(
            "systemctl status --no-pager " + SERVICE, check=False).stdout,
            what="STATUS= to say the reload failed", on_timeout=self.journal)
        self.assertEqual(self.active_state(), "active", self.journal())
        self.assertEqual(self.main_pid(), main_before)
        self.assertEqual(self.children("echo") + self.children("sleepers"),
                         before)
        # `workerpool reload` says why, with exit 1.
        cli = self.sh("workerpool reload", check=False)
        self.assertEqual(cli.returncode, 1, cli.stdout + cli.stderr)
        self.assertRegex(cli.stderr, r"demo\.yaml:\d+:\d+")

    def test_stop_leaves_no_process(self):
        self.start_pool()
        self.assertGreaterEqual(len(self.unit_pids()), 5)
        self.sh("systemctl stop " + SERVICE, timeout=90)
        self.assertEqual(self.active_state(), "inactive", self.journal())
        self.assertEqual(self.unit_pids(), [])
        # The brackets keep pgrep from matching the shell running it.
        leftovers = self.sh("pgrep -f '[s]leep 100000|[b]uiltin echo-job' "
                            "|| true").stdout.split()
        self.assertEqual(leftovers, [])
        # A clean stop: the Watcher exited 0, nothing was SIGKILLed.
        result = self.sh("systemctl show -p Result --value " + SERVICE)
        self.assertEqual(result.stdout.strip(), "success")

    def test_watchdog_is_fed(self):
        # A short WatchdogSec through a drop-in, as an operator would set
        # it: the unit outlives several periods with the same Watcher.
        dropin = "/etc/systemd/system/%s.d" % SERVICE
        self.container.write(dropin + "/watchdog.conf",
                             "[Service]\nWatchdogSec=2s\n")
        self.sh("systemctl daemon-reload")
        self.addCleanup(lambda: self.sh(
            "rm -rf %s; systemctl daemon-reload" % dropin, check=False))
        self.start_pool()
        main = self.main_pid()
        self.assertEqual(self.sh("systemctl show -p WatchdogUSec --value "
                                 + SERVICE).stdout.strip(), "2s")
        time.sleep(7)  # three and a half watchdog periods
        self.assertEqual(self.active_state(), "active", self.journal())
        self.assertEqual(self.main_pid(), main, self.journal())
        result = self.sh("systemctl show -p NRestarts --value " + SERVICE)
        self.assertEqual(result.stdout.strip(), "0")

    def test_usr2_upgrades_in_place_with_the_same_main_pid(self):
        self.start_pool()
        main = self.main_pid()
        before = self.children("echo") + self.children("sleepers")
        # To the Watcher only: the children keep SIGUSR2's default.
        self.sh("systemctl kill --kill-who=main -s USR2 " + SERVICE)
        wp.wait_until(
            lambda: "upgraded from" in self.sh("workerpool status",
                                               check=False).stdout,
            timeout=60, what="the upgrade", on_timeout=self.journal)
        self.assertEqual(self.active_state(), "active", self.journal())
        self.assertEqual(self.main_pid(), main, self.journal())
        self.assertEqual(self.children("echo") + self.children("sleepers"),
                         before)
        status = self.sh("systemctl status --no-pager " + SERVICE,
                         check=False).stdout
        self.assertRegex(status, r"(?m)^\s*Status: \"workerpool \S+: demo",
                         status)
        restarts = self.sh("systemctl show -p NRestarts --value " + SERVICE)
        self.assertEqual(restarts.stdout.strip(), "0")

    def test_sigkill_of_the_watcher_makes_systemd_restart_it(self):
        self.start_pool()
        old_main = self.main_pid()
        old_children = self.children("echo") + self.children("sleepers")
        self.sh("kill -KILL %d" % old_main)
        wp.wait_until(
            lambda: self.main_pid() not in (0, old_main)
            and self.active_state() == "active",
            timeout=60, what="systemd to restart the Watcher",
            on_timeout=self.journal)
        self.wait_children("echo", 2)
        self.wait_children("sleepers", 2)
        alive = self.sh("for p in %s; do [ -d /proc/$p ] && echo $p; done; "
                        "exit 0" % " ".join(map(str, old_children))).stdout
        self.assertEqual(alive.split(), [], "children of the killed Watcher "
                                            "outlived it")
        restarts = self.sh("systemctl show -p NRestarts --value " + SERVICE)
        self.assertGreaterEqual(int(restarts.stdout.strip() or 0), 1)


if __name__ == "__main__":
    wp.main()
