// bench_train: training-step throughput (tokens/s, MFU) and peak memory of dmc's trainer path for a Llama shape
// with random weights and random tokens: fp32 master weights, bf16 autocast, fused AdamW, grad clipping,
// optional per-layer activation checkpointing; attention vanilla (SDPA) or DMC (retrofit stage, target CR 4).
//
// FLOPs per token = 6 N + 12 L d T (N: non-embedding parameters incl. lm_head; the attention term counts the full
// T x T product, the usual convention); MFU = tokens/s x FLOPs per token / peak (989 TFLOP/s dense bf16 H100 SXM).
//
// Before timing it verifies the step on the same model: the bf16-autocast loss and the fp32 loss of one batch
// agree within 1%, and the initial loss is within 0.5 of ln(vocab) (random init predicts ~uniformly).
//   bench_train --preset llama-1b --seq-len 4096 --micro-batch 4 --steps 10 --mode vanilla|dmc --json out.jsonl
#include <ATen/autocast_mode.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/util.h"
#include "config/options.h"
#include "train/stages.h"
#include "ops/fused_ops.h"
#include "model/llama.h"
#include "train/autocast.h"
#include "train/optimizer.h"

#ifdef DMC_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

using namespace dmc;

int main(int argc, char** argv) {
  std::string preset = "llama-1b", mode = "vanilla", device = "auto", json_path;
  DmcAttnImpl attn_impl = DmcAttnImpl::Flash;
  int64_t seq_len = 4096, micro_batch = 4, steps = 10, warmup = 3, layers = 0;
  bool ckpt = false, fused = true;
  int64_t profile = 0;
  double peak = 989.0, target_cr = 4.0;
  OptionTable t("bench_train",
                "bench_train [--preset llama-1b] [--seq-len 4096] [--micro-batch 4] [--mode vanilla|dmc]");
  t.add("preset", &preset, "model shape (random weights)");
  t.add("num_hidden_layers", &layers, "override the preset's layer count (0 = preset)");
  t.add("mode", &mode, "vanilla | dmc (retrofit stage)");
  t.add("seq_len", &seq_len, "tokens per sample");
  t.add("micro_batch", &micro_batch, "samples per step");
  t.add("steps", &steps, "timed steps");
  t.add("warmup", &warmup, "untimed steps first");
  t.add("activation_checkpointing", &ckpt, "recompute layers in backward");
  t.add("target_cr", &target_cr, "DMC target ratio (dmc mode)");
  t.add("dmc_attn_impl", &attn_impl, "dmc mode: DMC attention implementation (flash | blocks)", dmc_attn_impl_names());
  t.add("peak_tflops", &peak, "peak dense bf16 TFLOP/s for MFU");
  t.add("fused_ops", &fused, "fused RMSNorm / SwiGLU (and DMC blend) kernels on CUDA (false: the ATen forms)");
  t.add("profile", &profile, "then profile this many steps and print the GPU kernels' total time by name");
  t.add("device", &device, "cuda or cpu");
  t.add("json", &json_path, "append the result as one JSON line");
  try {
    t.parse(std::vector<std::string>(argv + 1, argv + argc));
    log::info(t.to_yaml());
    auto [dev, dt] = resolve_runtime(device, "auto");
    set_fused_ops(fused);
    const bool ac = dev.is_cuda();
    LlamaConfig c = LlamaConfig::preset(preset);
    if (layers) c.num_hidden_layers = layers;
    c.max_position_embeddings = std::max(c.max_position_embeddings, seq_len);
    auto model = Llama::random(c, 1, at::kFloat, dev);
    model.activation_checkpointing = ckpt;
    auto params = model.parameters();
    for (auto& p : params) p.second->requires_grad_(true);
    train::AdamW opt(params, {});
    std::unique_ptr<DmcStage> stage;
    if (mode == "dmc") {
      RetrofitOptions ro;
      ro.stage = RetrofitStage::Finetune;  // fixed target ratio
      ro.target_cr = target_cr;
      ro.dmc.attn_impl = attn_impl;
      stage = std::make_unique<DmcStage>(ro);
      zero_decision_rows(model);
    } else if (mode != "vanilla") {
      fail("mode: expected vanilla or dmc, got '", mode, "'");
    }
    auto batch = [&](int64_t seed) {
      torch::manual_seed(seed);
      at::Tensor tok =
          at::randint(3, c.vocab_size, {micro_batch, seq_len + 1}, at::TensorOptions().dtype(at::kLong)).to(dev);
      data::Batch b{tok.narrow(1, 0, seq_len), tok.narrow(1, 1, seq_len),
                    at::zeros({micro_batch, seq_len}, at::kBool).to(dev)};
      return b;
    };
    auto loss_of = [&](const data::Batch& b) {
      at::Tensor h = stage ? stage->forward_hidden(model, b) : model.forward_hidden(b.input);
      at::Tensor logits = at::linear(h, model.lm_head).to(at::kFloat);
      at::Tensor loss = at::cross_entropy_loss(logits.view({-1, c.vocab_size}), b.target.reshape({-1}));
      if (stage) {
        at::Tensor e = stage->extra_loss(model);
        if (e.defined()) loss = loss + e;
      }
      return loss;
    };
    // ---- verify ----
    {
      if (stage) stage->begin_step(0, 1, model);
      data::Batch b = batch(99);
      b.input = b.input.narrow(0, 0, 1);
      b.target = b.target.narrow(0, 0, 1);
      b.doc_start = b.doc_start.narrow(0, 0, 1);
      at::NoGradGuard ng;
      double l16, l32;
      {
        train::AutocastScope a(ac);
        l16 = loss_of(b).item<double>();
      }
      l32 = loss_of(b).item<double>();
      log::info(
          cat("verify: loss bf16-autocast ", l16, ", fp32 ", l32, ", ln(vocab) ", std::log((double)c.vocab_size)));
      if (!(std::abs(l16 - l32) <= 0.01 * l32)) fail("verification failed: autocast and fp32 losses disagree");
      if (!(std::abs(l32 - std::log((double)c.vocab_size)) < 0.5))
        fail("verification failed: initial loss far from ln(vocab)");
    }
    auto step = [&](int64_t i) {
      if (stage) stage->begin_step(i, 1000, model);
      data::Batch b = batch(i);
      at::Tensor loss;
      {
        train::AutocastScope a(ac);
        loss = loss_of(b);
      }
      loss.backward();
      opt.clip_grad_norm(1.0);
      opt.step(1e-4);
      opt.zero_grad();
      return loss;
    };
    for (int64_t i = 0; i < warmup; ++i) step(i).item<double>();
    if (dev.is_cuda()) torch::cuda::synchronize(dev.index());
#ifdef DMC_WITH_CUDA
    if (dev.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(dev.index());
#endif
    auto t0 = std::chrono::steady_clock::now();
    double last = 0;
    for (int64_t i = 0; i < steps; ++i) last = step(warmup + i).item<double>();
    if (dev.is_cuda()) torch::cuda::synchronize(dev.index());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double mem = 0;
#ifdef DMC_WITH_CUDA
    if (dev.is_cuda())
      mem = (double)c10::cuda::CUDACachingAllocator::getDeviceStats(dev.index()).allocated_bytes[0].peak;
#endif
    const double n = (double)c.num_parameters() - (double)c.vocab_size * c.hidden_size;
    const double fpt = 6.0 * n + 12.0 * c.num_hidden_layers * c.q_size() * seq_len;
    const double tps = steps * micro_batch * seq_len / secs;
    nlohmann::json j = {
        {"engine", "dmc"},
        {"mode", mode == "dmc" ? std::string(attn_impl == DmcAttnImpl::Flash ? "dmc/flash" : "dmc/blocks") : mode},
        {"preset", preset},
        {"layers", c.num_hidden_layers},
        {"seq_len", seq_len},
        {"micro_batch", micro_batch},
        {"activation_checkpointing", ckpt},
        {"step_ms", 1e3 * secs / steps},
        {"tokens_per_s", tps},
        {"mfu", tps * fpt / (peak * 1e12)},
        {"peak_memory_GiB", mem / (1 << 30)},
        {"last_loss", last},
        {"device", dev.str()}};
    if (profile > 0) {  // kernels of `profile` steps by total device time: what the step spends its time on
      double total = 0;
      const std::string table = kernel_profile([&] { step(warmup + steps).item<double>(); }, (int)profile, 30, &total);
      std::cout << "profile (wall " << 1e3 * secs / steps << " ms a step): " << table;
      j["profile_kernel_ms_per_step"] = total;
    }
    j["fused_ops"] = fused;
    std::cout << j.dump() << std::endl;
    if (!json_path.empty()) {
      AppendFile out;
      out.open(json_path);
      out.append(j.dump() + "\n");
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
