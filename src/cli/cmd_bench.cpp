// dmc bench decode: the command line of the decode benchmark (inference/decode_bench.h says what it measures and
// how): options, the model (a directory, or a preset shape with random weights), the prompt text, then one run of
// the benchmark per policy, each printed as a JSON line and appended to --json.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "data/dataset.h"
#include "tokenizer/tokenizer.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/util.h"
#include "config/options.h"
#include "inference/decode_bench.h"

namespace dmc::cli {

int cmd_bench(const Args& a) {
  if (a.empty() || a[0] != "decode") {
    if (!a.empty() && (a[0] == "-h" || a[0] == "--help")) {
      std::cout << "usage: dmc bench decode [--model DIR | --preset llama2-7b] [options]\n";
      return 0;
    }
    fail("command line: expected 'dmc bench decode ...'");
  }
  std::string model_dir, preset = "llama2-7b", device = "auto", dtype = "auto", json_path;
  std::string text_path, tok_path, data_dir;
  std::vector<std::string> policies = {"vanilla", "dmc"};
  int64_t layers = 0;
  DecodeBenchOptions bo;  // the benchmark's settings, bound to the table below
  OptionTable t("bench decode",
                "dmc bench decode [--model DIR | --preset NAME] [--policy vanilla,dmc] [--force-cr R] ...");
  t.add("model", &model_dir, "model directory (else --preset with random weights)");
  t.add("preset", &preset, "model shape with random weights when no --model is given");
  t.add("num_hidden_layers", &layers, "override the layer count (0 = as the model/preset has it)").min(0);
  t.add("policy", &policies, "comma-separated cache policies: vanilla, dmc, tova, h2o, window")
      .one_of({"vanilla", "dmc", "tova", "h2o", "window"});
  t.add("force_cr", &bo.force_cr,
        "dmc with random weights: forced decisions at this compression ratio (benchmark only)")
      .min(0);
  t.add("budget", &bo.budget_slots, "tova/h2o/window: slots per head (0 = context / force_cr)").min(0);
  t.add("batch", &bo.batch, "sequences decoding together, or 'max' = the largest batch the memory budget holds");
  t.add("prompt_len", &bo.prompt_len, "prompt tokens per sequence").min(1);
  t.add("new_tokens", &bo.new_tokens, "tokens generated per sequence (the context is prompt_len + new_tokens)").min(1);
  t.add("steps", &bo.steps, "timed decode steps (0 = new_tokens)").min(0);
  t.add("page_size", &bo.page_size, "tokens per cache page").min(1);
  t.add("memory_gib", &bo.memory_gib, "cache memory budget in GiB, equal for every policy (0 = free memory - reserve)")
      .min(0);
  t.add("reserve_gib", &bo.reserve_gib, "device memory left for activations and logits when memory_gib is 0").min(0);
  t.add("fill", &bo.fill, "synthetic (random prompt state with the policy's slot counts) or prefill (real prefills)")
      .one_of({"synthetic", "prefill"});
  t.add("prefill_check", &bo.prefill_check,
        "1: also time the parallel prefill of one prompt_len prompt against token-by-token decoding");
  t.add("prefill_repeats", &bo.prefill_repeats, "timed prefills of the prefill check (the median is reported)").min(1);
  t.add("profile_prefill", &bo.profile_prefill, "1: print the GPU kernels of one prefill by total time (kineto)");
  t.add("graph_max_batch", &bo.graph_max_batch, "decode steps of up to this many sequences run as CUDA graphs").min(0);
  t.add("graph_batch_step", &bo.graph_batch_step,
        "graphs per batch bucket: 1, 2, 4, ... then multiples of this (1: exact sizes)")
      .min(1);
  t.add("gemm_row_tuning", &bo.gemm_row_tuning, "1: pad the decode GEMMs' rows to the fastest timed size (0: as is)");
  t.add("profile_steps", &bo.profile_steps,
        "N > 0: print the GPU kernels of N timed-batch decode steps by total time (kineto)")
      .min(0);
  t.add("tbt_tokens", &bo.tbt_tokens,
        "token-by-token tokens timed for the prefill comparison (extrapolated to prompt_len)")
      .min(1);
  t.add("text", &text_path, "prompts are windows of this UTF-8 text (with --tokenizer); else random tokens");
  t.add("data", &data_dir, "prompts are windows of this `dmc data prepare` directory's valid split (with --tokenizer)");
  t.add("tokenizer", &tok_path,
        "tokenizer for --text / --data (tokenizer.model, tokenizer.json, .gguf or a model directory)");
  t.add("calibrate", &bo.calibrate, "trained DMC, --batch max: full-context prompts prefilled to size the batch")
      .min(1);
  t.add("device", &device, "cuda, cpu or auto");
  t.add("dtype", &dtype, "bf16, fp16, fp32 or auto");
  t.add("seed", &bo.seed, "weight and token seed");
  t.add("json", &json_path, "append one JSON line per policy to this file");
  t.parse(Args(a.begin() + 1, a.end()));
  log::info(t.to_yaml());
  auto [dev, dt] = resolve_runtime(device, dtype);
  const int64_t ctx = bo.prompt_len + bo.new_tokens;
  Llama model = [&] {
    if (!model_dir.empty()) return Llama::load(model_dir, dt, dev);
    LlamaConfig c = LlamaConfig::preset(preset);
    if (layers) c.num_hidden_layers = layers;
    c.max_position_embeddings = std::max<int64_t>(c.max_position_embeddings, ctx + 1);
    return Llama::random(c, (uint64_t)bo.seed, dt, dev);
  }();
  const auto& c = model.config;
  DMC_CHECK(text_path.empty() || data_dir.empty(), "give --text or --data, not both");
  const std::string prompt_src = !text_path.empty() ? text_path : data_dir;
  DMC_CHECK(prompt_src.empty() == tok_path.empty(),
            "--text / --data and --tokenizer go together (prompts from a text)");
  std::vector<int64_t> text_ids;
  if (!prompt_src.empty()) {
    auto tok = Tokenizer::load(tok_path);
    tok.check_model_vocab(c.vocab_size, model_dir.empty() ? "--preset " + preset : model_dir + "/config.json");
    text_ids = !text_path.empty() ? tok.encode(read_file(text_path, "text"), false)
                                  : data::read_split_tokens(data_dir, "valid", tok.fingerprint(), c.vocab_size);
  }
  bo.weights = model_dir.empty() ? "random (" + preset + ")" : model_dir;
  bo.prompt_src = prompt_src;
  DecodeBench bench(model, bo, std::move(text_ids));
  AppendFile jout;
  if (!json_path.empty()) jout.open(json_path);
  for (const std::string& name : policies) {
    const nlohmann::json j = bench.run(parse_cache_policy(name, "policy"));  // the one parse of each name
    std::cout << j.dump() << std::endl;
    jout.append(j.dump() + "\n");
  }
  return 0;
}

}  // namespace dmc::cli
