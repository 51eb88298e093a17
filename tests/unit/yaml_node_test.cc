#include "core/yaml_node.h"

#include <doctest/doctest.h>

#include <optional>
#include <stdexcept>
#include <string>

namespace workerpool {
namespace {

constexpr YamlDocumentKind kKind = {"a test document", "a mapping"};

// Reads TEXT and hands its root to CHECK; fails on a document-level error.
template <typename Check>
void WithRoot(const std::string& text, Check check) {
  bool called = false;
  std::optional<YamlError> error =
      ReadYamlDocument(text, kKind, [&](const YamlNode& root) {
        called = true;
        check(root);
      });
  CHECK_FALSE(error.has_value());
  CHECK(called);
}

TEST_CASE("YamlNode gives kinds, text and 1-based positions") {
  WithRoot("a: 1\nb: [x, \"y\"]\nc:\n", [](const YamlNode& root) {
    REQUIRE(root.IsMap());
    auto entries = root.Entries();
    REQUIRE(entries.size() == 3);
    CHECK(entries[0].first.Scalar() == "a");
    CHECK(entries[0].second.Scalar() == "1");
    CHECK(entries[0].second.Position().line == 1);
    CHECK(entries[0].second.Position().column == 4);
    const YamlNode& list = entries[1].second;
    REQUIRE(list.IsList());
    REQUIRE(list.size() == 2);
    CHECK_FALSE(list[0].IsQuoted());
    CHECK(list[1].IsQuoted());
    CHECK(list[1].Position().line == 2);
    CHECK(list[1].Position().column == 8);
    CHECK(entries[2].second.IsNull());
  });
}

TEST_CASE("a default YamlNode is no node") {
  YamlNode none;
  CHECK_FALSE(none.IsNull());
  CHECK_FALSE(none.IsScalar());
  CHECK_FALSE(none.IsList());
  CHECK_FALSE(none.IsMap());
  CHECK(none.Scalar().empty());
  CHECK(none.size() == 0);
  CHECK(none.Entries().empty());
  CHECK(none.Position().line == 0);
}

TEST_CASE("an alias is the node it names") {
  WithRoot("a: &x [1, 2]\nb: *x\n", [](const YamlNode& root) {
    auto entries = root.Entries();
    REQUIRE(entries.size() == 2);
    REQUIRE(entries[1].second.IsList());
    CHECK(entries[1].second.size() == 2);
    CHECK(entries[1].second[1].Scalar() == "2");
  });
}

TEST_CASE("ReadYamlDocument: not one document is one error") {
  auto never = [](const YamlNode&) { FAIL("READ must not run"); };
  std::optional<YamlError> empty =
      ReadYamlDocument("# nothing\n", kKind, never);
  REQUIRE(empty);
  CHECK(empty->position.line == 0);
  CHECK(empty->message == "the file is empty; expected a mapping");
  std::optional<YamlError> two =
      ReadYamlDocument("a: 1\n---\nb: 2\n", kKind, never);
  REQUIRE(two);
  CHECK(two->position.line == 2);
  CHECK(two->message ==
        "holds more than one YAML document; a test document is one document "
        "(remove the '---' separators)");
  std::optional<YamlError> broken = ReadYamlDocument("a: [1\n", kKind, never);
  REQUIRE(broken);
  CHECK(broken->message.starts_with("invalid YAML: "));
}

TEST_CASE("ReadYamlDocument: what READ throws becomes the error") {
  std::optional<YamlError> error = ReadYamlDocument(
      "a: 1\n", kKind,
      [](const YamlNode&) { throw std::runtime_error("boom"); });
  REQUIRE(error);
  CHECK(error->message == "cannot load: boom");
}

}  // namespace
}  // namespace workerpool
