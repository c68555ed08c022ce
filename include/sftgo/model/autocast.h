// Autocast regions in C++ (train.precision: bf16_autocast): what torch.autocast does on entry and exit.
#pragma once

#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace sftgo::model {

// RAII autocast region for one device type, the C++ form of `with torch.autocast(device, dtype)`:
// enter sets the flag, the dtype and the weight-cast cache switch and increments the nesting count;
// exit clears the cast cache when the outermost region closes (the cached bf16 weight copies must not
// outlive the weights' next update) and restores the previous state. `enabled = false` opens a region
// with autocast switched off (torch.autocast(..., enabled=False)); code that wants no region at all
// (fp32 and bf16 runs) constructs no guard.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype, bool enabled = true, bool cache = true)
      : device_(device) {
    prev_enabled_ = at::autocast::is_autocast_enabled(device_);
    prev_dtype_ = at::autocast::get_autocast_dtype(device_);
    prev_cache_ = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_enabled(device_, enabled);
    at::autocast::set_autocast_dtype(device_, dtype);
    at::autocast::increment_nesting();
    at::autocast::set_autocast_cache_enabled(cache);
  }
  ~AutocastGuard() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, prev_enabled_);
    at::autocast::set_autocast_dtype(device_, prev_dtype_);
    at::autocast::set_autocast_cache_enabled(prev_cache_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool prev_enabled_ = false;
  c10::ScalarType prev_dtype_ = c10::kFloat;
  bool prev_cache_ = true;
};

// The calling thread's autocast state for CPU and CUDA. Activation checkpointing captures it when a
// block runs forward and re-enters it for the block's recomputation in backward, which runs after
// the forward's region has closed (as torch.utils.checkpoint does).
struct AutocastState {
  bool cpu = false;
  bool cuda = false;
  c10::ScalarType cpu_dtype = c10::kBFloat16;
  c10::ScalarType cuda_dtype = c10::kHalf;

  static AutocastState current() {
    AutocastState s;
    s.cpu = at::autocast::is_autocast_enabled(c10::DeviceType::CPU);
    s.cuda = at::autocast::is_autocast_enabled(c10::DeviceType::CUDA);
    s.cpu_dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CPU);
    s.cuda_dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CUDA);
    return s;
  }
};

}  // namespace sftgo::model
