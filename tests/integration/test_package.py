"""The Debian package (scripts/package), as a Debian administrator uses it.

1. The .deb built from this tree holds the two binaries (stripped), the
   systemd unit pointing at /usr/bin, the example pool as a conffile, both
   man pages, the bash completion and the docs; its Depends: names the
   libraries the binaries link (computed by dpkg-shlibdeps).
2. In the Debian 12 container test_systemd boots (the same cached root,
   systemd as PID 1): `apt-get install ./workerpool_*.deb`, `systemctl
   enable --now workerpool@example` reaches active, the pool answers
   (`workerpool status`, `workerpool top`, an HTTP request through its
   reactor, children running as nobody), and `apt-get purge workerpool`
   stops it and leaves no file behind: the container's file tree is the
   same as before the install (dpkg's, apt's and systemd's own state
   aside).
Issue 21. Needs root for part 2 (skipped loudly without it, like
test_systemd).
"""

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

import test_systemd as nspawn  # the container machinery, not its tests
import wp

PACKAGE = os.path.join(wp.TOP, "scripts", "package")
BUILD_DIR = os.path.dirname(wp.BIN)

# The container's file tree, minus what dpkg, apt, systemd and the journal
# keep for themselves and the mounts of a running system.
SNAPSHOT = (
    "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run "
    "-o -path /tmp -o -path /var/tmp -o -path /var/log -o -path /var/cache "
    "-o -path /var/lib/apt -o -path /var/lib/dpkg -o -path /var/lib/systemd "
    "-o -path /src \\) -prune -o -print | sort")


def log(message):
    nspawn.log("(package) " + message)


def build_package(output):
    proc = nspawn.run([PACKAGE, "--build-dir", BUILD_DIR, "--output", output],
                      timeout=300)
    deb = proc.stdout.strip().splitlines()[-1]
    assert os.path.isfile(deb), proc.stdout + proc.stderr
    return deb


class PackageFileTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if shutil.which("dpkg-shlibdeps") is None:
            raise AssertionError("dpkg-shlibdeps is missing (package "
                                 "dpkg-dev; scripts/setup installs it)")
        cls.tmp = tempfile.mkdtemp(prefix="wp-deb-")
        cls.deb = build_package(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def field(self, name):
        return nspawn.run(["dpkg-deb", "-f", self.deb, name]).stdout.strip()

    def test_name_version_and_architecture(self):
        code, out, _ = wp.run_cli(["--version"])
        version = out.split()[1]
        arch = nspawn.run(["dpkg", "--print-architecture"]).stdout.strip()
        self.assertEqual(os.path.basename(self.deb),
                         "workerpool_%s_%s.deb" % (version, arch))
        self.assertEqual(self.field("Package"), "workerpool")
        self.assertEqual(self.field("Version"), version)

    def test_contents(self):
        listing = nspawn.run(["dpkg-deb", "-c", self.deb]).stdout
        files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
        for path in ("/usr/bin/workerpool",
                     "/usr/libexec/workerpool/workerpool-builtin",
                     "/usr/libexec/workerpool/workerpool-spawner",
                     "/lib/systemd/system/workerpool@.service",
                     "/etc/workerpool/example.yaml",
                     "/usr/share/man/man1/workerpool.1.gz",
                     "/usr/share/man/man5/workerpool.yaml.5.gz",
                     "/usr/share/bash-completion/completions/workerpool",
                     "/usr/share/doc/workerpool/copyright",
                     "/usr/share/doc/workerpool/OPERATIONS.md",
                     "/usr/share/doc/workerpool/examples/prometheus/"
                     "workerpool.rules.yml"):
            self.assertIn(path, files)
        for line in listing.splitlines():
            self.assertRegex(line, r"^\S+ root/root ", "not owned by root")
        conffiles = nspawn.run(["dpkg-deb", "--info", self.deb,
                                "conffiles"]).stdout.split()
        self.assertEqual(conffiles, ["/etc/workerpool/example.yaml"])
        # The binaries are stripped: a fraction of the build tree's.
        extract = os.path.join(self.tmp, "x")
        nspawn.run(["dpkg-deb", "-x", self.deb, extract])
        size = os.path.getsize(os.path.join(extract, "usr/bin/workerpool"))
        self.assertLess(size, os.path.getsize(wp.BIN))
        with open(os.path.join(
                extract, "lib/systemd/system/workerpool@.service")) as f:
            unit = f.read()
        self.assertRegex(unit, r"(?m)^ExecStart=/usr/bin/workerpool run "
                               r"/etc/workerpool/%i\.yaml$")
        self.assertIn("man:workerpool(1)", unit)
        code, out, err = wp.run_cli(
            ["check", os.path.join(extract, "etc/workerpool/example.yaml")])
        self.assertEqual(code, 0, err)

    def test_depends_is_computed_from_the_binaries(self):
        depends = self.field("Depends")
        names = [re.match(r"\s*([^\s(]+)", part).group(1)
                 for part in depends.split(",")]
        # The package of every library the two binaries name (NEEDED).
        builtin = os.path.join(BUILD_DIR, "workerpool-builtin")
        for binary in (wp.BIN, builtin):
            needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]",
                                nspawn.run(["readelf", "-d", binary]).stdout)
            self.assertTrue(needed, binary)
            paths = dict(re.findall(r"^\s*(\S+) => (/\S+)",
                                    nspawn.run(["ldd", binary]).stdout, re.M))
            for soname in needed:
                if soname.startswith("ld-linux"):
                    continue
                owner = nspawn.run(["dpkg", "-S", os.path.realpath(
                    paths[soname])], check=False).stdout.split(":")[0]
                if not owner:  # usrmerge: dpkg may know it under /lib
                    owner = nspawn.run(["dpkg", "-S", paths[soname]],
                                       check=False).stdout.split(":")[0]
                # The shlibs file may name a virtual package the owner
                # provides (libspdlog1.10 provides libspdlog1.10-fmt9).
                provides = nspawn.run(["dpkg-query", "-W", "-f=${Provides}",
                                       owner], check=False).stdout
                satisfied = {owner} | {
                    re.match(r"\s*([^\s(]+)", p).group(1)
                    for p in provides.split(",") if p.strip()}
                self.assertTrue(satisfied & set(names), "%s (%s) of %s: %s" % (
                    soname, owner, binary, depends))
        self.assertRegex(depends, r"libc6 \(>= [\d.]+\)")


@unittest.skipUnless(os.geteuid() == 0, "needs root to boot a container "
                     "(systemd-nspawn)")
class PackageInContainerTest(unittest.TestCase):
    container = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="wp-deb-")
        os.chmod(cls.tmp, 0o755)  # apt reads it as _apt
        cls.deb = build_package(cls.tmp)
        try:
            nspawn.ensure_host_packages()
        except AssertionError as e:
            raise unittest.SkipTest("cannot install %s: %s" % (
                " ".join(nspawn.HOST_PACKAGES), e))
        # The root test_systemd uses (the same packages, so the same cache):
        # it holds every library the package depends on, so apt installs it
        # without a network.
        builtin = os.path.join(BUILD_DIR, "workerpool-builtin")
        packages = sorted(set(nspawn.BASE_PACKAGES +
                              nspawn.runtime_packages(wp.BIN) +
                              nspawn.runtime_packages(builtin)))
        root = nspawn.ensure_root_tree(packages)
        cls.container = nspawn.Container(root, [(cls.tmp, "/src/deb")])
        try:
            cls.container.start()
        except BaseException:
            log(cls.container.log_tail())
            cls.container.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.container is not None:
            cls.container.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def sh(self, script, check=True, timeout=120):
        return self.container.sh(script, check=check, timeout=timeout)

    def journal(self):
        return self.sh("systemctl status --no-pager -n 0 workerpool@example; "
                       "journalctl --no-pager -n 40 -u workerpool@example",
                       check=False).stdout

    def test_install_run_purge(self):
        before = self.sh(SNAPSHOT).stdout.splitlines()
        self.assertIn("/etc/passwd", before)
        deb = "/src/deb/" + os.path.basename(self.deb)
        install = self.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y "
                          "-q --no-install-recommends %s" % deb, check=False,
                          timeout=300)
        self.assertEqual(install.returncode, 0,
                         install.stdout[-3000:] + install.stderr[-3000:])
        self.assertEqual(self.sh("dpkg-query -W -f='${Status}' workerpool")
                         .stdout, "install ok installed")
        for path in ("/usr/bin/workerpool",
                     "/usr/libexec/workerpool/workerpool-builtin",
                     "/usr/share/man/man1/workerpool.1.gz",
                     "/usr/share/bash-completion/completions/workerpool",
                     "/etc/workerpool/example.yaml"):
            self.sh("test -f " + path)

        # The example pool, as the README says to start it.
        self.sh("systemctl enable --now workerpool@example", timeout=90)
        self.assertEqual(self.sh("systemctl is-active workerpool@example",
                                 check=False).stdout.strip(), "active",
                         self.journal())
        status = wp.wait_until(
            lambda: (lambda p: p.stdout if p.returncode == 0 and re.search(
                r"(?m)^echo\s+job\s+2\s+2\s", p.stdout) else None)(
                    self.sh("workerpool status", check=False)),
            what="workerpool status to show the example pool",
            on_timeout=self.journal)
        self.assertRegex(status, r"(?m)^web\s+reactor\s+2\s+2\s")
        # A request through the reactor to the echo job (bash's /dev/tcp:
        # the container has no curl).
        reply = self.sh("bash -c %s" % shlex.quote(
            "exec 3<>/dev/tcp/127.0.0.1/8080; printf 'POST /jobs/echo "
            "HTTP/1.0\\r\\nContent-Length: 5\\r\\n\\r\\nhello' >&3; "
            "cat <&3")).stdout
        self.assertRegex(reply, r"^HTTP/1\.[01] 200")
        self.assertTrue(reply.endswith("hello"), reply)
        # `top` (one screen: no terminal here) and the children's user.
        top = self.sh("workerpool top --interval 200ms").stdout
        self.assertRegex(top, r"(?m)^pool example  running")
        # The Watcher's children: the pool's four, and the spawner (root:
        # it gives each child its user), which serves no request.
        rows = self.sh(
            "for p in $(pgrep -P $(systemctl show -p MainPID --value "
            "workerpool@example)); do ps -o user=,comm= -p $p; done"
        ).stdout.splitlines()
        users = sorted(r.split()[0] for r in rows
                       if not r.split()[1].startswith("workerpool-spaw"))
        self.assertEqual(users, ["nobody"] * 4, rows)
        self.assertEqual(len(rows), 5, rows)

        # The snapshot sees what the package and the running pool added.
        installed = set(self.sh(SNAPSHOT).stdout.splitlines()) - set(before)
        for path in ("/usr/bin/workerpool", "/etc/workerpool/example.yaml",
                     "/usr/share/doc/workerpool/copyright"):
            self.assertIn(path, installed)

        purge = self.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "
                        "workerpool", check=False, timeout=300)
        self.assertEqual(purge.returncode, 0, purge.stdout + purge.stderr)
        self.assertEqual(self.sh("pgrep -f '[w]orkerpool' || true").stdout,
                         "", "a pool outlived the purge")
        self.assertNotEqual(self.sh("systemctl is-active workerpool@example",
                                    check=False).stdout.strip(), "active")
        self.assertEqual(self.sh("ls /var/lib/dpkg/info/ | grep '^workerpool"
                                 "\\.' || true").stdout, "")
        after = self.sh(SNAPSHOT).stdout.splitlines()
        self.assertEqual(sorted(set(after) - set(before)), [],
                         "left behind by the purge")
        self.assertEqual(sorted(set(before) - set(after)), [],
                         "removed by the purge but not the package's")
        self.assertEqual(self.sh("ls -A /run/workerpool 2>/dev/null || true")
                         .stdout, "")


if __name__ == "__main__":
    wp.main()
