#include "inference/sampler.h"

#include <ATen/CPUGeneratorImpl.h>

#include "common/error.h"

namespace dmc {

Sampler::Sampler(SamplingOptions o) : o_(o), gen_(at::detail::createCPUGenerator(o.seed)) {
  DMC_CHECK(o_.temperature >= 0, "temperature: must be >= 0, got ", o_.temperature);
  DMC_CHECK(o_.top_k >= 0, "top_k: must be >= 0, got ", o_.top_k);
  DMC_CHECK(o_.top_p > 0 && o_.top_p <= 1, "top_p: must be in (0, 1], got ", o_.top_p);
}

at::Tensor Sampler::sample(const at::Tensor& logits) {
  if (o_.temperature == 0) return logits.argmax(-1);
  at::Tensor l = logits.to(at::kCPU, at::kFloat) / o_.temperature;  // [B, V]
  const int64_t V = l.size(-1);
  if (o_.top_k > 0 && o_.top_k < V) {
    at::Tensor kth = std::get<0>(l.topk(o_.top_k, -1)).narrow(-1, o_.top_k - 1, 1);  // [B, 1]
    l = l.masked_fill(l < kth, -std::numeric_limits<float>::infinity());
  }
  if (o_.top_p < 1.0) {
    auto [sorted, idx] = l.sort(-1, /*descending=*/true);
    at::Tensor cum = sorted.softmax(-1).cumsum(-1);
    // drop a token when the mass before it already reaches top_p (the first token always stays)
    at::Tensor drop = (cum - sorted.softmax(-1)) >= o_.top_p;
    sorted = sorted.masked_fill(drop, -std::numeric_limits<float>::infinity());
    l = at::empty_like(l).scatter_(-1, idx, sorted);
  }
  at::Tensor probs = l.softmax(-1);
  at::Tensor ids = at::multinomial(probs, 1, false, gen_).squeeze(-1);
  return ids.to(logits.device());
}

}  // namespace dmc
