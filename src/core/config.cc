#include "core/config.h"

#include <sys/un.h>
#include <yaml-cpp/depthguard.h>  // YAML::DeepRecursion, not in yaml.h
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <exception>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <string_view>
#include <utility>

#include "core/amqp_url.h"
#include "core/listen_address.h"
#include "core/routing.h"

namespace workerpool {
namespace {

// sun_path holds the path and its terminating NUL.
constexpr std::size_t kMaxSocketPathBytes = sizeof(sockaddr_un::sun_path) - 1;

// What a service with a rabbitmq section and no command runs.
constexpr std::string_view kBuiltinRabbitmqCommand[] = {"workerpool", "builtin",
                                                        "rabbitmq-service"};

using Words = std::span<const std::string_view>;
constexpr std::string_view kGroupTypeNames[] = {"reactor", "job", "service"};
constexpr std::string_view kLogLevels[] = {"trace", "debug",    "info", "warn",
                                           "error", "critical", "off"};
constexpr std::string_view kLogFormats[] = {"text", "json"};

// ---------------------------------------------------------------------------
// Text helpers.

std::string Quote(std::string_view text) {
  return "'" + std::string(text) + "'";
}

std::string Join(Words words, std::string_view separator) {
  std::string out;
  for (std::string_view word : words) {
    if (!out.empty()) out += separator;
    out += word;
  }
  return out;
}

// "a, b or c" for messages that list what is accepted.
std::string Alternatives(Words words) {
  if (words.size() < 2) return Join(words, "");
  return Join(words.first(words.size() - 1), ", ") + " or " +
         std::string(words.back());
}

std::size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      std::size_t substitution = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      row[j] = std::min({above + 1, row[j - 1] + 1, substitution});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The candidate a typo most likely meant, or "" when none is close.
std::string_view NearestOf(std::string_view word, Words candidates) {
  std::string_view best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (std::string_view candidate : candidates) {
    std::size_t distance = EditDistance(word, candidate);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  // Close enough to be a slip of the fingers, not a different word.
  std::size_t allowed = std::min<std::size_t>(2, (word.size() + 1) / 3);
  return best_distance <= std::max<std::size_t>(allowed, 1) ? best : "";
}

bool IsValidName(std::string_view name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

bool IsDecimal(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return c >= '0' && c <= '9';
  });
}

// Offset of the first byte that cannot be in a YAML text file: NUL, other
// control characters, or a malformed UTF-8 sequence. nullopt when all is text.
std::optional<std::size_t> FindNonTextByte(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x80) {
      bool control =
          byte < 0x20 && byte != '\t' && byte != '\n' && byte != '\r';
      if (control || byte == 0x7f) return i;
      ++i;
      continue;
    }
    std::size_t length = 0;
    std::uint32_t code_point = 0;
    if (byte >= 0xc2 && byte <= 0xdf) {
      length = 2;
      code_point = byte & 0x1f;
    } else if (byte >= 0xe0 && byte <= 0xef) {
      length = 3;
      code_point = byte & 0x0f;
    } else if (byte >= 0xf0 && byte <= 0xf4) {
      length = 4;
      code_point = byte & 0x07;
    } else {
      return i;  // a continuation byte out of place, or never valid
    }
    if (i + length > text.size()) return i;
    for (std::size_t k = 1; k < length; ++k) {
      auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xc0) != 0x80) return i;
      code_point = (code_point << 6) | (next & 0x3f);
    }
    bool overlong = (length == 3 && code_point < 0x800) ||
                    (length == 4 && code_point < 0x10000);
    bool surrogate = code_point >= 0xd800 && code_point <= 0xdfff;
    if (overlong || surrogate || code_point > 0x10ffff) return i;
    i += length;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Checks on single values. Each returns why the value is wrong, naming what
// was given and what is accepted.

Status CheckName(std::string_view name) {
  if (IsValidName(name)) return Status::Ok();
  return Status::Error("invalid name " + Quote(name) +
                       ": use one or more letters, digits, '_', '.' or '-'");
}

Status CheckNotEmpty(std::string_view text) {
  if (!text.empty()) return Status::Ok();
  return Status::Error("must not be empty");
}

Status CheckSocketPath(std::string_view path) {
  if (path.empty()) return Status::Error("must not be empty");
  if (path.size() > kMaxSocketPathBytes) {
    return Status::Error("socket path " + Quote(path) + " is " +
                         std::to_string(path.size()) +
                         " bytes; a Unix socket path may have at most " +
                         std::to_string(kMaxSocketPathBytes));
  }
  return Status::Ok();
}

Status CheckPort(std::string_view address, std::string_view port) {
  int number = 0;
  auto [end, error] =
      std::from_chars(port.data(), port.data() + port.size(), number);
  bool whole = end == port.data() + port.size();
  if (!IsDecimal(port) || error != std::errc() || !whole || number < 1 ||
      number > 65535) {
    return Status::Error("invalid port " + Quote(port) + " in " +
                         Quote(address) + ": expected a number from 1 to " +
                         "65535");
  }
  return Status::Ok();
}

// HOST:PORT as a listener or endpoint address; IPv6 hosts in brackets.
Status CheckHostPort(std::string_view address) {
  static constexpr char kExpected[] =
      "expected HOST:PORT such as 127.0.0.1:9464 or [::1]:9464";
  std::size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) {
    return Status::Error("address " + Quote(address) +
                         " has no port: " + kExpected);
  }
  std::string_view host = address.substr(0, colon);
  if (!host.empty() && host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') {
      return Status::Error("invalid address " + Quote(address) + ": " +
                           kExpected);
    }
  } else if (host.find(':') != std::string_view::npos) {
    return Status::Error("invalid address " + Quote(address) +
                         ": put an IPv6 host in brackets, as in [::1]:9464");
  }
  if (host.empty()) {
    return Status::Error("address " + Quote(address) + " has no host: " +
                         kExpected + " (0.0.0.0 for every interface)");
  }
  return CheckPort(address, address.substr(colon + 1));
}

Status CheckListenAddress(std::string_view text) {
  return ParseListenAddress(std::string(text)).status();
}

// One grammar for the URL: the one the rabbitmq-service parses at every
// start (src/core/amqp_url.h), so a URL `check` accepts is one the service
// accepts too.
Status CheckAmqpUrl(std::string_view url) { return ParseAmqpUrl(url).status(); }

Status CheckReservedEnvName(std::string_view name) {
  if (name.empty())
    return Status::Error("an environment variable needs a name");
  if (name.find('=') != std::string_view::npos) {
    return Status::Error("environment variable name " + Quote(name) +
                         " must not contain '='");
  }
  if (name.starts_with("WORKERPOOL_") || name == "LISTEN_FDS" ||
      name == "LISTEN_PID" || name == "LISTEN_FDNAMES") {
    return Status::Error(Quote(name) +
                         " is set by the pool for every child and may not be "
                         "overridden");
  }
  return Status::Ok();
}

// A group's `user` resolved through the caller's lookup (the core reads no
// passwd database).
Result<UserIds> ResolveUser(const ConfigEnvironment& environment,
                            const std::string& name) {
  Result<std::optional<UserIds>> found =
      environment.look_up_user ? environment.look_up_user(name)
                               : Result<std::optional<UserIds>>(std::nullopt);
  if (!found.ok()) {
    return Status::Error("cannot look up user " + Quote(name) + ": " +
                         found.status().message());
  }
  if (!found->has_value()) {
    return Status::Error("unknown user " + Quote(name) +
                         ": not in the passwd database (give a user name "
                         "from /etc/passwd, or remove 'user')");
  }
  return **found;
}

// ---------------------------------------------------------------------------
// Error collection.

class ErrorList {
 public:
  explicit ErrorList(std::string file) : file_(std::move(file)) {}

  void Add(const YAML::Mark& mark, std::string key, std::string message) {
    ConfigError error;
    error.file = file_;
    if (!mark.is_null() && mark.line >= 0) {
      error.line = mark.line + 1;  // yaml-cpp counts from 0, editors from 1
      error.column = mark.column + 1;
    }
    error.key = std::move(key);
    error.message = std::move(message);
    errors_.push_back(std::move(error));
  }

  void AddWithoutPosition(std::string message) {
    Add(YAML::Mark::null_mark(), "", std::move(message));
  }

  std::size_t size() const { return errors_.size(); }

  // In file order, so the output reads top to bottom like the file.
  std::vector<ConfigError> TakeSorted() {
    std::stable_sort(errors_.begin(), errors_.end(),
                     [](const ConfigError& a, const ConfigError& b) {
                       return std::pair(a.line, a.column) <
                              std::pair(b.line, b.column);
                     });
    return std::move(errors_);
  }

 private:
  std::string file_;
  std::vector<ConfigError> errors_;
};

// "a list", "a mapping", "nothing", or the scalar's text quoted.
std::string Describe(const YAML::Node& node) {
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  if (node.IsNull()) return "nothing";
  return Quote(node.Scalar());
}

// A scalar written in quotes or tagged !!str: the author said "string".
bool IsQuotedString(const YAML::Node& node) {
  return node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str";
}

// A null node's mark is where the next token starts (often the next line);
// FALLBACK is the better place to point at then.
YAML::Mark MarkOf(const YAML::Node& node, const YAML::Mark& fallback) {
  return node.IsNull() ? fallback : node.Mark();
}

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

// ---------------------------------------------------------------------------
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
    YAML::Node key_node;
    YAML::Node value;
    bool known = false;
  };

  // PATH names NODE in messages: "" for the document, "groups[1]", ...
  MapReader(ErrorList* errors, const YAML::Node& node, std::string path)
      : errors_(errors), node_(node), path_(std::move(path)) {
    if (!node.IsMap()) return;
    for (const auto& pair : node) {
      if (!pair.first.IsScalar()) {
        errors_->Add(pair.first.Mark(), path_,
                     "a key must be a plain name, got " + Describe(pair.first));
        continue;
      }
      const std::string& key = pair.first.Scalar();
      if (const Entry* first = FindEntry(key)) {
        errors_->Add(pair.first.Mark(), PathOf(key),
                     "duplicate key " + Quote(key) + " (first given at line " +
                         std::to_string(first->key_node.Mark().line + 1) + ")");
        continue;
      }
      entries_.push_back(Entry{key, pair.first, pair.second});
    }
  }

  bool is_map() const { return node_.IsMap(); }
  const YAML::Node& node() const { return node_; }
  const std::string& path() const { return path_; }
  ErrorList& errors() { return *errors_; }

  std::string PathOf(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }

  // Names KEY as known and returns its entry, null value included; nullptr
  // when the mapping does not have it.
  const Entry* Lookup(std::string_view key) {
    if (std::find(known_.begin(), known_.end(), key) == known_.end()) {
      known_.emplace_back(key);
    }
    Entry* entry = FindEntry(key);
    if (entry == nullptr) return nullptr;
    entry->known = true;
    return entry;
  }

  bool Has(std::string_view key) const { return FindEntry(key) != nullptr; }

  // Records an error about KEY's value (at the value), or about the key
  // itself (at the key).
  void ValueError(std::string_view key, std::string message) {
    const Entry* entry = FindEntry(key);
    errors_->Add(entry == nullptr ? node_.Mark() : ValueMark(*entry),
                 PathOf(key), std::move(message));
  }
  void KeyError(std::string_view key, std::string message) {
    const Entry* entry = FindEntry(key);
    errors_->Add(entry == nullptr ? node_.Mark() : entry->key_node.Mark(),
                 PathOf(key), std::move(message));
  }

  // --- Typed readers; each returns true when the key was present and valid.

  bool Text(std::string_view key, std::string* out, Need need = Need::kOptional,
            Status (*check)(std::string_view) = nullptr) {
    const YAML::Node* value = Value(key, need, "");
    if (value == nullptr) return false;
    std::optional<std::string> text = ReadText(*value, PathOf(key), check);
    if (!text) return false;
    *out = std::move(*text);
    return true;
  }

  bool OneOf(std::string_view key, std::string* out, Words choices,
             Need need = Need::kOptional) {
    const YAML::Node* value =
        Value(key, need, "expected " + Alternatives(choices));
    if (value == nullptr) return false;
    std::optional<std::string> text = ReadText(*value, PathOf(key), nullptr);
    if (!text) return false;
    if (std::find(choices.begin(), choices.end(), *text) == choices.end()) {
      std::string message =
          "must be " + Alternatives(choices) + ", got " + Quote(*text);
      std::string_view nearest = NearestOf(*text, choices);
      if (!nearest.empty())
        message += " (did you mean " + Quote(nearest) + "?)";
      errors_->Add(value->Mark(), PathOf(key), std::move(message));
      return false;
    }
    *out = std::move(*text);
    return true;
  }

  bool Int(std::string_view key, int* out, IntRange range = {}) {
    std::int64_t wide = 0;
    range.max =
        std::min<std::int64_t>(range.max, std::numeric_limits<int>::max());
    if (!Int64(key, &wide, range)) return false;
    *out = static_cast<int>(wide);
    return true;
  }

  bool Int64(std::string_view key, std::int64_t* out, IntRange range = {}) {
    const YAML::Node* value = Value(key, Need::kOptional, "");
    if (value == nullptr) return false;
    std::optional<std::int64_t> number =
        ReadInteger(*value, PathOf(key), range);
    if (!number) return false;
    *out = *number;
    return true;
  }

  bool Bool(std::string_view key, bool* out) {
    const YAML::Node* value = Value(key, Need::kOptional, "");
    if (value == nullptr) return false;
    std::string text = value->IsScalar() ? value->Scalar() : "";
    bool is_true = text == "true" || text == "True" || text == "TRUE";
    bool is_false = text == "false" || text == "False" || text == "FALSE";
    if ((is_true || is_false) && IsQuotedString(*value)) {
      errors_->Add(value->Mark(), PathOf(key),
                   "must be true or false, got the quoted string " +
                       Describe(*value) + "; write it without quotes");
      return false;
    }
    if (!is_true && !is_false) {
      errors_->Add(value->Mark(), PathOf(key),
                   "must be true or false, got " + Describe(*value));
      return false;
    }
    *out = is_true;
    return true;
  }

  bool DurationValue(std::string_view key, Duration* out) {
    const YAML::Node* value = Value(key, Need::kOptional, "");
    if (value == nullptr) return false;
    std::optional<std::string> text = ReadText(*value, PathOf(key), nullptr);
    if (!text) return false;
    Result<Duration> duration = ParseDuration(*text);
    if (!duration.ok()) {
      errors_->Add(value->Mark(), PathOf(key), duration.status().message());
      return false;
    }
    *out = *duration;
    return true;
  }

  bool Size(std::string_view key, std::int64_t* out) {
    const YAML::Node* value = Value(key, Need::kOptional, "");
    if (value == nullptr) return false;
    std::optional<std::string> text = ReadText(*value, PathOf(key), nullptr);
    if (!text) return false;
    Result<std::int64_t> size = ParseSize(*text);
    if (!size.ok()) {
      errors_->Add(value->Mark(), PathOf(key), size.status().message());
      return false;
    }
    *out = *size;
    return true;
  }

  bool TextList(std::string_view key, std::vector<std::string>* out,
                const ListRule& rule) {
    const YAML::Node* value = Value(
        key, rule.need, "expected a list such as " + std::string(rule.example));
    if (value == nullptr) return false;
    std::string path = PathOf(key);
    if (!value->IsSequence()) {
      std::string message = "must be a list such as " +
                            std::string(rule.example) + ", got " +
                            Describe(*value);
      if (value->IsScalar()) message += " (a single string is not a list)";
      errors_->Add(value->Mark(), path, std::move(message));
      return false;
    }
    if (value->size() == 0 && !rule.allow_empty) {
      errors_->Add(value->Mark(), path,
                   "must not be an empty list; expected a list such as " +
                       std::string(rule.example));
      return false;
    }
    std::vector<std::string> items;
    bool all_ok = true;
    for (std::size_t i = 0; i < value->size(); ++i) {
      YAML::Node item = (*value)[i];
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

  // A mapping of names to strings (env). Scalar values of any kind are
  // taken as their text, so MODEL: 3 gives "3".
  bool TextMap(std::string_view key, std::map<std::string, std::string>* out,
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
          errors_->Add(entry.key_node.Mark(), path, name_ok.message());
          all_ok = false;
          continue;
        }
      }
      if (entry.value.IsNull()) {
        errors_->Add(entry.key_node.Mark(), path,
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

  // A reader for the nested mapping KEY; nullopt when it is absent or not a
  // mapping (the latter is an error).
  std::optional<MapReader> Map(std::string_view key,
                               Need need = Need::kOptional) {
    const YAML::Node* value = Value(key, need,
                                    "expected a mapping of keys to "
                                    "values");
    if (value == nullptr) return std::nullopt;
    if (!value->IsMap()) {
      errors_->Add(
          value->Mark(), PathOf(key),
          "must be a mapping of keys to values, got " + Describe(*value));
      return std::nullopt;
    }
    return MapReader(errors_, *value, PathOf(key));
  }

  // Reports every key that no reader named, suggesting the nearest known key.
  void Finish() {
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
      errors_->Add(entry.key_node.Mark(), PathOf(entry.key),
                   std::move(message));
    }
  }

 private:
  Entry* FindEntry(std::string_view key) {
    for (Entry& entry : entries_) {
      if (entry.key == key) return &entry;
    }
    return nullptr;
  }
  const Entry* FindEntry(std::string_view key) const {
    return const_cast<MapReader*>(this)->FindEntry(key);
  }

  static YAML::Mark ValueMark(const Entry& entry) {
    return MarkOf(entry.value, entry.key_node.Mark());
  }

  // KEY's value when present and not null. A missing required key and a
  // key without a value are errors; HINT says what to write.
  const YAML::Node* Value(std::string_view key, Need need,
                          const std::string& hint) {
    const Entry* entry = Lookup(key);
    std::string suffix = hint.empty() ? "" : "; " + hint;
    if (entry == nullptr) {
      if (need == Need::kRequired) {
        errors_->Add(node_.Mark(), PathOf(key),
                     "missing required key " + Quote(key) + suffix);
      }
      return nullptr;
    }
    if (entry->value.IsNull()) {
      std::string advice = need == Need::kRequired
                               ? "; give one"
                               : "; give one or remove the key";
      errors_->Add(entry->key_node.Mark(), PathOf(key),
                   "has no value" + (hint.empty() ? advice : suffix));
      return nullptr;
    }
    return &entry->value;
  }

  // A scalar's text. Lists and mappings are errors; so is null.
  std::optional<std::string> ReadText(const YAML::Node& value,
                                      const std::string& path,
                                      Status (*check)(std::string_view)) {
    if (!value.IsScalar()) {
      errors_->Add(value.Mark(), path,
                   "must be a string, got " + Describe(value));
      return std::nullopt;
    }
    if (check != nullptr) {
      Status ok = check(value.Scalar());
      if (!ok.ok()) {
        errors_->Add(value.Mark(), path, ok.message());
        return std::nullopt;
      }
    }
    return value.Scalar();
  }

  std::optional<std::int64_t> ReadInteger(const YAML::Node& value,
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
      errors_->Add(value.Mark(), path, std::move(problem));
      return std::nullopt;
    }
    // Strict: an optional '-' and decimal digits, nothing else. "1.5",
    // "0x10", "1e3" and "+1" are refused rather than guessed at.
    const std::string& text = value.Scalar();
    std::string_view digits = text;
    bool negative = digits.starts_with('-');
    if (negative) digits.remove_prefix(1);
    if (!IsDecimal(digits)) {
      errors_->Add(value.Mark(), path, std::move(problem));
      return std::nullopt;
    }
    std::int64_t number = 0;
    auto [end, error] =
        std::from_chars(text.data(), text.data() + text.size(), number);
    bool too_large = !negative && (error != std::errc() || number > range.max);
    if (too_large) {
      if (unbounded) problem += " (at most " + std::to_string(range.max) + ")";
      errors_->Add(value.Mark(), path, std::move(problem));
      return std::nullopt;
    }
    if (error != std::errc() || number < range.min) {
      errors_->Add(value.Mark(), path, std::move(problem));
      return std::nullopt;
    }
    if (IsQuotedString(value)) {
      errors_->Add(value.Mark(), path,
                   "must be " + expected + ", got the quoted string " +
                       Describe(value) + "; write the number without quotes");
      return std::nullopt;
    }
    return number;
  }

  ErrorList* errors_;
  YAML::Node node_;
  std::string path_;
  std::vector<Entry> entries_;
  std::vector<std::string> known_;  // keys named by readers so far
};

// ---------------------------------------------------------------------------
// The pool definition.

void ReadPool(MapReader& pool, const ConfigEnvironment& environment,
              PoolConfig* config) {
  bool name_ok = pool.Text("name", &config->name, Need::kRequired, CheckName);
  pool.Text("control_socket", &config->control_socket, Need::kOptional,
            CheckSocketPath);
  pool.DurationValue("stop_timeout", &config->stop_timeout);
  pool.Text("metrics", &config->metrics, Need::kOptional, CheckHostPort);
  if (std::optional<MapReader> log = pool.Map("log")) {
    log->OneOf("level", &config->log.level, kLogLevels);
    log->OneOf("format", &config->log.format, kLogFormats);
    log->Finish();
  }
  pool.Finish();

  if (name_ok && !pool.Has("control_socket")) {
    config->control_socket =
        DefaultControlSocket(config->name, environment.runtime_directory);
    Status fits = CheckSocketPath(config->control_socket);
    if (!fits.ok()) {
      pool.ValueError(
          "name", "the default control socket does not fit: " + fits.message() +
                      "; set pool.control_socket to a shorter "
                      "path");
    }
  }
}

void ReadRestart(MapReader& restart, RestartConfig* config) {
  if (std::optional<MapReader> backoff = restart.Map("backoff")) {
    bool initial_ok =
        backoff->DurationValue("initial", &config->backoff.initial);
    bool max_ok = backoff->DurationValue("max", &config->backoff.max);
    backoff->DurationValue("reset_after", &config->backoff.reset_after);
    backoff->Finish();
    bool both_valid = (initial_ok || !backoff->Has("initial")) &&
                      (max_ok || !backoff->Has("max"));
    if (both_valid && config->backoff.initial > config->backoff.max) {
      std::string message =
          "initial backoff " + FormatDuration(config->backoff.initial) +
          " is longer than max " + FormatDuration(config->backoff.max) +
          (max_ok ? "" : " (the default)") + "; initial must be <= max";
      if (initial_ok) {
        backoff->ValueError("initial", std::move(message));
      } else {
        backoff->ValueError("max", std::move(message));
      }
    }
  }
  if (std::optional<MapReader> intensity = restart.Map("intensity")) {
    intensity->Int("max_restarts", &config->intensity.max_restarts);
    intensity->DurationValue("period", &config->intensity.period);
    intensity->Finish();
  }
  restart.Finish();
}

void ReadRabbitmq(MapReader& rabbitmq, RabbitmqConfig* config) {
  rabbitmq.Text("url", &config->url, Need::kRequired, CheckAmqpUrl);
  rabbitmq.TextList("queues", &config->queues,
                    {.need = Need::kRequired,
                     .allow_empty = false,
                     .example = "[tasks]",
                     .check = CheckNotEmpty});
  rabbitmq.Bool("declare", &config->declare);
  rabbitmq.Int("prefetch", &config->prefetch, {.min = 1, .max = 65535});
  rabbitmq.Int("max_retries", &config->max_retries);
  rabbitmq.Text("dead_letter_queue", &config->dead_letter_queue,
                Need::kOptional, CheckNotEmpty);
  rabbitmq.Finish();
}

// Where a group's parts are in the file, for the checks that need every
// group (names, routes).
struct GroupSource {
  bool name_ok = false;
  bool type_ok = false;
  YAML::Mark name_mark;
  YAML::Node routes_to;  // the list; undefined when absent or invalid
  YAML::Node listen;     // the list; undefined when absent or invalid
};

void ReadGroup(ErrorList* errors, const YAML::Node& node, std::size_t index,
               const ConfigEnvironment& environment, GroupConfig* group,
               GroupSource* source) {
  MapReader reader(errors, node, "groups[" + std::to_string(index) + "]");
  YAML::Mark mark = node.Mark();
  group->line = mark.is_null() ? 0 : mark.line + 1;
  group->column = mark.is_null() ? 0 : mark.column + 1;
  if (!reader.is_map()) {
    errors->Add(
        mark, reader.path(),
        "must be a mapping with name, type and command, got " + Describe(node));
    return;
  }

  source->name_ok =
      reader.Text("name", &group->name, Need::kRequired, CheckName);
  if (source->name_ok) source->name_mark = reader.Lookup("name")->value.Mark();
  std::string type_name;
  source->type_ok =
      reader.OneOf("type", &type_name, kGroupTypeNames, Need::kRequired);
  if (source->type_ok) group->type = *GroupTypeFromName(type_name);
  reader.Int("processes", &group->processes);
  bool command_ok =
      reader.TextList("command", &group->command,
                      {.allow_empty = false, .example = "[./my_job, --flag]"});
  reader.TextMap("env", &group->env, CheckReservedEnvName);
  reader.Text("cwd", &group->cwd, Need::kOptional, CheckNotEmpty);
  bool user_ok =
      reader.Text("user", &group->user, Need::kOptional, CheckNotEmpty);
  if (reader.TextList(
          "listen", &group->listen,
          {.example = "[\"127.0.0.1:8080\"]", .check = CheckListenAddress})) {
    source->listen = reader.Lookup("listen")->value;
  }
  if (reader.TextList("routes_to", &group->routes_to,
                      {.example = "[compute]"})) {
    source->routes_to = reader.Lookup("routes_to")->value;
  }
  reader.Int("max_inflight", &group->max_inflight, {.min = 1});
  reader.Int("queue_limit", &group->queue_limit);
  reader.DurationValue("request_timeout", &group->request_timeout);
  reader.DurationValue("heartbeat_timeout", &group->heartbeat_timeout);
  reader.Int64("max_requests", &group->max_requests,
               {.max = std::numeric_limits<std::int64_t>::max()});
  reader.Size("max_rss", &group->max_rss);
  reader.Int("busy_poll_us", &group->busy_poll_us,
             {.max = wire::kMaxBusyPollUs});
  if (std::optional<MapReader> restart = reader.Map("restart")) {
    ReadRestart(*restart, &group->restart);
  }
  if (std::optional<MapReader> rabbitmq = reader.Map("rabbitmq")) {
    ReadRabbitmq(*rabbitmq, &group->rabbitmq.emplace());
  }
  reader.Finish();

  if (command_ok && group->command[0].empty()) {
    errors->Add(reader.Lookup("command")->value[0].Mark(),
                reader.PathOf("command") + "[0]",
                "the program to run must not be empty");
  }
  if (!reader.Has("command") && !reader.Has("rabbitmq")) {
    errors->Add(mark, reader.PathOf("command"),
                "missing command: give the program to run as a list, e.g. "
                "command: [./my_job, --flag]");
  }
  // A service given only a rabbitmq section runs the built-in consumer. The
  // check below refuses rabbitmq on other types, so no second error here.
  if (!reader.Has("command") && reader.Has("rabbitmq")) {
    group->command.assign(std::begin(kBuiltinRabbitmqCommand),
                          std::end(kBuiltinRabbitmqCommand));
  }

  if (user_ok) {
    Result<UserIds> ids = ResolveUser(environment, group->user);
    if (ids.ok()) {
      group->uid = ids->uid;
      group->gid = ids->gid;
    } else {
      reader.ValueError("user", ids.status().message());
    }
  }

  if (!source->type_ok) return;  // the rules below depend on the type
  const char* type = GroupTypeName(group->type);
  if (reader.Has("listen") && group->type != GroupType::kReactor) {
    reader.KeyError("listen", std::string("only reactor groups listen; this "
                                          "group is a ") +
                                  type +
                                  " (remove listen, or make it a "
                                  "reactor)");
  }
  if (reader.Has("max_requests") && group->type == GroupType::kReactor) {
    reader.KeyError("max_requests",
                    "a reactor does not serve requests, so it is never "
                    "recycled by count; use max_rss, or move max_requests to "
                    "the job group it sends to");
  }
  if (reader.Has("rabbitmq") && group->type != GroupType::kService) {
    reader.KeyError("rabbitmq",
                    std::string("only service groups consume from RabbitMQ; "
                                "this group is a ") +
                        type + " (use type: service)");
  }
  if (reader.Has("routes_to") && group->type == GroupType::kJob) {
    reader.KeyError("routes_to",
                    RuleViolation(GroupType::kJob, GroupType::kJob) +
                        "; remove routes_to from this job group");
    source->routes_to = YAML::Node();  // one error is enough
  }
}

void CheckGroupNames(ErrorList* errors, const std::vector<GroupConfig>& groups,
                     const std::vector<GroupSource>& sources) {
  for (std::size_t i = 0; i < groups.size(); ++i) {
    if (!sources[i].name_ok) continue;
    for (std::size_t first = 0; first < i; ++first) {
      if (!sources[first].name_ok || groups[first].name != groups[i].name) {
        continue;
      }
      errors->Add(sources[i].name_mark,
                  "groups[" + std::to_string(i) + "].name",
                  "duplicate group name " + Quote(groups[i].name) +
                      ": already used by groups[" + std::to_string(first) +
                      "] at line " + std::to_string(groups[first].line));
      break;
    }
  }
}

bool IsWildcardHost(const std::string& host) {
  return host == "0.0.0.0" || host == "::" || host == "*";
}

// A reactor's listen address must not be the pool's own control socket or
// metrics endpoint: the Watcher binds all three, and the second bind would
// fail at start (or, for a unix path, replace the first).
void CheckListenClashes(ErrorList* errors, const PoolConfig& pool,
                        const std::vector<GroupSource>& sources) {
  std::optional<ListenAddress> metrics;
  if (!pool.metrics.empty()) {
    Result<ListenAddress> parsed = ParseListenAddress(pool.metrics);
    if (parsed.ok()) metrics = *parsed;
  }
  for (std::size_t i = 0; i < pool.groups.size(); ++i) {
    const GroupConfig& group = pool.groups[i];
    if (!sources[i].listen.IsDefined() || !sources[i].listen.IsSequence()) {
      continue;
    }
    for (std::size_t j = 0; j < group.listen.size(); ++j) {
      Result<ListenAddress> address = ParseListenAddress(group.listen[j]);
      if (!address.ok()) continue;
      std::string clash;
      if (address->kind == ListenAddress::Kind::kUnix &&
          address->path == pool.control_socket) {
        clash = "is the pool's control socket (pool.control_socket)";
      } else if (metrics && address->kind == ListenAddress::Kind::kTcp &&
                 address->port == metrics->port &&
                 (address->host == metrics->host ||
                  IsWildcardHost(address->host) ||
                  IsWildcardHost(metrics->host))) {
        clash =
            "takes the port of the pool's metrics endpoint (pool.metrics: " +
            pool.metrics + ")";
      }
      if (clash.empty()) continue;
      const YAML::Node entry = j < sources[i].listen.size()
                                   ? sources[i].listen[j]
                                   : sources[i].listen;
      errors->Add(
          entry.Mark(),
          "groups[" + std::to_string(i) + "].listen[" + std::to_string(j) + "]",
          Quote(group.listen[j]) + " " + clash + "; choose another address");
    }
  }
}

void CheckRoutes(ErrorList* errors, const PoolConfig& pool,
                 const std::vector<GroupSource>& sources) {
  std::vector<std::string_view> names;
  for (std::size_t i = 0; i < pool.groups.size(); ++i) {
    bool listed = std::find(names.begin(), names.end(), pool.groups[i].name) !=
                  names.end();
    if (sources[i].name_ok && !listed) names.push_back(pool.groups[i].name);
  }
  for (std::size_t i = 0; i < pool.groups.size(); ++i) {
    const GroupConfig& from = pool.groups[i];
    const YAML::Node& list = sources[i].routes_to;
    if (!list.IsDefined() || !list.IsSequence()) continue;
    for (std::size_t j = 0; j < from.routes_to.size() && j < list.size(); ++j) {
      const std::string& target = from.routes_to[j];
      std::string path = "groups[" + std::to_string(i) + "].routes_to[" +
                         std::to_string(j) + "]";
      YAML::Mark mark = list[j].Mark();
      auto earlier =
          std::find(from.routes_to.begin(), from.routes_to.begin() + j, target);
      if (earlier != from.routes_to.begin() + j) {
        errors->Add(mark, path, "group " + Quote(target) + " is listed twice");
        continue;
      }
      std::size_t target_index = 0;
      while (target_index < pool.groups.size() &&
             !(sources[target_index].name_ok &&
               pool.groups[target_index].name == target)) {
        ++target_index;
      }
      if (target_index == pool.groups.size()) {
        std::string message = "unknown group " + Quote(target);
        std::string_view nearest = NearestOf(target, names);
        if (!nearest.empty()) {
          message += " (did you mean " + Quote(nearest) + "?)";
        } else if (names.empty()) {
          message += "; the pool has no groups";
        } else {
          message += "; groups are: " + Join(names, ", ");
        }
        errors->Add(mark, path, std::move(message));
        continue;
      }
      const GroupConfig& to = pool.groups[target_index];
      if (!sources[i].type_ok || !sources[target_index].type_ok) continue;
      if (!TypeMayRequest(from.type, to.type)) {
        errors->Add(
            mark, path,
            "route " + Quote(from.name) + " -> " + Quote(to.name) +
                " is not allowed: " + RuleViolation(from.type, to.type));
      }
    }
  }
}

void ReadDocument(ErrorList* errors, const YAML::Node& document,
                  const ConfigEnvironment& environment, PoolConfig* config) {
  MapReader root(errors, document, "");
  if (!root.is_map()) {
    errors->Add(document.Mark(), "",
                "the pool definition must be a mapping with keys 'pool' and "
                "'groups', got " +
                    Describe(document));
    return;
  }
  if (std::optional<MapReader> pool = root.Map("pool", Need::kRequired)) {
    ReadPool(*pool, environment, config);
  }

  std::vector<GroupSource> sources;
  const MapReader::Entry* groups = root.Lookup("groups");
  if (groups == nullptr) {
    errors->Add(document.Mark(), "groups",
                "missing required key 'groups'; list the groups, or write "
                "'groups: []' for a pool without any");
  } else if (groups->value.IsNull()) {
    errors->Add(groups->key_node.Mark(), "groups",
                "has no value; list the groups, or write 'groups: []' for a "
                "pool without any");
  } else if (!groups->value.IsSequence()) {
    errors->Add(groups->value.Mark(), "groups",
                "must be a list of groups (each '- name: ...'), got " +
                    Describe(groups->value));
  } else {
    config->groups.resize(groups->value.size());
    sources.resize(groups->value.size());
    for (std::size_t i = 0; i < groups->value.size(); ++i) {
      ReadGroup(errors, groups->value[i], i, environment, &config->groups[i],
                &sources[i]);
    }
  }
  root.Finish();

  CheckGroupNames(errors, config->groups, sources);
  CheckRoutes(errors, *config, sources);
  CheckListenClashes(errors, *config, sources);
}

// Binary garbage (the wrong file, a truncated download) gets one clear
// error at its first offending byte instead of a page of YAML complaints.
bool CheckIsText(std::string_view text, ErrorList* errors) {
  std::optional<std::size_t> offset = FindNonTextByte(text);
  if (!offset) return true;
  std::size_t line_start = text.rfind('\n', *offset);
  line_start = line_start == std::string_view::npos ? 0 : line_start + 1;
  YAML::Mark mark;
  mark.line =
      static_cast<int>(std::count(text.begin(), text.begin() + *offset, '\n'));
  mark.column = static_cast<int>(*offset - line_start);
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
  errors->Add(mark, "",
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

namespace {

// Counts the documents of a YAML stream; the parse is bounded by the caller.
class DocumentCounter : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++count == 1) first_start = mark;
    if (count == 2) second_start = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  int count = 0;
  YAML::Mark first_start;
  YAML::Mark second_start;
};

}  // namespace

ConfigLoad ParseConfig(const std::string& text, const std::string& file_name,
                       const ConfigEnvironment& environment) {
  ErrorList errors(file_name);
  PoolConfig config;
  config.path = file_name;

  // yaml-cpp reports failures by throwing; nothing may escape this module.
  try {
    if (!CheckIsText(text, &errors)) {
      return ConfigLoad{std::nullopt, errors.TakeSorted()};
    }

    // Not YAML::LoadAll: on some broken input (a lone ",") yaml-cpp 0.7's
    // LoadAll never returns (found by tests/fuzz/fuzz_config). Load reads
    // one document; a parser bounded to two documents counts them.
    YAML::Node root = YAML::Load(text);
    std::istringstream stream(text);
    YAML::Parser parser(stream);
    DocumentCounter counter;
    while (counter.count < 2 && parser.HandleNextDocument(counter)) {
    }
    if (counter.count > 1 &&
        counter.second_start.pos == counter.first_start.pos) {
      // The parser starts document after document without reading a byte.
      errors.Add(counter.first_start, "",
                 "invalid YAML: no document can be read here; expected a "
                 "mapping with keys 'pool' and 'groups'");
    } else if (counter.count > 1) {
      errors.Add(counter.second_start, "",
                 "holds more than one YAML document; a pool definition is "
                 "one document (remove the '---' separators)");
    } else if (root.IsNull()) {
      errors.AddWithoutPosition(
          "the file is empty; expected a mapping with keys 'pool' and "
          "'groups'");
    } else {
      ReadDocument(&errors, root, environment, &config);
    }
  } catch (const YAML::DeepRecursion& error) {
    errors.Add(error.mark, "",
               "invalid YAML: nested " + std::to_string(error.depth()) +
                   " levels deep; a pool definition needs a handful");
  } catch (const YAML::Exception& error) {
    errors.Add(error.mark, "", "invalid YAML: " + error.msg);
  } catch (const std::exception& error) {
    errors.AddWithoutPosition(std::string("cannot load: ") + error.what());
  } catch (...) {
    errors.AddWithoutPosition("cannot load: unexpected internal error");
  }

  ConfigLoad load;
  load.errors = errors.TakeSorted();
  if (load.errors.empty()) load.config = std::move(config);
  return load;
}

}  // namespace workerpool
