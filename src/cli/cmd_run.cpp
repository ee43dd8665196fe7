// dmc generate / eval ppl: commands that run a model.
#include <algorithm>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/load.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/util.h"
#include "config/options.h"
#include "data/dataset.h"
#include "inference/generate.h"
#include "io/gguf.h"
#include "inference/perplexity.h"
#include "inference/task_eval.h"
#include "inference/needle_stats.h"
#include "inference/tasks.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

namespace dmc::cli {

int cmd_generate(const Args& a) {
  std::string model_dir, tok_path, prompt, prompt_file, device = "auto", dtype = "auto", system, chat_format = "auto";
  int64_t max_new = 64, top_k = 0, seed = 1234;
  double temperature = 0.8, top_p = 0.95;
  bool add_bos = true, chat = false;
  OptionTable t("generate",
                "dmc generate --model DIR|FILE.gguf [--tokenizer T] (--prompt TEXT | --prompt-file F) [--chat] [options]");
  t.add("model", &model_dir, "model directory (HF safetensors + config.json) or a .gguf file", true);
  t.add("tokenizer", &tok_path,
        "tokenizer.model, tokenizer.json, a .gguf or a directory (default: the model's own, from --model)");
  t.add("chat", &chat, "wrap the prompt in the model's chat template as a user message (instruct models)");
  t.add("system", &system, "--chat: the system message (default: the template's own, if any)");
  t.add("chat_format", &chat_format, "--chat: auto (from the tokenizer's template), chatml or llama2")
      .one_of({"auto", "chatml", "llama2"});
  t.add("prompt", &prompt, "prompt text");
  t.add("prompt_file", &prompt_file, "a UTF-8 file whose whole text is the prompt (as the seed's inference.sh takes)");
  t.add("max_new_tokens", &max_new, "tokens to generate").min(0);
  t.add("temperature", &temperature, "sampling temperature (0 = greedy)").min(0);
  t.add("top_k", &top_k, "keep the k most likely tokens (0 = off)").min(0);
  t.add("top_p", &top_p, "nucleus sampling mass (1 = off)").above(0).max(1);
  t.add("seed", &seed, "sampling seed");
  t.add("add_bos", &add_bos, "prepend the BOS token");
  t.add("device", &device, "cpu, cuda, cuda:N or auto");
  t.add("dtype", &dtype, "bf16, fp16, fp32 or auto (bf16 on CUDA, fp32 on CPU)");
  t.check([&] {
    DMC_CHECK(prompt.empty() != prompt_file.empty(), "generate: give one of --prompt TEXT or --prompt-file F");
  });
  t.parse(a);
  log::info(t.to_yaml());
  if (!prompt_file.empty()) {
    prompt = read_file(prompt_file, "generate: --prompt-file:");
    DMC_CHECK(!prompt.empty(), "generate: --prompt-file: '", prompt_file, "' is empty");
  }
  auto [tok, model] = load_model_and_tokenizer(model_dir, tok_path, device, dtype);
  GenerateOptions go;
  go.max_new_tokens = max_new;
  go.sampling = {temperature, top_k, top_p, (uint64_t)seed};
  std::vector<int64_t> ids;
  if (chat) {
    const ChatPrompt cp = apply_chat(tok, parse_chat_format(chat_format), system, prompt);
    ids = cp.ids(tok);
    std::cout << cp.text << std::flush;
  } else {
    ids = tok.encode(prompt, add_bos);
    std::cout << prompt << std::flush;
  }
  StreamDecoder stream(tok, ids);  // prompt + generated ids decoded together: the first piece keeps its space
  auto res = generate(model, {ids}, go, [&](int64_t, int64_t id) {
    if (id == tok.eos_id()) return;
    std::cout << stream.push(id) << std::flush;
  });
  std::cout << stream.flush() << std::endl;  // flushed before the closing log line (stderr)
  const double tps = res.decode_seconds > 0 ? res.decode_steps / res.decode_seconds : 0;
  log::info(cat("generated ", res.tokens[0].size(), " tokens; prefill ", res.prefill_seconds * 1e3, " ms, decode ", tps,
                " tokens/s"));
  return 0;
}

namespace {
// dmc eval tasks: long-context task samples (inference/tasks.h) through the engine under each cache policy.
int cmd_eval_tasks(const Args& a) {
  std::string model_dir, tok_path, haystack, data_dir, json_path, heatmaps, device = "auto", dtype = "auto";
  std::vector<std::string> tasks = task_names(), lengths = {"1024", "2048", "4096"}, caches = {"vanilla"}, crs = {"4"};
  int64_t samples = 20, seed = 0, sinks = 4, batch = 16, prefill_chunk = 128, prefill_tokens = 16384;
  bool chat = false, needles = false;
  OptionTable t("eval tasks",
                "dmc eval tasks --model M [--tokenizer T] --tasks passkey,niah_single_1,... --lengths 1024,4096 "
                "--samples N --cache vanilla,window --cr 4 [--haystack FILE] [--json OUT]");
  t.add("model", &model_dir, "model directory or a .gguf file", true);
  t.add("tokenizer", &tok_path, "tokenizer (default: the model's own)");
  t.add("tasks", &tasks, "comma-separated tasks").one_of(task_names());
  t.add("lengths", &lengths, "comma-separated target lengths in the model's tokens (prompt + output budget)");
  t.add("samples", &samples, "samples per (task, length)").min(1);
  t.add("seed", &seed, "one seed for every sample (every policy sees the same prompts)");
  t.add("cache", &caches, "comma-separated cache policies: vanilla, dmc, tova, h2o, window")
      .one_of({"vanilla", "dmc", "tova", "h2o", "window"});
  t.add("cr", &crs, "eviction baselines: comma-separated compression ratios (budget = ceil(length / cr))");
  t.add("sinks", &sinks, "window: first positions never evicted").min(0);
  t.add("batch", &batch, "samples decoding together (continuous batching)").min(1);
  t.add("prefill_chunk", &prefill_chunk,
        "tova / h2o: prompt tokens a prefill forward takes (1 = token by token); window + sinks, exact at any, "
        "takes budget - sinks (its banded attention)")
      .min(1);
  t.add("prefill_tokens", &prefill_tokens, "joining prompts prefill together up to this many (padded) tokens").min(1);
  t.add("chat", &chat, "wrap each input in the model's chat template (instruct models)");
  t.add("needles", &needles,
        "DMC model: also, per layer and KV head, how often each needle value keeps slots of its own and how many "
        "prompt tokens merge (the parallel forward's decisions over the same prompts; JSON 'needles', two heatmaps)");
  t.add("haystack", &haystack, "text for the essay haystacks (documents separated by blank lines): held-out text");
  t.add("data", &data_dir, "or: a `dmc data prepare` directory whose valid split (never trained on) gives the essays");
  t.add("json", &json_path, "write every sample (seed, depth, expected, outputs, scores) and the tables as JSON");
  t.add("heatmaps", &heatmaps, "write a depth x length accuracy heatmap (SVG) per (task, run) into this directory");
  t.add("device", &device, "cpu, cuda, cuda:N or auto");
  t.add("dtype", &dtype, "bf16, fp16, fp32 or auto");
  t.parse(Args(a.begin() + 1, a.end()));
  log::info(t.to_yaml());
  TaskOptions to;
  to.tasks = tasks;
  for (const auto& l : lengths) to.lengths.push_back(parse_int(l, "lengths"));
  to.samples = samples;
  to.seed = (uint64_t)seed;
  to.chat = chat;
  if (!haystack.empty()) {
    const std::string text = read_file(haystack, "haystack");
    size_t b = 0;
    for (size_t e; (e = text.find("\n\n", b)) != std::string::npos; b = e + 2)
      if (e > b) to.essays.push_back(text.substr(b, e - b));
    if (b < text.size()) to.essays.push_back(text.substr(b));
  }
  TaskEvalOptions eo;
  eo.policies.clear();
  for (const auto& c : caches) eo.policies.push_back(parse_cache_policy(c, "cache policy (--cache)"));
  eo.crs.clear();
  for (const auto& c : crs) {
    char* end = nullptr;
    const double v = std::strtod(c.c_str(), &end);
    DMC_CHECK(end && *end == 0 && v > 1.0, "--cr: expected numbers > 1, got '", c, "'");
    eo.crs.push_back(v);
  }
  eo.sinks = sinks;
  eo.max_batch = batch;
  eo.prefill_chunk = prefill_chunk;
  eo.prefill_tokens = prefill_tokens;
  DMC_CHECK(haystack.empty() || data_dir.empty(), "give --haystack or --data, not both");
  auto [tok, model] = load_model_and_tokenizer(model_dir, tok_path, device, dtype);
  if (!data_dir.empty()) {  // the held-out documents, decoded without their BOS / EOS
    auto split = data::TokenSplit::open(data_dir, "valid", tok.fingerprint(), model.config.vocab_size);
    std::vector<int64_t> starts = split->doc_starts_in(0, split->num_tokens());
    starts.push_back(split->num_tokens());
    for (size_t d = 0; d + 1 < starts.size(); ++d) {
      std::vector<int64_t> ids(starts[d + 1] - starts[d]);
      split->read(starts[d], (int64_t)ids.size(), ids.data());
      ids.erase(
          std::remove_if(ids.begin(), ids.end(), [&](int64_t id) { return id == tok.bos_id() || id == tok.eos_id(); }),
          ids.end());
      to.essays.push_back(tok.decode(ids));
    }
  }
  for (int64_t L : to.lengths)
    DMC_CHECK(L <= model.config.max_position_embeddings, "--lengths: ", L,
              " exceeds the model's max_position_embeddings (", model.config.max_position_embeddings, ")");
  const auto s = make_task_samples(tok, to);
  nlohmann::json report = run_task_eval(model, tok, s, eo);
  std::cout << task_eval_table(report) << std::flush;
  // the accuracies are saved before the needle statistics, which take as long again: a run stopped in them (a
  // deadline) keeps its scores
  save_task_report(report, json_path, heatmaps);
  if (needles) {
    const NeedleStats ns = needle_stats(model, tok, s);
    report["needles"] = needle_stats_json(ns);
    std::cout << needle_stats_line(ns) << "\n" << std::flush;
    save_task_report(report, json_path, heatmaps);
  }
  return 0;
}
}  // namespace

int cmd_eval(const Args& a) {
  if (!a.empty() && a[0] == "tasks") return cmd_eval_tasks(a);
  if (a.empty() || a[0] != "ppl") {
    if (!a.empty() && (a[0] == "-h" || a[0] == "--help")) {
      std::cout << "usage: dmc eval ppl --model DIR --tokenizer FILE --text FILE [options]\n";
      return 0;
    }
    fail("command line: expected 'dmc eval ppl ...' or 'dmc eval tasks ...'");
  }
  std::string model_dir, tok_path, text_path, data_dir, split = "valid", device = "auto", dtype = "auto", json_path;
  int64_t seq_len = 1024, stride = 0, max_tokens = 0;
  bool add_bos = true;
  std::string mode = "parallel", cache = "auto";
  int64_t budget = 0, sinks = 4, batch = 16;
  double cr = 0;
  OptionTable t(
      "eval ppl",
      "dmc eval ppl --model DIR|FILE.gguf [--tokenizer T] --text FILE [--seq-len N] [--stride N] [--json OUT]");
  t.add("model", &model_dir, "model directory or a .gguf file", true);
  t.add("tokenizer", &tok_path,
        "tokenizer.model, tokenizer.json, a .gguf or a directory (default: the model's own, from --model)");
  t.add("text", &text_path, "UTF-8 text file to score (or --data)");
  t.add("data", &data_dir, "a `dmc data prepare` directory to score instead of --text (its documents concatenated)");
  t.add("split", &split, "--data: the split to score (valid or train)").one_of({"train", "valid"});
  t.add("seq_len", &seq_len, "window length in tokens").min(2);
  t.add("stride", &stride, "window step in tokens (0 = seq_len)").min(0);
  t.add("max_tokens", &max_tokens, "score only the first N tokens (0 = all)").min(0);
  t.add("mode", &mode, "parallel (one forward per window) or incremental (token by token through the paged cache)")
      .one_of({"parallel", "incremental"});
  t.add("cache", &cache, "incremental: auto | vanilla | dmc | tova | h2o | window (eviction baselines need a budget)")
      .one_of({"auto", "vanilla", "dmc", "tova", "h2o", "window"});
  t.add("budget", &budget, "tova/h2o/window: KV slots per (layer, head)").min(0);
  t.add("cr", &cr, "tova/h2o/window: budget = ceil(seq_len / cr) when --budget is 0 (the cache of a DMC model at cr)")
      .min(0);
  t.add("sinks", &sinks, "window: first positions never evicted").min(0);
  t.add("batch", &batch, "incremental: windows decoded together, one sequence each (the result does not depend on it)")
      .min(1);
  t.add("add_bos", &add_bos, "prepend the BOS token to the text");
  t.add("device", &device, "cpu, cuda, cuda:N or auto");
  t.add("dtype", &dtype, "bf16, fp16, fp32 or auto (bf16 on CUDA, fp32 on CPU)");
  t.add("json", &json_path, "also write the result as JSON to this file");
  t.parse(Args(a.begin() + 1, a.end()));
  log::info(t.to_yaml());
  DMC_CHECK(text_path.empty() != data_dir.empty(), "give one of --text FILE or --data DIR (what to score)");
  auto [tok, model] = load_model_and_tokenizer(model_dir, tok_path, device, dtype);
  std::vector<int64_t> ids;
  if (!text_path.empty()) {
    ids = tok.encode(read_file(text_path, "text"), add_bos);
    if (max_tokens > 0 && (int64_t)ids.size() > max_tokens) ids.resize(max_tokens);
  } else {
    ids = data::read_split_tokens(data_dir, split, tok.fingerprint(), model.config.vocab_size, max_tokens);
  }
  const std::string source = text_path.empty() ? data_dir + " (" + split + ")" : text_path;
  log::info(cat("scoring ", ids.size(), " tokens of ", source, " with windows of ", seq_len, ", stride ",
                stride ? stride : seq_len));
  PplOptions po;
  po.seq_len = seq_len;
  po.stride = stride;
  po.mode = mode;
  po.cache = cache;
  po.budget = budget;
  po.cr = cr;
  po.sinks = sinks;
  po.batch = batch;
  auto r = perplexity(model, ids, po);
  std::cout << "perplexity: " << std::setprecision(8) << r.ppl() << "  (nll " << r.nll() << ", " << r.tokens_scored
            << " tokens, " << r.windows << " windows, " << r.seconds << " s)\n";
  const bool ratios = !r.head_tokens.empty();
  if (ratios) {
    std::cout << (model.config.dmc.enabled ? "DMC (eval mode, " + mode + ")" : "cache " + cache)
              << ": achieved compression ratio " << std::setprecision(4) << r.cr();
    if (model.config.dmc.enabled) std::cout << " (target " << model.config.dmc.target_cr << ")";
    std::cout << "\nper layer (rows) and KV head (columns):\n";
    auto per = r.cr_per_head();
    for (size_t l = 0; l < per.size(); ++l) {
      std::cout << "  layer " << l << ":";
      for (double x : per[l]) std::cout << " " << std::fixed << std::setprecision(2) << x;
      std::cout << "\n";
    }
    std::cout.unsetf(std::ios::fixed);
  }
  if (!json_path.empty()) {
    nlohmann::json j = {{"ppl", r.ppl()},       {"nll", r.nll()},       {"tokens_scored", r.tokens_scored},
                        {"windows", r.windows}, {"seq_len", seq_len},   {"stride", stride ? stride : seq_len},
                        {"model", model_dir},   {"text", source},       {"dtype", dtype_name(model.dtype())},
                        {"device", model.device().str()},  {"seconds", r.seconds}, {"mode", mode},
                        {"cache", cache}};
    if (ratios) {
      j["cr"] = r.cr();
      j["cr_per_head"] = r.cr_per_head();
    }
    if (model.config.dmc.enabled) {
      j["dmc_cr"] = r.cr();
      j["dmc_cr_per_head"] = r.cr_per_head();
      j["dmc_target_cr"] = model.config.dmc.target_cr;
    }
    write_file_atomic(json_path, j.dump(2) + "\n");
  }
  return 0;
}

}  // namespace dmc::cli
