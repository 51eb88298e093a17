// `workerpool top`'s figures and screen (src/cli/top_view.cc) from status
// documents: rates over an interval, latency percentiles, CPU%, service
// queues, hostile documents, and the layout at the widths and heights an
// operator's terminal has.
#include "cli/top_view.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace workerpool {
namespace {

using nlohmann::json;

// A status document as the Watcher sends it; SERVED, ERRORS, CPU_MS and
// COUNTS (the echo group's latency histogram) vary between snapshots.
json Status(int served, int errors, int cpu_ms,
            std::vector<int> counts = {0, 0, 0, 0}) {
  return json::parse(R"({
    "pool": "demo", "version": "0.1.0", "pid": 812, "state": "running",
    "uptime_ms": 10921000, "generation": 2, "config": "/etc/workerpool/demo.yaml",
    "last_reload": {"ok": true, "summary": "1 group resized", "unix": 1700000000},
    "watcher": {"rss_bytes": 5662310, "cpu_ms": 1000},
    "groups": [
      {"name": "web", "type": "reactor", "desired": 2, "live": 2, "ready": 2,
       "restarts": 0, "state": "running", "scaled_until_reload": false,
       "inflight": 3, "queued": 0, "rss_bytes": 13000000, "cpu_ms": 400,
       "requests": {"sent": 1000, "replied": 990, "failed": 10},
       "children": [
         {"index": 0, "pid": 901, "uptime_ms": 60000, "ready": true,
          "draining": false, "rss_bytes": 6500000, "cpu_ms": 200},
         {"index": 1, "pid": 902, "uptime_ms": 60000, "ready": true,
          "draining": false, "rss_bytes": 6500000, "cpu_ms": 200}]},
      {"name": "echo", "type": "job", "desired": 4, "live": 4, "ready": 4,
       "restarts": 1, "state": "running", "scaled_until_reload": true,
       "inflight": 0, "queued": 5, "rss_bytes": 25165824, "cpu_ms": 0,
       "requests": {}, "children": [
         {"index": 0, "pid": 911, "uptime_ms": 5000, "ready": true,
          "draining": false, "rss_bytes": 6291456, "cpu_ms": 0}],
       "latency": {"bounds_ms": [1, 10, 100], "counts": [], "sum_ms": 0}},
      {"name": "intake", "type": "service", "desired": 1, "live": 1,
       "ready": 1, "restarts": 0, "state": "running", "inflight": 0,
       "queued": 0, "requests": {"sent": 50},
       "app": [{"index": 0, "pid": 921, "connection": "open",
                "queues": {"tasks": {"messages": 1204, "consumers": 2,
                                     "deliveries": 500, "acks": 480,
                                     "dead_letters": 3}}}],
       "children": [{"index": 0, "pid": 921, "uptime_ms": 60000,
                     "ready": true, "draining": false}]}]})")
      .get<json>()
      .patch(json::array(
          {{{"op", "replace"},
            {"path", "/groups/1/requests"},
            {"value",
             {{"served", served - errors}, {"served_errors", errors}}}},
           {{"op", "replace"},
            {"path", "/groups/1/children/0/cpu_ms"},
            {"value", cpu_ms}},
           {{"op", "replace"},
            {"path", "/groups/1/latency/counts"},
            {"value", counts}}}));
}

const TopGroup& Group(const TopFigures& figures, const std::string& name) {
  for (const TopGroup& group : figures.groups) {
    if (group.name == name) return group;
  }
  FAIL("no group ", name);
  return figures.groups.front();
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string Joined(const TopScreen& screen) {
  std::string text;
  for (const std::string& line : screen.lines) text += line + "\n";
  return text;
}

// The column titles of SCREEN's table, in order.
std::vector<std::string> Titles(const TopScreen& screen) {
  REQUIRE(screen.header_line >= 0);
  std::vector<std::string> titles;
  std::string line = screen.lines[static_cast<size_t>(screen.header_line)];
  size_t at = 0;
  while ((at = line.find_first_not_of(' ', at)) != std::string::npos) {
    size_t end = line.find(' ', at);
    titles.push_back(line.substr(at, end - at));
    at = end;
  }
  return titles;
}

}  // namespace

TEST_CASE("top: rates, errors and CPU% over the interval") {
  json before = Status(100, 2, 1000, {10, 0, 0, 0});
  json after = Status(300, 6, 1500, {10, 150, 50, 0});
  TopFigures figures = ComputeTopFigures(after, &before, 2.0);
  const TopGroup& echo = Group(figures, "echo");
  // A job: requests served (errors included) per second.
  REQUIRE(echo.requests_per_second);
  CHECK(*echo.requests_per_second == doctest::Approx(100.0));
  CHECK(*echo.errors_per_second == doctest::Approx(2.0));
  // 500 ms of CPU in 2 s on its one child.
  REQUIRE(echo.children.size() == 1);
  CHECK(*echo.children[0].cpu_percent == doctest::Approx(25.0));
  CHECK(*echo.cpu_percent == doctest::Approx(25.0));
  CHECK(echo.scaled_until_reload);
  CHECK(*echo.queued == 5);
  // A reactor sends: its rate is of requests sent (none more here).
  const TopGroup& web = Group(figures, "web");
  CHECK(*web.requests_per_second == doctest::Approx(0.0));
  CHECK(web.children[0].state == "ready");
  CHECK(figures.generation == 2);
  CHECK(figures.last_reload_ok == true);
  CHECK(*figures.watcher_rss_bytes == 5662310);
  CHECK(*figures.watcher_cpu_percent == doctest::Approx(0.0));
}

TEST_CASE("top: p50 and p99 from the histogram's counts in the interval") {
  json before = Status(0, 0, 0, {1000, 0, 0, 0});
  // In the interval: 150 in (1,10] ms, 50 in (10,100] ms.
  json after = Status(0, 0, 0, {1000, 150, 50, 0});
  const TopGroup echo = Group(ComputeTopFigures(after, &before, 1.0), "echo");
  REQUIRE(echo.p50_ms);
  REQUIRE(echo.p99_ms);
  // Rank 100 of 200: 100/150 into (1,10]; rank 198: 48/50 into (10,100].
  CHECK(*echo.p50_ms == doctest::Approx(1 + 9 * 100.0 / 150));
  CHECK(*echo.p99_ms == doctest::Approx(10 + 90 * 48.0 / 50));
  CHECK_FALSE(echo.p99_beyond);
  // Past the last bound: the last bound, marked.
  json slow = Status(0, 0, 0, {1000, 0, 0, 10});
  const TopGroup late = Group(ComputeTopFigures(slow, &before, 1.0), "echo");
  CHECK(*late.p99_ms == doctest::Approx(100));
  CHECK(late.p99_beyond);
  // Nothing answered in the interval: no latency.
  const TopGroup idle = Group(ComputeTopFigures(before, &before, 1.0), "echo");
  CHECK_FALSE(idle.p50_ms);
}

TEST_CASE("top: the first snapshot has no rates yet") {
  TopFigures figures = ComputeTopFigures(Status(10, 0, 0), nullptr, 0);
  const TopGroup& echo = Group(figures, "echo");
  CHECK_FALSE(echo.requests_per_second);
  CHECK_FALSE(echo.cpu_percent);
  CHECK_FALSE(echo.p50_ms);
  CHECK(*echo.rss_bytes == 25165824);
  TopScreen screen = LayOutTop(figures, TopViewState{}, 80, 0);
  CHECK(Contains(Joined(screen), "echo "));
}

TEST_CASE("top: a counter that went down counts as nothing") {
  json before = Status(500, 5, 3000);
  json after = Status(100, 1, 100);  // a child restarted with its counts
  const TopGroup echo = Group(ComputeTopFigures(after, &before, 1.0), "echo");
  CHECK(*echo.requests_per_second == 0);
  CHECK(*echo.errors_per_second == 0);
  CHECK(*echo.children[0].cpu_percent == 0);
}

TEST_CASE("top: a child new since the last snapshot is matched by pid") {
  json before = Status(0, 0, 0);
  json after = Status(0, 0, 300);
  after["groups"][1]["children"][0]["pid"] = 999;
  after["groups"][1]["children"][0]["uptime_ms"] = 600;
  const TopGroup echo = Group(ComputeTopFigures(after, &before, 1.0), "echo");
  // Started 600 ms ago and used 300 ms: 50%.
  CHECK(*echo.children[0].cpu_percent == doctest::Approx(50.0));
}

TEST_CASE("top: a service's queues, depth and rates") {
  json before = Status(0, 0, 0);
  json after = Status(0, 0, 0);
  json& figures = after["groups"][2]["app"][0]["queues"]["tasks"];
  figures["deliveries"] = 1500;
  figures["acks"] = 1480;
  figures["dead_letters"] = 13;
  figures["messages"] = 800;
  const TopGroup intake =
      Group(ComputeTopFigures(after, &before, 2.0), "intake");
  REQUIRE(intake.queues.size() == 1);
  const TopQueue& queue = intake.queues[0];
  CHECK(queue.name == "tasks");
  CHECK(*queue.depth == 800);
  CHECK(*queue.consumers == 2);
  CHECK(*queue.deliveries_per_second == doctest::Approx(500.0));
  CHECK(*queue.acks_per_second == doctest::Approx(500.0));
  CHECK(*queue.dead_letters_per_second == doctest::Approx(5.0));
  // A sender: requests sent per second.
  CHECK(*intake.requests_per_second == 0);
  TopScreen screen =
      LayOutTop(ComputeTopFigures(after, &before, 2.0), TopViewState{}, 80, 0);
  CHECK(Contains(Joined(screen),
                 "queue tasks: depth 800, 500 msgs/s, 500 acks/s, 5.00 "
                 "dead/s, 2 consumers"));
}

TEST_CASE("top: documents of the wrong shape give dashes, never a throw") {
  for (const char* doc : {
           "null",
           "[]",
           "7",
           "{}",
           R"({"groups": 5})",
           R"({"groups": [null, 1, [], {"name": 3, "live": "x"}]})",
           R"({"pool": 1, "pid": "x", "watcher": [], "last_reload": 3,
               "groups": [{"name": "g", "requests": [], "latency":
               {"bounds_ms": [5, 1], "counts": [1, 2, 3]}, "children":
               [null, {"pid": "x", "cpu_ms": "y"}], "app": [{"queues":
               {"q": 5, "r": {"messages": "many", "deliveries": -1}}}]}]})",
           R"({"groups": [{"name": "g\u0007\n", "uptime_ms": 1e300,
               "requests": {"served": 1e308}, "live": 18446744073709551615}]})",
       }) {
    std::string text = doc;
    CAPTURE(text);
    json document = json::parse(text);
    TopFigures figures = ComputeTopFigures(document, &document, 1.0);
    for (int width : {0, 20, 80, 200}) {
      TopScreen screen = LayOutTop(figures, TopViewState{}, width, 24);
      for (const std::string& line : screen.lines) {
        CHECK(line.size() <= static_cast<size_t>(std::max(width, 1)));
        for (char c : line) CHECK((c >= 0x20 && c < 0x7f));
      }
    }
  }
}

TEST_CASE("top: at 80 columns every column fits") {
  json before = Status(100, 2, 1000, {10, 0, 0, 0});
  json after = Status(300, 6, 1500, {10, 150, 50, 0});
  TopFigures figures = ComputeTopFigures(after, &before, 2.0);
  TopViewState view;
  view.now_unix = 1700000240;
  TopScreen screen = LayOutTop(figures, view, 80, 24);
  REQUIRE(screen.lines.size() == 24);
  for (const std::string& line : screen.lines) CHECK(line.size() <= 80);
  CHECK(Titles(screen) ==
        std::vector<std::string>{"GROUP", "TYPE", "LIVE", "STATE", "RST",
                                 "REQ/s", "ERR/s", "P50", "P99", "INFL",
                                 "QUEUE", "RSS", "CPU%"});
  std::string text = Joined(screen);
  CHECK(Contains(screen.lines[0], "pool demo"));
  CHECK(Contains(screen.lines[0], "up 3h02m"));
  CHECK(Contains(screen.lines[0], "gen 2"));
  CHECK(Contains(screen.lines[0], "workerpool 0.1.0"));
  CHECK(Contains(screen.lines[1], "reload ok 4m00s ago"));
  CHECK(Contains(screen.lines[1], "7/7 children in 3 groups"));
  // The selected group (the first) is marked and reported for reversing.
  CHECK(screen.selected_line == screen.header_line + 1);
  CHECK(screen.lines[static_cast<size_t>(screen.selected_line)].rfind(">web",
                                                                      0) == 0);
  CHECK(Contains(text, " echo "));
  CHECK(Contains(text, "4/4* running"));
  CHECK(Contains(text, " 100 "));  // requests/s
  CHECK(Contains(text, "24M"));    // the echo group's resident size
  CHECK(Contains(screen.lines.back(), "q quit"));
}

TEST_CASE("top: narrower terminals drop the least useful columns first") {
  json before = Status(100, 2, 1000, {10, 0, 0, 0});
  json after = Status(300, 6, 1500, {10, 150, 50, 0});
  TopFigures figures = ComputeTopFigures(after, &before, 2.0);
  std::vector<std::string> previous;
  for (int width = 120; width >= 20; width -= 5) {
    CAPTURE(width);
    TopScreen screen = LayOutTop(figures, TopViewState{}, width, 0);
    for (const std::string& line : screen.lines) {
      CHECK(line.size() <= static_cast<size_t>(width));
    }
    std::vector<std::string> titles = Titles(screen);
    CHECK(titles.front() == "GROUP");
    // Columns only ever go, never come back, as the width shrinks.
    for (const std::string& title : titles) {
      if (!previous.empty()) {
        CHECK(std::find(previous.begin(), previous.end(), title) !=
              previous.end());
      }
    }
    previous = titles;
  }
  auto titles_at = [&figures](int width) {
    return Titles(LayOutTop(figures, TopViewState{}, width, 0));
  };
  std::vector<std::string> at60 = titles_at(60);
  CHECK(std::find(at60.begin(), at60.end(), "P50") == at60.end());
  CHECK(std::find(at60.begin(), at60.end(), "REQ/s") != at60.end());
  CHECK(std::find(at60.begin(), at60.end(), "P99") != at60.end());
  std::vector<std::string> at30 = titles_at(30);
  CHECK(at30.front() == "GROUP");
  CHECK(std::find(at30.begin(), at30.end(), "LIVE") != at30.end());
  // Wide: the type names in full; a little narrower, shortened.
  CHECK(Contains(Joined(LayOutTop(figures, TopViewState{}, 120, 0)),
                 " service "));
  CHECK(Contains(Joined(LayOutTop(figures, TopViewState{}, 76, 0)), " svc "));
}

TEST_CASE("top: an expanded group lists its processes") {
  json before = Status(0, 0, 0);
  json after = Status(0, 0, 250);
  TopFigures figures = ComputeTopFigures(after, &before, 1.0);
  TopViewState view;
  view.selected = 1;
  view.expanded = {"echo"};
  std::string text = Joined(LayOutTop(figures, view, 80, 24));
  CHECK(Contains(text, "IDX PID      UPTIME    STATE       RSS  CPU%"));
  CHECK(Contains(text, "        0 911      5s        ready      6.0M  25.0"));
  // web is not expanded: its pids are not shown.
  CHECK_FALSE(Contains(text, " 901 "));
}

TEST_CASE("top: the selected group stays in view on a short terminal") {
  json status = Status(0, 0, 0);
  json groups = json::array();
  for (int i = 0; i < 40; ++i) {
    json group = status["groups"][1];
    group["name"] = "g" + std::to_string(i);
    groups.push_back(group);
  }
  status["groups"] = groups;
  TopFigures figures = ComputeTopFigures(status, nullptr, 0);
  TopViewState view;
  view.selected = 30;
  view.expanded = {"g30"};
  TopScreen screen = LayOutTop(figures, view, 80, 15);
  REQUIRE(screen.lines.size() == 15);
  REQUIRE(screen.selected_line > screen.header_line);
  CHECK(screen.lines[static_cast<size_t>(screen.selected_line)].rfind(">g30",
                                                                      0) == 0);
  // Its processes follow it on screen.
  CHECK(Contains(Joined(screen), " 911 "));
  // A message replaces the keys' help on the last line.
  view.message = "no answer: the pool went away";
  CHECK(LayOutTop(figures, view, 80, 15).lines.back() ==
        "no answer: the pool went away");
}

TEST_CASE("top: an autoscaled group shows its bounds beside live/target") {
  json status = Status(0, 0, 0);
  status["groups"][1]["autoscale"] = {
      {"min", 1}, {"max", 16}, {"last_decision", {{"reason", "up"}}}};
  TopFigures figures = ComputeTopFigures(status, nullptr, 0);
  CHECK(*Group(figures, "echo").autoscale_min == 1);
  CHECK(*Group(figures, "echo").autoscale_max == 16);
  std::string text = Joined(LayOutTop(figures, TopViewState{}, 80, 0));
  CHECK(Contains(text, "4/4* 1-16 running"));
}

TEST_CASE("top: uptimes") {
  CHECK(FormatTopUptime(0) == "0s");
  CHECK(FormatTopUptime(200) == "0.2s");
  CHECK(FormatTopUptime(1000) == "1s");
  CHECK(FormatTopUptime(45000) == "45s");
  CHECK(FormatTopUptime(182000) == "3m02s");
  CHECK(FormatTopUptime(10921000) == "3h02m");
  CHECK(FormatTopUptime(2 * 86400000LL + 3 * 3600000LL) == "2d03h");
  CHECK(FormatTopUptime(-5) == "-");
}

}  // namespace workerpool
