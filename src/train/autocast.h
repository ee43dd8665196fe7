// AutocastScope: bf16 autocast on CUDA for the lifetime of the object (a no-op when `enable` is false), with the
// cast cache cleared when the outermost scope ends. Used by the trainer and the training benchmark.
#pragma once
#include <ATen/autocast_mode.h>

namespace dmc::train {

struct AutocastScope {
  bool on;
  explicit AutocastScope(bool enable) : on(enable) {
    if (on) {
      at::autocast::set_autocast_enabled(at::kCUDA, true);
      at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
      at::autocast::increment_nesting();
    }
  }
  ~AutocastScope() {
    if (on) {
      if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
      at::autocast::set_autocast_enabled(at::kCUDA, false);
    }
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;
};

}  // namespace dmc::train
