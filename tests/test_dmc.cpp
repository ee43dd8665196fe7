// DMC attention against the plain Python reference (float64 loops), the stage-1 equivalence, the merge
// semantics with hard decisions, the hinge, a finite-difference gradient check, and the retrofit stages.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "common/files.h"
#include "common/util.h"
#include "ops/dmc.h"
#include "train/stages.h"
#include "helpers.h"
#include "inference/decoder.h"
#include "inference/generate.h"
#include "ops/paged_cache.h"
#include "ops/decode_ops.h"
#include "ops/fused_ops.h"
#include "inference/perplexity.h"
#include "io/safetensors.h"
#include <random>
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

using namespace dmc;
using namespace dmc::test;

namespace {
struct Inputs {
  at::Tensor q, k, v, noise, doc_start, R, r2;
};
Inputs make_inputs(int64_t B, int64_t T, int64_t nh, int64_t nkv, int64_t D, double c, uint64_t seed) {
  torch::manual_seed(seed);
  auto o = at::TensorOptions().dtype(at::kDouble);
  Inputs in;
  in.q = at::randn({B, T, nh, D}, o);
  in.k = at::randn({B, T, nkv, D}, o);
  in.v = at::randn({B, T, nkv, D}, o);
  // decision logits spread around 0 so that both appends and merges occur; omega varied too
  in.k.select(-1, D - 1).copy_(c + 1.5 * at::randn({B, T, nkv}, o));
  in.q.select(-1, D - 1).copy_(-c + 2.0 * at::randn({B, T, nh}, o));
  at::Tensor u1 = at::rand({B, T, nkv}, o), u2 = at::rand({B, T, nkv}, o);
  in.noise = -at::log(-at::log(u1)) + at::log(-at::log(u2));
  in.doc_start = at::zeros({B, T}, at::kBool);
  in.doc_start.index_put_({0, 5}, true);
  if (B > 1) in.doc_start.index_put_({B - 1, 9}, true);
  in.R = at::randn({B, T, nh, D}, o);
  in.r2 = at::randn({B}, o);
  return in;
}
// RoPE tables in float64 (the model computes them in fp32, as HF does).
std::pair<at::Tensor, at::Tensor> rope64(int64_t D, int64_t T, double theta) {
  at::Tensor inv = 1.0 / at::pow(at::scalar_tensor(theta, at::kDouble), at::arange(0, D, 2, at::kDouble) / (double)D);
  return rope_cos_sin(inv, at::arange(T, at::kDouble));
}
// A 2-layer tiny Llama (vocab 101), made a DMC model with decisions near the threshold when use_dmc.
Llama tiny_decoder_model(uint64_t seed, double init_std, bool use_dmc, int64_t window) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = 101;
  auto m = Llama::random(c, seed, at::kFloat, at::kCPU, init_std);
  if (use_dmc) {
    m.config.dmc.enabled = true;
    m.config.dmc.init_val = 0.2;  // decisions near the threshold: a mix of merges and appends
    m.config.dmc.window = window;
  }
  return m;
}
}  // namespace

TEST_CASE("DMC attention equals the float64 reference: train with fed noise and eval, outputs and gradients",
          "[dmc][ref]") {
  if (!have_oracle()) SKIP("python oracle not available: " + python());
  const auto work = tmp_dir("dmcref");
  const int64_t B = 2, T = 14, nh = 4, nkv = 2, D = 8, W = 3;
  const double c = 5.0, tau = 0.7, theta = 10000.0;  // a warm temperature keeps the relaxed gradients non-trivial
  for (const std::string mode : {"train", "eval"}) {
    for (bool docs : {false, true}) {
      DYNAMIC_SECTION(mode << (docs ? " with document boundaries" : "")) {
        Inputs in = make_inputs(B, T, nh, nkv, D, c, docs ? 3 : 4);
        io::save_file(work + "/in.safetensors",
                      {{"q", in.q},
                       {"k", in.k},
                       {"v", in.v},
                       {"noise", in.noise},
                       {"doc_start", in.doc_start.to(at::kByte)},
                       {"R", in.R},
                       {"r2", in.r2}},
                      {{"mode", mode},
                       {"window", std::to_string(W)},
                       {"init_val", "5.0"},
                       {"temperature", "0.7"},
                       {"rope_theta", "10000.0"},
                       {"doc_boundaries", docs ? "1" : "0"}});
        auto r = run(python() + " " + DMC_SOURCE_DIR + "/tests/reference/dmc_reference.py " + work +
                     "/in.safetensors " + work + "/out.safetensors");
        INFO(r.output);
        REQUIRE(r.status == 0);
        auto ref = io::SafetensorsFile::open(work + "/out.safetensors");

        at::Tensor q = in.q.clone().requires_grad_(true), k = in.k.clone().requires_grad_(true),
                   v = in.v.clone().requires_grad_(true);
        auto [cos, sin] = rope64(D, T, theta);
        DmcOptions o;
        o.window = W;
        o.init_val = c;
        o.temperature = tau;
        o.doc_boundaries = docs;
        o.attn_block = 5;  // several query blocks
        auto res = dmc_attention(q, k, v, cos, sin, o, mode == "train" ? DmcMode::Train : DmcMode::Eval, in.doc_start,
                                 in.noise);
        at::Tensor L = (res.out * in.R).sum() + (res.decision_mean * in.r2).sum();
        L.backward();
        const double e_out = (res.out - ref->get("out")).abs().max().item<double>();
        const double e_dm = (res.decision_mean - ref->get("decision_mean")).abs().max().item<double>();
        const double e_q = (q.grad() - ref->get("grad_q")).abs().max().item<double>();
        const double e_k = (k.grad() - ref->get("grad_k")).abs().max().item<double>();
        const double e_v = (v.grad() - ref->get("grad_v")).abs().max().item<double>();
        INFO("out " << e_out << " dmean " << e_dm << " dq " << e_q << " dk " << e_k << " dv " << e_v);
        CHECK(e_out < 1e-10);
        CHECK(e_dm < 1e-12);
        CHECK(e_q < 1e-9);
        CHECK(e_k < 1e-9);
        CHECK(e_v < 1e-9);
        // the test exercises merges and appends, and non-zero decision gradients in train mode
        const double merges = res.hard.sum().item<double>();
        CHECK(merges > 3);
        CHECK(merges < B * T * nkv - 3);
        if (mode == "train") CHECK(k.grad().select(-1, D - 1).abs().max().item<double>() > 1e-6);
      }
    }
  }
}

TEST_CASE("after stage 1 with every decision 0, DMC equals the zeroed-last-dim vanilla forward", "[dmc]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  auto m = Llama::random(c, 3, at::kFloat, at::kCPU, 0.1);
  zero_decision_rows(m);
  torch::manual_seed(1);
  at::Tensor ids = torch::randint(0, c.vocab_size, {2, 40}, at::kLong);
  at::NoGradGuard ng;
  DmcLayerAttention dmc_attn(DmcMode::Eval, DmcOptions{});
  at::Tensor dmc_logits = m.forward(ids, dmc_attn);
  REQUIRE(dmc_attn.boundaries.size() == 2);
  for (const auto& b : dmc_attn.boundaries) CHECK(b.sum().item<double>() == 0);  // a = -c everywhere: all appends
  ZeroOutAttention zero_attn(0.0);
  at::Tensor zero_logits = m.forward(ids, zero_attn);
  at::Tensor vanilla = m.forward(ids);
  const double diff = (dmc_logits - zero_logits).abs().max().item<double>();
  INFO("dmc vs zero-out(0) " << diff);
  CHECK(diff < 1e-4);
  // the RoPE caveat: vanilla still lets dim D/2-1 leak into D-1 after RoPE, so it differs, but only slightly
  const double caveat = (dmc_logits - vanilla).abs().max().item<double>();
  CHECK(caveat > 0);
  CHECK(caveat < 0.05 * vanilla.abs().max().item<double>());
}

TEST_CASE("hard decisions: 1 + appends slots per head, merged slot = omega-weighted mean of the last <= W of its group",
          "[dmc]") {
  const int64_t B = 2, T = 30, H = 3, X = 5, W = 4;
  torch::manual_seed(7);
  at::Tensor x = at::randn({B, T, H, X}, at::kDouble), w = at::rand({B, T, H}, at::kDouble) + 0.1;
  at::Tensor b = (at::rand({B, T, H}, at::kDouble) < 0.7).to(at::kDouble);
  b.narrow(1, 0, 1).zero_();
  at::Tensor pooled = dmc_pool(x, w, b, W);
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t h = 0; h < H; ++h) {
      int64_t slots = 0, group_start = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (b[bb][t][h].item<double>() == 0) {
          ++slots;
          group_start = t;
        }
        const int64_t from = std::max(group_start, t - W + 1);
        at::Tensor num = at::zeros({X}, at::kDouble);
        double den = 0;
        for (int64_t j = from; j <= t; ++j) {
          num += w[bb][j][h] * x[bb][j][h];
          den += w[bb][j][h].item<double>();
        }
        CHECK((pooled[bb][t][h] - num / den).abs().max().item<double>() < 1e-12);
      }
      CHECK(slots == T - (int64_t)b.select(0, bb).select(-1, h).sum().item<double>());
    }
}

TEST_CASE("the hinge is zero once the mean merge rate reaches 1 - 1/CR", "[dmc]") {
  // [layers=2, batch=3]
  at::Tensor d =
      at::tensor({0.5, 0.6, 0.4, 0.5, 0.6, 0.8}, at::kDouble).view({2, 3});  // per-sample means 0.5, 0.6, 0.6
  CHECK(dmc_loss(d, 2.0).item<double>() == Approx(0.0));
  CHECK(dmc_loss(d, 1.0).item<double>() == Approx(0.0));
  // CR 4: P = 0.75 -> mean(0.25, 0.15, 0.15)
  CHECK(dmc_loss(d, 4.0).item<double>() == Approx((0.25 + 0.15 + 0.15) / 3));
  // one-sided: merging more than the target costs nothing
  at::Tensor hi = at::full({2, 3}, 0.9, at::kDouble);
  CHECK(dmc_loss(hi, 2.0).item<double>() == 0.0);
}

TEST_CASE("the per-head hinge pushes only the heads below the target, the mean hinge every head", "[dmc]") {
  // one layer, KV head 0 merging every token (logit +2), head 1 none (-2): the mean merge rate 0.5 is below CR 4's
  // P = 0.75, head 0's 1.0 above it
  const int64_t B = 2, T = 12, nh = 4, nkv = 2, D = 8;
  Inputs in = make_inputs(B, T, nh, nkv, D, 1.0, 21);
  in.k.select(2, 0).select(-1, D - 1).fill_(2.0);
  in.k.select(2, 1).select(-1, D - 1).fill_(-2.0);
  DmcOptions o;
  o.window = 3;
  o.init_val = 0.0;
  o.temperature = 1.0;
  auto [cos, sin] = rope64(D, T, 10000.0);
  const at::Tensor no_noise = at::zeros({B, T, nkv}, at::kDouble), no_docs = at::zeros({B, T}, at::kBool);
  auto grad_k_last = [&](bool per_head) {
    DmcOptions oo = o;
    oo.decision_mean_per_head = per_head;
    at::Tensor k = in.k.clone().requires_grad_(true);
    auto r = dmc_attention(in.q, k, in.v, cos, sin, oo, DmcMode::Train, no_docs, no_noise);
    const at::Tensor d = r.decision_mean.unsqueeze(0);  // [1, B] or [1, B, nkv]
    (per_head ? dmc_loss_per_head(d, 4.0) : dmc_loss(d, 4.0)).backward();
    if (per_head) CHECK(at::allclose(r.decision_mean.mean(-1), at::full({B}, 0.5, at::kDouble)));
    return k.grad().select(-1, D - 1).abs().sum(at::IntArrayRef{0, 1});  // [nkv]
  };
  const at::Tensor mean_hinge = grad_k_last(false), head_hinge = grad_k_last(true);
  CHECK(mean_hinge[0].item<double>() > 0);
  CHECK(mean_hinge[1].item<double>() > 0);
  CHECK(head_hinge[0].item<double>() == 0.0);  // past the target: no push
  CHECK(head_hinge[1].item<double>() > 0);
  // the value: mean over (layer, sample, head) of max(0, P - d)
  at::Tensor d = at::tensor({1.0, 0.0, 0.9, 0.5}, at::kDouble).view({1, 2, 2});
  CHECK(dmc_loss_per_head(d, 4.0).item<double>() == Approx((0.0 + 0.75 + 0.0 + 0.25) / 4));
  require_error([] { dmc_loss_per_head(at::zeros({2, 3}), 4.0); }, {"expected decisions [layers, batch, kv heads]"});
}

TEST_CASE("finite-difference gradient check of the relaxed DMC forward (float64)", "[dmc]") {
  const int64_t B = 1, T = 9, nh = 2, nkv = 1, D = 6;
  Inputs in = make_inputs(B, T, nh, nkv, D, 1.0, 11);
  DmcOptions o;
  o.window = 3;
  o.init_val = 1.0;
  o.temperature = 1.0;
  o.attn_block = 4;
  auto [cos, sin] = rope64(D, T, 10000.0);
  auto loss = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    auto r = dmc_attention(q, k, v, cos, sin, o, DmcMode::Train, in.doc_start, in.noise);
    return (r.out * in.R).sum();  // the decision mean's STE has no finite-difference counterpart
  };
  at::Tensor q = in.q.clone().requires_grad_(true), k = in.k.clone().requires_grad_(true),
             v = in.v.clone().requires_grad_(true);
  loss(q, k, v).backward();
  const double h = 1e-6;
  int checked = 0;
  for (auto* which : {&in.q, &in.k, &in.v}) {
    at::Tensor g = which == &in.q ? q.grad() : which == &in.k ? k.grad() : v.grad();
    for (int64_t idx : {0L, 7L, 13L, which->numel() - 1, which->numel() / 2}) {
      // include the decision/importance neuron (last dim) explicitly
      for (int64_t off : {0L, D - 1 - (idx % D)}) {
        const int64_t i = std::min(idx + off, which->numel() - 1);
        at::Tensor p = which->clone(), m = which->clone();
        p.view(-1)[i] += h;
        m.view(-1)[i] -= h;
        at::NoGradGuard ng;
        auto lp = which == &in.q ? loss(p, in.k, in.v) : which == &in.k ? loss(in.q, p, in.v) : loss(in.q, in.k, p);
        auto lm = which == &in.q ? loss(m, in.k, in.v) : which == &in.k ? loss(in.q, m, in.v) : loss(in.q, in.k, m);
        const double fd = (lp - lm).item<double>() / (2 * h);
        const double an = g.view(-1)[i].item<double>();
        INFO("element " << i << " fd " << fd << " autograd " << an);
        CHECK(std::abs(fd - an) < 1e-6 * std::max(1.0, std::abs(fd)));
        ++checked;
      }
    }
  }
  CHECK(checked == 30);
}

namespace {
// A tokenizer (w/tok.model) and prepared data (w/data) of sample text for the stage tests.
void stage_data(const std::string& w, int seed) {
  write_text(w + "/a.txt", sample_text(300, seed));
  Tokenizer::train({{w + "/a.txt"}, w + "/tok", 400, 100000});
  auto r = run(std::string(DMC_BINARY) + " data prepare --input " + w + "/a.txt --tokenizer " + w +
               "/tok.model --out " + w + "/data --chunk-chars 1500");
  INFO(r.output);
  REQUIRE(r.status == 0);
  // the encoding's progress says its end once (the progress loop and the caller both used to)
  size_t ends = 0;
  for (size_t p = r.output.find("documents encoded): "); p != std::string::npos;
       p = r.output.find("documents encoded): ", p + 1))
    ends += r.output.compare(r.output.find('(', p + 19), 8, "(100.0%)") == 0;
  CHECK(ends == 1);
}
// `dmc WHAT` on stage_data's tokenizer and data with a toy 2-layer GQA shape on CPU (options may follow).
std::string stage_cmd(const std::string& w, const std::string& what) {
  return std::string(DMC_BINARY) + " " + what + " --tokenizer " + w + "/tok.model --data " + w +
         "/data --seq-len 32 --micro-batch 2 --global-batch 4 --device cpu --log-every 2 "
         "--num-hidden-layers 2 --hidden-size 64 --num-attention-heads 4 --num-key-value-heads 2 "
         "--intermediate-size 96 ";
}
}  // namespace

TEST_CASE("retrofit stages: zero_out zeroes the rows, retrofit ramps and logs ratios, resume keeps the ramp",
          "[dmc][train]") {
  const auto w = tmp_dir("stages");
  stage_data(w, 31);
  RunResult r;
  auto cmd = [&](const std::string& what) { return stage_cmd(w, what); };
  r = run(cmd("train") + "--out " + w + "/base --train-steps 4");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(cmd("retrofit") + "--stage zero_out --init-from " + w + "/base/final --out " + w + "/s1 --train-steps 10");
  INFO(r.output);
  REQUIRE(r.status == 0);
  auto s1 = Llama::load(w + "/s1/final", at::kFloat, at::kCPU);
  CHECK(s1.config.dmc.enabled);
  const int64_t D = s1.config.head_dim;
  for (auto& L : s1.layers) {
    for (int64_t h = 0; h < 4; ++h) CHECK(L.wqkv[h * D + D - 1].abs().max().item<double>() == 0);
    for (int64_t g = 0; g < 2; ++g) CHECK(L.wqkv[4 * D + g * D + D - 1].abs().max().item<double>() == 0);
    CHECK(L.wqkv[D - 2].abs().max().item<double>() > 0);  // only the decision rows
  }
  auto metrics = read_file(w + "/s1/metrics.jsonl");
  CHECK(metrics.find("\"qk_last_dim_mult\":0.0") != std::string::npos);  // reached 0 by step 0.8 N

  // retrofit, interrupted half way and resumed: the ramp continues where it stopped
  r = run(cmd("retrofit") + "--stage retrofit --init-from " + w + "/s1/final --out " + w + "/s2 --train-steps 8 " +
          "--target-cr 3 --exit-after-steps 4 --head-stats-every 4");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(cmd("retrofit") + "--stage retrofit --init-from " + w + "/s1/final --out " + w + "/s2 --train-steps 8 " +
          "--target-cr 3 --head-stats-every 4");
  INFO(r.output);
  REQUIRE(r.status == 0);
  std::vector<double> targets;
  bool has_heads = false;
  for (const auto& j : read_jsonl(w + "/s2/metrics.jsonl")) {
    if (j.contains("target_cr")) {
      targets.push_back(j["target_cr"].get<double>());
      CHECK(j.contains("cr"));
    }
    if (j.contains("cr_per_head")) {
      has_heads = true;
      CHECK(j["cr_per_head"].size() == 2);
      CHECK(j["cr_per_head"][0].size() == 2);
    }
  }
  REQUIRE(targets.size() == 4);  // steps 2, 4 | 6, 8
  CHECK(targets[0] == Approx(1.0 + 2.0 * 1 / 8));
  CHECK(targets[1] == Approx(1.0 + 2.0 * 3 / 8));
  CHECK(targets[2] == Approx(1.0 + 2.0 * 5 / 8));  // after the resume: not restarted
  CHECK(targets[3] == Approx(1.0 + 2.0 * 7 / 8));
  CHECK(has_heads);
  auto st = nlohmann::json::parse(read_file(w + "/s2/checkpoints/step-00000008/trainer_state.json"));
  CHECK(st["stage"]["cr_per_head"].size() == 2);
  auto s2 = Llama::load(w + "/s2/final", at::kFloat, at::kCPU);
  CHECK(s2.config.dmc.stage == "retrofit");
  CHECK(s2.config.dmc.target_cr == 3.0);
  // dmc_decision_lr_mult: one step from the same start with the decision rows at 7x the rate (no weight decay):
  // those rows move 7x as far, every other weight exactly as at 1x
  for (const char* mult : {"1", "7"}) {
    r = run(cmd("retrofit") + "--stage retrofit --init-from " + w + "/s1/final --out " + w + "/lr" + mult +
            " --train-steps 1 --target-cr 3 --weight-decay 0 --dmc-decision-lr-mult " + mult);
    INFO(r.output);
    REQUIRE(r.status == 0);
  }
  {
    auto l1 = Llama::load(w + "/lr1/final", at::kFloat, at::kCPU), l7 = Llama::load(w + "/lr7/final", at::kFloat, at::kCPU);
    const at::Tensor rows = decision_rows(s1);
    CHECK(rows.numel() == 6);
    for (size_t l = 0; l < s1.layers.size(); ++l) {
      const at::Tensor d1 = l1.layers[l].wqkv - s1.layers[l].wqkv, d7 = l7.layers[l].wqkv - s1.layers[l].wqkv;
      const at::Tensor r1 = d1.index_select(0, rows), r7 = d7.index_select(0, rows);
      CHECK(r1.abs().max().item<double>() > 0);  // the decision rows learn at all
      CHECK((r7 - 7.0 * r1).abs().max().item<double>() <= 1e-3 * r7.abs().max().item<double>());  // fp32 weights
      at::Tensor keep = at::ones({d1.size(0)}, at::kBool);
      keep.index_fill_(0, rows, false);
      CHECK(at::equal(l1.layers[l].wqkv.index({keep}), l7.layers[l].wqkv.index({keep})));
      CHECK(at::equal(l1.layers[l].wo, l7.layers[l].wo));
    }
  }
  // dmc_decision_lr_balance: layer l's decision rows at 7 x mean |g|_1 / |g_l|_1 (g = its attention norm; here layer 0's
  // scaled by 4 so that the two layers differ: 7 x 2.5 / 4 and 7 x 2.5 / 1); a run interrupted after one step and
  // resumed ends with the uninterrupted run's weights (its multiples from the state: after a step the norms differ)
  {
    Llama m = Llama::load(w + "/s1/final", at::kFloat, at::kCPU);
    {
      at::NoGradGuard ng;
      m.layers[0].attn_norm.mul_(4.0);
    }
    const double n0 = m.layers[0].attn_norm.abs().sum().item<double>(), n1 = m.layers[1].attn_norm.abs().sum().item<double>();
    m.save(w + "/m", at::kFloat);
    const std::string base = cmd("retrofit") + "--stage retrofit --init-from " + w + "/m --target-cr 3 " +
                             "--weight-decay 0 --save-every 1 --out " + w;
    const std::string bal = " --dmc-decision-lr-mult 7 --dmc-decision-lr-balance true --train-steps ";
    for (const std::string& run_args : {base + "/bal1 --dmc-decision-lr-mult 1 --train-steps 1", base + "/bal7" + bal + "1",
                                        base + "/balr" + bal + "2 --exit-after-steps 1", base + "/balr" + bal + "2",
                                        base + "/balw" + bal + "2"}) {
      r = run(run_args);
      INFO(r.output);
      REQUIRE(r.status == 0);
    }
    auto b1 = Llama::load(w + "/bal1/final", at::kFloat, at::kCPU), b7 = Llama::load(w + "/bal7/final", at::kFloat, at::kCPU);
    const at::Tensor rows = decision_rows(m);
    const double mean = (n0 + n1) / 2;
    for (size_t l = 0; l < 2; ++l) {
      const double want = 7.0 * mean / (l == 0 ? n0 : n1);
      INFO("layer " << l << ", multiple " << want);
      const at::Tensor r1 = (b1.layers[l].wqkv - m.layers[l].wqkv).index_select(0, rows);
      const at::Tensor r7 = (b7.layers[l].wqkv - m.layers[l].wqkv).index_select(0, rows);
      CHECK(r1.abs().max().item<double>() > 0);
      CHECK((r7 - want * r1).abs().max().item<double>() <= 1e-3 * r7.abs().max().item<double>());
    }
    auto st = nlohmann::json::parse(read_file(w + "/balw/checkpoints/step-00000001/trainer_state.json"));
    REQUIRE(st["stage"]["decision_lr_by_layer"].size() == 2);
    CHECK(st["stage"]["decision_lr_by_layer"][0].get<double>() == Approx(7.0 * mean / n0));
    auto whole = Llama::load(w + "/balw/final", at::kFloat, at::kCPU), resumed = Llama::load(w + "/balr/final", at::kFloat, at::kCPU);
    for (size_t l = 0; l < 2; ++l) CHECK(at::equal(whole.layers[l].wqkv, resumed.layers[l].wqkv));
    // a resume that asks for other multiples is refused
    r = run(base + "/balx" + bal + "2 --exit-after-steps 1");
    REQUIRE(r.status == 0);
    r = run(base + "/balx --dmc-decision-lr-mult 5 --train-steps 2");
    CHECK(r.status == 1);
    CHECK(r.output.find("ran with dmc_decision_lr_mult 7, dmc_decision_lr_balance true; this run asks for 5, false") !=
          std::string::npos);
  }
  // the per-head hinge through a stage: it trains, and logs its loss
  r = run(cmd("retrofit") + "--stage retrofit --init-from " + w + "/s1/final --out " + w +
          "/headloss --train-steps 2 --target-cr 3 --dmc-loss-scope head");
  INFO(r.output);
  REQUIRE(r.status == 0);
  bool logged = false;
  for (const auto& j : read_jsonl(w + "/headloss/metrics.jsonl"))
    if (j.contains("dmc_loss")) logged = j["dmc_loss"].get<double>() > 0;
  CHECK(logged);
  // finetune, then the report
  r = run(cmd("retrofit") + "--stage finetune --init-from " + w + "/s2/final --out " + w +
          "/s3 --train-steps 4 --target-cr 3");
  REQUIRE(r.status == 0);
  r = run(std::string(DMC_BINARY) + " report " + w + "/s1 " + w + "/s2 " + w + "/s3 --out " + w + "/rep");
  INFO(r.output);
  REQUIRE(r.status == 0);
  for (const char* f : {"loss.svg", "ratio.svg", "heatmap.svg", "summary.md"}) CHECK(fs::exists(w + "/rep/" + f));
  CHECK(read_file(w + "/rep/heatmap.svg").find("<rect") != std::string::npos);
  // a stage refuses a checkpoint of another stage
  r = run(cmd("retrofit") + "--stage finetune --init-from " + w + "/s2/final --out " + w +
          "/s2 --train-steps 9 --target-cr 3");
  CHECK(r.status == 1);
  CHECK(r.output.find("belongs to stage 'retrofit'") != std::string::npos);
}

TEST_CASE("every shipped recipe in configs/ parses as a retrofit or train config", "[dmc][config]") {
  int files = 0;
  for (const auto& dir : fs::directory_iterator(std::string(DMC_SOURCE_DIR) + "/configs")) {
    for (const auto& f : fs::directory_iterator(dir.path())) {
      if (f.path().extension() != ".yaml") continue;
      train::TrainOptions o;
      RetrofitOptions r;
      OptionTable t("retrofit", "");
      r.add_to(t);
      o.add_to(t);
      INFO(f.path().string());
      t.load_yaml(f.path().string());
      ++files;
      if (f.path().filename().string().find("retrofit") != std::string::npos) {
        CHECK(r.stage == RetrofitStage::Retrofit);
        CHECK(r.target_cr >= 2);
      }
    }
  }
  CHECK(files >= 17);
}

TEST_CASE("activation checkpointing gives the same loss and gradients, vanilla and DMC", "[dmc][train]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = 97;
  torch::manual_seed(2);
  at::Tensor ids = torch::randint(0, 97, {2, 24}, at::kLong);
  for (bool use_dmc : {false, true}) {
    DYNAMIC_SECTION((use_dmc ? "dmc" : "vanilla")) {
      std::vector<std::vector<at::Tensor>> grads;
      std::vector<double> losses;
      for (bool ckpt : {false, true}) {
        auto m = Llama::random(c, 5, at::kFloat, at::kCPU, 0.1);
        m.activation_checkpointing = ckpt;
        for (auto& p : m.parameters()) p.second->requires_grad_(true);
        std::unique_ptr<Attention> attn = std::make_unique<VanillaAttention>();
        if (use_dmc) {
          for (auto& L : m.layers) {
            at::NoGradGuard ng;
            L.wqkv.mul_(3.0);  // livelier decisions
          }
          DmcOptions o;
          o.init_val = 0.5;
          o.temperature = 0.5;
          torch::manual_seed(9);
          std::vector<at::Tensor> noise;
          for (int l = 0; l < 2; ++l) noise.push_back(at::randn({2, 24, c.num_key_value_heads}));
          attn = std::make_unique<DmcLayerAttention>(DmcMode::Train, o, at::Tensor(), noise);
        }
        at::Tensor h = m.forward_hidden(ids, *attn);  // attn lives past the backward (the recompute runs it)
        at::Tensor loss = at::linear(h, m.lm_head).pow(2).mean();
        if (use_dmc) loss = loss + dmc_loss(at::stack(attn->aux), 3.0);
        loss.backward();
        losses.push_back(loss.item<double>());
        std::vector<at::Tensor> g;
        for (auto& p : m.parameters()) g.push_back(p.second->grad().clone());
        grads.push_back(g);
      }
      CHECK(losses[0] == Approx(losses[1]).epsilon(1e-6));
      for (size_t i = 0; i < grads[0].size(); ++i) {
        INFO("parameter " << i);
        CHECK((grads[0][i] - grads[1][i]).abs().max().item<double>() <=
              1e-5 * (1 + grads[0][i].abs().max().item<double>()));
      }
      // the decision path receives gradient through the hinge in the DMC case
      if (use_dmc) CHECK(grads[1][2].abs().sum().item<double>() > 0);
    }
  }
}

TEST_CASE("flash-kernel biased attention equals its plain blockwise twin, values and gradients", "[dmc]") {
  for (auto dt : {at::kDouble, at::kFloat}) {
    const int64_t B = 2, nh = 4, nkv = 2, T = 37, D = 16;
    torch::manual_seed(21);
    auto o = at::TensorOptions().dtype(dt);
    at::Tensor q = at::randn({B, nh, T, D}, o), k = at::randn({B, nkv, T, D}, o), v = at::randn({B, nkv, T, D}, o);
    q.select(-1, D - 1).zero_();
    k.select(-1, D - 1).zero_();
    at::Tensor m = at::log_sigmoid(at::randn({B, nkv, T}, o) * 3);
    m.index_put_({at::indexing::Slice(), at::indexing::Slice(), 5}, -50000.0);  // an eval-mode merge
    at::Tensor R = at::randn({B, nh, T, D}, o);
    std::vector<std::vector<at::Tensor>> grads;
    std::vector<at::Tensor> outs;
    for (bool flash : {false, true}) {
      at::Tensor qq = q.clone().requires_grad_(true), kk = k.clone().requires_grad_(true),
                 vv = v.clone().requires_grad_(true), mm = m.clone().requires_grad_(true);
      at::Tensor out = flash ? biased_causal_attention_flash(qq, kk, vv, mm, 0.25)
                             : biased_causal_attention(qq, kk, vv, mm, 0.25, 8);
      (out * R).sum().backward();
      outs.push_back(out.detach());
      // dim D-1 of q and k carries no information (the model zeroes it in the graph): compare the rest
      grads.push_back({qq.grad().narrow(-1, 0, D - 1), kk.grad().narrow(-1, 0, D - 1), vv.grad(), mm.grad()});
    }
    const double tol = dt == at::kDouble ? 1e-10 : 2e-5;
    INFO("dtype " << c10::toString(dt));
    CHECK((outs[0] - outs[1]).abs().max().item<double>() < tol);
    for (int i = 0; i < 4; ++i) {
      INFO("gradient " << i << " max diff " << (grads[0][i] - grads[1][i]).abs().max().item<double>());
      CHECK((grads[0][i] - grads[1][i]).abs().max().item<double>() < tol * 10);
    }
  }
}

TEST_CASE("token-by-token decoding through the paged cache equals the parallel eval-mode forward", "[dmc][inference]") {
  for (bool use_dmc : {false, true}) {
    DYNAMIC_SECTION((use_dmc ? "dmc" : "vanilla")) {
      auto m = tiny_decoder_model(12, 0.1, use_dmc, 3);
      torch::manual_seed(4);
      std::vector<int64_t> toks;
      for (int i = 0; i < 90; ++i) toks.push_back(torch::randint(0, 101, {1}).item<int64_t>());
      PplOptions po;
      po.seq_len = 40;
      po.stride = 25;
      po.progress = false;
      auto par = perplexity(m, toks, po);
      po.mode = "incremental";
      po.batch = 2;  // 3 windows: a group of 2 decoding together, then one alone
      auto inc = perplexity(m, toks, po);
      po.batch = 1;
      auto inc1 = perplexity(m, toks, po);
      INFO("parallel " << par.ppl() << " incremental " << inc.ppl() << " (one window at a time " << inc1.ppl()
                       << ") cr " << par.cr() << " / " << inc.cr());
      CHECK(par.windows == 3);
      CHECK(par.tokens_scored == inc.tokens_scored);
      CHECK(inc1.tokens_scored == inc.tokens_scored);
      CHECK(std::abs(par.ppl() - inc.ppl()) / par.ppl() < 1e-4);
      CHECK(std::abs(inc1.ppl() - inc.ppl()) / inc.ppl() < 1e-5);
      CHECK(inc1.head_slots == inc.head_slots);
      if (use_dmc) {
        // the same slot counts per (layer, head): 1 + appends
        CHECK(par.cr() > 1.2);
        for (size_t l = 0; l < par.head_slots.size(); ++l)
          for (size_t g = 0; g < par.head_slots[l].size(); ++g) {
            // parallel counts T tokens per window, incremental T - 1 (the last token is never fed): compare ratios
            CHECK(par.head_tokens[l][g] - par.head_slots[l][g] >= inc.head_tokens[l][g] - inc.head_slots[l][g]);
          }
      }
    }
  }
}

namespace {
PagedCacheOptions small_cache(int64_t layers, int64_t seqs, int64_t page_size, int64_t pages) {
  PagedCacheOptions o;
  o.n_layers = layers;
  o.max_seqs = seqs;
  o.n_kv_heads = 2;
  o.head_dim = 4;
  o.page_size = page_size;
  o.n_pages = pages;
  return o;
}
}  // namespace

TEST_CASE("paged cache: per-head lengths, exhaustion reported, thousands of sequences through allocate and free",
          "[inference]") {
  const PagedCacheOptions o = small_cache(2, 8, 4, 64);
  PagedKVCache cache(o);
  require_error(
      [&] {
        PagedCacheOptions b = o;
        b.page_size = 3;
        PagedKVCache x(b);
      },
      {"page_size", "power of two"});
  std::mt19937 rng(1);
  at::Tensor kv = at::ones({4});
  int64_t refused = 0;
  for (int round = 0; round < 3000; ++round) {
    const int64_t s = rng() % 8;
    const int64_t len = 1 + rng() % 20;
    bool ok = true;
    for (int64_t t = 0; t < len && ok; ++t)
      for (int64_t l = 0; l < 2 && ok; ++l)
        for (int64_t h = 0; h < 2 && ok; ++h) {
          const int64_t r = cache.row(l, s, h);
          if (h == 1 && t % 2 == 1 && cache.length(r) > 0)
            cache.overwrite_last(r, kv * t, kv);  // a merging head
          else
            ok = cache.try_append(r, kv * t, kv);
        }
    refused += !ok;
    if (rng() % 2) cache.free_seq(s);
  }
  for (int64_t s = 0; s < 8; ++s) cache.free_seq(s);
  CHECK(cache.free_pages() == 64);
  CHECK(refused > 0);  // the pool ran out at times and said so
  // per-head lengths and contents
  for (int t = 0; t < 6; ++t) {
    cache.try_append(cache.row(0, 0, 0), kv * t, kv * -t);
    if (t % 3 == 0)
      cache.try_append(cache.row(0, 0, 1), kv * t, kv);
    else
      cache.overwrite_last(cache.row(0, 0, 1), kv * t, kv);
  }
  auto [k, v, lens] = cache.gather({cache.row(0, 0, 0), cache.row(0, 0, 1)});
  CHECK(lens[0].item<int64_t>() == 6);
  CHECK(lens[1].item<int64_t>() == 2);
  CHECK(k[0][5][0].item<float>() == 5);
  CHECK(v[0][4][0].item<float>() == -4);
  CHECK(k[1][1][0].item<float>() == 5);  // the second group's slot holds its latest state
}

// The free-page stack's batched operations (what the reference decode op, the prefill and eviction use) and the
// reference decode op at an exhausted pool: the row keeps its state, the exhaustion is counted, as the kernel does.
TEST_CASE("page pool: take_pages / give_pages keep the stack invariants, an exhausted append changes nothing",
          "[inference]") {
  const PagedCacheOptions o = small_cache(1, 2, 2, 5);
  PagedKVCache cache(o);
  auto L = [](std::vector<int64_t> v) { return at::tensor(v, at::kLong); };
  // takers served in order off the top: 2 + 0 + 2 pages, then 3 more of which only 1 exists
  at::Tensor p = cache.take_pages(L({2, 0, 2}), 2);
  CHECK(at::equal(p, at::tensor(std::vector<int32_t>{0, 1, -1, -1, 2, 3}, at::kInt).view({3, 2})));
  CHECK(cache.free_pages() == 1);
  CHECK(cache.exhaustion_count() == 0);
  at::Tensor q = cache.take_pages(L({3}), 3);
  CHECK(at::equal(q, at::tensor(std::vector<int32_t>{4, -1, -1}, at::kInt).view({1, 3})));
  CHECK(cache.free_pages() == 0);
  CHECK(cache.exhaustion_count() == 2);  // one per page that could not be had
  // give back 3 and 1 (kept in order), not 0; they come out again last-in first-out
  cache.give_pages(at::tensor(std::vector<int32_t>{3, 0, 1}, at::kInt),
                   at::tensor(std::vector<int64_t>{1, 0, 1}).to(at::kBool));
  CHECK(cache.free_pages() == 2);
  CHECK(at::equal(cache.take_pages(L({2}), 2), at::tensor(std::vector<int32_t>{1, 3}, at::kInt).view({1, 2})));
  // the reference decode op on a full pool: an append that needs a page leaves the row's length as it was
  PagedKVCache c2(o);
  c2.take_pages(L({5}), 5);  // every page taken
  DecodeUpdateParams dp;
  dp.n_heads = 2;
  dp.n_kv_heads = 2;
  dp.head_dim = 4;
  DmcState st;
  at::Tensor qkv = at::randn({1, 6 * 4});
  auto [cs, sn] = rope_cos_sin(at::ones({2}), at::arange(8, at::kLong));
  decode_update_ref(qkv, L({0}), L({0}), at::ones({1}, at::kBool), cs, sn, dp, st, c2);
  CHECK(c2.length(c2.row(0, 0, 0)) == 0);
  CHECK(c2.length(c2.row(0, 0, 1)) == 0);
  CHECK(c2.exhaustion_count() == 2);
  CHECK(c2.free_pages() == 0);
  // with pages back, the same step appends one slot a head
  c2.give_pages(at::tensor(std::vector<int32_t>{0, 1}, at::kInt), at::tensor(std::vector<int64_t>{1, 1}).to(at::kBool));
  decode_update_ref(qkv, L({0}), L({0}), at::ones({1}, at::kBool), cs, sn, dp, st, c2);
  CHECK(c2.length(c2.row(0, 0, 0)) == 1);
  CHECK(c2.length(c2.row(0, 0, 1)) == 1);
  CHECK(c2.free_pages() == 0);
}

TEST_CASE("dmc generate on a DMC model decodes through the paged cache, greedy = argmax of the parallel forward",
          "[dmc][inference]") {
  auto m = tiny_decoder_model(13, 0.2, true, 4);
  GenerateOptions go;
  go.max_new_tokens = 10;
  go.stop_at_eos = false;
  go.sampling.temperature = 0;
  std::vector<int64_t> prompt = {1, 5, 9, 77, 31, 2, 60};
  auto res = generate(m, {prompt}, go);
  REQUIRE(res.tokens[0].size() == 10);
  // reference: the eval-mode parallel forward over the growing sequence
  DmcOptions o;
  o.init_val = 0.2;
  o.window = 4;
  DmcLayerAttention attn(DmcMode::Eval, o);
  std::vector<int64_t> seq = prompt;
  at::NoGradGuard ng;
  for (int i = 0; i < 10; ++i) {
    at::Tensor logits = m.forward(at::tensor(seq, at::kLong).unsqueeze(0), attn);
    seq.push_back(logits[0][-1].argmax().item<int64_t>());
  }
  CHECK(std::vector<int64_t>(seq.begin() + 7, seq.end()) == res.tokens[0]);
}

TEST_CASE("parallel prefill builds the same cache and next-token logits as token-by-token decoding",
          "[dmc][inference]") {
  for (bool use_dmc : {false, true}) {
    DYNAMIC_SECTION((use_dmc ? "dmc" : "vanilla")) {
      auto m = tiny_decoder_model(14, 0.2, use_dmc, 3);
      const auto& c = m.config;
      torch::manual_seed(5);
      std::vector<int64_t> prompt;
      for (int i = 0; i < 33; ++i) prompt.push_back(torch::randint(0, 101, {1}).item<int64_t>());
      DecoderOptions o;
      o.max_seqs = 2;
      o.page_size = 4;
      Decoder a(m, o), b(m, o);
      at::Tensor la;
      for (int64_t id : prompt) la = a.step({0}, {id})[0];
      at::Tensor lb = b.prefill(0, prompt);
      CHECK((la - lb).abs().max().item<double>() < 1e-4);
      int64_t merged = 0;
      for (int64_t l = 0; l < 2; ++l)
        for (int64_t g = 0; g < c.num_key_value_heads; ++g) {
          CHECK(a.slots(l, 0, g) == b.slots(l, 0, g));
          merged += 33 - a.slots(l, 0, g);
          const int64_t r = a.cache().row(l, 0, g);
          auto [ka, va, na] = a.cache().gather({r});
          auto [kb, vb, nb] = b.cache().gather({r});
          CHECK((ka - kb).abs().max().item<double>() < 1e-4);
          CHECK((va - vb).abs().max().item<double>() < 1e-4);
        }
      if (use_dmc) CHECK(merged > 10);
      // decoding continues identically
      for (int s = 0; s < 6; ++s) {
        const int64_t next = la.argmax().item<int64_t>();
        la = a.step({0}, {next})[0];
        lb = b.step({0}, {next})[0];
        CHECK((la - lb).abs().max().item<double>() < 1e-4);
      }
    }
  }
}

TEST_CASE("dmc_loss_weight scales the hinge the trainer adds, not the one it logs", "[dmc][train]") {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = 300;
  Llama m = Llama::random(c, 7, at::kDouble, at::kCPU);
  for (auto& p : m.parameters()) p.second->set_requires_grad(true);
  torch::manual_seed(11);
  data::Batch b;
  b.input = at::randint(0, c.vocab_size, {2, 24}, at::kLong);
  b.target = at::randint(0, c.vocab_size, {2, 24}, at::kLong);
  b.doc_start = at::zeros({2, 24}, at::kBool);
  struct Got {
    double added, logged, grad;
  };
  auto step = [&](double weight, DmcLossScope scope) {
    RetrofitOptions o;
    o.stage = RetrofitStage::Finetune;  // the target itself (4): the hinge is active on a fresh model
    o.target_cr = 4.0;
    o.dmc_loss_scope = scope;
    o.dmc_loss_weight = weight;
    DmcStage st(o);
    st.begin_step(0, 10, m);
    torch::manual_seed(5);  // the same noise for every weight
    st.forward_hidden(m, b);
    at::Tensor l = st.extra_loss(m);
    for (auto& p : m.parameters())
      if (p.second->grad().defined()) p.second->mutable_grad().zero_();
    l.backward();
    double g = 0;
    for (auto& p : m.parameters())
      if (p.second->grad().defined()) g += p.second->grad().abs().sum().item<double>();
    return Got{l.item<double>(), st.metrics()["dmc_loss"].get<double>(), g};
  };
  for (DmcLossScope scope : {DmcLossScope::Shard, DmcLossScope::Head}) {
    const Got one = step(1.0, scope), more = step(2.5, scope), none = step(0.0, scope);
    INFO("hinge " << one.added << " grad " << one.grad);
    REQUIRE(one.added > 0.1);  // decisions at ~sigmoid(-c): far below the target's 0.75
    REQUIRE(one.grad > 0);
    CHECK(more.added == Approx(2.5 * one.added).epsilon(1e-12));
    CHECK(more.grad == Approx(2.5 * one.grad).epsilon(1e-7));  // sums of float64 gradients
    CHECK(none.added == 0.0);
    // not exactly 0: FlashLse's backward plants a dO of 1e-150 (float64) in an all-zero row to carry the lse gradient
    CHECK(none.grad < 1e-12 * one.grad);
    CHECK(more.logged == Approx(one.logged).epsilon(1e-12));  // metrics keep the unweighted hinge
    CHECK(none.logged == Approx(one.logged).epsilon(1e-12));
  }
  RetrofitOptions o;
  OptionTable t("retrofit", "usage");
  o.add_to(t);
  require_error([&] { t.parse({"--dmc-loss-weight=-1"}); }, {"dmc_loss_weight", ">= 0"});
}

TEST_CASE("retrofit with distillation: KL to the frozen original (float64 reference), gradients, CLI run and resume",
          "[dmc][train]") {
  const auto w = tmp_dir("distill");
  stage_data(w, 41);
  RunResult r;
  const std::string common = " --tokenizer " + w + "/tok.model --data " + w +
                             "/data --seq-len 32 --micro-batch 2 --global-batch 4 --device cpu --log-every 1 "
                             "--num-hidden-layers 2 --hidden-size 64 --num-attention-heads 4 --num-key-value-heads 2 "
                             "--intermediate-size 96 ";
  r = run(std::string(DMC_BINARY) + " train" + common + "--out " + w + "/base --train-steps 4");
  REQUIRE(r.status == 0);
  r = run(std::string(DMC_BINARY) + " retrofit" + common + "--stage zero_out --init-from " + w + "/base/final --out " +
          w + "/s1 --train-steps 4");
  REQUIRE(r.status == 0);
  // the loss against an independent float64 computation
  {
    auto model = Llama::load(w + "/s1/final", at::kFloat, at::kCPU);
    auto teacher = Llama::load(w + "/base/final", at::kDouble, at::kCPU);
    RetrofitOptions o;
    o.stage = RetrofitStage::Retrofit;
    o.target_cr = 2;
    o.distill_from = w + "/base/final";
    o.distill_temperature = 2.0;
    o.distill_lm_weight = 0.5;
    DmcStage stage(o);
    for (auto& p : model.parameters()) p.second->set_requires_grad(true);  // as the trainer does
    stage.begin_step(0, 8, model);
    torch::manual_seed(3);
    data::Batch b;
    b.input = at::randint(0, model.config.vocab_size, {2, 16}, at::kLong);
    b.target = at::randint(0, model.config.vocab_size, {2, 16}, at::kLong);
    b.doc_start = at::zeros({2, 16}, at::kBool);
    at::Tensor h = stage.forward_hidden(model, b);
    at::Tensor loss = stage.loss(model, h, b);
    REQUIRE(loss.defined());
    at::Tensor s = model.lm_logits(h).to(at::kDouble).detach(), t;
    {
      at::NoGradGuard ng;
      t = teacher.forward(b.input);
    }
    const double tau = 2.0;
    at::Tensor pt = at::softmax(t / tau, -1);
    at::Tensor kl = (pt * (at::log(pt) - at::log(at::softmax(s / tau, -1)))).sum(-1).mean() * (tau * tau);
    at::Tensor ce = -at::log(at::softmax(s, -1)).gather(-1, b.target.unsqueeze(-1)).mean();
    const double want = (kl + 0.5 * ce).item<double>();
    INFO("loss " << loss.item<double>() << " reference " << want);
    CHECK(std::abs(loss.item<double>() - want) < 1e-5 * std::max(1.0, std::abs(want)));
    CHECK(kl.item<double>() > 1e-4);  // the zero-out student is not its teacher
    loss.backward();
    double gsum = 0;
    for (auto& p : model.parameters())
      if (p.second->grad().defined()) gsum += p.second->grad().abs().sum().item<double>();
    CHECK(gsum > 0);
    const auto m = stage.metrics();
    CHECK(m.contains("kl"));
    CHECK(m.contains("lm_loss"));
  }
  // the CLI: a distilled retrofit logs its KL and LM loss, and an interrupted run resumes to the same weights
  const std::string rf = std::string(DMC_BINARY) + " retrofit" + common + "--stage retrofit --target-cr 2 --init-from " +
                         w + "/s1/final --distill-from " + w + "/base/final --train-steps 4 ";
  r = run(rf + "--out " + w + "/straight");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(rf + "--out " + w + "/resumed --exit-after-steps 2");
  REQUIRE(r.status == 0);
  r = run(rf + "--out " + w + "/resumed");
  INFO(r.output);
  REQUIRE(r.status == 0);
  int64_t rows = 0;
  for (const auto& j : read_jsonl(w + "/straight/metrics.jsonl"))
    if (j.contains("kl")) {
      ++rows;
      CHECK(j["kl"].get<double>() >= 0.0);
      CHECK(j.contains("lm_loss"));
    }
  CHECK(rows == 4);
  auto a = Llama::load(w + "/straight/final", at::kFloat, at::kCPU), b2 = Llama::load(w + "/resumed/final", at::kFloat, at::kCPU);
  auto pa = a.parameters(), pb = b2.parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) CHECK(at::equal(*pa[i].second, *pb[i].second));
  // a teacher that is not there: a clear error naming the option
  r = run(rf + "--out " + w + "/bad --distill-from " + w + "/nope");
  CHECK(r.status == 1);
  CHECK(r.output.find(w + "/nope") != std::string::npos);
}

// ---- the decision pair (dmc_decision_pair): rotary pairs moved, the function kept ----

namespace {
// The zero-out forward at factor 0 with an arbitrary dimension j zeroed around RoPE (the reference zeroes D-1): the
// independent formulation the swapped model must equal, no pair moved.
struct ZeroDimAttention : Attention {
  int64_t j;
  explicit ZeroDimAttention(int64_t dim) : j(dim) {}
  Out layer(int64_t l, const at::Tensor& qkv, bool recompute) override {
    (void)l, (void)recompute;
    const int64_t B = qkv.size(0), T = qkv.size(1);
    at::Tensor q = qkv.narrow(-1, 0, nh_ * hd_).view({B, T, nh_, hd_}).transpose(1, 2);
    at::Tensor k = qkv.narrow(-1, nh_ * hd_, nkv_ * hd_).view({B, T, nkv_, hd_}).transpose(1, 2);
    at::Tensor v = qkv.narrow(-1, (nh_ + nkv_) * hd_, nkv_ * hd_).view({B, T, nkv_, hd_}).transpose(1, 2);
    at::Tensor keep = at::ones({hd_}, q.options());
    keep.index_put_({j}, 0.0);
    q = apply_rope(q * keep, cos_, sin_) * keep;
    k = apply_rope(k * keep, cos_, sin_) * keep;
    k = k.repeat_interleave(nh_ / nkv_, 1);
    v = v.repeat_interleave(nh_ / nkv_, 1);
    at::Tensor o = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, true);
    return {o.transpose(1, 2).reshape({B, T, nh_ * hd_}), {}};
  }
};
Llama pair_model(at::ScalarType dt) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = c.hidden_size / 4;
  return Llama::random(c, 17, dt, at::kCPU, 0.2);
}
}  // namespace

TEST_CASE("swap_rope_pairs keeps the function (float64), through save and load and the paged decode engine",
          "[dmc][model]") {
  Llama m = pair_model(at::kDouble);
  const int64_t half = m.config.head_dim / 2;
  torch::manual_seed(3);
  at::Tensor ids = torch::randint(0, m.config.vocab_size, {2, 20}, at::kLong);
  at::NoGradGuard ng;
  const at::Tensor before = m.forward(ids);
  const at::Tensor w0 = m.layers[0].wqkv.clone();
  m.swap_rope_pairs(1, half - 1);
  m.swap_rope_pairs(0, 2);
  CHECK((m.layers[0].wqkv - w0).abs().max().item<double>() > 0.01);  // the rows moved
  CHECK(m.config.dmc.rope_pairs[(size_t)(half - 1)] == 1);
  CHECK(m.config.dmc.rope_pairs[0] == 2);
  CHECK((m.forward(ids) - before).abs().max().item<double>() < 1e-10);

  const auto w = tmp_dir("rope-pairs");
  m.save(w + "/m", at::kFloat);
  Llama back = Llama::load(w + "/m", at::kFloat, at::kCPU);
  CHECK(back.config.dmc.rope_pairs == m.config.dmc.rope_pairs);
  const at::Tensor full = back.forward(ids);
  CHECK((full.to(at::kDouble) - before).abs().max().item<double>() < 1e-4);
  // token by token through the paged cache (its RoPE tables from the permuted frequencies)
  DecoderOptions o;
  o.max_seqs = 1;
  o.policy = CachePolicy::Vanilla;
  Decoder d(back, o);
  std::vector<int64_t> prompt(ids[0].data_ptr<int64_t>(), ids[0].data_ptr<int64_t>() + 6);
  double worst = (d.prefill(0, prompt) - full[0][5]).abs().max().item<double>();
  for (int64_t t = 6; t < 20; ++t)
    worst = std::max(worst, (d.step({0}, {ids[0][t].item<int64_t>()})[0] - full[0][t]).abs().max().item<double>());
  INFO("max |decode - full| " << worst);
  CHECK(worst < 1e-4);

  // a config whose rope_pairs is not a permutation is refused, naming the file and the field
  nlohmann::json cj = nlohmann::json::parse(read_file(w + "/m/config.json"));
  cj["dmc"]["rope_pairs"][0] = cj["dmc"]["rope_pairs"][1];
  write_file_atomic(w + "/m/config.json", cj.dump());
  require_error([&] { Llama::load(w + "/m", at::kFloat, at::kCPU); },
                {w + "/m/config.json", "dmc.rope_pairs", "permutation"});
}

TEST_CASE("dmc_decision_pair: each pair's loss equals zeroing its partner dim in place, auto moves the least to D-1",
          "[dmc][train]") {
  Llama m = pair_model(at::kDouble);
  const int64_t half = m.config.head_dim / 2;
  // pair 5 unused by the model (its q/k rows zero): zeroing its partner costs nothing
  {
    at::NoGradGuard ng;
    for (auto& L : m.layers)
      for (int64_t h = 0; h < 6; ++h)
        for (int64_t d : {int64_t(5), 5 + half}) L.wqkv[h * m.config.head_dim + d].zero_();
  }
  torch::manual_seed(4);
  at::Tensor ids = torch::randint(0, m.config.vocab_size, {2, 24}, at::kLong);
  at::Tensor tgt = torch::randint(0, m.config.vocab_size, {2, 24}, at::kLong);
  auto calib = [&](Attention& attn) {
    at::NoGradGuard ng;
    at::Tensor lg = m.forward(ids, attn);
    return at::cross_entropy_loss(lg.view({-1, lg.size(-1)}), tgt.view({-1})).item<double>();
  };
  std::vector<double> ref;
  for (int64_t p = 0; p < half; ++p) {
    ZeroDimAttention z(p + half);
    ref.push_back(calib(z));
  }
  VanillaAttention va;
  const double base = calib(va);
  CHECK(std::abs(ref[5] - base) < 1e-12);
  const std::vector<double> got = decision_pair_losses(m, calib);
  REQUIRE(got.size() == ref.size());
  for (int64_t p = 0; p < half; ++p) CHECK(std::abs(got[(size_t)p] - ref[(size_t)p]) < 1e-10);
  CHECK(m.config.dmc.rope_pairs.empty());  // left as it was
  const int64_t best = std::min_element(ref.begin(), ref.end()) - ref.begin();

  RetrofitOptions o;
  o.stage = RetrofitStage::ZeroOut;
  o.decision_pair = "auto";
  DmcStage st(o);
  st.prepare(m, calib);
  REQUIRE(m.config.dmc.rope_pairs.size() == (size_t)half);
  CHECK(m.config.dmc.rope_pairs.back() == best);
  CHECK(std::abs(calib(va) - base) < 1e-10);  // the same model
  ZeroOutAttention z0(0.0);
  CHECK(std::abs(calib(z0) - ref[(size_t)best]) < 1e-10);
  CHECK(st.state()["decision_pair"]["pair"] == best);

  // a fixed pair; the reference's (last) leaves the order alone; a pair out of range is an error
  Llama m2 = pair_model(at::kDouble);
  o.decision_pair = "3";
  DmcStage(o).prepare(m2, calib);
  CHECK(m2.config.dmc.rope_pairs.back() == 3);
  Llama m3 = pair_model(at::kDouble);
  o.decision_pair = "last";
  DmcStage(o).prepare(m3, calib);
  CHECK(m3.config.dmc.rope_pairs.empty());
  o.decision_pair = std::to_string(half);
  require_error([&] { DmcStage(o).prepare(m3, calib); }, {"dmc_decision_pair", "out of range"});
}

TEST_CASE("retrofit --dmc-decision-pair auto: stage 1 moves the pair, the later stages and the engine keep it",
          "[dmc][train]") {
  const auto w = tmp_dir("decision-pair");
  stage_data(w, 37);
  auto cmd = [&](const std::string& what) { return stage_cmd(w, what) + "--eval-batches 2 "; };
  auto r = run(cmd("train") + "--out " + w + "/base --train-steps 4");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(cmd("retrofit") + "--stage zero_out --init-from " + w + "/base/final --out " + w + "/s1 --train-steps 4 " +
          "--dmc-decision-pair bogus");
  CHECK(r.status != 0);
  CHECK(r.output.find("dmc_decision_pair: expected last, auto or a pair index") != std::string::npos);
  r = run(cmd("retrofit") + "--stage zero_out --init-from " + w + "/base/final --out " + w + "/s1a --train-steps 4 " +
          "--dmc-decision-pair auto --log-level warn");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("dmc_decision_pair auto: LM loss") == std::string::npos);  // not on the console at warn
  // the pair named (auto's choice on this random model may be the last pair itself, which moves nothing)
  r = run(cmd("retrofit") + "--stage zero_out --init-from " + w + "/base/final --out " + w + "/s1 --train-steps 4 " +
          "--dmc-decision-pair 2");
  INFO(r.output);
  REQUIRE(r.status == 0);
  // the choice and the losses in the run's metrics and its log.txt, written at --log-level warn too
  CHECK(read_file(w + "/s1a/metrics.jsonl").find("\"decision_pair\":{") != std::string::npos);
  CHECK(read_file(w + "/s1a/log.txt").find("dmc_decision_pair auto: LM loss") != std::string::npos);
  const auto s1 = Llama::load(w + "/s1/final", at::kFloat, at::kCPU);
  REQUIRE(s1.config.dmc.rope_pairs.size() == 8);  // head_dim 16
  CHECK(s1.config.dmc.rope_pairs.back() == 2);
  r = run(cmd("retrofit") + "--stage retrofit --init-from " + w + "/s1/final --out " + w + "/s2 --train-steps 4 " +
          "--target-cr 2 --dmc-decision-pair auto");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("applies to stage zero_out") != std::string::npos);
  const auto s2 = Llama::load(w + "/s2/final", at::kFloat, at::kCPU);
  CHECK(s2.config.dmc.rope_pairs == s1.config.dmc.rope_pairs);
  // the DMC model's parallel eval-mode forward against token by token through the paged cache
  const std::string ppl = std::string(DMC_BINARY) + " eval ppl --model " + w + "/s2/final --tokenizer " + w +
                          "/tok.model --data " + w + "/data --seq-len 32 --max-tokens 200 --device cpu";
  r = run(ppl + " --json " + w + "/p.json");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = run(ppl + " --mode incremental --json " + w + "/i.json");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const double pp = nlohmann::json::parse(read_file(w + "/p.json"))["ppl"].get<double>();
  const double pi = nlohmann::json::parse(read_file(w + "/i.json"))["ppl"].get<double>();
  CHECK(std::abs(pp / pi - 1) < 1e-3);
}
