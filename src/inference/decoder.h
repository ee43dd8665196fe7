// Token-by-token decoding through the paged cache, vanilla or DMC (dmc-spec section 5 with section 9's fixes:
// the window W from the config, fp32 running sums, GQA). This is the plain reference path: host loops over
// sequences, ATen ops per layer; the parallel eval-mode forward must agree with it.
//
// Per (layer, sequence, KV head) DMC state: acc [2D + 1] fp32 = running sums of (w k, w v, w) over the current
// group's last <= W tokens; ring [W, 2D + 1] of the weighted entries, indexed by position mod W; group length g.
// For a token at position t: alpha = 0 at t = 0 or a document start, else sigmoid(k[D-1] - c) > 0.5;
// omega = sigmoid(mean of the group's q[D-1] + c) + eps; g = alpha g + 1; acc = alpha acc + entry, minus the ring
// entry written W tokens ago when g > W; the slot holds (acc_k / acc_w rotated at t with dim D-1 dropped,
// acc_v / acc_w): a merge overwrites the head's last slot, an append opens one.
//
//   Decoder dec(model, {.max_seqs = 4, .page_size = 16, .n_pages = 1024});
//   at::Tensor logits = dec.step({0, 1}, {id0, id1});   // [2, vocab]
#pragma once
#include <torch/types.h>

#include <vector>

#include "inference/paged_cache.h"
#include "model/llama.h"

namespace dmc {

struct DecoderOptions {
  int64_t max_seqs = 1;
  int64_t page_size = 16;
  int64_t n_pages = 0;  // 0 = enough for max_seqs x max_position_embeddings without compression
};

class Decoder {
 public:
  Decoder(const Llama& model, const DecoderOptions& o);
  // One token for each listed sequence (each at its own next position). doc_start[i] forces an append.
  // Returns logits [n, vocab]. dmc::Error when the pool is exhausted (the sequences' state is unchanged then).
  at::Tensor step(const std::vector<int64_t>& seqs, const std::vector<int64_t>& ids,
                  const std::vector<bool>& doc_start = {});
  // Parallel prefill: the whole prompt in one eval-mode forward, then the cache built from its hard decisions
  // (each group's last merged key/value) and the DMC state (sums, ring, group length) set as if the prompt had
  // been decoded token by token. Returns the logits of the last prompt token [vocab]. The sequence must be empty.
  at::Tensor prefill(int64_t seq, const std::vector<int64_t>& prompt);
  void free(int64_t seq);
  int64_t position(int64_t seq) const { return pos_[seq]; }
  int64_t slots(int64_t layer, int64_t seq, int64_t head) const { return cache_.length(cache_.row(layer, seq, head)); }
  const PagedKVCache& cache() const { return cache_; }

 private:
  const Llama& m_;
  DecoderOptions o_;
  bool dmc_;
  PagedKVCache cache_;
  std::vector<int64_t> pos_;
  at::Tensor acc_;                   // [L, S, nkv, 2D+1] fp32
  at::Tensor ring_;                  // [L, S, nkv, W, 2D+1] fp32
  std::vector<int64_t> group_;       // [L * S * nkv]
};

}  // namespace dmc
