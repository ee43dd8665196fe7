// What a DMC model's decisions do to the needles of the long-context tasks, per layer and KV head: whether each
// occurrence of an expected value in a prompt keeps slots of its own (its first token starts a new slot and the token
// after it does not merge into the needle's last slot) or is averaged together with the text around it. The task
// scores say that a retrofitted model lost a needle; this says which heads blended it away. The decisions are the
// parallel forward's hard ones (eval mode), which equal the paged-cache engine's (tests/test_model.cpp, perplexity).
//
//   NeedleStats s = needle_stats(model, tok, samples);   // samples from make_task_samples
//   s.isolated[l][h]    fraction of needle occurrences layer l / KV head h keeps in slots of their own
//   s.merge_rate[l][h]  fraction of all prompt tokens that head merges into the slot before (1 - 1 / CR)
//
// An occurrence is located in decode(ids) (so the text and the token offsets agree whatever the tokenizer normalises)
// and mapped to tokens by binary search over decoded prefix lengths. Samples without a located value are counted in
// `unlocated` and left out.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inference/tasks.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace dmc {

struct NeedleStats {
  std::vector<std::vector<double>> isolated;    // [layers][kv heads]
  std::vector<std::vector<double>> merge_rate;  // [layers][kv heads]
  int64_t prompts = 0, occurrences = 0, unlocated = 0;
};

// The token span [begin, end) of ids (BOS included at 0 when the encoding added one) that covers the characters
// [char_begin, char_end) of decode(ids); {-1, -1} when those characters lie outside it.
std::pair<int64_t, int64_t> token_span(const Tokenizer& tok, const std::vector<int64_t>& ids, size_t char_begin,
                                       size_t char_end);
// Throws dmc::Error when the model is not a DMC model. The values are located on `threads` threads (0 = the
// hardware's); the result does not depend on it.
NeedleStats needle_stats(const Llama& model, const Tokenizer& tok, const std::vector<TaskSample>& samples,
                         bool progress = true, int64_t threads = 0);
nlohmann::json needle_stats_json(const NeedleStats& s);
// One line for a console: the % of needle values kept in slots of their own, by layer (mean over KV heads).
std::string needle_stats_line(const NeedleStats& s);

}  // namespace dmc
