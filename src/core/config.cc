#include "core/config.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <utility>

#include "core/config_document.h"
#include "core/config_reader.h"
#include "core/config_text.h"
#include "core/yaml_node.h"

namespace workerpool {
namespace {

using config_parser::ErrorList;

// What the messages about a file that is not one YAML document call it.
constexpr YamlDocumentKind kPoolDocument = {
    "a pool definition", "a mapping with keys 'pool' and 'groups'"};

// Binary garbage (the wrong file, a truncated download) gets one clear
// error at its first offending byte instead of a page of YAML complaints.
bool CheckIsText(std::string_view text, ErrorList* errors) {
  std::optional<std::size_t> offset = config_parser::FindNonTextByte(text);
  if (!offset) return true;
  std::size_t line_start = text.rfind('\n', *offset);
  line_start = line_start == std::string_view::npos ? 0 : line_start + 1;
  TextPosition position;
  position.line = 1 + static_cast<int>(std::count(
                          text.begin(), text.begin() + *offset, '\n'));
  position.column = 1 + static_cast<int>(*offset - line_start);
  auto byte = static_cast<unsigned char>(text[*offset]);
  char hex[8];
  std::snprintf(hex, sizeof(hex), "0x%02x", byte);
  std::string what;
  if (byte == 0) {
    what = "a NUL byte";
  } else if (byte < 0x80) {
    what = std::string("the control byte ") + hex;
  } else {
    what = std::string("invalid UTF-8 (byte ") + hex + ")";
  }
  errors->Add(position, "",
              "not a text file: it contains " + what +
                  "; a pool definition is UTF-8 YAML (is this the right "
                  "file?)");
  return false;
}

}  // namespace

std::string DefaultControlSocket(const std::string& pool_name,
                                 std::string_view runtime_directory) {
  // systemd joins several RuntimeDirectory= entries with ':'; use the first.
  std::string_view directory =
      runtime_directory.substr(0, runtime_directory.find(':'));
  if (directory.empty()) return "/tmp/workerpool-" + pool_name + ".sock";
  std::string path(directory);
  if (path.back() != '/') path += '/';
  return path + pool_name + ".sock";
}

std::string ConfigError::ToString() const {
  std::string out = file;
  if (line > 0) {
    out += ":" + std::to_string(line);
    if (column > 0) out += ":" + std::to_string(column);
  }
  out += ": ";
  if (!key.empty()) out += key + ": ";
  out += message;
  // One error, one line: a key or value quoted from the file may hold line
  // breaks (a multi-line plain scalar) or other control characters.
  std::string line_safe;
  line_safe.reserve(out.size());
  for (char c : out) {
    if (c == '\n') {
      line_safe += "\\n";
    } else if (c == '\r') {
      line_safe += "\\r";
    } else if (static_cast<unsigned char>(c) < 0x20 && c != '\t') {
      line_safe += '?';
    } else {
      line_safe += c;
    }
  }
  return line_safe;
}

std::string ConfigLoad::ErrorText() const {
  std::string out;
  for (const ConfigError& error : errors) out += error.ToString() + "\n";
  return out;
}

ConfigLoad ParseConfig(const std::string& text, const std::string& file_name,
                       const ConfigEnvironment& environment) {
  ErrorList errors(file_name);
  PoolConfig config;
  config.path = file_name;
  if (CheckIsText(text, &errors)) {
    std::optional<YamlError> error =
        ReadYamlDocument(text, kPoolDocument, [&](const YamlNode& root) {
          config_parser::ReadDocument(&errors, root, environment, &config);
        });
    if (error) errors.Add(error->position, "", std::move(error->message));
  }
  ConfigLoad load;
  load.errors = errors.TakeSorted();
  if (load.errors.empty()) load.config = std::move(config);
  return load;
}

}  // namespace workerpool
