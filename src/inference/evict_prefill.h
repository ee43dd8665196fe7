// Chunked parallel prefill for the eviction baselines (TOVA, H2O, window + sinks).
//
// Why: the baselines evict after every token, so the plain way to prefill them is one decode step per prompt token:
// an 8k-token prompt is 8k sequential model steps, and a long-context sweep of thousands of prompts does not fit
// in minutes. Here the prompts of n sequences (right-padded to the longest: causal attention keeps every real token
// blind to the padding after it) go through the model's one forward `chunk` tokens at a time. In each layer a
// chunk's queries attend to the slots the layer holds plus the chunk's own keys (causal); the slots are scored as
// the policy scores them and the best `budget` are kept:
//   TOVA    the attention weight of the row's last query in the chunk (mean over the group's query heads)
//   H2O     the accumulated weight of every query so far; the most recent budget/2 positions are always kept
//   window  the position; the first `sinks` positions are always kept
// chunk = 1 is the original token-by-token algorithm, the same computation as Decoder::step (tested equal up to
// float rounding). window + sinks is exact at every chunk: each query attends to exactly the sinks and the last
// budget - sinks tokens before it, what token-by-token eviction leaves it. It takes chunks of budget - sinks
// tokens: from p0 >= budget on, a chunk's attention is then three dense ones (the sinks; the held keys, causal
// with queries and keys reversed; the chunk, causal) merged by their log-sum-exp, FlashAttention-2 on CUDA, in
// place of a masked attention over budget + chunk keys with its [chunk, budget + chunk] mask built per layer (43% of
// the vanilla prefill rate on an H200); TOVA past the budget likewise attends to its held slots (all before the
// chunk) densely and to the chunk causally, merged. For TOVA and H2O a chunk > 1 lets the
// chunk's queries see up to budget + chunk slots and evicts once per chunk: the chunked approximation prefills in
// practice make (kvpress compresses once after the whole context); docs/results.md measures its effect.
//
// Layouts: ids [n, T_max] int64 on the model's device (row i real for its first lengths[i] tokens).
// Result per layer: k, v [n, nkv, S, hd] (rotated keys as the cache holds them, model dtype), pos [n, nkv, S] int64
// (-1 = empty), score [n, nkv, S] fp32 (accumulated attention weight); S <= budget, each row's held slots first,
// in the order their tokens came. last_hidden [n, hidden]: the final-norm hidden state of each row's last token.
//
//   EvictPrefillParams p{CachePolicy::Tova, /*budget=*/1024, /*sinks=*/4, /*chunk=*/128};
//   EvictPrefillResult r = evict_prefill(model, ids, lengths, p);
#pragma once
#include <torch/types.h>

#include <vector>

#include "inference/decoder.h"

namespace dmc {

struct EvictPrefillParams {
  CachePolicy policy = CachePolicy::Tova;  // tova | h2o | window
  int64_t budget = 0;                      // slots kept per (layer, sequence, KV head)
  int64_t sinks = 4;                       // window: first positions never evicted
  int64_t chunk = 128;                     // prompt tokens a forward (1 = token by token; window: see below)
};

struct EvictPrefillResult {
  std::vector<at::Tensor> k, v, pos, score;  // per layer, see above
  at::Tensor last_hidden;                    // [n, hidden]
};

EvictPrefillResult evict_prefill(const Llama& m, const at::Tensor& ids, const std::vector<int64_t>& lengths,
                                 const EvictPrefillParams& p);

// The chunk evict_prefill takes: p.chunk, but for window + sinks (exact at any chunk) budget - sinks (its banded
// form above; with no sinks, or a budget of sinks alone, or DMC_EVICT_DENSE=0 in the environment, at least the
// budget, the masked form throughout). A row's working set is this chunk plus the budget.
int64_t evict_prefill_chunk(const EvictPrefillParams& p);

}  // namespace dmc
