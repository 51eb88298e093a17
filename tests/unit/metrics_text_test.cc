#include "core/metrics_text.h"

#include <doctest/doctest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace workerpool {
namespace {

using nlohmann::json;

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Checks TEXT against the Prometheus text format 0.0.4 as a scraper reads
// it: every line a comment or `name{labels} value`; one TYPE per family,
// before its samples; a family's samples together; no repeated series.
void CheckExposition(const std::string& text) {
  static const std::regex kSample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$)");
  static const std::regex kType(
      R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
  static const std::regex kHelp(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*$)");
  CHECK(!text.empty());
  CHECK(text.back() == '\n');
  std::map<std::string, std::string> types;
  std::set<std::string> finished;  // families whose samples ended
  std::set<std::string> series;
  std::string current;
  for (const std::string& line : Lines(text)) {
    std::smatch match;
    if (std::regex_match(line, match, kType)) {
      std::string family = match[1];
      CHECK_MESSAGE(types.count(family) == 0, "second TYPE for ", family);
      types[family] = match[2];
      if (!current.empty()) finished.insert(current);
      current = family;
      continue;
    }
    if (std::regex_match(line, match, kHelp)) continue;
    REQUIRE_MESSAGE(std::regex_match(line, match, kSample),
                    "not a sample line: ", line);
    std::string name = match[1];
    std::string family = name;
    if (types.count(family) == 0) {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        std::string s = suffix;
        if (name.size() > s.size() &&
            name.compare(name.size() - s.size(), s.size(), s) == 0) {
          family = name.substr(0, name.size() - s.size());
        }
      }
    }
    CHECK_MESSAGE(types.count(family) == 1, "sample before its TYPE: ", line);
    CHECK_MESSAGE(family == current, "family samples not together: ", line);
    CHECK_MESSAGE(finished.count(family) == 0, "family resumed: ", line);
    std::string key = line.substr(0, line.rfind(' '));
    CHECK_MESSAGE(series.insert(key).second, "repeated series: ", line);
  }
}

json FullStatus() {
  return json::parse(R"({
    "pool": "demo", "config": "/etc/workerpool/demo.yaml", "pid": 4242,
    "state": "running", "started_unix": 1700000000,
    "last_reload": {"ok": false, "error": "x.yaml:3:5: bad", "unix": 1700000100},
    "refused_routes": 7,
    "groups": [
      {"name": "web", "type": "reactor", "desired": 2, "live": 2, "ready": 2,
       "restarts": 1, "state": "running", "scaled_until_reload": false,
       "inflight": 3, "queued": 0,
       "requests": {"sent": 100, "replied": 90, "failed": 4, "refused": 2,
                    "cancelled": 1, "timed_out": 3, "served": 0,
                    "served_errors": 0},
       "recycled": 0, "app": [{}, {}],
       "children": [{"index": 0, "pid": 10, "uptime_ms": 5, "ready": true,
                     "draining": false}]},
      {"name": "compute", "type": "job", "desired": 6, "live": 4, "ready": 4,
       "restarts": 12, "state": "failed", "scaled_until_reload": true,
       "inflight": 0, "queued": 5,
       "requests": {"sent": 0, "replied": 0, "failed": 0, "refused": 0,
                    "cancelled": 0, "timed_out": 0, "served": 88,
                    "served_errors": 2},
       "recycled": 3, "protocol_errors": 7, "app": []},
      {"name": "intake", "type": "service", "desired": 1, "live": 1,
       "ready": 1, "restarts": 0, "state": "running", "inflight": 0,
       "queued": 0,
       "app": [{"connected": true, "consumed": 1234, "acked": 1200,
                "rate": 12.5, "queue_depth": 17}]}
    ]})");
}

TEST_CASE("MetricsText renders every figure of a full status document") {
  std::string text = MetricsText(FullStatus());
  CheckExposition(text);
  for (const char* line : {
           "workerpool_info{pool=\"demo\",version=",
           "workerpool_state{state=\"running\"} 1",
           "workerpool_start_time_seconds 1700000000",
           "workerpool_last_reload_success 0",
           "workerpool_last_reload_timestamp_seconds 1700000100",
           "workerpool_refused_routes_total 7",
           "workerpool_group_info{group=\"web\",type=\"reactor\"} 1",
           "workerpool_group_desired_processes{group=\"compute\"} 6",
           "workerpool_group_live_processes{group=\"compute\"} 4",
           "workerpool_group_ready_processes{group=\"web\"} 2",
           "workerpool_group_restarts_total{group=\"compute\"} 12",
           "workerpool_group_failed{group=\"compute\"} 1",
           "workerpool_group_failed{group=\"web\"} 0",
           "workerpool_group_waiting{group=\"web\"} 0",
           "workerpool_group_done{group=\"compute\"} 0",
           "workerpool_group_scaled_until_reload{group=\"compute\"} 1",
           "workerpool_group_scaled_until_reload{group=\"web\"} 0",
           "workerpool_group_inflight_requests{group=\"web\"} 3",
           "workerpool_group_queued_requests{group=\"compute\"} 5",
           "workerpool_group_requests_sent_total{group=\"web\"} 100",
           "workerpool_group_requests_total{group=\"web\",outcome=\"replied\"} "
           "90",
           "workerpool_group_requests_total{group=\"web\",outcome=\"timed_"
           "out\"}"
           " 3",
           "workerpool_group_requests_served_total{group=\"compute\",outcome="
           "\"ok\"} 88",
           "workerpool_group_requests_served_total{group=\"compute\",outcome="
           "\"error\"} 2",
           "workerpool_group_recycled_total{group=\"compute\"} 3",
           "workerpool_group_protocol_errors_total{group=\"compute\"} 7",
           "workerpool_service_connected{group=\"intake\",index=\"0\"} 1",
           "workerpool_service_consumed{group=\"intake\",index=\"0\"} 1234",
           "workerpool_service_rate{group=\"intake\",index=\"0\"} 12.5",
           "workerpool_service_queue_depth{group=\"intake\",index=\"0\"} 17",
       }) {
    CHECK_MESSAGE(Contains(text, line), "missing: ", line, "\n", text);
  }
  CHECK(Contains(text, "# TYPE workerpool_group_restarts_total counter\n"));
  CHECK(Contains(text, "# TYPE workerpool_group_live_processes gauge\n"));
  CHECK(Contains(text, "# TYPE workerpool_group_requests_total counter\n"));
  CHECK(Contains(text, "# HELP workerpool_group_requests_total "));
  // The intake group carries no "requests": nothing is invented for it.
  CHECK(!Contains(text, "workerpool_group_requests_sent_total{group=\"intake"));
  CHECK(!Contains(text, "scaled_until_reload{group=\"intake\""));
}

TEST_CASE("MetricsText: memory and CPU of the Watcher and of each group") {
  std::string text = MetricsText(json::parse(R"({
    "pool": "demo", "watcher": {"rss_bytes": 5242880, "cpu_ms": 1500},
    "groups": [{"name": "web", "rss_bytes": 20971520, "cpu_ms": 250},
               {"name": "idle", "rss_bytes": "lots", "cpu_ms": null}]})"));
  CheckExposition(text);
  for (const char* line : {
           "# TYPE process_resident_memory_bytes gauge\n"
           "process_resident_memory_bytes 5242880\n",
           "# TYPE process_cpu_seconds_total counter\n"
           "process_cpu_seconds_total 1.5\n",
           "workerpool_group_resident_memory_bytes{group=\"web\"} 20971520\n",
           "# TYPE workerpool_group_cpu_seconds_total counter\n",
           "workerpool_group_cpu_seconds_total{group=\"web\"} 0.25\n",
       }) {
    CHECK_MESSAGE(Contains(text, line), "missing: ", line, "\n", text);
  }
  CHECK(!Contains(text, "{group=\"idle\"} "));
}

TEST_CASE("MetricsText survives missing, null and wrongly typed fields") {
  for (const char* doc : {
           "null",
           "[]",
           "42",
           "\"text\"",
           "{}",
           R"({"groups": null})",
           R"({"groups": {"a": 1}})",
           R"({"groups": [null, 1, "x", []]})",
           R"({"groups": [{"desired": 3}]})",
           R"({"groups": [{"name": 5, "live": 1}]})",
           R"({"last_reload": null, "refused_routes": "many"})",
           R"({"last_reload": {"ok": "yes", "unix": "now"}})",
           R"({"groups": [{"name": "g", "desired": "two", "live": null,
               "requests": [1, 2], "app": "none", "latency": 5,
               "scaled_until_reload": "sometimes", "state": 3}]})",
           R"({"groups": [{"name": "g", "app": [null, 3, [], "x",
               {"stats": 5}, {"index": "one", "a": {"b": {"c": {"d": {"e": 1}}}}}]}]})",
       }) {
    CAPTURE(doc);
    std::string text = MetricsText(json::parse(doc));
    CheckExposition(text);
    CHECK(Contains(text, "workerpool_info{"));
  }
  std::string text = MetricsText(json::parse(
      R"({"groups": [{"name": "g", "desired": "two", "live": 1.5}]})"));
  CHECK(!Contains(text, "workerpool_group_desired_processes"));
  CHECK(Contains(text, "workerpool_group_live_processes{group=\"g\"} 1.5"));
}

TEST_CASE("MetricsText: app figures of any shape become service gauges") {
  json status = json::parse(R"({"groups": [
    {"name": "svc", "app": [
      {"index": 7, "connection": "connected", "queue.depth": 4,
       "bytes-in": 10, "paused": false, "broker": "rabbit@host",
       "queues": {"tasks": {"ready": 2, "unacked": 1}},
       "deep": {"a": {"b": {"c": {"d": 1}}}}},
      {"stats": {"connected": false, "consumed": 7}, "index": 1},
      {"connection_state": "reconnecting", "connection": "open"},
      {"connection_state": "reconnecting"}
    ]},
    {"name": "svc2", "app": {"0": {"consumed": 1}}}
  ]})");
  std::string text = MetricsText(status);
  CheckExposition(text);
  for (const char* line : {
           "workerpool_service_connected{group=\"svc\",index=\"7\"} 1",
           "workerpool_service_queue_depth{group=\"svc\",index=\"7\"} 4",
           "workerpool_service_bytes_in{group=\"svc\",index=\"7\"} 10",
           "workerpool_service_paused{group=\"svc\",index=\"7\"} 0",
           "workerpool_service_queue_ready{group=\"svc\",index=\"7\","
           "queue=\"tasks\"} 2",
           "workerpool_service_connected{group=\"svc\",index=\"1\"} 0",
           "workerpool_service_consumed{group=\"svc\",index=\"1\"} 7",
           "workerpool_service_connected{group=\"svc\",index=\"2\"} 1",
           "workerpool_service_connected{group=\"svc\",index=\"3\"} 0",
           "workerpool_service_consumed{group=\"svc2\",index=\"0\"} 1",
       }) {
    CHECK_MESSAGE(Contains(text, line), "missing: ", line, "\n", text);
  }
  // Text other than a connection state is not a figure; identity is not
  // one either; nesting stops at a bounded depth.
  CHECK(!Contains(text, "workerpool_service_broker"));
  CHECK(!Contains(text, "workerpool_service_index"));
  CHECK(!Contains(text, "deep_a_b_c_d"));
  // One series per child even when two keys name the connection.
  CHECK(!Contains(text,
                  "workerpool_service_connected{group=\"svc\",index="
                  "\"2\"} 0"));
}

TEST_CASE("MetricsText: the RabbitMQ service's figures, queue by queue") {
  // The shape src/children/rabbitmq_service.cc publishes, as the Watcher
  // passes it on (index and pid added).
  json status = json::parse(R"({"uptime_ms": 2500, "groups": [
    {"name": "intake", "type": "service", "app": [
      {"index": 0, "pid": 99, "connection": "connected",
       "broker": "amqp://127.0.0.1:5672", "target": "compute", "inflight": 3,
       "held": 1, "reconnects": 2, "last_error": "",
       "queues": {
         "tasks": {"deliveries": 10, "redelivered": 1, "acks": 8,
                   "retries": 2, "dead_letters": 1, "rejected": 0,
                   "requeued": 0, "messages": 5, "consumers": 1},
         "other": {"deliveries": 0, "messages": null}}},
      {"index": 1, "pid": 100, "connection": "connecting", "queues": {}}]}
  ]})");
  std::string text = MetricsText(status);
  CheckExposition(text);
  for (const char* line : {
           "workerpool_uptime_seconds 2.5",
           "workerpool_service_connected{group=\"intake\",index=\"0\"} 1",
           "workerpool_service_connected{group=\"intake\",index=\"1\"} 0",
           "workerpool_service_reconnects{group=\"intake\",index=\"0\"} 2",
           "workerpool_service_inflight{group=\"intake\",index=\"0\"} 3",
           "workerpool_service_queue_messages{group=\"intake\",index=\"0\","
           "queue=\"tasks\"} 5",
           "workerpool_service_queue_acks{group=\"intake\",index=\"0\","
           "queue=\"tasks\"} 8",
           "workerpool_service_queue_retries{group=\"intake\",index=\"0\","
           "queue=\"tasks\"} 2",
           "workerpool_service_queue_dead_letters{group=\"intake\",index="
           "\"0\",queue=\"tasks\"} 1",
           "workerpool_service_queue_deliveries{group=\"intake\",index="
           "\"0\",queue=\"other\"} 0",
       }) {
    CHECK_MESSAGE(Contains(text, line), "missing: ", line, "\n", text);
  }
  // An unknown depth (null) is left out, not reported as 0.
  CHECK(!Contains(text,
                  "workerpool_service_queue_messages{group=\"intake\","
                  "index=\"0\",queue=\"other\"}"));
  CHECK(!Contains(text, "workerpool_service_pid"));
  CHECK(!Contains(text, "workerpool_service_last_error"));
}

TEST_CASE("MetricsText escapes label values") {
  json status = {{"pool", "a\"b\\c\nd"},
                 {"groups", {{{"name", "we\"b"}, {"live", 1}}}}};
  std::string text = MetricsText(status);
  CheckExposition(text);
  CHECK(Contains(text, "pool=\"a\\\"b\\\\c\\nd\""));
  CHECK(Contains(text, "workerpool_group_live_processes{group=\"we\\\"b\"} 1"));
}

TEST_CASE("MetricsText renders a latency histogram when the group has one") {
  json status = json::parse(R"({"groups": [
    {"name": "web", "latency": {"bounds_ms": [5, 50, 500],
                                "counts": [10, 5, 1, 2], "sum_ms": 1500}},
    {"name": "bad1", "latency": {"bounds_ms": [5, 50], "counts": [1, 2],
                                 "sum_ms": 1}},
    {"name": "bad2", "latency": {"bounds_ms": [50, 5], "counts": [1, 2, 3],
                                 "sum_ms": 1}},
    {"name": "bad3", "latency": {"bounds_ms": [5], "counts": [1, -2],
                                 "sum_ms": 1}}
  ]})");
  std::string text = MetricsText(status);
  CheckExposition(text);
  CHECK(Contains(text,
                 "# TYPE workerpool_group_request_duration_seconds histogram"));
  for (const char* line : {
           "workerpool_group_request_duration_seconds_bucket{group=\"web\","
           "le=\"0.005\"} 10",
           "workerpool_group_request_duration_seconds_bucket{group=\"web\","
           "le=\"0.05\"} 15",
           "workerpool_group_request_duration_seconds_bucket{group=\"web\","
           "le=\"0.5\"} 16",
           "workerpool_group_request_duration_seconds_bucket{group=\"web\","
           "le=\"+Inf\"} 18",
           "workerpool_group_request_duration_seconds_sum{group=\"web\"} 1.5",
           "workerpool_group_request_duration_seconds_count{group=\"web\"} 18",
       }) {
    CHECK_MESSAGE(Contains(text, line), "missing: ", line, "\n", text);
  }
  CHECK(!Contains(text, "bad1"));
  CHECK(!Contains(text, "bad2"));
  CHECK(!Contains(text, "bad3"));
}

}  // namespace
}  // namespace workerpool
