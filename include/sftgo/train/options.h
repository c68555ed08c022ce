// Config -> module options: the one place where YAML-level settings become each module's plain
// option struct (the trainer and the app's data/groups subcommands share it).
#pragma once

#include "sftgo/config/config.h"
#include "sftgo/data/dataset.h"
#include "sftgo/grouping/grouping.h"
#include "sftgo/model/config.h"

namespace sftgo::train {

data::DataOptions data_options(const Config& config);
grouping::GroupingOptions grouping_options(const Config& config);
// model.preset's shape with the model.* overrides (hidden_size, num_layers, ...; -1 keeps the preset's):
// the random-init model set-up builds and the shape the memory planner counts.
model::LlamaConfig preset_shape(const Config& config);

// train.precision is a policy, not an enum: train/precision.h.

// loss.lambda_schedule with its values: static lambda, or linear decay from lambda_max to lambda_min.
struct LambdaSchedule {
  bool decay = false;
  double lambda = 0.5, lambda_max = 0.5, lambda_min = 0.5;
  double at(int64_t step, int64_t total_steps) const;  // the lambda of 0-based optimizer step `step`
};
LambdaSchedule lambda_schedule(const Config& config);

}  // namespace sftgo::train
