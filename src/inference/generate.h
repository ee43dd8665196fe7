// Autoregressive generation through the decode engine (inference/decoder.h), vanilla or DMC, with continuous
// batching: up to max_batch sequences decode together; a request joins as soon as a sequence slot and the pages
// for its prompt are free (eviction baselines: in groups, see prefill_tokens; the prompts joining together go in
// one batched parallel prefill, at most
// prefill_tokens padded tokens at once), and leaves when it produces EOS or reaches
// max_new_tokens. When the pool cannot take the next step, the most recently admitted sequence is preempted
// (its pages freed) and requeued with what it generated so far, to be prefilled again later (vLLM's recompute).
//   prompts: token lists of any lengths     result.tokens[i]: the generated ids of prompt i
#pragma once
#include <functional>
#include <vector>

#include "inference/decoder.h"
#include "inference/sampler.h"
#include "model/llama.h"

namespace dmc {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  // per prompt (empty = max_new_tokens for all): each prompt's own budget, at most max_new_tokens
  std::vector<int64_t> max_new_per_prompt;
  bool stop_at_eos = true;  // a sequence stops after producing an EOS id
  // a sequence also stops after a token of this set (e.g. the ids whose text holds a newline), where stop_ids_for[i]
  // is true for prompt i (empty = none)
  std::vector<int64_t> stop_ids;
  std::vector<bool> stop_ids_for;
  // tokens that are not output yet (e.g. whitespace-only ones): a stop id ends a sequence only once it has produced
  // a token outside this set, so "stop at the first newline" skips newlines before the answer
  std::vector<int64_t> leading_ids;
  // measure the cache each finished sequence held (a device read each): GenerateResult::cache_tokens / slots
  bool measure_cache = false;
  SamplingOptions sampling;
  int64_t max_batch = 0;  // sequences decoding together (0 = all prompts)
  // joining prompts prefill together while (rows x longest prompt) stays within this (one prompt always may); an
  // eviction baseline's prompt counts as at most its prefill chunk + budget tokens (Decoder::prefill_tokens_for). An
  // eviction baseline's prefill costs a forward per chunk whatever its batch, so while sequences run, its prompts
  // join in groups of at least a quarter of what fits (or the rest of the queue), not one by one as slots free.
  int64_t prefill_tokens = 16384;
  // cache: pages from memory_budget_bytes, or n_pages, or (both 0) room for every sequence uncompressed
  DecoderOptions cache;
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> tokens;
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t decode_steps = 0;    // engine steps after prefills
  int64_t decoded_tokens = 0;  // tokens those steps produced (sum of the batch sizes)
  int64_t preemptions = 0;
  int64_t max_active = 0;      // the largest batch that ran
  int64_t prefill_groups = 0;  // batched prefills run (each a forward, or a forward per chunk for eviction)
  // with measure_cache: over finished sequences, the (token, layer, KV head) entries their caches stood for and the
  // slots they held; the achieved compression ratio is cache_tokens / cache_slots
  double cache_tokens = 0, cache_slots = 0;
};

// on_token(i, id) is called for every new token of prompt i.
GenerateResult generate(const Llama& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts, const std::function<void(int64_t, int64_t)>& on_token = nullptr);

}  // namespace dmc
