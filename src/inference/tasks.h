// Long-context task samples: the passkey test and RULER's needle-in-a-haystack and variable-tracking tasks, with
// the published prompt strings (the project's long-context-tasks definitions), sized in the model's own tokens.
//
// Each sample is one prompt (the task's input with its answer prefix appended) and the values its answer must
// contain. One seed fixes every sample (keys, values, depths, cut points), so every cache policy scores the same
// prompts. The haystack grows or shrinks (binary search over its size) until tokens(prompt) + the task's output
// budget fits the target length; needle depths are spread evenly over [0, 1] across a task's samples and recorded.
//
//   TaskOptions o; o.tasks = {"passkey", "niah_single_2"}; o.lengths = {4096}; o.samples = 20;
//   o.essays = documents;                     // held-out text for the essay haystacks
//   for (const TaskSample& s : make_task_samples(tok, o)) { ... decode s.prompt ...; score_task(s, output); }
//
// Keys are adjective-noun pairs from dmc's own word lists (task_key_words(): common English adjectives and nouns
// written for dmc), values 7-digit numbers, UUID4 strings or 5-digit numbers (vt).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace dmc {

struct TaskOptions {
  std::vector<std::string> tasks;  // passkey, niah_single_1..3, niah_multikey_1..2, niah_multivalue,
                                   // niah_multiquery, vt
  std::vector<int64_t> lengths;    // target prompt + output lengths in tokens
  int64_t samples = 20;            // per (task, length)
  uint64_t seed = 0;
  std::vector<std::string> essays;  // documents for the essay haystacks (held-out text), needed by the essay tasks
  bool chat = false;                // wrap the input in the tokenizer's chat template (the answer prefix follows)
  int64_t threads = 0;              // threads building the samples (0 = every core); the samples do not depend on it
};

struct TaskSample {
  std::string task;
  int64_t length = 0;         // the target length
  int64_t index = 0;          // sample number within (task, length)
  uint64_t seed = 0;          // this sample's own seed (derived from the run's seed, task, length and index)
  double depth = 0;           // needle depth in [0, 1] (the first needle's, for several)
  std::string prompt;         // the full prompt text, answer prefix included
  int64_t prompt_tokens = 0;  // tokens(prompt) with the tokenizer it was sized by
  int64_t max_new_tokens = 0;
  bool stop_at_newline = false;
  std::vector<std::string> expected;  // the values the output must contain
};

// The known task names, in the order above.
const std::vector<std::string>& task_names();
// Throws dmc::Error naming the task / length / option for bad input (unknown task, samples <= 0, a length too
// short for the task's fixed text, an essay task without essays).
std::vector<TaskSample> make_task_samples(const Tokenizer& tok, const TaskOptions& o);
// passkey: 1 if the first run of digits in the output equals the key; RULER tasks (string_match_all): the mean
// over expected values of [value occurs in the output, case-insensitively].
double score_task(const TaskSample& s, const std::string& output);
// The built-in key word lists (adjectives, nouns).
const std::vector<std::string>& task_adjectives();
const std::vector<std::string>& task_nouns();

}  // namespace dmc
