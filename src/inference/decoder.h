// The decode engine: token-by-token decoding of many sequences through the paged cache, vanilla or DMC
// (dmc-spec section 5 with section 9's fixes: the window W from the config, fp32 running sums, GQA), plus the
// training-free eviction baselines (TOVA, H2O, sliding window with attention sinks) in the same cache.
//
// A step runs its per-layer work as batched device operations (inference/decode_ops.h): the fused DMC state
// update + cache write, and the paged attention; on CUDA these are the kernels, elsewhere the ATen reference.
// The host only builds the step's small index tensors and checks, with one read-back per step, that the pool
// can take the worst case (every row crossing a page), so a step never fails half-way.
//
// Per (layer, sequence, KV head) DMC state: see DmcState. For a token at position t: alpha = 0 at t = 0 or a
// document start, else sigmoid(k[D-1] - c) > 0.5; omega = sigmoid(mean of the group's q[D-1] + c) + eps;
// g = alpha g + 1; acc = alpha acc + entry, minus the ring entry written W tokens ago when g > W; the slot holds
// (acc_k / acc_w rotated at t with dim D-1 dropped, acc_v / acc_w): a merge overwrites the head's last slot, an
// append opens one.
//
// Baselines (policy tova | h2o | window; the model's own DMC decisions are not used): every token is appended;
// once a head holds budget + 1 slots one slot is evicted after the step's attention: TOVA the slot with the
// lowest attention weight of the current query (mean over the group's query heads), H2O the lowest accumulated
// weight outside the most recent budget/2 slots, window the oldest slot that is not one of the first `sinks`
// positions. They use the reference attention (which yields the weights); their speed is not a target.
//
//   Decoder dec(model, opts);                        // opts.max_seqs = 4, opts.page_size = 16, ...
//   at::Tensor l0 = dec.prefill(0, prompt);          // [vocab]
//   at::Tensor logits = dec.step({0, 1}, {id0, id1}); // [2, vocab]
//   dec.free(0);
#pragma once
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ops/decode_ops.h"
#include "inference/gemm_rows.h"
#include "ops/paged_cache.h"
#include "model/llama.h"

namespace dmc {

// The cache policy of the engine, parsed once from its name where a setting is read (parse_cache_policy: "auto",
// "vanilla", "dmc", "tova", "h2o", "window"; anything else is an error naming `field`). Auto = dmc for a DMC model,
// else vanilla (the Decoder resolves it).
enum class CachePolicy { Auto, Vanilla, Dmc, Tova, H2O, Window };
CachePolicy parse_cache_policy(const std::string& name, const std::string& field = "cache policy");
std::string cache_policy_name(CachePolicy p);
// tova, h2o and window evict slots (the training-free baselines)
inline bool evicts(CachePolicy p) {
  return p == CachePolicy::Tova || p == CachePolicy::H2O || p == CachePolicy::Window;
}

struct DecoderOptions {
  int64_t max_seqs = 1;
  int64_t page_size = 16;
  int64_t n_pages = 0;              // 0: from memory_budget_bytes, or else room for max_seqs full sequences
  int64_t memory_budget_bytes = 0;  // pages only (the DMC state and tables are on top; see state_bytes())
  // vanilla | dmc | tova | h2o | window; "auto" = dmc for a DMC model, else vanilla
  CachePolicy policy = CachePolicy::Auto;
  int64_t budget = 0;       // tova / h2o / window: slots per (layer, sequence, head)
  int64_t sinks = 4;        // window: first positions never evicted
  // tova / h2o / window: prompt tokens a prefill forward takes (inference/evict_prefill.h): 1 = token by token, the
  // original algorithms; window is exact at any chunk (and takes budget - sinks: evict_prefill_chunk), TOVA and
  // H2O evict once per chunk
  int64_t prefill_chunk = 128;
  int64_t force_cr = 0;     // dmc: benchmark-only decision policy (see DecodeUpdateParams)
  bool use_kernels = true;  // CUDA kernels when the model is on a GPU (else the reference ops)
  // CUDA graphs of the whole step per batch bucket <= graph_max_batch (kernels path, no TP): the first step of a
  // bucket runs eagerly, the second captures, later ones replay. Small batches are bound by ~500 kernel launches a
  // step; large ones lose the gaps between kernels. All graphs share one memory pool.
  bool cuda_graphs = true;
  // the eviction baselines' steps as graphs too (their attention and eviction in ATen ops, ~50 launches a layer,
  // captured at a bound of budget + 1 slots); the environment's DMC_EVICT_GRAPHS=0 turns this off
  bool evict_graphs = true;
  // eager steps padded to the graph's batch bucket and bound, as a captured step runs: the padded step on any
  // device (tests; the CPU reference ops take padding rows as the kernels do)
  bool pad_steps = false;
  int64_t graph_max_batch = 512;
  // graphs are captured for batch buckets, as vLLM's capture sizes: 1, 2, 4, ... below graph_batch_step, then its
  // multiples (up to graph_max_batch); a step of n sequences replays the smallest bucket >= n with padding rows.
  // 1 = a graph per exact batch size.
  int64_t graph_batch_step = 8;
  // pad the step's GEMM rows to the fastest of n and n rounded up to 32 / 64 / 128, timed once per batch size and
  // weight shape on the GPU (inference/gemm_rows.h)
  bool gemm_row_tuning = true;
};

class Decoder {
 public:
  Decoder(const Llama& model, const DecoderOptions& o);
  // One token for each listed sequence (each at its own next position). doc_start[i] forces an append.
  // Returns logits [n, vocab]. dmc::Error when the pool may not suffice (the sequences' state is unchanged then).
  at::Tensor step(const std::vector<int64_t>& seqs, const std::vector<int64_t>& ids,
                  const std::vector<bool>& doc_start = {});
  // Parallel prefill: the whole prompt in one eval-mode forward, then the cache built from its hard decisions
  // (each group's last merged key/value) and the DMC state (sums, ring, group length) set as if the prompt had
  // been decoded token by token. Returns the logits of the last prompt token [vocab]. The sequence must be empty.
  // Eviction baselines prefill in chunks of prefill_chunk tokens (inference/evict_prefill.h).
  at::Tensor prefill(int64_t seq, const std::vector<int64_t>& prompt);
  // The same for n empty sequences at once, their prompts right-padded to the longest in one forward (causal
  // attention keeps each real token blind to the padding; a row's answer does not depend on its batch, tested).
  // Returns [n, vocab]. Fails before writing anything when the pool cannot hold every prompt.
  at::Tensor prefill(const std::vector<int64_t>& seqs, const std::vector<std::vector<int64_t>>& prompts);
  void free(int64_t seq);
  int64_t position(int64_t seq) const { return pos_[seq]; }
  // Slots of one (layer, sequence, KV head) (syncs).
  int64_t slots(int64_t layer, int64_t seq, int64_t head) const { return cache_.length(cache_.row(layer, seq, head)); }
  // Slots per [layer, kv head] of one sequence (one read-back).
  at::Tensor slot_counts(int64_t seq) const;
  // Pages the next step of these sequences may need at most, and whether the pool has them (one read-back).
  bool can_step(const std::vector<int64_t>& seqs) const;
  // {pages the next step of these sequences may need, free pages} (one read-back; {0, free} for no sequences).
  std::pair<int64_t, int64_t> step_need(const std::vector<int64_t>& seqs) const;
  // Pages a new sequence's prompt (and its first decode step) needs at most (vanilla count: DMC merges only lower it).
  int64_t pages_for_prompt(int64_t prompt_len) const;
  // Tokens one prompt of prompt_len stands for in a batched prefill's working set: the whole prompt for vanilla
  // and DMC (one forward over it), at most chunk + budget for the eviction baselines (a chunk's forward attends
  // to the kept slots plus itself). generate() groups joining prompts by this against its prefill_tokens bound.
  int64_t prefill_tokens_for(int64_t prompt_len) const;
  // Benchmark only: leaves the sequences as if prompts of prompt_len tokens had been prefilled, with random cache
  // contents and DMC state; slot counts follow the policy (vanilla: one per token; dmc: force_cr's pattern, which
  // it requires). Lets a throughput run at long contexts skip hours of prefill for hundreds of sequences.
  void bench_fill(const std::vector<int64_t>& seqs, int64_t prompt_len);
  // Eviction baselines: the positions held by one (layer, sequence, KV head), in slot order.
  std::vector<int64_t> slot_positions(int64_t layer, int64_t seq, int64_t head) const;
  const PagedKVCache& cache() const { return cache_; }
  PagedKVCache& cache() { return cache_; }
  CachePolicy policy() const { return policy_; }  // resolved: never Auto
  // Device bytes of the per-row state besides the pages (DMC sums and ring, tables, baseline slot metadata).
  // Equals rows x state_bytes_per_row(...) + 4 bytes per page of the free-page stack (plus its scratch entry), and
  // for the eviction baselines one scratch row of slot metadata (padding rows' writes).
  int64_t state_bytes() const;
  // The state one (layer, sequence, KV head) row takes besides its pages, for a model of config c under `policy`
  // (budget: the eviction baselines' slots): the one formula benchmarks size equal-memory batches with.
  static int64_t state_bytes_per_row(const LlamaConfig& c, CachePolicy policy, int64_t budget, int64_t page_size,
                                     at::ScalarType dtype);
  bool using_kernels() const { return kernels_; }
  // The step's GEMMs with their row choices (benchmarks time the projections alone through it).
  GemmRows& gemm_rows() { return gemm_; }
  int64_t graphs_captured() const;

 private:
  friend class PagedDecodeAttention;  // the step's attention (decoder.cpp) works on the cache and state below
  void evict(int64_t layer, const at::Tensor& seq_t, const at::Tensor& pos_t, const at::Tensor& probs);
  // The device work of a step, the model's forward with the paged attention: ids, seq, pos [n] int64, forced [n]
  // bool -> logits [n, vocab].
  at::Tensor run_step(const at::Tensor& ids_t, const at::Tensor& seq_t, const at::Tensor& pos_t,
                      const at::Tensor& forced_t, int64_t max_len);
  struct Graph;  // a captured step of one batch size
  std::map<int64_t, std::shared_ptr<Graph>> graphs_;
  // the memory pool every captured step shares (replays run one at a time and their logits are copied out at once)
  std::pair<unsigned long long, unsigned long long> graph_pool_{0, 0};

  const Llama& m_;
  DecoderOptions o_;
  GemmRows gemm_;
  CachePolicy policy_;
  bool dmc_, kernels_;
  bool graphs_on_ = false;  // steps run as CUDA graphs (see DecoderOptions::cuda_graphs, evict_graphs)
  PagedKVCache cache_;
  DmcState st_;
  at::Tensor cos_, sin_;              // [max_pos, D] fp32
  at::Tensor slot_pos_, slot_score_;  // baselines: [R + 1, budget + 1] int64 position / fp32 accumulated weight
                                      // (row R: the scratch row of padding rows' writes)
  std::vector<int64_t> pos_;
};

// The CUDA-graph batch bucket of a step of n sequences (see DecoderOptions::graph_batch_step).
int64_t graph_bucket(int64_t n, int64_t step, int64_t max_batch);

// Model rows of the KV cache and how many pages the pool gets when DecoderOptions leaves it open.
PagedCacheOptions decoder_cache_options(const Llama& m, const DecoderOptions& o);

}  // namespace dmc
