"""Bash completion (config/bash-completion/workerpool), run by a real bash
as bash-completion loads it: subcommands, options, pool files, and for
`scale` and `restart` the group names of a running pool, found through the
line's --socket or, without it, the way `workerpool status` finds a pool.
Issue 21.
"""

import os
import shlex
import shutil
import subprocess
import tempfile
import unittest

import wp

COMPLETION = os.path.join(wp.TOP, "config", "bash-completion", "workerpool")
BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"

POOL = """
pool: {name: comptest, stop_timeout: 1s}
groups:
  - {name: web, type: job, processes: 1, command: [sleep, "1000"]}
  - {name: compute, type: job, processes: 1, command: [sleep, "1000"]}
  - {name: intake, type: service, processes: 1, command: [sleep, "1000"]}
"""


class CompletionTest(wp.TestCase):

    @classmethod
    def setUpClass(cls):
        if shutil.which("bash") is None:
            raise unittest.SkipTest("no bash")
        # bash-completion finds completions in $BASH_COMPLETION_USER_DIR/
        # completions/NAME and loads them on first use, as it does from
        # /usr/share/bash-completion/completions/ for the package.
        cls.user_dir = tempfile.mkdtemp(prefix="wp-completion-")
        os.makedirs(os.path.join(cls.user_dir, "completions"))
        os.symlink(COMPLETION,
                   os.path.join(cls.user_dir, "completions", "workerpool"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.user_dir, ignore_errors=True)

    def complete(self, line, env=None, cwd=None, loader=True):
        """What pressing Tab at the end of LINE ('workerpool ...') offers."""
        words = shlex.split(line) + ([""] if line.endswith(" ") else [])
        words[0] = wp.BIN
        if loader:
            if not os.path.exists(BASH_COMPLETION):
                self.fail("bash-completion is not installed (scripts/setup "
                          "installs it)")
            load = ('. %s; _completion_loader workerpool; '
                    'complete -p workerpool >/dev/null || exit 3; '
                    % BASH_COMPLETION)
        else:
            load = ". %s; " % shlex.quote(COMPLETION)
        script = (load +
                  "COMP_WORDS=(%s); COMP_CWORD=%d; COMP_LINE=%s; "
                  "COMP_POINT=${#COMP_LINE}; _workerpool; "
                  "printf '%%s\\n' \"${COMPREPLY[@]}\""
                  % (" ".join(shlex.quote(w) for w in words), len(words) - 1,
                     shlex.quote(" ".join(words))))
        full_env = dict(os.environ)
        full_env["BASH_COMPLETION_USER_DIR"] = self.user_dir
        full_env.update(env or {})
        proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script],
                              capture_output=True, text=True,
                              timeout=wp.deadline(20), env=full_env, cwd=cwd)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stderr, "")
        return sorted(w for w in proc.stdout.split("\n") if w)

    def test_subcommands_and_options(self):
        self.assertEqual(
            self.complete("workerpool "),
            sorted(["run", "check", "status", "top", "scale", "restart",
                    "reload", "stop", "upgrade", "builtin", "--help",
                    "--version"]))
        self.assertEqual(self.complete("workerpool st"), ["status", "stop"])
        self.assertEqual(self.complete("workerpool status --"),
                         ["--config", "--help", "--json", "--socket"])
        self.assertEqual(self.complete("workerpool upgrade --"),
                         ["--binary", "--config", "--help", "--socket"])
        self.assertEqual(self.complete("workerpool top --"),
                         ["--config", "--help", "--interval", "--socket"])
        self.assertIn("1s", self.complete("workerpool top --interval "))
        self.assertEqual(self.complete("workerpool builtin "),
                         ["echo-job", "http-reactor", "rabbitmq-service"])
        self.assertIn("--max-body",
                      self.complete("workerpool builtin http-reactor --"))
        # Without bash-completion, sourced by hand, it works the same.
        self.assertEqual(self.complete("workerpool re", loader=False),
                         ["reload", "restart"])

    def test_pool_files_for_run_and_check(self):
        tmp = tempfile.mkdtemp(prefix="wp-completion-files-")
        self.addCleanup(shutil.rmtree, tmp, True)
        for name in ("demo.yaml", "other.yml", "notes.txt"):
            open(os.path.join(tmp, name), "w").close()
        os.mkdir(os.path.join(tmp, "pools"))
        self.assertEqual(self.complete("workerpool check ", cwd=tmp),
                         ["demo.yaml", "other.yml", "pools"])
        self.assertEqual(self.complete("workerpool run d", cwd=tmp),
                         ["demo.yaml"])

    def test_group_names_of_the_running_pool(self):
        pool = self.pool(POOL)
        pool.wait_for_children(3)
        sock = os.path.join(pool.tmp, "comptest.sock")
        wp.wait_until(lambda: os.path.exists(sock), what="the socket")
        self.assertEqual(
            self.complete("workerpool scale --socket %s " % sock),
            ["compute", "intake", "web"])
        self.assertEqual(
            self.complete("workerpool restart --socket %s c" % sock),
            ["compute"])
        # After the group: the count is the operator's, or `auto`.
        self.assertEqual(
            self.complete("workerpool scale --socket %s web " % sock),
            ["auto"])
        self.assertEqual(
            self.complete("workerpool restart --socket %s web " % sock), [])
        # Without --socket: the pool `status` would find.
        self.assertEqual(
            self.complete("workerpool restart ",
                          env={"RUNTIME_DIRECTORY": pool.tmp}),
            ["compute", "intake", "web"])
        # No pool there: nothing, and no error on the terminal.
        self.assertEqual(
            self.complete("workerpool scale --socket %s/none.sock "
                          % pool.tmp), [])


if __name__ == "__main__":
    wp.main()
