// bench_decode: greedy decode throughput of dmc's vanilla engine (generate(): the paged cache with continuous
// batching) for a Llama shape with random weights, at the batch sizes given. Before timing it checks, on the same
// model, that the same engine's prefill + token-by-token decode reproduces the logits of a full forward of the same
// tokens (bf16 tolerance) and refuses to print speeds otherwise.
//
// Floor: a decode step must read every weight once (2 bytes/param in bf16) plus the KV cache so far; divided
// by the measured device copy bandwidth this gives the HBM floor printed beside each measurement.
//
//   bench_decode --preset llama2-7b --batch 1,16 --prompt-len 128 --new-tokens 256 --json out.jsonl
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/util.h"
#include "config/options.h"
#include "inference/decoder.h"
#include "inference/generate.h"

using namespace dmc;

int main(int argc, char** argv) {
  std::string preset = "llama2-7b", device = "auto", dtype = "bf16", json_path;
  std::vector<std::string> batches = {"1", "16"};
  int64_t prompt_len = 128, new_tokens = 256, layers = 0, seed = 0;
  OptionTable t("bench_decode", "bench_decode [--preset llama2-7b] [--batch 1,16] [--prompt-len N] [--new-tokens N]");
  t.add("preset", &preset, "model shape (random weights)");
  t.add("num_hidden_layers", &layers, "override the preset's layer count (0 = preset)");
  t.add("batch", &batches, "comma-separated batch sizes");
  t.add("prompt_len", &prompt_len, "prompt tokens per sequence");
  t.add("new_tokens", &new_tokens, "generated tokens per sequence");
  t.add("device", &device, "cuda, cpu or auto");
  t.add("dtype", &dtype, "bf16, fp16 or fp32");
  t.add("seed", &seed, "weight seed");
  t.add("json", &json_path, "append one JSON line per batch size to this file");
  try {
    t.parse(std::vector<std::string>(argv + 1, argv + argc));
    log::info(t.to_yaml());
    auto [dev, dt] = resolve_runtime(device, dtype);
    LlamaConfig c = LlamaConfig::preset(preset);
    if (layers) c.num_hidden_layers = layers;
    c.max_position_embeddings = std::max<int64_t>(c.max_position_embeddings, prompt_len + new_tokens);
    auto model = Llama::random(c, (uint64_t)seed, dt, dev);
    at::NoGradGuard ng;

    // ---- verify: cached decode == full forward ------------------------------------------------------
    // (1) exact check of the code path: the same shape with 2 layers in fp32 on the same device;
    // (2) the benchmarked bf16 model itself, with a tolerance for bf16 rounding (8 significant bits): the two
    //     paths use GEMMs and attention kernels of different shapes, so their roundings differ and compound
    //     over the layers; a relative RMS error of 5% still catches any real cache or position bug (those give
    //     O(1) errors), while rounding stays around 1%.
    // the path generate() times: the decode engine (paged cache, parallel prefill, then one token per step)
    auto check = [&](const Llama& m, double rel_tol, const char* what) {
      const int64_t P = 32, N = 8;
      torch::manual_seed(1);
      at::Tensor ids = at::randint(0, c.vocab_size, {2, P + N}, at::TensorOptions().dtype(at::kLong));
      at::Tensor full = m.forward(ids.to(dev)).to(at::kFloat);  // [2, P + N, vocab]
      DecoderOptions o;
      o.max_seqs = 2;
      o.policy = CachePolicy::Vanilla;
      Decoder d(m, o);
      std::vector<at::Tensor> rows[2];
      for (int64_t s = 0; s < 2; ++s) {
        std::vector<int64_t> prompt(ids[s].data_ptr<int64_t>(), ids[s].data_ptr<int64_t>() + P);
        rows[s].push_back(d.prefill(s, prompt).to(at::kFloat).unsqueeze(0));
      }
      for (int64_t i = P; i < P + N - 1; ++i) {
        at::Tensor lg = d.step({0, 1}, {ids[0][i].item<int64_t>(), ids[1][i].item<int64_t>()}).to(at::kFloat);
        for (int64_t s = 0; s < 2; ++s) rows[s].push_back(lg[s].unsqueeze(0));
      }
      at::Tensor inc = at::stack({at::cat(rows[0]), at::cat(rows[1])});  // positions P-1 .. P+N-2
      at::Tensor ref = full.narrow(1, P - 1, N);
      const double rel = ((inc - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item<double>();
      const double maxd = (inc - ref).abs().max().item<double>();
      log::info(cat("verify (", what, "): decode engine vs full forward: relative RMS error ", rel, ", max |diff| ",
                    maxd, " (tolerance ", rel_tol, ")"));
      if (!(rel <= rel_tol)) fail("verification failed (", what, "): the decode engine differs from the full forward");
    };
    {
      LlamaConfig c2 = c;
      c2.num_hidden_layers = 2;
      check(Llama::random(c2, 5, at::kFloat, dev), 1e-5, "2 layers, fp32");
    }
    check(model, dt == at::kFloat ? 1e-5 : 5e-2, "benchmarked model");

    const double bw = dev.is_cuda() ? copy_bandwidth(dev) : 0;
    const double weight_bytes = (double)c.num_parameters() * c10::elementSize(dt);
    dmc::AppendFile jout;
    if (!json_path.empty()) jout.open(json_path);
    for (const std::string& bstr : batches) {
      const int64_t B = parse_int(bstr, "batch");
      DMC_CHECK(B >= 1, "batch: expected positive sizes, got ", B);
      torch::manual_seed(2);
      at::Tensor pr = at::randint(3, c.vocab_size, {B, prompt_len}, at::TensorOptions().dtype(at::kLong));
      std::vector<std::vector<int64_t>> prompts(B);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < prompt_len; ++i) prompts[b].push_back(pr[b][i].item<int64_t>());
      GenerateOptions go;
      go.stop_at_eos = false;
      go.sampling.temperature = 0;
      go.max_new_tokens = 8;
      generate(model, prompts, go);  // warm-up (allocator, cuBLAS handles)
      go.max_new_tokens = new_tokens;
      auto r = generate(model, prompts, go);
      const double step_ms = 1e3 * r.decode_seconds / r.decode_steps;
      const double tps = B * r.decode_steps / r.decode_seconds;
      const double kv_bytes_mid =
          2.0 * c.num_hidden_layers * B * c.kv_size() * (prompt_len + new_tokens / 2.0) * c10::elementSize(dt);
      const double floor_ms =
          bw > 0 ? 1e3 * (weight_bytes + kv_bytes_mid) / bw : 0;  // bw: read + write bytes/s of a copy
      nlohmann::json j = {{"engine", "dmc"},
                          {"preset", preset},
                          {"batch", B},
                          {"prompt_len", prompt_len},
                          {"new_tokens", new_tokens},
                          {"dtype", dtype_name(dt)},
                          {"prefill_ms", r.prefill_seconds * 1e3},
                          {"decode_ms_per_step", step_ms},
                          {"decode_tokens_per_s", tps},
                          {"hbm_floor_ms", floor_ms},
                          {"copy_bandwidth_GBps", bw / 1e9},
                          {"device", dev.str()}};
      std::cout << j.dump() << std::endl;
      jout.append(j.dump() + "\n");
    }
    return 0;
  } catch (const HelpRequested& h) {
    std::cout << h.text;
    return 0;
  } catch (const std::exception& e) {
    log::error(e.what());
    return 1;
  }
}
