#include "core/control_request.h"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace workerpool {
namespace {

using Command = ControlRequest::Command;

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string ErrorOf(std::string_view line) {
  Result<ControlRequest> parsed = ParseControlRequest(line);
  REQUIRE_MESSAGE(!parsed.ok(), "accepted: ", std::string(line));
  return parsed.status().message();
}

TEST_CASE("control request: every command parses") {
  Result<ControlRequest> status =
      ParseControlRequest(R"({"command":"status"})");
  REQUIRE(status.ok());
  CHECK(status->command == Command::kStatus);

  Result<ControlRequest> reload =
      ParseControlRequest(R"({"command":"reload"})");
  REQUIRE(reload.ok());
  CHECK(reload->command == Command::kReload);

  Result<ControlRequest> stop = ParseControlRequest(R"({"command":"stop"})");
  REQUIRE(stop.ok());
  CHECK(stop->command == Command::kStop);

  Result<ControlRequest> restart =
      ParseControlRequest(R"({"command":"restart","group":"web"})");
  REQUIRE(restart.ok());
  CHECK(restart->command == Command::kRestart);
  CHECK(restart->group == "web");

  Result<ControlRequest> scale = ParseControlRequest(
      R"( {"processes": 7, "group":"compute", "command":"scale"} )");
  REQUIRE(scale.ok());
  CHECK(scale->command == Command::kScale);
  CHECK(scale->group == "compute");
  CHECK(scale->processes == 7);
}

TEST_CASE("control request: a trailing CR and unknown members are accepted") {
  Result<ControlRequest> parsed =
      ParseControlRequest("{\"command\":\"status\",\"verbose\":true}\r");
  REQUIRE(parsed.ok());
  CHECK(parsed->command == Command::kStatus);
}

TEST_CASE("control request: scale to zero and to the maximum") {
  Result<ControlRequest> zero =
      ParseControlRequest(R"({"command":"scale","group":"g","processes":0})");
  REQUIRE(zero.ok());
  CHECK(zero->processes == 0);
  Result<ControlRequest> most =
      ParseControlRequest(R"({"command":"scale","group":"g","processes":)" +
                          std::to_string(kMaxScaleProcesses) + "}");
  REQUIRE(most.ok());
  CHECK(most->processes == kMaxScaleProcesses);
}

TEST_CASE("control request: garbage gets an error that shows the right form") {
  for (const char* garbage :
       {"", "hello", "{", "\x01\x02\xff", "{\"command\":\"status\"} trailing",
        "GET / HTTP/1.1"}) {
    std::string error = ErrorOf(garbage);
    CHECK_MESSAGE(Contains(error, "not valid JSON"), error);
    CHECK_MESSAGE(Contains(error, R"({"command":"status"})"), error);
  }
  CHECK(Contains(ErrorOf("[1,2]"), "must be a JSON object"));
  CHECK(Contains(ErrorOf("42"), "must be a JSON object, e.g."));
  CHECK(Contains(ErrorOf("{}"), "missing \"command\""));
  CHECK(Contains(ErrorOf(R"({"command":3})"), "\"command\" must be a string"));
  std::string unknown = ErrorOf(R"({"command":"explode"})");
  CHECK(Contains(unknown, "unknown command \"explode\""));
  CHECK(Contains(unknown, "status, scale, restart, reload, stop or upgrade"));
}

TEST_CASE("control request: scale and restart need a group name") {
  CHECK(Contains(ErrorOf(R"({"command":"restart"})"), "missing \"group\""));
  CHECK(Contains(ErrorOf(R"({"command":"scale","processes":2})"),
                 "missing \"group\""));
  CHECK(Contains(ErrorOf(R"({"command":"restart","group":""})"),
                 "non-empty string"));
  CHECK(Contains(ErrorOf(R"({"command":"restart","group":["web"]})"),
                 "got [\"web\"]"));
}

TEST_CASE("control request: bad process counts are refused") {
  for (const char* bad : {"-1", "1.5", "\"4\"", "true", "null", "100001",
                          "18446744073709551615", "1e3", "{}"}) {
    std::string line =
        std::string(R"({"command":"scale","group":"web","processes":)") + bad +
        "}";
    std::string error = ErrorOf(line);
    CHECK_MESSAGE(Contains(error,
                           "\"processes\" must be an integer from 0 "
                           "to 100000"),
                  error);
  }
  CHECK(Contains(ErrorOf(R"({"command":"scale","group":"web"})"),
                 "missing \"processes\""));
}

TEST_CASE("control request: scale auto hands the group back to autoscaling") {
  Result<ControlRequest> automatic = ParseControlRequest(
      R"({"command":"scale","group":"compute","processes":"auto"})");
  REQUIRE(automatic.ok());
  CHECK(automatic->command == Command::kScale);
  CHECK(automatic->group == "compute");
  CHECK(automatic->processes == kScaleAuto);
  CHECK(FormatControlRequest(*automatic) ==
        R"({"command":"scale","group":"compute","processes":"auto"})");
  // Only the word itself; the error says both forms.
  for (const char* bad :
       {"\"AUTO\"", "\"auto \"", "\"\"", "\"-1\"", "[\"auto\"]"}) {
    std::string error = ErrorOf(
        std::string(R"({"command":"scale","group":"web","processes":)") + bad +
        "}");
    CHECK_MESSAGE(Contains(error, "from 0 to 100000 or \"auto\""), error);
  }
  CHECK(Contains(ErrorOf(R"({"command":"scale","group":"web"})"),
                 "or \"auto\" for its autoscaler"));
}

TEST_CASE("control request: upgrade, with or without a binary") {
  Result<ControlRequest> plain =
      ParseControlRequest(R"({"command":"upgrade"})");
  REQUIRE(plain.ok());
  CHECK(plain->command == Command::kUpgrade);
  CHECK(plain->binary.empty());
  CHECK(FormatControlRequest(*plain) == R"({"command":"upgrade"})");

  Result<ControlRequest> with =
      ParseControlRequest(R"({"command":"upgrade","binary":"/usr/bin/wp"})");
  REQUIRE(with.ok());
  CHECK(with->binary == "/usr/bin/wp");
  Result<ControlRequest> again =
      ParseControlRequest(FormatControlRequest(*with));
  REQUIRE(again.ok());
  CHECK(again->binary == "/usr/bin/wp");
}

TEST_CASE("control request: an upgrade binary must be an absolute path") {
  for (const char* line : {R"({"command":"upgrade","binary":3})",
                           R"({"command":"upgrade","binary":""})",
                           R"({"command":"upgrade","binary":"relative/wp"})",
                           R"({"command":"upgrade","binary":["/usr/bin/wp"]})",
                           R"({"command":"upgrade","binary":null})"}) {
    CAPTURE(line);
    CHECK(Contains(ErrorOf(line), "\"binary\" must be the absolute path"));
  }
}

TEST_CASE("control request: echoed values are cut short") {
  std::string long_name(5000, 'x');
  std::string error = ErrorOf(R"({"command":")" + long_name + R"("})");
  CHECK(error.size() < 300);
  CHECK(Contains(error, "..."));
}

TEST_CASE("control request: invalid UTF-8 in an echo stays valid JSON text") {
  std::string error = ErrorOf("{\"command\":\"\xff\xfe\"}");
  // The error goes back inside a JSON answer; dumping it must not throw.
  nlohmann::json answer = {{"error", error}};
  CHECK_NOTHROW((void)answer.dump());
}

TEST_CASE("control request: too long is refused before parsing") {
  std::string line = R"({"command":"status","pad":")" +
                     std::string(kMaxControlRequestBytes, 'a') + "\"}";
  CHECK(Contains(ErrorOf(line), "request too long"));
}

TEST_CASE("control request: deep nesting does not crash") {
  std::string deep(20000, '[');
  deep += std::string(20000, ']');
  CHECK(Contains(ErrorOf(deep), "nested too deeply"));
  CHECK(Contains(ErrorOf(std::string(60000, '{')), "nested too deeply"));
  // Brackets inside strings are text, not nesting.
  CHECK(ParseControlRequest(R"({"command":"status","x":")" +
                            std::string(1000, '[') + "\"}")
            .ok());
}

TEST_CASE("control request: format parses back to the same request") {
  ControlRequest scale;
  scale.command = Command::kScale;
  scale.group = "we\"b\n";
  scale.processes = 12;
  Result<ControlRequest> back =
      ParseControlRequest(FormatControlRequest(scale));
  REQUIRE(back.ok());
  CHECK(back->command == Command::kScale);
  CHECK(back->group == scale.group);
  CHECK(back->processes == 12);
  CHECK(FormatControlRequest(scale).find('\n') == std::string::npos);

  for (Command command : {Command::kStatus, Command::kReload, Command::kStop}) {
    ControlRequest request;
    request.command = command;
    std::string text = FormatControlRequest(request);
    CHECK(text ==
          std::string(R"({"command":")") + ControlCommandName(command) + "\"}");
    Result<ControlRequest> parsed = ParseControlRequest(text);
    REQUIRE(parsed.ok());
    CHECK(parsed->command == command);
  }
}

TEST_CASE("process count as typed on the command line") {
  CHECK(*ParseProcessCount("0") == 0);
  CHECK(*ParseProcessCount("4") == 4);
  CHECK(*ParseProcessCount("007") == 7);
  CHECK(*ParseProcessCount("100000") == 100000);
  for (const char* bad : {"", "-1", "+3", " 3", "3 ", "3.0", "1e2", "abc",
                          "100001", "99999999999999999999", "0x10"}) {
    Result<int> parsed = ParseProcessCount(bad);
    REQUIRE_MESSAGE(!parsed.ok(), bad);
    CHECK(
        Contains(parsed.status().message(), std::string("got '") + bad + "'"));
  }
}

TEST_CASE("scale target as typed: auto or a process count") {
  CHECK(*ParseScaleTarget("auto") == kScaleAuto);
  CHECK(*ParseScaleTarget("0") == 0);
  CHECK(*ParseScaleTarget("16") == 16);
  for (const char* bad : {"", "Auto", "auto ", "-1", "automatic", "1e2"}) {
    Result<int> parsed = ParseScaleTarget(bad);
    REQUIRE_MESSAGE(!parsed.ok(), bad);
    CHECK(parsed.status().message() ==
          std::string(
              "N must be a whole number from 0 to 100000 or auto, got '") +
              bad + "'");
  }
  CHECK(ParseScaleTarget("a\nb").status().message().find('\n') ==
        std::string::npos);
}

TEST_CASE("process count: what was typed is echoed on one line") {
  Result<int> parsed = ParseProcessCount("4\n2\xff");
  REQUIRE(!parsed.ok());
  CHECK(parsed.status().message().find('\n') == std::string::npos);
  CHECK(Contains(parsed.status().message(), "got '4\\x0a2\\xff'"));
  Result<int> long_text = ParseProcessCount(std::string(500, '7'));
  REQUIRE(!long_text.ok());
  CHECK(long_text.status().message().size() < 200);
}

TEST_CASE("control request: restart --with-dependents") {
  Result<ControlRequest> plain =
      ParseControlRequest(R"({"command":"restart","group":"db"})");
  REQUIRE(plain.ok());
  CHECK_FALSE(plain->with_dependents);
  Result<ControlRequest> with = ParseControlRequest(
      R"({"command":"restart","group":"db","with_dependents":true})");
  REQUIRE(with.ok());
  CHECK(with->with_dependents);
  // Round trip, and the flag is left out when false.
  Result<ControlRequest> again =
      ParseControlRequest(FormatControlRequest(*with));
  REQUIRE(again.ok());
  CHECK(again->with_dependents);
  CHECK_FALSE(Contains(FormatControlRequest(*plain), "with_dependents"));
  // Garbage: one clear error each.
  for (const char* bad : {R"("yes")", "1", "null", "[]", "{}"}) {
    CAPTURE(bad);
    CHECK(
        Contains(ErrorOf(std::string(R"({"command":"restart","group":"db",)") +
                         R"("with_dependents":)" + bad + "}"),
                 "\"with_dependents\" must be true or false"));
  }
}

TEST_CASE("control request: status with or without each process's usage") {
  Result<ControlRequest> plain = ParseControlRequest(R"({"command":"status"})");
  REQUIRE(plain.ok());
  CHECK(plain->usage);
  CHECK(FormatControlRequest(*plain) == R"({"command":"status"})");

  Result<ControlRequest> without =
      ParseControlRequest(R"({"command":"status","usage":false})");
  REQUIRE(without.ok());
  CHECK_FALSE(without->usage);
  Result<ControlRequest> again =
      ParseControlRequest(FormatControlRequest(*without));
  REQUIRE(again.ok());
  CHECK_FALSE(again->usage);

  for (const char* line : {R"({"command":"status","usage":0})",
                           R"({"command":"status","usage":"no"})",
                           R"({"command":"status","usage":null})",
                           R"({"command":"status","usage":[false]})"}) {
    CAPTURE(line);
    CHECK(Contains(ErrorOf(line), "\"usage\" must be true or false"));
  }
}

}  // namespace
}  // namespace workerpool
