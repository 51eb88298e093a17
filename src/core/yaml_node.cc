#include "core/yaml_node.h"

#include <yaml-cpp/depthguard.h>  // YAML::DeepRecursion, not in yaml.h
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <exception>
#include <sstream>

namespace workerpool {

struct YamlNode::Impl {
  YAML::Node node;

  static YamlNode Wrap(const YAML::Node& node) {
    return YamlNode(std::make_shared<const Impl>(Impl{node}));
  }
};

namespace {

TextPosition PositionOf(const YAML::Mark& mark) {
  // yaml-cpp counts from 0, editors from 1.
  if (mark.is_null() || mark.line < 0) return TextPosition{};
  return TextPosition{mark.line + 1, mark.column + 1};
}

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

YamlNode::YamlNode() = default;
YamlNode::~YamlNode() = default;
YamlNode::YamlNode(const YamlNode&) = default;
YamlNode& YamlNode::operator=(const YamlNode&) = default;
YamlNode::YamlNode(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

bool YamlNode::IsNull() const { return impl_ && impl_->node.IsNull(); }
bool YamlNode::IsScalar() const { return impl_ && impl_->node.IsScalar(); }
bool YamlNode::IsList() const { return impl_ && impl_->node.IsSequence(); }
bool YamlNode::IsMap() const { return impl_ && impl_->node.IsMap(); }

const std::string& YamlNode::Scalar() const {
  static const std::string kNone;
  return impl_ ? impl_->node.Scalar() : kNone;
}

bool YamlNode::IsQuoted() const {
  if (!impl_) return false;
  const std::string& tag = impl_->node.Tag();
  return tag == "!" || tag == "tag:yaml.org,2002:str";
}

TextPosition YamlNode::Position() const {
  return impl_ ? PositionOf(impl_->node.Mark()) : TextPosition{};
}

std::size_t YamlNode::size() const { return impl_ ? impl_->node.size() : 0; }

YamlNode YamlNode::operator[](std::size_t index) const {
  const YAML::Node& node = impl_->node;  // const: reading adds no entry
  return Impl::Wrap(node[index]);
}

std::vector<std::pair<YamlNode, YamlNode>> YamlNode::Entries() const {
  std::vector<std::pair<YamlNode, YamlNode>> entries;
  if (!IsMap()) return entries;
  const YAML::Node& node = impl_->node;
  for (const auto& pair : node) {
    entries.emplace_back(Impl::Wrap(pair.first), Impl::Wrap(pair.second));
  }
  return entries;
}

std::optional<YamlError> ReadYamlDocument(
    const std::string& text, const YamlDocumentKind& kind,
    const std::function<void(const YamlNode& root)>& read) {
  // yaml-cpp reports failures by throwing; nothing may escape this module.
  try {
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
      return YamlError{PositionOf(counter.first_start),
                       "invalid YAML: no document can be read here; expected " +
                           std::string(kind.expected)};
    }
    if (counter.count > 1) {
      return YamlError{PositionOf(counter.second_start),
                       "holds more than one YAML document; " +
                           std::string(kind.name) +
                           " is one document (remove the '---' separators)"};
    }
    if (root.IsNull()) {
      return YamlError{
          {}, "the file is empty; expected " + std::string(kind.expected)};
    }
    read(YamlNode::Impl::Wrap(root));
    return std::nullopt;
  } catch (const YAML::DeepRecursion& error) {
    return YamlError{PositionOf(error.mark),
                     "invalid YAML: nested " + std::to_string(error.depth()) +
                         " levels deep; " + std::string(kind.name) +
                         " needs a handful"};
  } catch (const YAML::Exception& error) {
    return YamlError{PositionOf(error.mark), "invalid YAML: " + error.msg};
  } catch (const std::exception& error) {
    return YamlError{{}, std::string("cannot load: ") + error.what()};
  } catch (...) {
    return YamlError{{}, "cannot load: unexpected internal error"};
  }
}

}  // namespace workerpool
