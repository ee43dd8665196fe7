// Sampler: next-token choice from logits [batch, vocab]. temperature 0 = greedy (argmax, on the device,
// no host sync); otherwise temperature, then top-k, then top-p (nucleus) filtering, then a draw from a seeded
// CPU generator, so the same seed gives the same tokens on CPU and GPU.
#pragma once
#include <ATen/core/Generator.h>
#include <torch/types.h>

namespace dmc {

struct SamplingOptions {
  double temperature = 0.0;
  int64_t top_k = 0;   // 0 = off
  double top_p = 1.0;  // 1 = off
  uint64_t seed = 1234;
};

class Sampler {
 public:
  explicit Sampler(SamplingOptions o);
  // logits [batch, vocab] -> ids [batch] int64 on the logits' device.
  at::Tensor sample(const at::Tensor& logits);

 private:
  SamplingOptions o_;
  at::Generator gen_;
};

}  // namespace dmc
