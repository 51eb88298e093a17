// One entry of a pool definition's `groups` list: its keys, its restart
// and rabbitmq sections, and the rules that depend on its type. Checks that
// need every group (names, routes, listen clashes) are config_document.h's.
// Pure; a group's `user` is resolved through the injected lookup.
#pragma once

#include <cstddef>

#include "core/config.h"
#include "core/config_reader.h"
#include "core/pool_model.h"
#include "core/yaml_node.h"

namespace workerpool::config_parser {

// Where a group's parts are in the file, for the checks that need every
// group (names, routes).
struct GroupSource {
  bool name_ok = false;
  bool type_ok = false;
  TextPosition name_position;
  YamlNode routes_to;  // the list; no node when absent or invalid
  YamlNode listen;     // the list; no node when absent or invalid
  YamlNode depends_on;  // the list; no node when absent or invalid
  // autoscale.min of a job group whose min and max are valid; no node
  // otherwise (for the check of min 0 across groups).
  YamlNode autoscale_min;
};

// Reads NODE, groups[INDEX], into GROUP; errors go to ERRORS. SOURCE gets
// where its parts are, for the checks across groups.
void ReadGroup(ErrorList* errors, const YamlNode& node, std::size_t index,
               const ConfigEnvironment& environment, GroupConfig* group,
               GroupSource* source);

}  // namespace workerpool::config_parser
