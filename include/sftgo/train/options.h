// Config -> module options: the one place where YAML-level settings become each module's plain
// option struct (the trainer and the app's data/groups subcommands share it).
#pragma once

#include "sftgo/config/config.h"
#include "sftgo/data/dataset.h"
#include "sftgo/grouping/grouping.h"

namespace sftgo::train {

data::DataOptions data_options(const Config& config);
grouping::GroupingOptions grouping_options(const Config& config);

}  // namespace sftgo::train
