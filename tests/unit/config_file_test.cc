// The OS side of loading a pool definition (src/os/config_file.h): reading
// the file, the passwd database, $RUNTIME_DIRECTORY. What the YAML may say
// is tested against the pure parser in config_test.cc.
#include "os/config_file.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>

namespace workerpool {
namespace {

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The only error of LOAD, as printed.
std::string OnlyError(const ConfigLoad& load) {
  INFO("all errors:\n" << load.ErrorText());
  REQUIRE(load.errors.size() == 1);
  CHECK_FALSE(load.config.has_value());
  return load.errors[0].ToString();
}

// Restores an environment variable when the test ends.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value == nullptr) {
      unsetenv(name);
    } else {
      setenv(name, value, 1);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A fresh directory for files the test writes; removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "config_test.XXXXXX")
            .string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }

  std::string Write(const std::string& name, const std::string& content) {
    std::string path = (path_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out << content;
    REQUIRE(out.good());
    return path;
  }
  std::string PathOf(const std::string& name) const {
    return (path_ / name).string();
  }

 private:
  std::filesystem::path path_;
};

constexpr char kValidPool[] = R"(pool:
  name: filetest
groups:
  - {name: web, type: reactor, command: [x], routes_to: [work]}
  - {name: work, type: job, command: [y]}
  - {name: intake, type: service, rabbitmq: {url: "amqp://h", queues: [q]}}
)";

TEST_CASE("the shipped demo config is valid") {
  std::filesystem::path demo =
      std::filesystem::path(__FILE__).parent_path() / "../../config/demo.yaml";
  if (!std::filesystem::exists(demo)) {
    MESSAGE("skipped: " << demo << " not found from this build");
    return;
  }
  ConfigLoad load = LoadConfigFile(demo.string());
  INFO(load.ErrorText());
  CHECK(load.ok());
}

TEST_CASE("LoadConfigFile reads a valid file and records its path") {
  TempDir dir;
  std::string path = dir.Write("pool.yaml", kValidPool);
  ConfigLoad load = LoadConfigFile(path);
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->path == path);
  CHECK(load.config->groups.size() == 3);
}

TEST_CASE("LoadConfigFile errors name the file") {
  TempDir dir;
  std::string path = dir.Write("bad.yaml", "pool: {name: t}\ngroups: [1]\n");
  CHECK(Contains(OnlyError(LoadConfigFile(path)), path + ":2:10: groups[0]:"));
}

TEST_CASE("a missing file is one error") {
  TempDir dir;
  std::string path = dir.PathOf("absent.yaml");
  CHECK(OnlyError(LoadConfigFile(path)) ==
        path + ": cannot open the pool definition: No such file or directory");
}

TEST_CASE("a directory is one error") {
  TempDir dir;
  std::string path = dir.PathOf("");
  CHECK(OnlyError(LoadConfigFile(path)) ==
        path + ": is a directory; expected a YAML pool definition file");
}

TEST_CASE("an unreadable file is one error") {
  if (geteuid() == 0) {
    MESSAGE("skipped: root reads files whatever their mode");
    return;
  }
  TempDir dir;
  std::string path = dir.Write("secret.yaml", "pool: {name: t}\ngroups: []\n");
  REQUIRE(chmod(path.c_str(), 0) == 0);
  CHECK(OnlyError(LoadConfigFile(path)) ==
        path + ": cannot open the pool definition: Permission denied");
}

TEST_CASE("a FIFO is refused rather than blocking") {
  TempDir dir;
  std::string path = dir.PathOf("fifo.yaml");
  REQUIRE(mkfifo(path.c_str(), 0600) == 0);
  CHECK(OnlyError(LoadConfigFile(path)) ==
        path + ": is not a regular file; expected a YAML pool definition file");
}

TEST_CASE("an empty file is one error") {
  TempDir dir;
  for (const char* content : {"", "\n\n", "   \n\t\n", "# only a comment\n",
                              "# one\n\n# two\n", "---\n", "~\n"}) {
    CAPTURE(content);
    std::string path = dir.Write("empty.yaml", content);
    CHECK(OnlyError(LoadConfigFile(path)) ==
          path +
              ": the file is empty; expected a mapping with keys 'pool' and "
              "'groups'");
  }
}

TEST_CASE("binary garbage is one error: not a text file") {
  TempDir dir;
  std::string with_nul =
      dir.Write("nul.yaml", std::string("\x7f"
                                        "ELF\x02\x01\x01\0\0\0\0",
                                        12));
  CHECK(Contains(OnlyError(LoadConfigFile(with_nul)),
                 with_nul + ":1:1: not a text file"));
  std::string zeros = dir.Write("zeros.yaml", std::string(4096, '\0'));
  CHECK(OnlyError(LoadConfigFile(zeros)) ==
        zeros +
            ":1:1: not a text file: it contains a NUL byte; a pool definition "
            "is UTF-8 YAML (is this the right file?)");
  std::string latin1 = dir.Write("latin1.yaml", "pool: {name: caf\xe9}\n");
  CHECK(Contains(OnlyError(LoadConfigFile(latin1)),
                 latin1 + ":1:17: not a text file: it contains invalid UTF-8"));
}

TEST_CASE("a file whose document is not a mapping is one error") {
  TempDir dir;
  std::string list = dir.Write("list.yaml", "- name: web\n- name: job\n");
  CHECK(OnlyError(LoadConfigFile(list)) ==
        list +
            ":1:1: the pool definition must be a mapping with keys 'pool' and "
            "'groups', got a list");
  std::string scalar = dir.Write("scalar.yaml", "42\n");
  CHECK(Contains(OnlyError(LoadConfigFile(scalar)), "got '42'"));
}

TEST_CASE("a file too large to be a pool definition is one error") {
  TempDir dir;
  std::string path =
      dir.Write("huge.yaml", "# " + std::string(17 << 20, 'x') + "\n");
  CHECK(Contains(OnlyError(LoadConfigFile(path)), path + ": is larger than"));
}

TEST_CASE("LookUpSystemUser reads the passwd database, by name or uid") {
  Result<std::optional<UserIds>> root = LookUpSystemUser("root");
  REQUIRE(root.ok());
  REQUIRE(root->has_value());
  CHECK((*root)->uid == 0);
  CHECK((*root)->gid == 0);
  // A number that is no user's name is taken as a uid.
  Result<std::optional<UserIds>> uid_zero = LookUpSystemUser("0");
  REQUIRE(uid_zero.ok());
  REQUIRE(uid_zero->has_value());
  CHECK((*uid_zero)->uid == 0);
  Result<std::optional<UserIds>> absent = LookUpSystemUser("no_such_user_xq");
  REQUIRE(absent.ok());
  CHECK_FALSE(absent->has_value());
}

TEST_CASE("LoadConfigFile resolves users with the passwd database") {
  TempDir dir;
  std::string good = dir.Write(
      "root.yaml",
      "pool: {name: t}\ngroups:\n  - {name: w, type: job, command: [x], "
      "user: root}\n");
  ConfigLoad load = LoadConfigFile(good);
  INFO(load.ErrorText());
  REQUIRE(load.ok());
  CHECK(load.config->groups[0].uid == 0);
  CHECK(load.config->groups[0].gid == 0);
  std::string bad = dir.Write(
      "nobody.yaml",
      "pool: {name: t}\ngroups:\n  - {name: w, type: job, command: [x], "
      "user: no_such_user_xq}\n");
  CHECK(OnlyError(LoadConfigFile(bad)) ==
        bad +
            ":3:46: groups[0].user: unknown user 'no_such_user_xq': not in "
            "the passwd database (give a user name from /etc/passwd, or "
            "remove 'user')");
}

TEST_CASE(
    "LoadConfigFile takes the default control socket from "
    "RUNTIME_DIRECTORY") {
  TempDir dir;
  std::string path = dir.Write("pool.yaml", "pool: {name: demo}\ngroups: []\n");
  {
    ScopedEnv env("RUNTIME_DIRECTORY", "/run/a:/run/b");
    CHECK(SystemConfigEnvironment().runtime_directory == "/run/a:/run/b");
    ConfigLoad load = LoadConfigFile(path);
    REQUIRE(load.ok());
    CHECK(load.config->control_socket == "/run/a/demo.sock");
  }
  {
    ScopedEnv env("RUNTIME_DIRECTORY", nullptr);
    CHECK(SystemConfigEnvironment().runtime_directory.empty());
    ConfigLoad load = LoadConfigFile(path);
    REQUIRE(load.ok());
    CHECK(load.config->control_socket == "/tmp/workerpool-demo.sock");
  }
}

}  // namespace
}  // namespace workerpool
