// Running long-context task samples (tasks.h) through the engine under each cache policy: for every (policy, CR,
// length) the samples' prompts go through `generate` (parallel prefill into the paged cache, greedy decode with
// continuous batching, a sample stopping at EOS, at its output budget, or at a newline where its task says so),
// and each output is scored. Every policy sees the same prompts (the samples are made once).
//
//   TaskEvalOptions e; e.policies = {CachePolicy::Vanilla, CachePolicy::Window}; e.crs = {4};
//   nlohmann::json report = run_task_eval(model, tok, samples, e);   // {"runs": [...], "samples": [...]}
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "inference/decoder.h"
#include "inference/tasks.h"
#include "tokenizer/tokenizer.h"

namespace dmc {

struct TaskEvalOptions {
  std::vector<CachePolicy> policies = {CachePolicy::Vanilla};
  // eviction baselines: budget = ceil(length / cr) slots a head, one run per cr (vanilla and dmc run once)
  std::vector<double> crs = {4.0};
  int64_t sinks = 4;
  int64_t max_batch = 16;  // samples decoding together
  int64_t prefill_chunk = 128;     // eviction baselines: prompt tokens a prefill forward takes (DecoderOptions)
  int64_t prefill_tokens = 16384;  // joining prompts prefill together up to this many padded tokens
  int64_t page_size = 16;
  bool progress = true;  // a progress line with ETA on stderr
};

// Returns {"runs": [{policy, cr, budget_by_length, accuracy: {task: {length: percent}}, tokens_per_s, ...}],
//          "samples": [{task, length, index, seed, depth, expected, outputs: {run name: {text, score}}}]}.
nlohmann::json run_task_eval(const Llama& model, const Tokenizer& tok, const std::vector<TaskSample>& samples,
                             const TaskEvalOptions& o);
// Several reports (e.g. one per length, run as separate jobs) as one: runs of the same name joined (accuracy cells,
// budgets, times, token and cache counts summed, rates and achieved ratio recomputed), samples concatenated.
// names[i] labels report i in errors (a file name); a (run, task, length) cell given twice is an error.
nlohmann::json merge_task_reports(const std::vector<nlohmann::json>& reports, const std::vector<std::string>& names);
// The runs of a report as a text table per run: accuracy by task x length.
std::string task_eval_table(const nlohmann::json& report);
// Depth x length accuracy heatmaps (SVG, 0-100%) as NIAH papers draw them, one per (task, run):
// file name ("<task>.<run>.svg") -> SVG text.
std::map<std::string, std::string> task_heatmaps(const nlohmann::json& report);
// Writes the report as JSON to json_path and its heatmaps into heatmap_dir (each skipped when empty), atomically.
void save_task_report(const nlohmann::json& report, const std::string& json_path, const std::string& heatmap_dir);

}  // namespace dmc
