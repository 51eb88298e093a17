#include "core/id_map.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <map>
#include <random>
#include <vector>

namespace workerpool {
namespace {

TEST_CASE("an empty id map finds nothing and erases nothing") {
  IdMap<int> map;
  CHECK(map.empty());
  CHECK(map.Find(1) == nullptr);
  CHECK(map.Find(0) == nullptr);
  CHECK(map.Erase(1) == nullptr);
  int calls = 0;
  map.ForEach([&](std::uint64_t, int*) { ++calls; });
  CHECK(calls == 0);
}

TEST_CASE("ids map to their values until erased; inserting again replaces") {
  IdMap<int> map;
  int a = 1, b = 2, c = 3;
  map.Insert(7, &a);
  map.Insert(8, &b);
  CHECK(map.size() == 2);
  CHECK(map.Find(7) == &a);
  CHECK(map.Find(8) == &b);
  CHECK(map.Find(9) == nullptr);
  map.Insert(7, &c);
  CHECK(map.size() == 2);
  CHECK(map.Find(7) == &c);
  CHECK(map.Erase(7) == &c);
  CHECK(map.Erase(7) == nullptr);
  CHECK(map.Find(7) == nullptr);
  CHECK(map.Find(8) == &b);
  CHECK(map.size() == 1);
}

TEST_CASE("the id map grows past its first table and keeps every entry") {
  IdMap<int> map;
  std::vector<int> values(1000);
  for (std::uint64_t id = 1; id <= values.size(); ++id) {
    map.Insert(id, &values[id - 1]);
  }
  CHECK(map.size() == values.size());
  for (std::uint64_t id = 1; id <= values.size(); ++id) {
    REQUIRE(map.Find(id) == &values[id - 1]);
  }
  size_t seen = 0;
  map.ForEach([&](std::uint64_t id, int* value) {
    CHECK(value == &values[id - 1]);
    ++seen;
  });
  CHECK(seen == values.size());
}

// Requests finish out of order: a sliding window of ids, erased at random,
// must never lose an entry that shares a probe run with an erased one.
TEST_CASE("random inserts and erases agree with std::map") {
  std::mt19937_64 random(42);
  IdMap<int> map;
  std::map<std::uint64_t, int*> model;
  std::vector<int> storage(64);
  std::uint64_t next_id = 0;
  for (int step = 0; step < 200000; ++step) {
    const bool insert =
        model.size() < 4 || (random() % 100 < 52 && model.size() < 3000);
    if (insert) {
      // Mostly sequential ids, sometimes arbitrary ones (collisions).
      const std::uint64_t id = random() % 10 == 0 ? (random() | 1) : ++next_id;
      int* value = &storage[random() % storage.size()];
      map.Insert(id, value);
      model[id] = value;
    } else {
      auto it = model.begin();
      std::advance(it, static_cast<long>(random() % model.size()));
      REQUIRE(map.Erase(it->first) == it->second);
      model.erase(it);
    }
    if (step % 997 == 0) {
      REQUIRE(map.size() == model.size());
      for (const auto& [id, value] : model) REQUIRE(map.Find(id) == value);
      REQUIRE(map.Find(next_id + 1) == nullptr);
    }
  }
  while (!model.empty()) {
    REQUIRE(map.Erase(model.begin()->first) == model.begin()->second);
    model.erase(model.begin());
  }
  CHECK(map.empty());
}

}  // namespace
}  // namespace workerpool
