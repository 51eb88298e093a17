// Reading typed values out of YAML mappings into config structs, with one
// positioned error (src/core/config.h, ConfigError) for everything wrong.
// Generic: it knows YAML shapes, integers, durations, sizes, lists and
// "did you mean", not the pool format (that is config_document.h and
// config_group.h). Pure; reads YamlNode (src/core/yaml_node.h), never
// yaml-cpp itself.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/config_text.h"
#include "core/status.h"
#include "core/units.h"
#include "core/yaml_node.h"

namespace workerpool::config_parser {

// The errors of one file, collected as reading goes on.
class ErrorList {
 public:
  explicit ErrorList(std::string file) : file_(std::move(file)) {}

  // An error at POSITION (none when its line is 0) about KEY ("" for none).
  void Add(TextPosition position, std::string key, std::string message);
  void AddWithoutPosition(std::string message);

  std::size_t size() const { return errors_.size(); }

  // In file order, so the output reads top to bottom like the file.
  std::vector<ConfigError> TakeSorted();

 private:
  std::string file_;
  std::vector<ConfigError> errors_;
};

// "a list", "a mapping", "nothing", or the scalar's text quoted.
std::string Describe(const YamlNode& node);

// A null node's position is where the next token starts (often the next
// line); FALLBACK is the better place to point at then.
TextPosition PositionOf(const YamlNode& node, TextPosition fallback);

enum class Need { kOptional, kRequired };

struct IntRange {
  std::int64_t min = 0;
  std::int64_t max = std::numeric_limits<int>::max();
};

// What a list value must look like.
struct ListRule {
  Need need = Need::kOptional;
  bool allow_empty = true;
  // Shown when the value is not a list, e.g. "[./my_job, --flag]".
  std::string_view example = "[a, b]";
  // Checks one element; nullptr accepts any string.
  Status (*check)(std::string_view) = nullptr;
};

// One YAML mapping being read into a config struct.
//
// Each typed reader (Text, Int, Duration, ...) names one key the mapping may
// have and stores its value; a key no reader named is reported by Finish().
// An absent optional key leaves the output at its default; a present value of
// the wrong type or range is an error and also leaves the output untouched.
// Adding a key to the format is one reader call.
class MapReader {
 public:
  struct Entry {
    std::string key;
    YamlNode key_node;
    YamlNode value;
    bool known = false;
  };

  // PATH names NODE in messages: "" for the document, "groups[1]", ...
  // Keys that are not plain names, and duplicate keys, are errors here.
  MapReader(ErrorList* errors, const YamlNode& node, std::string path);

  bool is_map() const { return node_.IsMap(); }
  const YamlNode& node() const { return node_; }
  const std::string& path() const { return path_; }
  ErrorList& errors() { return *errors_; }

  // "PATH.KEY", or KEY at the top.
  std::string PathOf(std::string_view key) const;

  // Names KEY as known and returns its entry, null value included; nullptr
  // when the mapping does not have it.
  const Entry* Lookup(std::string_view key);

  bool Has(std::string_view key) const { return FindEntry(key) != nullptr; }

  // Records an error about KEY's value (at the value), or about the key
  // itself (at the key).
  void ValueError(std::string_view key, std::string message);
  void KeyError(std::string_view key, std::string message);

  // --- Typed readers; each returns true when the key was present and valid.

  // A string; CHECK, when given, validates it.
  bool Text(std::string_view key, std::string* out, Need need = Need::kOptional,
            Status (*check)(std::string_view) = nullptr);
  // One of CHOICES, with a suggestion for a near miss.
  bool OneOf(std::string_view key, std::string* out, Words choices,
             Need need = Need::kOptional);
  // Integers, strictly: an optional '-' and decimal digits, unquoted.
  bool Int(std::string_view key, int* out, IntRange range = {});
  bool Int64(std::string_view key, std::int64_t* out, IntRange range = {});
  // true or false (True, TRUE, ...), unquoted.
  bool Bool(std::string_view key, bool* out);
  // "100ms", "10s", ... (src/core/units.h).
  bool DurationValue(std::string_view key, Duration* out);
  // "512MB", ... (src/core/units.h).
  bool Size(std::string_view key, std::int64_t* out);
  // A list of strings, each checked by RULE.check.
  bool TextList(std::string_view key, std::vector<std::string>* out,
                const ListRule& rule);
  // A mapping of names to strings (env). Scalar values of any kind are
  // taken as their text, so MODEL: 3 gives "3".
  bool TextMap(std::string_view key, std::map<std::string, std::string>* out,
               Status (*check_name)(std::string_view));
  // A reader for the nested mapping KEY; nullopt when it is absent or not a
  // mapping (the latter is an error).
  std::optional<MapReader> Map(std::string_view key,
                               Need need = Need::kOptional);

  // Reports every key that no reader named, suggesting the nearest known key.
  void Finish();

 private:
  Entry* FindEntry(std::string_view key);
  const Entry* FindEntry(std::string_view key) const {
    return const_cast<MapReader*>(this)->FindEntry(key);
  }

  static TextPosition ValuePosition(const Entry& entry);

  // KEY's value when present and not null. A missing required key and a
  // key without a value are errors; HINT says what to write.
  const YamlNode* Value(std::string_view key, Need need,
                        const std::string& hint);

  // A scalar's text. Lists and mappings are errors; so is null.
  std::optional<std::string> ReadText(const YamlNode& value,
                                      const std::string& path,
                                      Status (*check)(std::string_view));

  std::optional<std::int64_t> ReadInteger(const YamlNode& value,
                                          const std::string& path,
                                          const IntRange& range);

  ErrorList* errors_;
  YamlNode node_;
  std::string path_;
  std::vector<Entry> entries_;
  std::vector<std::string> known_;  // keys named by readers so far
};

}  // namespace workerpool::config_parser
