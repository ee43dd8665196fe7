// Perplexity of a token stream with a sliding window, exactly as the transformers documentation computes it:
// windows of seq_len tokens start every `stride` tokens; each window scores only the tokens not scored by the
// previous one (the first window scores all but its first token), each predicted from its window's context.
//   ppl = exp(sum of NLL / number of scored tokens)
#pragma once
#include <vector>

#include "model/llama.h"

namespace dmc {

struct PplOptions {
  int64_t seq_len = 1024;
  int64_t stride = 0;  // 0 = seq_len (disjoint windows)
  bool progress = true;
};

struct PplResult {
  double nll_sum = 0;
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double seconds = 0;
  double nll() const { return tokens_scored ? nll_sum / tokens_scored : 0; }
  double ppl() const;
};

PplResult perplexity(const Llama& model, const std::vector<int64_t>& tokens, const PplOptions& opts);

}  // namespace dmc
