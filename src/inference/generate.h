// Vanilla autoregressive generation with the plain contiguous KV cache: one parallel prefill of the prompts,
// then one token per step for every sequence of the batch.
//   prompts: equal-length token lists (a batch)      result.tokens[b]: the generated ids of sequence b
#pragma once
#include <functional>
#include <vector>

#include "inference/sampler.h"
#include "model/llama.h"

namespace dmc {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  bool stop_at_eos = true;  // a sequence stops after producing an EOS id; the batch stops when all have
  SamplingOptions sampling;
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> tokens;
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t decode_steps = 0;  // steps after the prefill (each produces one token per sequence)
};

// on_token(b, id) is called for every new token when given (this syncs with the device every step).
GenerateResult generate(const Llama& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts,
                        const std::function<void(int64_t, int64_t)>& on_token = nullptr);

}  // namespace dmc
