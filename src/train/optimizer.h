// AdamW over the model's fp32 parameters (the master weights; bf16 compute comes from autocast), with
// decoupled weight decay applied to matrices only unless decay_norms_and_embeddings is set. Runs the fused
// ATen kernel (_fused_adamw_) on CPU and CUDA, one call per weight-decay group. Global-norm gradient
// clipping. State (exp_avg, exp_avg_sq, step per parameter) round-trips through safetensors bit-exactly.
#pragma once
#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"

namespace dmc::train {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  bool decay_norms_and_embeddings = false;
};

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, at::Tensor*>> params, AdamWOptions o);
  // Scales gradients so that their global L2 norm is at most max_norm (0 = off); returns the norm before.
  double clip_grad_norm(double max_norm);
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return steps_; }
  io::NamedTensors state() const;
  // Restores state saved by state(); dmc::Error naming the file on a missing or mismatched entry.
  void load_state(const io::SafetensorsFile& f);

 private:
  struct Slot {
    std::string name;
    at::Tensor* p;
    at::Tensor m, v, step;
    bool decay;
  };
  std::vector<Slot> slots_;
  AdamWOptions o_;
  int64_t steps_ = 0;
};

// Learning rate at `step` (0-based): linear warmup to lr over warmup steps, then constant, cosine or linear
// decay to min_lr at total_steps.
struct LrSchedule {
  double lr = 3e-4, min_lr = 3e-5;
  int64_t warmup = 0, total = 1000;
  std::string shape = "cosine";  // constant | cosine | linear
  double at(int64_t step) const;
};

}  // namespace dmc::train
