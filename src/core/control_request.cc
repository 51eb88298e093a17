#include "core/control_request.h"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <nlohmann/json.hpp>

namespace workerpool {
namespace {

using nlohmann::json;

// Values echoed in an error are cut to this, so an answer stays one short
// line whatever the client sent.
constexpr std::size_t kMaxEchoBytes = 80;

constexpr const char* kExample = "e.g. {\"command\":\"status\"}";
constexpr const char* kCommands =
    "status, scale, restart, reload, stop or upgrade";

// A control request is flat; anything nested deeper is refused before
// nlohmann::json builds it (its destructor and dump() recurse per level, and
// a sanitized Watcher's stack does not take 20,000 levels).
constexpr int kMaxNesting = 32;

// The deepest nesting of [ and { in TEXT, outside strings.
int MaxNesting(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

// VALUE as compact JSON, cut to kMaxEchoBytes; invalid UTF-8 is replaced so
// the answer itself stays valid JSON text.
std::string Echo(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > kMaxEchoBytes) {
    text.resize(kMaxEchoBytes);
    text += "...";
  }
  return text;
}

// TEXT as typed, for an error line: cut to kMaxEchoBytes, bytes other
// than printable ASCII shown as \xNN so the message stays one line.
std::string Printable(std::string_view text) {
  std::string out;
  for (unsigned char c : text.substr(0, kMaxEchoBytes)) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  if (text.size() > kMaxEchoBytes) out += "...";
  return out;
}

Result<std::string> ReadGroup(const json& request, const char* command) {
  auto found = request.find("group");
  if (found == request.end()) {
    return Status::Error(
        std::string("missing \"group\": the group to ") + command +
        ", e.g. {\"command\":\"" + command + "\",\"group\":\"web\"" +
        (std::string_view(command) == "scale" ? ",\"processes\":4}" : "}"));
  }
  if (!found->is_string() || found->get_ref<const std::string&>().empty()) {
    return Status::Error(
        "\"group\" must be a group name (a non-empty string), got " +
        Echo(*found));
  }
  return found->get<std::string>();
}

Result<int> ReadProcesses(const json& request) {
  auto found = request.find("processes");
  if (found == request.end()) {
    return Status::Error(
        "missing \"processes\": the group's new process count, or "
        "\"auto\" for its autoscaler, e.g. "
        "{\"command\":\"scale\",\"group\":\"web\",\"processes\":4}");
  }
  const std::string bad = "\"processes\" must be an integer from 0 to " +
                          std::to_string(kMaxScaleProcesses) +
                          " or \"auto\", got " + Echo(*found);
  if (found->is_string() && found->get_ref<const std::string&>() == "auto") {
    return kScaleAuto;
  }
  if (found->is_number_unsigned()) {
    std::uint64_t value = found->get<std::uint64_t>();
    if (value > static_cast<std::uint64_t>(kMaxScaleProcesses)) {
      return Status::Error(bad);
    }
    return static_cast<int>(value);
  }
  if (found->is_number_integer()) {
    std::int64_t value = found->get<std::int64_t>();
    if (value < 0 || value > kMaxScaleProcesses) return Status::Error(bad);
    return static_cast<int>(value);
  }
  return Status::Error(bad);
}

}  // namespace

const char* ControlCommandName(ControlRequest::Command command) {
  switch (command) {
    case ControlRequest::Command::kStatus:
      return "status";
    case ControlRequest::Command::kScale:
      return "scale";
    case ControlRequest::Command::kRestart:
      return "restart";
    case ControlRequest::Command::kReload:
      return "reload";
    case ControlRequest::Command::kStop:
      return "stop";
    case ControlRequest::Command::kUpgrade:
      return "upgrade";
  }
  return "status";
}

Result<ControlRequest> ParseControlRequest(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.size() > kMaxControlRequestBytes) {
    return Status::Error("request too long: " + std::to_string(line.size()) +
                         " bytes, at most " +
                         std::to_string(kMaxControlRequestBytes));
  }
  if (MaxNesting(line) > kMaxNesting) {
    return Status::Error(std::string("the request is nested too deeply (at "
                                     "most ") +
                         std::to_string(kMaxNesting) +
                         " levels): send one flat JSON object, " + kExample);
  }
  // Never throws with allow_exceptions=false.
  json request = json::parse(line.begin(), line.end(), nullptr,
                             /*allow_exceptions=*/false);
  if (request.is_discarded()) {
    return Status::Error(
        std::string("the request is not valid JSON: send one JSON object on "
                    "one line, ") +
        kExample);
  }
  if (!request.is_object()) {
    return Status::Error(std::string("the request must be a JSON object, ") +
                         kExample + ", got " + Echo(request));
  }
  auto command_field = request.find("command");
  if (command_field == request.end()) {
    return Status::Error(std::string("missing \"command\": one of ") +
                         kCommands);
  }
  if (!command_field->is_string()) {
    return Status::Error("\"command\" must be a string (" +
                         std::string(kCommands) + "), got " +
                         Echo(*command_field));
  }
  const std::string& name = command_field->get_ref<const std::string&>();
  ControlRequest parsed;
  if (name == "status") {
    parsed.command = ControlRequest::Command::kStatus;
    if (auto usage = request.find("usage"); usage != request.end()) {
      if (!usage->is_boolean()) {
        return Status::Error(
            "\"usage\" must be true or false (each process's memory and "
            "CPU time in the status), got " +
            Echo(*usage));
      }
      parsed.usage = usage->get<bool>();
    }
  } else if (name == "reload") {
    parsed.command = ControlRequest::Command::kReload;
  } else if (name == "stop") {
    parsed.command = ControlRequest::Command::kStop;
  } else if (name == "upgrade") {
    parsed.command = ControlRequest::Command::kUpgrade;
    auto binary = request.find("binary");
    if (binary != request.end()) {
      if (!binary->is_string() ||
          binary->get_ref<const std::string&>().empty() ||
          binary->get_ref<const std::string&>()[0] != '/') {
        return Status::Error(
            "\"binary\" must be the absolute path of the new workerpool, "
            "e.g. {\"command\":\"upgrade\",\"binary\":\"/usr/bin/"
            "workerpool\"}, got " +
            Echo(*binary));
      }
      parsed.binary = binary->get_ref<const std::string&>();
    }
  } else if (name == "restart") {
    parsed.command = ControlRequest::Command::kRestart;
    Result<std::string> group = ReadGroup(request, "restart");
    if (!group.ok()) return group.status();
    parsed.group = std::move(*group);
    if (auto with = request.find("with_dependents"); with != request.end()) {
      if (!with->is_boolean()) {
        return Status::Error("\"with_dependents\" must be true or false, got " +
                             Echo(*with));
      }
      parsed.with_dependents = with->get<bool>();
    }
  } else if (name == "scale") {
    parsed.command = ControlRequest::Command::kScale;
    Result<std::string> group = ReadGroup(request, "scale");
    if (!group.ok()) return group.status();
    parsed.group = std::move(*group);
    Result<int> processes = ReadProcesses(request);
    if (!processes.ok()) return processes.status();
    parsed.processes = *processes;
  } else {
    return Status::Error("unknown command " + Echo(*command_field) +
                         ": expected " + kCommands);
  }
  return parsed;
}

std::string FormatControlRequest(const ControlRequest& request) {
  json out = {{"command", ControlCommandName(request.command)}};
  if (request.command == ControlRequest::Command::kScale ||
      request.command == ControlRequest::Command::kRestart) {
    out["group"] = request.group;
  }
  if (request.command == ControlRequest::Command::kStatus && !request.usage) {
    out["usage"] = false;
  }
  if (request.command == ControlRequest::Command::kRestart &&
      request.with_dependents) {
    out["with_dependents"] = true;
  }
  if (request.command == ControlRequest::Command::kUpgrade &&
      !request.binary.empty()) {
    out["binary"] = request.binary;
  }
  if (request.command == ControlRequest::Command::kScale) {
    if (request.processes == kScaleAuto) {
      out["processes"] = "auto";
    } else {
      out["processes"] = request.processes;
    }
  }
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<int> ParseProcessCount(std::string_view text) {
  const std::string bad = "N must be a whole number from 0 to " +
                          std::to_string(kMaxScaleProcesses) + ", got '" +
                          Printable(text) + "'";
  if (text.empty() || text.size() > 9) return Status::Error(bad);
  for (char c : text) {
    if (c < '0' || c > '9') return Status::Error(bad);
  }
  int value = 0;
  auto [end, error] =
      std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() ||
      value > kMaxScaleProcesses) {
    return Status::Error(bad);
  }
  return value;
}

Result<int> ParseScaleTarget(std::string_view text) {
  if (text == "auto") return kScaleAuto;
  Result<int> count = ParseProcessCount(text);
  if (count.ok()) return count;
  return Status::Error("N must be a whole number from 0 to " +
                       std::to_string(kMaxScaleProcesses) + " or auto, got '" +
                       Printable(text) + "'");
}

}  // namespace workerpool
