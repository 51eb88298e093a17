// A pool definition's document: the root mapping with its `pool` section
// and `groups` list, and the checks that need every group at once (unique
// names, routes_to, listen addresses that clash with the pool's own). Pure.
#pragma once

#include "core/config.h"
#include "core/config_reader.h"
#include "core/pool_model.h"
#include "core/yaml_node.h"

namespace workerpool::config_parser {

// Reads DOCUMENT, the root of a pool definition, into CONFIG; every error
// goes to ERRORS (CONFIG is only meaningful when there is none).
void ReadDocument(ErrorList* errors, const YamlNode& document,
                  const ConfigEnvironment& environment, PoolConfig* config);

}  // namespace workerpool::config_parser
