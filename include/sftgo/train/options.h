// Config -> module options: the one place where YAML-level settings become each module's plain
// option struct (the trainer and the app's data/groups subcommands share it).
#pragma once

#include "sftgo/config/config.h"
#include "sftgo/data/dataset.h"
#include "sftgo/grouping/grouping.h"

namespace sftgo::train {

data::DataOptions data_options(const Config& config);
grouping::GroupingOptions grouping_options(const Config& config);

// train.precision
enum class Precision {
  kFp32,          // fp32 weights, compute and AdamW state
  kBf16,          // bf16 weights and compute; fp32 master weights and AdamW state
  kBf16Autocast,  // fp32 weights and AdamW state; forward and loss in bf16 under LibTorch autocast
};
Precision parse_precision(const std::string& name);  // kConfig on an unknown name

// loss.lambda_schedule with its values: static lambda, or linear decay from lambda_max to lambda_min.
struct LambdaSchedule {
  bool decay = false;
  double lambda = 0.5, lambda_max = 0.5, lambda_min = 0.5;
  double at(int64_t step, int64_t total_steps) const;  // the lambda of 0-based optimizer step `step`
};
LambdaSchedule lambda_schedule(const Config& config);

}  // namespace sftgo::train
