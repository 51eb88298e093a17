#include "core/upgrade_state.h"

#include <limits>

namespace workerpool {
namespace {

using nlohmann::json;

// Byte strings (a partial frame, a partial line) may hold anything; JSON
// strings must be UTF-8, so they travel as hex.
std::string ToHex(std::string_view bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The groups are written as text directly: with a thousand slots, building
// a JSON tree first costs several times the writing (the state is written
// while the control socket waits, so its time is the upgrade's pause).
class TextWriter {
 public:
  std::string& out() { return out_; }
  void Key(const char* key) {
    Separate();
    out_ += '"';
    out_ += key;
    out_ += "\":";
    pending_value_ = true;  // the value follows without a comma
  }
  // A key that may need escaping (a child's counter name).
  void AnyKey(const std::string& key) {
    Separate();
    out_ += json(key).dump(-1, ' ', false, json::error_handler_t::replace);
    out_ += ':';
    pending_value_ = true;
  }
  void String(const std::string& value) {
    Value();
    out_ += json(value).dump(-1, ' ', false, json::error_handler_t::replace);
  }
  template <typename T>
  void Number(T value) {
    Value();
    out_ += std::to_string(value);
  }
  void Bool(bool value) {
    Value();
    out_ += value ? "true" : "false";
  }
  void Raw(const json& value) {
    Value();
    out_ += value.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  void Open(char bracket) {
    Value();
    out_ += bracket;
    first_ = true;
  }
  void Close(char bracket) {
    out_ += bracket;
    first_ = false;
  }
  template <typename T>
  void Numbers(const std::vector<T>& values) {
    Open('[');
    for (const T& value : values) Number(value);
    Close(']');
  }
  void Strings(const std::vector<std::string>& values) {
    Open('[');
    for (const std::string& value : values) String(value);
    Close(']');
  }

 private:
  void Separate() {
    if (!first_) out_ += ',';
    first_ = false;
  }
  void Value() {
    if (pending_value_) {
      pending_value_ = false;
      first_ = false;
      return;
    }
    Separate();
  }
  std::string out_;
  bool first_ = true;
  bool pending_value_ = false;
};

// Version 2: a member holding its default is left out (the reader puts the
// default back), so that a pool of idle children costs a few members each.
void WriteSlot(TextWriter& w, const UpgradeSlot& slot) {
  const UpgradeSlot none;
  w.Open('{');
  w.Key("index");
  w.Number(slot.index);
  w.Key("state");
  w.String(slot.state);
  auto number = [&w](const char* key, auto value, auto fallback) {
    if (value == fallback) return;
    w.Key(key);
    w.Number(value);
  };
  auto flag = [&w](const char* key, bool value) {
    if (!value) return;
    w.Key(key);
    w.Bool(true);
  };
  number("pid", slot.pid, none.pid);
  number("serial", slot.serial, none.serial);
  number("age_ms", slot.age_ms, none.age_ms);
  number("generation", slot.generation, none.generation);
  flag("outgoing", slot.outgoing);
  number("replaces_serial", slot.replaces_serial, none.replaces_serial);
  number("backoff_ms", slot.backoff_ms, none.backoff_ms);
  number("timer_ms", slot.timer_ms, none.timer_ms);
  flag("ready", slot.ready);
  flag("heartbeat", slot.heartbeat);
  number("heartbeat_ms", slot.heartbeat_ms, none.heartbeat_ms);
  if (slot.links_connect) {
    w.Key("links");
    w.String("connect");
  }
  number("recycle_after", slot.recycle_after, none.recycle_after);
  number("exit_status", slot.exit_status, none.exit_status);
  flag("ready_probe_passed", slot.ready_probe_passed);
  flag("not_ready_in_time", slot.not_ready_in_time);
  number("health_failures", slot.health_failures, none.health_failures);
  if (!slot.routes.empty()) {
    w.Key("routes");
    w.Strings(slot.routes);
  }
  if (!slot.refused_routes.empty()) {
    w.Key("refused_routes");
    w.Strings(slot.refused_routes);
  }
  if (!slot.counters.empty()) {
    w.Key("counters");
    w.Open('{');
    for (const auto& [name, value] : slot.counters) {
      w.AnyKey(name);
      w.Number(value);
    }
    w.Close('}');
  }
  if (!slot.latency.empty()) {
    w.Key("latency");
    w.Open('{');
    for (const auto& [target, histogram] : slot.latency) {
      w.AnyKey(target);
      w.Open('{');
      w.Key("bounds_ms");
      w.Numbers(histogram.bounds_ms);
      w.Key("counts");
      w.Numbers(histogram.counts);
      w.Key("sum_ms");
      w.Number(histogram.sum_ms);
      w.Close('}');
    }
    w.Close('}');
  }
  if (!slot.route_load.empty()) {
    w.Key("route_load");
    w.Open('{');
    for (const auto& [target, load] : slot.route_load) {
      w.AnyKey(target);
      w.Open('{');
      w.Key("queued");
      w.Number(load.queued);
      w.Key("inflight");
      w.Number(load.inflight);
      w.Close('}');
    }
    w.Close('}');
  }
  if (!(slot.app.is_object() && slot.app.empty())) {
    w.Key("app");
    w.Raw(slot.app);
  }
  number("offences", slot.offences, none.offences);
  if (!slot.channel_pending.empty()) {
    w.Key("channel_pending");
    w.String(ToHex(slot.channel_pending));
  }
  if (!slot.output_pending.empty()) {
    w.Key("output_pending");
    w.String(ToHex(slot.output_pending));
  }
  if (slot.fds != none.fds) {
    w.Key("fds");
    w.Open('{');
    number("channel", slot.fds.channel, -1);
    number("output", slot.fds.output, -1);
    number("output_write", slot.fds.output_write, -1);
    number("channel_child", slot.fds.channel_child, -1);
    w.Close('}');
  }
  w.Close('}');
}

void WriteGroup(TextWriter& w, const UpgradeGroup& group) {
  w.Open('{');
  w.Key("name");
  w.String(group.name);
  w.Key("type");
  w.String(group.type);
  w.Key("command");
  w.Strings(group.command);
  w.Key("processes");
  w.Number(group.processes);
  w.Key("scaled");
  w.Bool(group.scaled);
  w.Key("failed");
  w.Bool(group.failed);
  w.Key("removing");
  w.Bool(group.removing);
  w.Key("speaks_protocol");
  w.Bool(group.speaks_protocol);
  w.Key("failed_reason");
  w.String(group.failed_reason);
  w.Key("waiting");
  w.Bool(group.waiting);
  w.Key("generation");
  w.Number(group.generation);
  w.Key("recycled");
  w.Number(group.recycled);
  w.Key("protocol_errors");
  w.Number(group.protocol_errors);
  w.Key("rolling");
  w.Numbers(group.rolling);
  w.Key("policy");
  w.Open('{');
  w.Key("quick_deaths");
  w.Numbers(group.policy.quick_deaths);
  w.Key("recent_ages_ms");
  w.Numbers(group.policy.recent_ages_ms);
  w.Key("failed");
  w.Bool(group.policy.failed);
  w.Key("restarts");
  w.Number(group.policy.restarts);
  w.Close('}');
  w.Key("autoscale");
  w.Open('{');
  w.Key("ups");
  w.Number(group.autoscale_ups);
  w.Key("downs");
  w.Number(group.autoscale_downs);
  w.Key("last_unix");
  w.Number(group.autoscale_last_unix);
  w.Close('}');
  if (group.output_fd >= 0 || group.output_child_fd >= 0) {
    w.Key("output");
    w.Open('{');
    w.Key("fd");
    w.Number(group.output_fd);
    w.Key("child_fd");
    w.Number(group.output_child_fd);
    w.Close('}');
  }
  w.Key("slots");
  w.Open('[');
  for (const UpgradeSlot& slot : group.slots) WriteSlot(w, slot);
  w.Close(']');
  w.Close('}');
}

// Checked reads: each one names the member it read when it fails, and
// nothing here throws (no value(), get<>() or at() on the document).
class Reader {
 public:
  Reader(const json& object, std::string where)
      : object_(object), where_(std::move(where)) {}

  const Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }

  // The member NAME, or nullptr (and an error) when missing.
  const json* Member(const char* name, bool required = true) {
    if (!ok()) return nullptr;
    auto found = object_.find(name);
    if (found == object_.end()) {
      if (required) Fail(name, "missing");
      return nullptr;
    }
    return &*found;
  }

  template <typename T>
  void Int(const char* name, T* out, bool required = true) {
    const json* value = Member(name, required);
    if (value == nullptr) return;
    if (!value->is_number_integer()) return Fail(name, "expected an integer");
    if (value->is_number_unsigned()) {
      const auto number = value->get_ref<const json::number_unsigned_t&>();
      if (number >
          static_cast<json::number_unsigned_t>(std::numeric_limits<T>::max())) {
        return Fail(name, "out of range");
      }
      *out = static_cast<T>(number);
      return;
    }
    const auto number = value->get_ref<const json::number_integer_t&>();
    if constexpr (std::numeric_limits<T>::is_signed) {
      if (number < std::numeric_limits<T>::min() ||
          number > std::numeric_limits<T>::max()) {
        return Fail(name, "out of range");
      }
    } else {
      if (number < 0) return Fail(name, "out of range");
    }
    *out = static_cast<T>(number);
  }

  void Fd(const char* name, int* out, bool required = true) {
    Int(name, out, required);
    if (ok() && *out < -1) Fail(name, "not a descriptor");
  }

  void Bool(const char* name, bool* out, bool required = true) {
    const json* value = Member(name, required);
    if (value == nullptr) return;
    if (!value->is_boolean()) return Fail(name, "expected true or false");
    *out = value->get_ref<const json::boolean_t&>();
  }

  void String(const char* name, std::string* out, bool required = true) {
    const json* value = Member(name, required);
    if (value == nullptr) return;
    if (!value->is_string()) return Fail(name, "expected a string");
    *out = value->get_ref<const json::string_t&>();
  }

  void Bytes(const char* name, std::string* out) {
    std::string hex;
    String(name, &hex);
    if (!ok()) return;
    if (hex.size() % 2 != 0) return Fail(name, "expected hex bytes");
    out->clear();
    for (std::size_t i = 0; i < hex.size(); i += 2) {
      const int high = HexDigit(hex[i]);
      const int low = HexDigit(hex[i + 1]);
      if (high < 0 || low < 0) return Fail(name, "expected hex bytes");
      out->push_back(static_cast<char>(high * 16 + low));
    }
  }

  void Strings(const char* name, std::vector<std::string>* out) {
    const json* value = Member(name);
    if (value == nullptr) return;
    if (!value->is_array()) return Fail(name, "expected a list of strings");
    for (const json& item : *value) {
      if (!item.is_string()) return Fail(name, "expected a list of strings");
      out->push_back(item.get_ref<const json::string_t&>());
    }
  }

  template <typename T>
  void Ints(const char* name, std::vector<T>* out) {
    const json* value = Member(name);
    if (value == nullptr) return;
    if (!value->is_array()) return Fail(name, "expected a list of integers");
    for (std::size_t i = 0; i < value->size(); ++i) {
      const json wrapped = json::object({{"item", (*value)[i]}});
      Reader item(wrapped, where_ + name);
      T number{};
      item.Int("item", &number);
      if (!item.ok()) {
        return Fail(name, "item " + std::to_string(i) + ": " +
                              "expected an integer in range");
      }
      out->push_back(number);
    }
  }

  // The member NAME as an object, for a nested Reader.
  const json* Object(const char* name) {
    const json* value = Member(name);
    if (value == nullptr) return nullptr;
    if (!value->is_object()) {
      Fail(name, "expected an object");
      return nullptr;
    }
    return value;
  }

  const json* Array(const char* name) {
    const json* value = Member(name);
    if (value == nullptr) return nullptr;
    if (!value->is_array()) {
      Fail(name, "expected a list");
      return nullptr;
    }
    return value;
  }

  std::string Path(const std::string& name) const { return where_ + name; }

  void Take(const Status& status) {
    if (ok() && !status.ok()) status_ = status;
  }

  void Fail(const std::string& name, const std::string& what) {
    if (ok())
      status_ = Status::Error("upgrade state: " + where_ + name + ": " + what);
  }

 private:
  const json& object_;
  std::string where_;
  Status status_;
};

// Reads a histogram or a route load object of a version 2 slot.
Status ReadLatency(const json& value, const std::string& where,
                   UpgradeLatency* out) {
  if (!value.is_object()) {
    return Status::Error("upgrade state: " + where + ": expected an object");
  }
  Reader r(value, where + ".");
  r.Ints("bounds_ms", &out->bounds_ms);
  r.Ints("counts", &out->counts);
  r.Int("sum_ms", &out->sum_ms);
  if (r.ok() && out->counts.size() != out->bounds_ms.size() + 1) {
    r.Fail("counts", "expected one more than bounds_ms");
  }
  return r.status();
}

Status ReadRouteLoad(const json& value, const std::string& where,
                     UpgradeRouteLoad* out) {
  if (!value.is_object()) {
    return Status::Error("upgrade state: " + where + ": expected an object");
  }
  Reader r(value, where + ".");
  r.Int("queued", &out->queued);
  r.Int("inflight", &out->inflight);
  return r.status();
}

// VERSION 1 requires every member; version 2 leaves out those holding
// their default (WriteSlot), except index and state.
Status ReadSlot(const json& value, const std::string& where, int version,
                UpgradeSlot* slot) {
  if (!value.is_object()) {
    return Status::Error("upgrade state: " + where + ": expected an object");
  }
  const bool all = version < 2;
  Reader r(value, where + ".");
  r.Int("index", &slot->index);
  if (r.ok() && slot->index < 0) r.Fail("index", "out of range");
  r.String("state", &slot->state);
  r.Int("pid", &slot->pid, all);
  if (r.ok() && slot->pid < 0) r.Fail("pid", "out of range");
  r.Int("serial", &slot->serial, all);
  r.Int("age_ms", &slot->age_ms, all);
  r.Int("generation", &slot->generation, all);
  r.Bool("outgoing", &slot->outgoing, all);
  r.Int("replaces_serial", &slot->replaces_serial, all);
  r.Int("backoff_ms", &slot->backoff_ms, all);
  r.Int("timer_ms", &slot->timer_ms, all);
  r.Bool("ready", &slot->ready, all);
  r.Bool("heartbeat", &slot->heartbeat, all);
  if (!all) {
    r.Int("heartbeat_ms", &slot->heartbeat_ms, /*required=*/false);
    if (r.ok() && slot->heartbeat_ms < -1)
      r.Fail("heartbeat_ms", "out of range");
  }
  std::string links = "fd";
  r.String("links", &links, /*required=*/false);
  if (r.ok() && links != "fd" && links != "connect") {
    r.Fail("links", "expected fd or connect");
  }
  slot->links_connect = links == "connect";
  r.Int("recycle_after", &slot->recycle_after, all);
  r.Int("exit_status", &slot->exit_status, /*required=*/false);
  r.Bool("ready_probe_passed", &slot->ready_probe_passed, /*required=*/false);
  r.Bool("not_ready_in_time", &slot->not_ready_in_time, /*required=*/false);
  r.Int("health_failures", &slot->health_failures, /*required=*/false);
  if (r.ok() && slot->health_failures < 0) {
    r.Fail("health_failures", "out of range");
  }
  if (all || r.Member("routes", false) != nullptr) {
    r.Strings("routes", &slot->routes);
  }
  if (all || r.Member("refused_routes", false) != nullptr) {
    r.Strings("refused_routes", &slot->refused_routes);
  }
  if (all || r.Member("counters", false) != nullptr) {
    if (const json* counters = r.Object("counters")) {
      Reader c(*counters, r.Path("counters."));
      for (auto it = counters->begin(); it != counters->end() && c.ok(); ++it) {
        std::uint64_t number = 0;
        c.Int(it.key().c_str(), &number);
        slot->counters[it.key()] = number;
      }
      r.Take(c.status());
    }
  }
  if (!all && r.Member("latency", false) != nullptr) {
    if (const json* latency = r.Object("latency")) {
      for (auto it = latency->begin(); it != latency->end() && r.ok(); ++it) {
        r.Take(ReadLatency(it.value(), r.Path("latency." + it.key()),
                           &slot->latency[it.key()]));
      }
    }
  }
  if (!all && r.Member("route_load", false) != nullptr) {
    if (const json* loads = r.Object("route_load")) {
      for (auto it = loads->begin(); it != loads->end() && r.ok(); ++it) {
        r.Take(ReadRouteLoad(it.value(), r.Path("route_load." + it.key()),
                             &slot->route_load[it.key()]));
      }
    }
  }
  if (all || r.Member("app", false) != nullptr) {
    if (const json* app = r.Object("app")) slot->app = *app;
  }
  r.Int("offences", &slot->offences, all);
  if (all || r.Member("channel_pending", false) != nullptr) {
    r.Bytes("channel_pending", &slot->channel_pending);
  }
  if (all || r.Member("output_pending", false) != nullptr) {
    r.Bytes("output_pending", &slot->output_pending);
  }
  if (all || r.Member("fds", false) != nullptr) {
    if (const json* fds = r.Object("fds")) {
      Reader f(*fds, r.Path("fds."));
      f.Fd("channel", &slot->fds.channel, all);
      f.Fd("output", &slot->fds.output, all);
      f.Fd("output_write", &slot->fds.output_write, all);
      f.Fd("channel_child", &slot->fds.channel_child, all);
      r.Take(f.status());
    }
  }
  return r.status();
}

Status ReadGroup(const json& value, const std::string& where, int version,
                 UpgradeGroup* group) {
  if (!value.is_object()) {
    return Status::Error("upgrade state: " + where + ": expected an object");
  }
  Reader r(value, where + ".");
  r.String("name", &group->name);
  if (r.ok() && group->name.empty()) r.Fail("name", "empty");
  r.String("type", &group->type);
  if (r.ok() && group->type != "reactor" && group->type != "job" &&
      group->type != "service") {
    r.Fail("type", "expected reactor, job or service");
  }
  r.Strings("command", &group->command);
  r.Int("processes", &group->processes);
  if (r.ok() && group->processes < 0) r.Fail("processes", "out of range");
  r.Bool("scaled", &group->scaled);
  r.Bool("failed", &group->failed);
  r.Bool("removing", &group->removing);
  r.Bool("speaks_protocol", &group->speaks_protocol);
  r.String("failed_reason", &group->failed_reason, /*required=*/false);
  r.Bool("waiting", &group->waiting, /*required=*/false);
  r.Int("generation", &group->generation);
  r.Int("recycled", &group->recycled);
  r.Int("protocol_errors", &group->protocol_errors);
  r.Ints("rolling", &group->rolling);
  if (const json* policy = r.Object("policy")) {
    Reader p(*policy, r.Path("policy."));
    p.Ints("quick_deaths", &group->policy.quick_deaths);
    p.Ints("recent_ages_ms", &group->policy.recent_ages_ms);
    p.Bool("failed", &group->policy.failed);
    p.Int("restarts", &group->policy.restarts);
    r.Take(p.status());
  }
  if (const json* autoscale = r.Object("autoscale")) {
    Reader a(*autoscale, r.Path("autoscale."));
    a.Int("ups", &group->autoscale_ups);
    a.Int("downs", &group->autoscale_downs);
    a.Int("last_unix", &group->autoscale_last_unix);
    r.Take(a.status());
  }
  if (version >= 2 && r.Member("output", false) != nullptr) {
    if (const json* output = r.Object("output")) {
      Reader o(*output, r.Path("output."));
      o.Fd("fd", &group->output_fd);
      o.Fd("child_fd", &group->output_child_fd);
      if (o.ok() && (group->output_fd < 0) != (group->output_child_fd < 0)) {
        o.Fail("child_fd", "expected both ends or neither");
      }
      r.Take(o.status());
    }
  }
  if (const json* slots = r.Array("slots")) {
    for (std::size_t i = 0; i < slots->size() && r.ok(); ++i) {
      UpgradeSlot slot;
      r.Take(ReadSlot((*slots)[i], where + ".slots[" + std::to_string(i) + "]",
                      version, &slot));
      group->slots.push_back(std::move(slot));
    }
  }
  return r.status();
}

}  // namespace

std::string FormatUpgradeState(const UpgradeState& state) {
  json document = {{"workerpool_upgrade_state", kUpgradeStateVersion},
                   {"from_version", state.from_version},
                   {"config_path", state.config_path},
                   {"config_content", state.config_content},
                   {"pool_name", state.pool_name},
                   {"control_socket", state.control_socket},
                   {"metrics", state.metrics},
                   {"phase", state.phase},
                   {"uptime_ms", state.uptime_ms},
                   {"started_unix", state.started_unix},
                   {"last_reload", state.last_reload},
                   {"reload_generation", state.reload_generation},
                   {"reload_queued", state.reload_queued},
                   {"refused_routes", state.refused_routes},
                   {"spawns", state.spawns},
                   {"upgrades", state.upgrades},
                   {"last_upgrade_unix", state.last_upgrade_unix},
                   {"last_upgrade_error", state.last_upgrade_error},
                   {"fds",
                    {{"control", state.control_fd},
                     {"metrics", state.metrics_fd},
                     {"fallback_exe", state.fallback_exe_fd},
                     {"listen", state.listen_fds}}}};
  if (state.handing_since_ns > 0) {
    document["handing_since_ns"] = state.handing_since_ns;
  }
  if (state.spawner_fd >= 0) {
    document["spawner"] = {{"pid", state.spawner_pid},
                           {"fd", state.spawner_fd}};
  }
  // Replace, not throw, should a string not be UTF-8 (a config file's bytes
  // are checked by the parser, but the state must be written regardless).
  std::string text =
      document.dump(-1, ' ', false, json::error_handler_t::replace);
  // The groups go last, written as text (TextWriter).
  text.pop_back();  // '}'
  TextWriter groups;
  groups.Open('[');
  for (const UpgradeGroup& group : state.groups) WriteGroup(groups, group);
  groups.Close(']');
  text += ",\"groups\":";
  text += groups.out();
  text += '}';
  return text;
}

Result<UpgradeState> ParseUpgradeState(std::string_view text) {
  json document = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) {
    return Status::Error(
        "upgrade state: not a JSON document (truncated or corrupt)");
  }
  if (!document.is_object()) {
    return Status::Error("upgrade state: expected a JSON object");
  }
  UpgradeState state;
  Reader r(document, "");
  r.Int("workerpool_upgrade_state", &state.version);
  if (!r.ok()) return r.status();
  if (state.version < 1) {
    return Status::Error("upgrade state: version " +
                         std::to_string(state.version) + " is not valid");
  }
  if (state.version > kUpgradeStateVersion) {
    return Status::Error("upgrade state: version " +
                         std::to_string(state.version) +
                         " is newer than this workerpool (reads up to " +
                         std::to_string(kUpgradeStateVersion) + ")");
  }
  r.String("from_version", &state.from_version);
  r.String("config_path", &state.config_path);
  r.String("config_content", &state.config_content);
  r.String("pool_name", &state.pool_name);
  r.String("control_socket", &state.control_socket);
  r.String("metrics", &state.metrics);
  r.String("phase", &state.phase);
  if (r.ok() && state.phase != "starting" && state.phase != "running" &&
      state.phase != "reloading") {
    r.Fail("phase", "expected starting, running or reloading");
  }
  r.Int("uptime_ms", &state.uptime_ms);
  r.Int("started_unix", &state.started_unix);
  if (const json* last = r.Member("last_reload")) {
    if (!last->is_null() && !last->is_object()) {
      r.Fail("last_reload", "expected null or an object");
    } else {
      state.last_reload = *last;
    }
  }
  r.Int("reload_generation", &state.reload_generation);
  r.Bool("reload_queued", &state.reload_queued);
  r.Int("refused_routes", &state.refused_routes);
  r.Int("spawns", &state.spawns);
  r.Int("upgrades", &state.upgrades);
  r.Int("last_upgrade_unix", &state.last_upgrade_unix);
  r.String("last_upgrade_error", &state.last_upgrade_error);
  if (state.version >= 2) {
    r.Int("handing_since_ns", &state.handing_since_ns, /*required=*/false);
    if (r.ok() && state.handing_since_ns < 0) {
      r.Fail("handing_since_ns", "out of range");
    }
  }
  if (const json* fds = r.Object("fds")) {
    Reader f(*fds, "fds.");
    f.Fd("control", &state.control_fd);
    f.Fd("metrics", &state.metrics_fd);
    f.Fd("fallback_exe", &state.fallback_exe_fd);
    if (state.version >= 2 && r.Member("spawner", false) != nullptr) {
      if (const json* spawner = r.Object("spawner")) {
        Reader sp(*spawner, "spawner.");
        sp.Int("pid", &state.spawner_pid);
        if (sp.ok() && state.spawner_pid <= 0) sp.Fail("pid", "out of range");
        sp.Fd("fd", &state.spawner_fd);
        if (sp.ok() && state.spawner_fd < 0) sp.Fail("fd", "not a descriptor");
        r.Take(sp.status());
      }
    }
    if (const json* listen = f.Object("listen")) {
      Reader l(*listen, "fds.listen.");
      for (auto it = listen->begin(); it != listen->end() && l.ok(); ++it) {
        int fd = -1;
        l.Fd(it.key().c_str(), &fd);
        if (l.ok() && fd < 0) l.Fail(it.key(), "not a descriptor");
        state.listen_fds[it.key()] = fd;
      }
      f.Take(l.status());
    }
    r.Take(f.status());
  }
  if (const json* groups = r.Array("groups")) {
    for (std::size_t i = 0; i < groups->size() && r.ok(); ++i) {
      UpgradeGroup group;
      r.Take(ReadGroup((*groups)[i], "groups[" + std::to_string(i) + "]",
                       state.version, &group));
      state.groups.push_back(std::move(group));
    }
  }
  if (!r.ok()) return r.status();
  return state;
}

std::vector<int> UpgradeStateFds(const UpgradeState& state) {
  std::vector<int> fds;
  auto add = [&fds](int fd) {
    if (fd >= 0) fds.push_back(fd);
  };
  add(state.control_fd);
  add(state.metrics_fd);
  add(state.fallback_exe_fd);
  add(state.spawner_fd);
  for (const auto& [address, fd] : state.listen_fds) add(fd);
  for (const UpgradeGroup& group : state.groups) {
    add(group.output_fd);
    add(group.output_child_fd);
    for (const UpgradeSlot& slot : group.slots) {
      add(slot.fds.channel);
      add(slot.fds.output);
      add(slot.fds.output_write);
      add(slot.fds.channel_child);
    }
  }
  return fds;
}

std::optional<SlotState> SlotStateFromName(std::string_view name) {
  for (int i = 0; i < kSlotStates; ++i) {
    const auto state = static_cast<SlotState>(i);
    if (name == SlotStateName(state)) return state;
  }
  return std::nullopt;
}

}  // namespace workerpool
