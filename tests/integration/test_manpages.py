"""The man pages, docs/man/workerpool.1 and docs/man/workerpool.yaml.5
(mdoc(7) sources, installed by the Debian package):

- they render without a warning: `mandoc -T lint -W warning`, `groff -ww`,
  and `man --warnings -l` as an operator reads them;
- workerpool(1) describes every subcommand and every option that
  `workerpool --help` lists, the exit codes, and every signal the Watcher
  handles (the `case SIG...:` of its signal handler);
- workerpool.yaml(5) describes every key the parser knows, as `workerpool
  check` lists them ("known keys here: ...") at each level.
Issue 21.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import wp

MAN_DIR = os.path.join(wp.TOP, "docs", "man")
PAGE_1 = os.path.join(MAN_DIR, "workerpool.1")
PAGE_5 = os.path.join(MAN_DIR, "workerpool.yaml.5")
WATCHER = os.path.join(wp.TOP, "src", "watcher", "watcher.cc")


def read(path):
    with open(path) as f:
        return f.read()


def run(args, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(args, capture_output=True, text=True,
                          errors="replace", timeout=60, env=full_env)


class RenderTest(unittest.TestCase):

    def test_mandoc_lint_finds_nothing(self):
        if shutil.which("mandoc") is None:
            self.fail("mandoc is not installed (scripts/setup installs it)")
        for page in (PAGE_1, PAGE_5):
            proc = run(["mandoc", "-T", "lint", "-W", "warning", page])
            self.assertEqual(proc.stdout + proc.stderr, "", page)
            self.assertEqual(proc.returncode, 0, page)

    def test_groff_warns_about_nothing(self):
        for page in (PAGE_1, PAGE_5):
            proc = run(["groff", "-ww", "-mandoc", "-z", page])
            self.assertEqual(proc.stderr, "", page)
            self.assertEqual(proc.returncode, 0, page)

    def test_man_renders_them(self):
        for page, title in ((PAGE_1, "WORKERPOOL(1)"),
                            (PAGE_5, "WORKERPOOL.YAML(5)")):
            proc = run(["man", "--warnings", "-l", page],
                       env={"MANWIDTH": "80", "MAN_KEEP_FORMATTING": "",
                            "PAGER": "cat"})
            self.assertEqual(proc.stderr, "", page)
            self.assertEqual(proc.returncode, 0, page)
            self.assertTrue(proc.stdout.startswith(title), proc.stdout[:200])
            for line in proc.stdout.splitlines():
                self.assertLessEqual(len(line), 80 + 20, line)  # long literals


def help_sections(text):
    """{"Subcommands": [...], "Options": [...]}: first words of the lines
    under each heading of CLI11's --help."""
    sections, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^(\w+):$", line)
        if m:
            current = sections.setdefault(m.group(1), [])
            continue
        if current is not None and line.startswith("  ") and line.strip():
            current.append(line.split()[0])
        elif not line.strip():
            current = None
    return sections


class CommandPageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.page = read(PAGE_1)
        code, out, err = wp.run_cli(["--help"])
        assert code == 0, err
        cls.help = help_sections(out)

    def test_every_subcommand_is_described(self):
        subcommands = self.help.get("Subcommands", [])
        self.assertIn("run", subcommands)
        for name in subcommands:
            self.assertTrue(
                re.search(r"(?m)^\.It Cm %s\b" % re.escape(name), self.page),
                "workerpool(1) has no entry for '%s'" % name)

    def test_every_option_is_described(self):
        options = {"--version", "--help"}
        for name in self.help.get("Subcommands", []):
            code, out, err = wp.run_cli([name, "--help"])
            self.assertEqual(code, 0, err)
            for first in help_sections(out).get("Options", []):
                options.update(o for o in first.split(",")
                               if o.startswith("--"))
        self.assertIn("--socket", options)
        for option in sorted(options):
            self.assertTrue(
                re.search(r"(?m)^\.It .*Fl %s\b" % re.escape(option[1:]),
                          self.page),
                "workerpool(1) does not describe %s" % option)

    def test_exit_codes_and_signals(self):
        exit_status = self.page.split(".Sh EXIT STATUS", 1)[1].split(".Sh", 1)[0]
        for code in ("0", "1", "2"):
            self.assertRegex(exit_status, r"(?m)^\.It %s$" % code)
        handled = set(re.findall(r"case (SIG[A-Z0-9]+):", read(WATCHER)))
        self.assertIn("SIGHUP", handled)
        signals = self.page.split(".Sh SIGNALS", 1)[1].split(".Sh", 1)[0]
        for name in sorted(handled):
            self.assertTrue(
                re.search(r"(?m)^\.It .*Dv %s\b" % name, signals),
                "workerpool(1) does not say what %s does" % name)


class PoolFilePageTest(unittest.TestCase):
    """Every key `workerpool check` knows is an item of workerpool.yaml(5)."""

    @classmethod
    def setUpClass(cls):
        cls.page = read(PAGE_5)
        cls.tmp = tempfile.mkdtemp(prefix="wp-man-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def known_keys(self, document, where):
        """The keys the parser accepts at WHERE, from its message about an
        unknown key 'zzz' there (DOCUMENT holds it); None when WHERE is not
        a mapping."""
        path = os.path.join(self.tmp, "probe.yaml")
        with open(path, "w") as f:
            f.write(json.dumps(document))  # JSON is YAML
        code, out, err = wp.run_cli(["check", path])
        m = re.search(r"(?m)^\S+: %s\.zzz: unknown key 'zzz'; known keys "
                      r"here: (.*)$" % re.escape(where), err)
        return [k.strip() for k in m.group(1).split(",")] if m else None

    def group_keys(self, path):
        """The keys of the group-level mapping at PATH (a list of keys; []
        is the group itself), recursing into nested mappings."""
        def document(inner):
            group = {"name": "a", "type": "job", "command": ["x"]}
            if path and path[0] == "rabbitmq":
                group = {"name": "a", "type": "service"}
            node = group
            for key in path:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
                if key == "rabbitmq":
                    node.update({"url": "amqp://h", "queues": ["q"]})
            node.update(inner)
            return {"pool": {"name": "x"}, "groups": [group]}
        where = ".".join(["groups[0]"] + path)
        keys = self.known_keys(document({"zzz": 1}), where)
        if keys is None:
            return None
        found = []
        for key in keys:
            found.append(".".join(path + [key]))
            nested = self.group_keys(path + [key])
            if nested:
                found.extend(nested)
        return found

    def pool_keys(self):
        found = []
        for key in self.known_keys(
                {"pool": {"name": "x", "zzz": 1}, "groups": []}, "pool"):
            found.append("pool." + key)
            inner = self.known_keys(
                {"pool": {"name": "x", key: {"zzz": 1}}, "groups": []},
                "pool." + key)
            found.extend("pool.%s.%s" % (key, k) for k in inner or [])
        return found

    def assert_described(self, key):
        last = key.rsplit(".", 1)[-1]
        self.assertTrue(
            re.search(r"(?m)^\.It Ic (%s|%s)\b" % (re.escape(key),
                                                   re.escape(last)),
                      self.page),
            "workerpool.yaml(5) has no entry for %s" % key)

    def test_every_pool_key_is_described(self):
        keys = self.pool_keys()
        self.assertIn("pool.stop_timeout", keys)
        self.assertIn("pool.log.level", keys)
        for key in keys:
            self.assert_described(key)

    def test_every_group_key_is_described(self):
        keys = self.group_keys([])
        self.assertIn("processes", keys)
        self.assertIn("restart.backoff.initial", keys)
        self.assertIn("rabbitmq.prefetch", keys)
        for key in keys:
            self.assert_described(key)


if __name__ == "__main__":
    wp.main()
