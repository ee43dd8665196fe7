// AdamW over the model's fp32 parameters (the master weights; bf16 compute comes from autocast), with
// decoupled weight decay applied to matrices only unless decay_norms_and_embeddings is set. Runs the fused
// ATen kernel (_fused_adamw_) on CPU and CUDA, one call per weight-decay group. Global-norm gradient
// clipping. State (exp_avg, exp_avg_sq, step per parameter) round-trips through safetensors bit-exactly.
#pragma once
#include <torch/types.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "dist/dist.h"
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
  // Under tensor parallelism the norm covers every shard (sharded parameters summed over the group, replicated
  // ones counted once).
  double clip_grad_norm(double max_norm);
  void set_tensor_parallel(const Group* tp, std::function<bool(const std::string&)> is_sharded);
  void step(double lr);
  // Rows `rows` (dim 0, int64) of parameter `name` learn at mult x the rate step() is given: after the fused update,
  // those rows take (mult - 1) more of the same bias-corrected Adam step (weight decay stays at the base rate).
  // Used for the DMC decision neurons, which a retrofit far shorter than the reference's must move further
  // (train/stages.h). mult = 1 removes it. dmc::Error on an unknown name or a row out of range.
  void set_row_lr(const std::string& name, const at::Tensor& rows, double mult);
  void zero_grad();
  int64_t steps() const { return steps_; }
  // State tensors; `whole` (optional) turns a parameter's local state into the whole tensor (tensor parallel).
  io::NamedTensors state(const std::function<at::Tensor(const std::string&, const at::Tensor&)>& whole = nullptr) const;
  // Restores state saved by state(); `shard` (optional) cuts a whole tensor to this rank's part. dmc::Error naming
  // the file on a missing or mismatched entry.
  void load_state(const io::SafetensorsFile& f,
                  const std::function<at::Tensor(const std::string&, const at::Tensor&)>& shard = nullptr);

 private:
  struct Slot {
    std::string name;
    at::Tensor* p;
    at::Tensor m, v, step;
    bool decay;
    at::Tensor lr_rows;  // set_row_lr: rows of p with lr_mult x the learning rate
    double lr_mult = 1.0;
  };
  std::vector<Slot> slots_;
  AdamWOptions o_;
  int64_t steps_ = 0;
  const Group* tp_ = nullptr;
  std::function<bool(const std::string&)> sharded_;
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
