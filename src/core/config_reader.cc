#include "core/config_reader.h"

#include <algorithm>
#include <charconv>
#include <system_error>
#include <utility>

namespace workerpool::config_parser {

void ErrorList::Add(TextPosition position, std::string key,
                    std::string message) {
  ConfigError error;
  error.file = file_;
  if (position.line > 0) {
    error.line = position.line;
    error.column = position.column;
  }
  error.key = std::move(key);
  error.message = std::move(message);
  errors_.push_back(std::move(error));
}

void ErrorList::AddWithoutPosition(std::string message) {
  Add(TextPosition{}, "", std::move(message));
}

std::vector<ConfigError> ErrorList::TakeSorted() {
  std::stable_sort(errors_.begin(), errors_.end(),
                   [](const ConfigError& a, const ConfigError& b) {
                     return std::pair(a.line, a.column) <
                            std::pair(b.line, b.column);
                   });
  return std::move(errors_);
}

std::string Describe(const YamlNode& node) {
  if (node.IsList()) return "a list";
  if (node.IsMap()) return "a mapping";
  if (node.IsNull()) return "nothing";
  return Quote(node.Scalar());
}

TextPosition PositionOf(const YamlNode& node, TextPosition fallback) {
  return node.IsNull() ? fallback : node.Position();
}

MapReader::MapReader(ErrorList* errors, const YamlNode& node, std::string path)
    : errors_(errors), node_(node), path_(std::move(path)) {
  if (!node.IsMap()) return;
  for (const auto& [key_node, value] : node.Entries()) {
    if (!key_node.IsScalar()) {
      errors_->Add(key_node.Position(), path_,
                   "a key must be a plain name, got " + Describe(key_node));
      continue;
    }
    const std::string& key = key_node.Scalar();
    if (const Entry* first = FindEntry(key)) {
      errors_->Add(key_node.Position(), PathOf(key),
                   "duplicate key " + Quote(key) + " (first given at line " +
                       std::to_string(first->key_node.Position().line) + ")");
      continue;
    }
    entries_.push_back(Entry{key, key_node, value});
  }
}

std::string MapReader::PathOf(std::string_view key) const {
  return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

const MapReader::Entry* MapReader::Lookup(std::string_view key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) {
    known_.emplace_back(key);
  }
  Entry* entry = FindEntry(key);
  if (entry == nullptr) return nullptr;
  entry->known = true;
  return entry;
}

void MapReader::ValueError(std::string_view key, std::string message) {
  const Entry* entry = FindEntry(key);
  errors_->Add(entry == nullptr ? node_.Position() : ValuePosition(*entry),
               PathOf(key), std::move(message));
}

void MapReader::KeyError(std::string_view key, std::string message) {
  const Entry* entry = FindEntry(key);
  errors_->Add(entry == nullptr ? node_.Position() : entry->key_node.Position(),
               PathOf(key), std::move(message));
}

bool MapReader::Text(std::string_view key, std::string* out, Need need,
                     Status (*check)(std::string_view)) {
  const YamlNode* value = Value(key, need, "");
  if (value == nullptr) return false;
  std::optional<std::string> text = ReadText(*value, PathOf(key), check);
  if (!text) return false;
  *out = std::move(*text);
  return true;
}

bool MapReader::OneOf(std::string_view key, std::string* out, Words choices,
                      Need need) {
  const YamlNode* value = Value(key, need, "expected " + Alternatives(choices));
  if (value == nullptr) return false;
  std::optional<std::string> text = ReadText(*value, PathOf(key), nullptr);
  if (!text) return false;
  if (std::find(choices.begin(), choices.end(), *text) == choices.end()) {
    std::string message =
        "must be " + Alternatives(choices) + ", got " + Quote(*text);
    std::string_view nearest = NearestOf(*text, choices);
    if (!nearest.empty()) message += " (did you mean " + Quote(nearest) + "?)";
    errors_->Add(value->Position(), PathOf(key), std::move(message));
    return false;
  }
  *out = std::move(*text);
  return true;
}

bool MapReader::Int(std::string_view key, int* out, IntRange range) {
  std::int64_t wide = 0;
  range.max =
      std::min<std::int64_t>(range.max, std::numeric_limits<int>::max());
  if (!Int64(key, &wide, range)) return false;
  *out = static_cast<int>(wide);
  return true;
}

bool MapReader::Int64(std::string_view key, std::int64_t* out, IntRange range) {
  const YamlNode* value = Value(key, Need::kOptional, "");
  if (value == nullptr) return false;
  std::optional<std::int64_t> number = ReadInteger(*value, PathOf(key), range);
  if (!number) return false;
  *out = *number;
  return true;
}

bool MapReader::Bool(std::string_view key, bool* out) {
  const YamlNode* value = Value(key, Need::kOptional, "");
  if (value == nullptr) return false;
  std::string text = value->IsScalar() ? value->Scalar() : "";
  bool is_true = text == "true" || text == "True" || text == "TRUE";
  bool is_false = text == "false" || text == "False" || text == "FALSE";
  if ((is_true || is_false) && value->IsQuoted()) {
    errors_->Add(value->Position(), PathOf(key),
                 "must be true or false, got the quoted string " +
                     Describe(*value) + "; write it without quotes");
    return false;
  }
  if (!is_true && !is_false) {
    errors_->Add(value->Position(), PathOf(key),
                 "must be true or false, got " + Describe(*value));
    return false;
  }
  *out = is_true;
  return true;
}

bool MapReader::DurationValue(std::string_view key, Duration* out) {
  const YamlNode* value = Value(key, Need::kOptional, "");
  if (value == nullptr) return false;
  std::optional<std::string> text = ReadText(*value, PathOf(key), nullptr);
  if (!text) return false;
  Result<Duration> duration = ParseDuration(*text);
  if (!duration.ok()) {
    errors_->Add(value->Position(), PathOf(key), duration.status().message());
    return false;
  }
  *out = *duration;
  return true;
}

bool MapReader::Size(std::string_view key, std::int64_t* out) {
  const YamlNode* value = Value(key, Need::kOptional, "");
  if (value == nullptr) return false;
  std::optional<std::string> text = ReadText(*value, PathOf(key), nullptr);
  if (!text) return false;
  Result<std::int64_t> size = ParseSize(*text);
  if (!size.ok()) {
    errors_->Add(value->Position(), PathOf(key), size.status().message());
    return false;
  }
  *out = *size;
  return true;
}

bool MapReader::TextList(std::string_view key, std::vector<std::string>* out,
                         const ListRule& rule) {
  const YamlNode* value = Value(
      key, rule.need, "expected a list such as " + std::string(rule.example));
  if (value == nullptr) return false;
  std::string path = PathOf(key);
  if (!value->IsList()) {
    std::string message = "must be a list such as " +
                          std::string(rule.example) + ", got " +
                          Describe(*value);
    if (value->IsScalar()) message += " (a single string is not a list)";
    errors_->Add(value->Position(), path, std::move(message));
    return false;
  }
  if (value->size() == 0 && !rule.allow_empty) {
    errors_->Add(value->Position(), path,
                 "must not be an empty list; expected a list such as " +
                     std::string(rule.example));
    return false;
  }
  std::vector<std::string> items;
  bool all_ok = true;
  for (std::size_t i = 0; i < value->size(); ++i) {
    YamlNode item = (*value)[i];
    std::string item_path = path + "[" + std::to_string(i) + "]";
    std::optional<std::string> text = ReadText(item, item_path, rule.check);
    if (!text) {
      all_ok = false;
      continue;
    }
    items.push_back(std::move(*text));
  }
  if (!all_ok) return false;
  *out = std::move(items);
  return true;
}

bool MapReader::TextMap(std::string_view key,
                        std::map<std::string, std::string>* out,
                        Status (*check_name)(std::string_view)) {
  std::optional<MapReader> map = Map(key);
  if (!map) return false;
  std::map<std::string, std::string> values;
  bool all_ok = true;
  for (Entry& entry : map->entries_) {
    entry.known = true;
    std::string path = map->PathOf(entry.key);
    if (check_name != nullptr) {
      Status name_ok = check_name(entry.key);
      if (!name_ok.ok()) {
        errors_->Add(entry.key_node.Position(), path, name_ok.message());
        all_ok = false;
        continue;
      }
    }
    if (entry.value.IsNull()) {
      errors_->Add(entry.key_node.Position(), path,
                   "has no value; write \"\" for an empty value");
      all_ok = false;
      continue;
    }
    std::optional<std::string> text = ReadText(entry.value, path, nullptr);
    if (!text) {
      all_ok = false;
      continue;
    }
    values[entry.key] = std::move(*text);
  }
  if (!all_ok) return false;
  *out = std::move(values);
  return true;
}

std::optional<MapReader> MapReader::Map(std::string_view key, Need need) {
  const YamlNode* value = Value(key, need,
                                "expected a mapping of keys to "
                                "values");
  if (value == nullptr) return std::nullopt;
  if (!value->IsMap()) {
    errors_->Add(
        value->Position(), PathOf(key),
        "must be a mapping of keys to values, got " + Describe(*value));
    return std::nullopt;
  }
  return MapReader(errors_, *value, PathOf(key));
}

void MapReader::Finish() {
  std::vector<std::string_view> known(known_.begin(), known_.end());
  for (const Entry& entry : entries_) {
    if (entry.known) continue;
    std::string message = "unknown key " + Quote(entry.key);
    if (entry.key == "<<") {
      message += ": YAML merge keys are not supported; write the keys out";
    } else if (std::string_view nearest = NearestOf(entry.key, known);
               !nearest.empty()) {
      message += " (did you mean " + Quote(nearest) + "?)";
    } else {
      message += "; known keys here: " + Join(known, ", ");
    }
    errors_->Add(entry.key_node.Position(), PathOf(entry.key),
                 std::move(message));
  }
}

MapReader::Entry* MapReader::FindEntry(std::string_view key) {
  for (Entry& entry : entries_) {
    if (entry.key == key) return &entry;
  }
  return nullptr;
}

TextPosition MapReader::ValuePosition(const Entry& entry) {
  return PositionOf(entry.value, entry.key_node.Position());
}

const YamlNode* MapReader::Value(std::string_view key, Need need,
                                 const std::string& hint) {
  const Entry* entry = Lookup(key);
  std::string suffix = hint.empty() ? "" : "; " + hint;
  if (entry == nullptr) {
    if (need == Need::kRequired) {
      errors_->Add(node_.Position(), PathOf(key),
                   "missing required key " + Quote(key) + suffix);
    }
    return nullptr;
  }
  if (entry->value.IsNull()) {
    std::string advice =
        need == Need::kRequired ? "; give one" : "; give one or remove the key";
    errors_->Add(entry->key_node.Position(), PathOf(key),
                 "has no value" + (hint.empty() ? advice : suffix));
    return nullptr;
  }
  return &entry->value;
}

std::optional<std::string> MapReader::ReadText(
    const YamlNode& value, const std::string& path,
    Status (*check)(std::string_view)) {
  if (!value.IsScalar()) {
    errors_->Add(value.Position(), path,
                 "must be a string, got " + Describe(value));
    return std::nullopt;
  }
  if (check != nullptr) {
    Status ok = check(value.Scalar());
    if (!ok.ok()) {
      errors_->Add(value.Position(), path, ok.message());
      return std::nullopt;
    }
  }
  return value.Scalar();
}

std::optional<std::int64_t> MapReader::ReadInteger(const YamlNode& value,
                                                   const std::string& path,
                                                   const IntRange& range) {
  bool unbounded = range.max == std::numeric_limits<int>::max() ||
                   range.max == std::numeric_limits<std::int64_t>::max();
  std::string expected;
  if (unbounded && range.min == 0) {
    expected = "a non-negative integer";
  } else if (unbounded) {
    expected = "an integer >= " + std::to_string(range.min);
  } else {
    expected = "an integer from " + std::to_string(range.min) + " to " +
               std::to_string(range.max);
  }
  std::string problem = "must be " + expected + ", got " + Describe(value);
  if (!value.IsScalar()) {
    errors_->Add(value.Position(), path, std::move(problem));
    return std::nullopt;
  }
  // Strict: an optional '-' and decimal digits, nothing else. "1.5",
  // "0x10", "1e3" and "+1" are refused rather than guessed at.
  const std::string& text = value.Scalar();
  std::string_view digits = text;
  bool negative = digits.starts_with('-');
  if (negative) digits.remove_prefix(1);
  if (!IsDecimal(digits)) {
    errors_->Add(value.Position(), path, std::move(problem));
    return std::nullopt;
  }
  std::int64_t number = 0;
  auto [end, error] =
      std::from_chars(text.data(), text.data() + text.size(), number);
  bool too_large = !negative && (error != std::errc() || number > range.max);
  if (too_large) {
    if (unbounded) problem += " (at most " + std::to_string(range.max) + ")";
    errors_->Add(value.Position(), path, std::move(problem));
    return std::nullopt;
  }
  if (error != std::errc() || number < range.min) {
    errors_->Add(value.Position(), path, std::move(problem));
    return std::nullopt;
  }
  if (value.IsQuoted()) {
    errors_->Add(value.Position(), path,
                 "must be " + expected + ", got the quoted string " +
                     Describe(value) + "; write the number without quotes");
    return std::nullopt;
  }
  return number;
}

}  // namespace workerpool::config_parser
