// A YAML document as a tree of nodes that know where they are in the text.
// The only user of yaml-cpp: the rest of the core reads YAML through this
// and never sees a yaml-cpp type or exception. Pure: parses text in memory.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace workerpool {

// Where something is in a text: 1-based line and column, as editors show;
// line 0 when there is no position.
struct TextPosition {
  int line = 0;
  int column = 0;
};

// One node of a document read by ReadYamlDocument, or no node at all (a
// default-constructed one: every Is...() is false). A cheap handle: copies
// share the document, which lives as long as any of them. An alias is the
// node it names (not a copy). Read nodes only inside ReadYamlDocument's READ,
// which turns whatever yaml-cpp might throw into an error.
class YamlNode {
 public:
  YamlNode();
  ~YamlNode();
  YamlNode(const YamlNode&);
  YamlNode& operator=(const YamlNode&);

  bool IsNull() const;  // written as nothing, "~" or "null"
  bool IsScalar() const;
  bool IsList() const;
  bool IsMap() const;
  // A scalar's text; empty for anything else.
  const std::string& Scalar() const;
  // Written in quotes or tagged !!str: the author said "string".
  bool IsQuoted() const;
  // Where the node starts. A null node written as nothing is placed where
  // the next token starts, often on the next line.
  TextPosition Position() const;
  // The number of a list's items (of a mapping's entries); 0 for the rest.
  std::size_t size() const;
  // A list's item. REQUIRES: IsList() and INDEX < size().
  YamlNode operator[](std::size_t index) const;
  // A mapping's entries, key and value, in the order written (duplicates
  // included); empty for anything else.
  std::vector<std::pair<YamlNode, YamlNode>> Entries() const;

  struct Impl;  // holds the yaml-cpp node; defined in yaml_node.cc

 private:
  explicit YamlNode(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // null: no node
};

// What a document is meant to be, for the messages about a text that is
// not one: e.g. {"a pool definition", "a mapping with keys ..."}.
struct YamlDocumentKind {
  std::string_view name;      // "a pool definition"
  std::string_view expected;  // what its one document must be
};

struct YamlError {
  TextPosition position;  // line 0: about the text as a whole
  std::string message;
};

// Parses TEXT as exactly one YAML document and calls READ with its root,
// which is not null. Returns the error that stopped it, or nullopt when
// READ ran to its end. No document (an empty text, only comments, a lone
// "~"), more than one, invalid YAML, nesting too deep, and any exception
// thrown while READ runs each become that one error; nothing escapes.
std::optional<YamlError> ReadYamlDocument(
    const std::string& text, const YamlDocumentKind& kind,
    const std::function<void(const YamlNode& root)>& read);

}  // namespace workerpool
