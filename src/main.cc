// Argument parsing and dispatch; the only place that exits.
// Exit codes (DESIGN.md): 0 success, 1 bad input, 2 runtime failure.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/control_client.h"
#include "cli/top.h"
#include "core/config.h"
#include "core/file_limit.h"
#include "core/upgrade_state.h"
#include "os/builtin_path.h"
#include "os/config_file.h"
#include "os/exit_watch.h"
#include "os/spawn.h"
#include "version.h"
#include "watcher/upgrade.h"
#include "watcher/watcher.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitBadInput = 1;
constexpr int kExitRuntimeFailure = 2;

int RunCheck(const std::string& path) {
  workerpool::ConfigLoad load = workerpool::LoadConfigFile(path);
  if (!load.ok()) {
    std::fputs(load.ErrorText().c_str(), stderr);
    return kExitBadInput;
  }
  // What the Watcher would make of RLIMIT_NOFILE here (as this user).
  const std::uint64_t children = workerpool::PoolChildren(*load.config);
  const std::uint64_t limit = workerpool::PlannedFileLimits(children).soft;
  const std::uint64_t groups = load.config->groups.size();
  const std::string limit_text =
      workerpool::DescribeFileLimit(limit, children, groups);
  if (!workerpool::FitsFileLimit(limit, children, groups)) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), limit_text.c_str());
    return kExitBadInput;
  }
  std::printf("%s: ok (pool '%s', %zu groups)\n%s\n%s\n", path.c_str(),
              load.config->name.c_str(), load.config->groups.size(),
              limit_text.c_str(),
              workerpool::DescribeReaping(limit, children, groups,
                                          workerpool::PidfdReapingWanted())
                  .c_str());
  return kExitOk;
}

// `workerpool builtin NAME ARGS` becomes `workerpool-builtin NAME ARGS`.
int ExecBuiltin(const char* argv0, const std::string& name,
                const std::vector<std::string>& args) {
  std::string self = workerpool::SelfExecutable(argv0);
  std::string builtin = workerpool::BuiltinExecutable(self);
  if (builtin.empty()) {
    std::fprintf(stderr,
                 "workerpool builtin: workerpool-builtin is missing (looked "
                 "beside %s and in its ../libexec/workerpool/)\n",
                 self.c_str());
    return kExitRuntimeFailure;
  }
  std::vector<char*> exec_argv;
  exec_argv.push_back(const_cast<char*>(builtin.c_str()));
  exec_argv.push_back(const_cast<char*>(name.c_str()));
  for (const std::string& arg : args) {
    exec_argv.push_back(const_cast<char*>(arg.c_str()));
  }
  exec_argv.push_back(nullptr);
  execv(builtin.c_str(), exec_argv.data());
  std::fprintf(stderr, "workerpool builtin: cannot run %s: %s\n",
               builtin.c_str(), std::strerror(errno));
  return kExitRuntimeFailure;
}

}  // namespace

int main(int argc, char** argv) {
  // Asked by a Watcher about to upgrade to this binary (watcher/upgrade.h):
  // the newest upgrade state version this binary reads.
  if (argc == 2 && std::strcmp(argv[1], "--upgrade-state-version") == 0) {
    std::printf("%d\n", workerpool::kUpgradeStateVersion);
    return kExitOk;
  }
  CLI::App app{
      "workerpool: a multi-process worker pool supervisor.\n"
      "One Watcher runs groups of reactor, job and service children from a\n"
      "YAML pool definition, restarts what dies and routes requests.",
      "workerpool"};
  app.footer(
      "Exit codes: 0 success, 1 bad input (config, arguments), 2 runtime "
      "failure.\n"
      "Control commands find the pool by --socket PATH, else --config FILE's\n"
      "pool.control_socket, else the one live pool in $RUNTIME_DIRECTORY,\n"
      "/run/workerpool/ or /tmp/workerpool-*.sock.\n"
      "systemd: systemctl start|reload|stop workerpool@NAME runs\n"
      "/etc/workerpool/NAME.yaml. Operating a pool: docs/OPERATIONS.md\n"
      "(installed under share/doc/workerpool/).");
  app.set_version_flag("--version",
                       "workerpool " + workerpool::WorkerpoolVersion());
  app.require_subcommand(1);
  app.fallthrough(false);

  std::string config_path;
  auto* run = app.add_subcommand(
      "run", "run the Watcher in the foreground (what systemd starts)");
  run->add_option("CONFIG", config_path, "pool definition (YAML)")->required();
  // Set only by a Watcher upgrading in place (watcher/upgrade.h).
  int adopt_fd = -1;
  std::string upgrade_error;
  run->add_option("--adopt", adopt_fd)->group("");
  run->add_option("--upgrade-error", upgrade_error)->group("");

  auto* check = app.add_subcommand(
      "check", "validate only; exit 0, or print errors and exit 1");
  check->add_option("CONFIG", config_path, "pool definition (YAML)")
      ->required();

  workerpool::ControlOptions control;
  auto add_socket = [&](CLI::App* sub) {
    sub->add_option("--socket", control.socket_path,
                    "the pool's control socket (pool.control_socket)")
        ->type_name("PATH");
    sub->add_option("--config", control.config_path,
                    "take the control socket from this pool definition")
        ->type_name("FILE");
  };
  auto* status = app.add_subcommand(
      "status",
      "show the pool's groups: type, desired, live, restarts, state, "
      "in-flight, queued");
  add_socket(status);
  status->add_flag("--json", control.json,
                   "the status document as JSON (docs/OPERATIONS.md)");
  auto* scale = app.add_subcommand(
      "scale",
      "set a group's process count until the next reload (edit the YAML to "
      "keep it); on an autoscaled group this pauses autoscaling, and N auto "
      "resumes it");
  add_socket(scale);
  scale->add_option("GROUP", control.group, "a group of the running pool")
      ->required()
      ->type_name("");
  scale
      ->add_option("N", control.count_text,
                   "processes, 0 to 100000, or auto (the group's autoscale "
                   "section sizes it again)")
      ->required()
      ->type_name("");
  auto* restart = app.add_subcommand(
      "restart",
      "rolling restart of one group: one new child ready before one old "
      "child drains");
  add_socket(restart);
  restart->add_option("GROUP", control.group, "a group of the running pool")
      ->required()
      ->type_name("");
  restart->add_flag("--with-dependents", control.with_dependents,
                    "then restart every group that depends on GROUP "
                    "(depends_on), in order, each once the one before is "
                    "ready");
  auto* reload = app.add_subcommand(
      "reload",
      "same as SIGHUP: apply the file's difference; exit 1 with the error "
      "when the file is invalid (the running pool is kept)");
  add_socket(reload);
  auto* stop = app.add_subcommand(
      "stop", "same as SIGTERM: graceful stop; returns once the pool stopped");
  add_socket(stop);
  auto* upgrade = app.add_subcommand(
      "upgrade",
      "same as SIGUSR2: the Watcher execs a new binary in its pid, which "
      "adopts the running pool (no child restarted); exit 0 once the new "
      "Watcher answers, else the reason (the old one carries on)");
  add_socket(upgrade);
  upgrade
      ->add_option("--binary", control.binary,
                   "the new workerpool (absolute path; default: the binary "
                   "the Watcher was started from, as it is on disk now)")
      ->type_name("PATH");

  std::string top_interval = "1s";
  auto* top = app.add_subcommand(
      "top",
      "live view of the pool: groups with rates, latency, memory and CPU; "
      "Enter shows a group's processes, q quits");
  add_socket(top);
  top->add_option("--interval", top_interval,
                  "refresh every DURATION, 100ms to 1h (default 1s)")
      ->type_name("DURATION");

  std::string builtin_name;
  std::vector<std::string> builtin_args;
  auto* builtin =
      app.add_subcommand("builtin", std::string("run a built-in child: ") +
                                        workerpool::kBuiltinNames);
  builtin->add_option("NAME", builtin_name)->required();
  // Everything after NAME goes to the child as it is, in order (an ARGS
  // option here would split "--max-body 1024" into two places).
  builtin->prefix_command();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitBadInput;
  }

  if (*run && adopt_fd >= 0) {
    return workerpool::RunAdoptingWatcher(config_path, argv[0], adopt_fd,
                                          upgrade_error);
  }
  if (*run) return workerpool::RunWatcher(config_path, argv[0]);
  if (*check) return RunCheck(config_path);
  if (*builtin) {
    for (const std::string& extra : builtin->remaining()) {
      builtin_args.push_back(extra);
    }
    return ExecBuiltin(argv[0], builtin_name, builtin_args);
  }
  if (*status) control.command = "status";
  if (*scale) control.command = "scale";
  if (*restart) control.command = "restart";
  if (*reload) control.command = "reload";
  if (*stop) control.command = "stop";
  if (*upgrade) {
    control.command = "upgrade";
    if (!control.binary.empty() && control.binary[0] != '/') {
      char* absolute = realpath(control.binary.c_str(), nullptr);
      if (absolute == nullptr) {
        std::fprintf(stderr, "workerpool upgrade: %s: %s\n",
                     control.binary.c_str(), std::strerror(errno));
        return kExitBadInput;
      }
      control.binary = absolute;
      free(absolute);
    }
  }
  if (*top) {
    control.command = "top";
    return workerpool::RunTop(control, top_interval);
  }
  return workerpool::RunControlCommand(control);
}
