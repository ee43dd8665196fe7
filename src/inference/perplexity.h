// Perplexity of a token stream with a sliding window, exactly as the transformers documentation computes it:
// windows of seq_len tokens start every `stride` tokens; each window scores only the tokens not scored by the
// previous one (the first window scores all but its first token), each predicted from its window's context.
//   ppl = exp(sum of NLL / number of scored tokens)
// A DMC model (config.dmc.enabled) runs its parallel eval-mode forward: hard decisions, merged keys, the bias.
#pragma once
#include <vector>

#include "model/llama.h"

namespace dmc {

struct PplOptions {
  int64_t seq_len = 1024;
  int64_t stride = 0;  // 0 = seq_len (disjoint windows)
  bool progress = true;
  // parallel: one forward per window (DMC models: eval mode); incremental: token by token through the paged
  // cache (inference/decoder.h), the path generation uses. Both must agree.
  std::string mode = "parallel";
  // incremental only: the cache policy of the decode engine (auto | vanilla | dmc | tova | h2o | window) and, for
  // the eviction baselines, the slots per head: `budget`, or else ceil(seq_len / cr)
  std::string cache = "auto";
  int64_t budget = 0;
  double cr = 0;
  int64_t sinks = 4;
  int64_t batch = 16;  // incremental: windows decoded together (one sequence each); the result does not depend on it
};

struct PplResult {
  double nll_sum = 0;
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double seconds = 0;
  // DMC models (config.dmc.enabled): eval-mode forward (hard decisions); per [layer][kv_head] token and KV-slot
  // counts over all windows. Achieved compression ratio = tokens / slots.
  std::vector<std::vector<double>> head_tokens, head_slots;
  double cr() const;
  std::vector<std::vector<double>> cr_per_head() const;
  double nll() const { return tokens_scored ? nll_sum / tokens_scored : 0; }
  double ppl() const;
};

PplResult perplexity(const Llama& model, const std::vector<int64_t>& tokens, const PplOptions& opts);

// Each token's log-probability given the ones before it, from the same parallel forward as `perplexity` (a DMC
// model in eval mode: its compressed-cache predictions), for tokens 1..T-1 of ids (token 0 has none), with the
// top_k most likely alternatives at each position. What a server's echo + logprobs returns.
struct TokenLogprobs {
  std::vector<double> logprob;                                // [T - 1]
  std::vector<std::vector<std::pair<int64_t, double>>> top;  // [T - 1][top_k]
};
TokenLogprobs prompt_logprobs(const Llama& model, const std::vector<int64_t>& ids, int64_t top_k);

}  // namespace dmc
