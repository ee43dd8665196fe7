// CUDA checks (skipped without a GPU): bf16 logits against HF transformers on the same card, and the cached
// decode against the full forward in bf16.
//
// bf16 tolerance: both implementations round every activation to bf16 (8 significant bits), but through
// different kernels (dmc fuses q/k/v and gate/up into single GEMMs), so they cannot agree bitwise. The
// criterion is relative to what bf16 itself costs: dmc's error against the fp32 reference may be at most
// 1.5x HF's own bf16 error against the same reference, plus 0.5% of the logit scale.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "helpers.h"
#include "io/safetensors.h"
#include "ops/dmc.h"
#include "model/llama.h"

using namespace dmc;
using namespace dmc::test;

TEST_CASE("bf16 logits on CUDA match HF transformers within bf16 rounding", "[gpu][hf]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  if (!have_oracle()) SKIP("python oracle not available: " + python());
  const auto work = tmp_dir("gpuhf");
  auto r = run(oracle() + " make-model " + work +
               "/m --vocab 1000 --layers 4 --heads 8 --kv-heads 2 --hidden 512 --ffn 1400 --seed 4");
  INFO(r.output);
  REQUIRE(r.status == 0);
  torch::manual_seed(0);
  at::Tensor ids = torch::randint(0, 1000, {2, 200}, at::kLong);
  nlohmann::json j = nlohmann::json::array();
  for (int b = 0; b < 2; ++b) {
    nlohmann::json row = nlohmann::json::array();
    for (int t = 0; t < 200; ++t) row.push_back(ids[b][t].item<int64_t>());
    j.push_back(row);
  }
  std::ofstream(work + "/ids.json") << j.dump();
  auto hf = [&](const std::string& dtype, const std::string& dev) {
    auto rr = run(oracle() + " logits " + work + "/m " + work + "/ids.json " + work + "/l.safetensors --dtype " +
                  dtype + " --device " + dev);
    INFO(rr.output);
    REQUIRE(rr.status == 0);
    return io::SafetensorsFile::open(work + "/l.safetensors")->get("logits").clone();
  };
  at::Tensor ref32 = hf("fp32", "cpu");
  at::Tensor hf16 = hf("bf16", "cuda");
  auto model = Llama::load(work + "/m", at::kBFloat16, at::Device(at::kCUDA, 0));
  at::NoGradGuard ng;
  at::Tensor ours = model.forward(ids.to(at::kCUDA)).to(at::kCPU, at::kFloat);
  const double scale = ref32.abs().max().item<double>();
  const double err_hf = (hf16 - ref32).abs().max().item<double>();
  const double err_ours = (ours - ref32).abs().max().item<double>();
  const double diff = (ours - hf16).abs().max().item<double>();
  INFO("scale " << scale << " err_hf " << err_hf << " err_ours " << err_ours << " ours-vs-hf " << diff);
  CHECK(err_ours <= 1.5 * err_hf + 0.005 * scale);
  // and the argmax: ours agrees with the fp32 reference's at least as often as HF's bf16 does (less 2 points); two
  // bf16 implementations that round in different places split near-ties differently, so ours against HF's is
  // printed, not required
  auto agreement = [](const at::Tensor& a, const at::Tensor& b) {
    return (a.argmax(-1) == b.argmax(-1)).to(at::kFloat).mean().item<double>();
  };
  const double agree = agreement(ours, hf16), ours_ref = agreement(ours, ref32), hf_ref = agreement(hf16, ref32);
  INFO("argmax agreement with fp32: ours " << ours_ref << ", HF bf16 " << hf_ref);
  CHECK(ours_ref >= hf_ref - 0.02);  // (this random model's logits crowd: HF bf16 itself agrees on ~80%)
  std::cout << "[gpu-hf-bf16] scale " << scale << " err_hf " << err_hf << " err_dmc " << err_ours << " dmc_vs_hf "
            << diff << " argmax_agree " << agree << " (with fp32: dmc " << ours_ref << ", HF " << hf_ref << ")"
            << std::endl;
}

TEST_CASE("CUDA: the inference form of the biased flash attention (cuDNN, no gradient) equals the training form",
          "[gpu][dmc]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  torch::manual_seed(21);
  auto f = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t B = 2, nh = 8, nkv = 2, T = 700, D = 128;
  at::Tensor q = at::randn({B, nh, T, D}, f), k = at::randn({B, nkv, T, D}, f), v = at::randn({B, nkv, T, D}, f);
  // DMC's q/k carry a zero in dimension D-1 (the bias rides there)
  q.select(-1, D - 1).zero_();
  k.select(-1, D - 1).zero_();
  at::Tensor m = -5.0 * at::rand({B, nkv, T}, f.dtype(at::kFloat));
  at::Tensor train = biased_causal_attention_flash(q.clone().requires_grad_(true), k, v, m, 1.0 / std::sqrt((double)D));
  at::Tensor infer;
  {
    at::NoGradGuard ng;
    infer = biased_causal_attention_flash(q, k, v, m, 1.0 / std::sqrt((double)D));
  }
  const double e = rel_err(infer.to(at::kFloat), train.detach().to(at::kFloat));
  INFO("no-grad (cuDNN) vs training (FA2) form: rel err " << e);
  CHECK(e < 1e-2);
  std::cout << "[gpu-dmc-flash-infer] cudnn vs fa2 rel err " << e << std::endl;
}

TEST_CASE("CUDA: flash-kernel DMC attention equals the blockwise twin in bf16, values and gradients", "[gpu][dmc]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  // Llama's head_dim 128 in groups of 4, and SmolLM2's 64 in groups of 3 (KV heads read by FlashAttention-2 itself)
  for (auto [nh, nkv, D] : {std::tuple<int64_t, int64_t, int64_t>{8, 2, 128}, {9, 3, 64}}) {
    const int64_t B = 2, T = 300;
    INFO("heads " << nh << " / " << nkv << ", head_dim " << D);
    torch::manual_seed(3);
    auto o = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
    at::Tensor q = at::randn({B, nh, T, D}, o), k = at::randn({B, nkv, T, D}, o), v = at::randn({B, nkv, T, D}, o);
    q.select(-1, D - 1).zero_();
    k.select(-1, D - 1).zero_();
    at::Tensor m = at::log_sigmoid(at::randn({B, nkv, T}, o) * 3);
    at::Tensor R = at::randn({B, nh, T, D}, o);
    std::vector<std::vector<at::Tensor>> g;
    std::vector<at::Tensor> outs;
    for (int variant = 0; variant < 2; ++variant) {
      // variant 0: blockwise in fp32 (reference); 1: flash in bf16
      const auto dt = variant == 0 ? at::kFloat : at::kBFloat16;
      // fresh leaves each time (q.to(kFloat) would return q itself and make it require grad)
      at::Tensor qq = q.to(dt).clone().requires_grad_(true), kk = k.to(dt).clone().requires_grad_(true),
                 vv = v.to(dt).clone().requires_grad_(true), mm = m.clone().requires_grad_(true);
      INFO("variant " << variant);
      at::Tensor out = variant == 0
                           ? dmc::biased_causal_attention(qq, kk, vv, mm, 1.0 / std::sqrt((double)D), 64)
                           : dmc::biased_causal_attention_flash(qq, kk, vv, mm.to(dt), 1.0 / std::sqrt((double)D));
      (out.to(at::kFloat) * R).sum().backward();
      outs.push_back(out.to(at::kFloat).detach());
      g.push_back({qq.grad().narrow(-1, 0, D - 1).to(at::kFloat), kk.grad().narrow(-1, 0, D - 1).to(at::kFloat),
                   vv.grad().to(at::kFloat), mm.grad().to(at::kFloat)});
    }
    auto rel = [](const at::Tensor& a, const at::Tensor& b) { return ((a - b).norm() / b.norm()).item<double>(); };
    // bf16 inputs and kernel vs an fp32 reference: relative errors of a few bf16 ulps (2^-8 = 0.4%)
    const double e_out = rel(outs[1], outs[0]);
    INFO("out rel err " << e_out);
    CHECK(e_out < 0.02);
    for (int i = 0; i < 4; ++i) {
      const double e = rel(g[1][i], g[0][i]);
      INFO("grad " << i << " rel err " << e);
      CHECK(e < 0.03);
    }
    std::cout << "[gpu-dmc-flash] heads " << nh << "/" << nkv << " head_dim " << D << ": out rel err " << e_out
              << std::endl;
  }
}

// The inference-time kernels of DMC attention (kernels/dmc_eval.cu) against their ATen oracles. Inputs are bf16; the
// oracles compute in fp32 from the same bf16 values, so the only difference is the kernels' bf16 output rounding
// (2^-9 relative at most, ~2^-10 on average) and fp32 summation order.
TEST_CASE("CUDA: DMC pooling and diagonal blend kernels (blend backward too) equal their ATen forms", "[gpu][dmc]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
#ifndef DMC_WITH_CUDA
  SKIP("built without the CUDA kernels");
#else
  auto f = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (int64_t D : {64, 128}) {
    for (int64_t W : {1, 5, 12, 32}) {
      DYNAMIC_SECTION("pool D " << D << " W " << W) {
        torch::manual_seed(40 + W + D);
        const int64_t B = 2, T = 301, nh = 4, nkv = 2;
        // k and v as views into a fused projection, as the model hands them over
        at::Tensor qkv = at::randn({B, T, (nh + 2 * nkv) * D}, f).to(at::kBFloat16);
        at::Tensor k = qkv.narrow(-1, nh * D, nkv * D).view({B, T, nkv, D});
        at::Tensor v = qkv.narrow(-1, (nh + nkv) * D, nkv * D).view({B, T, nkv, D});
        at::Tensor w = at::rand({B, T, nkv}, f) + 0.05;
        at::Tensor b = (at::rand({B, T, nkv}, f) < 0.85).to(at::kFloat);  // long groups too: W matters
        b.narrow(1, 0, 1).zero_();
        b.narrow(1, 150, 1).zero_();  // a document start
        REQUIRE(dmc_eval_kernels_apply(k, v, W));
        at::Tensor ko = at::empty({B, T, nkv, D}, k.options()), vo = at::empty({B, T, nkv, D}, v.options());
        dmc_pool_eval_cuda(k, v, w, b, W, ko, vo);
        at::Tensor ref = dmc_pool_ref(at::cat({k, v}, -1).to(at::kFloat), w, b, W);
        const double ek = rel_err(ko, ref.narrow(-1, 0, D)), ev = rel_err(vo, ref.narrow(-1, D, D));
        INFO("k " << ek << " v " << ev);
        CHECK(ek < 4e-3);
        CHECK(ev < 4e-3);
        // a window the kernel does not take is left to the general form
        CHECK_FALSE(dmc_eval_kernels_apply(k, v, 33));
        CHECK_FALSE(dmc_eval_kernels_apply(k.to(at::kFloat), v.to(at::kFloat), W));
        std::cout << "[gpu-dmc-pool-eval] D " << D << " W " << W << ": k " << ek << " v " << ev << std::endl;
      }
    }
  }
  SECTION("blend, GQA, strided") {
    torch::manual_seed(77);
    const int64_t B = 2, T = 257, nh = 8, nkv = 2, D = 128;
    const double scale = 1.0 / std::sqrt((double)D);
    // q and past in [B, T, nh, D] memory (as the RoPE kernel and cuDNN write them), k and v contiguous
    at::Tensor q = at::randn({B, T, nh, D}, f).to(at::kBFloat16).transpose(1, 2);
    at::Tensor past = at::randn({B, T, nh, D}, f).to(at::kBFloat16).transpose(1, 2);
    at::Tensor k = at::randn({B, nkv, T, D}, f).to(at::kBFloat16), v = at::randn({B, nkv, T, D}, f).to(at::kBFloat16);
    q.select(-1, D - 1).fill_(1.0 / scale);  // the bias scale, which the diagonal score must leave out
    at::Tensor lse = at::randn({B, nh, T}, f) * 2;
    at::Tensor out = dmc_blend_cuda(q, k, past, v, lse, scale);
    REQUIRE(out.defined());
    // fp32 oracle
    at::Tensor ke = k.to(at::kFloat).repeat_interleave(nh / nkv, 1),
               ve = v.to(at::kFloat).repeat_interleave(nh / nkv, 1);
    at::Tensor s = (q.to(at::kFloat).narrow(-1, 0, D - 1) * ke.narrow(-1, 0, D - 1)).sum(-1) * scale;
    at::Tensor a = at::sigmoid(lse - s).unsqueeze(-1);
    at::Tensor ref = a * past.to(at::kFloat) + (1 - a) * ve;
    const double e = rel_err(out, ref);
    INFO("blend rel err " << e);
    CHECK(e < 4e-3);
    // both terms take part (neither weight saturates everywhere)
    CHECK(a.min().item<double>() < 0.2);
    CHECK(a.max().item<double>() > 0.8);
    // an fp32 input is not the kernel's: the caller falls back
    CHECK_FALSE(dmc_blend_cuda(q.to(at::kFloat), k.to(at::kFloat), past.to(at::kFloat), v.to(at::kFloat), lse, scale)
                    .defined());
    std::cout << "[gpu-dmc-blend] rel err " << e << std::endl;
  }
  SECTION("blend backward, against autograd through the fp32 form") {
    // Llama (128, MHA), SmolLM2 (64, groups of 3), Llama's GQA (128, groups of 4), and 256 (two chunks a lane)
    for (auto [nh, nkv, D] : {std::tuple<int64_t, int64_t, int64_t>{4, 4, 128}, {9, 3, 64}, {8, 2, 128}, {2, 1, 256}}) {
      INFO("heads " << nh << " / " << nkv << ", head_dim " << D);
      torch::manual_seed(78);
      const int64_t B = 2, T = 131, G = nh / nkv;
      const double scale = 1.0 / std::sqrt((double)D);
      at::Tensor q = at::randn({B, T, nh, D}, f).to(at::kBFloat16).transpose(1, 2);  // strided, as RoPE writes it
      at::Tensor past = at::randn({B, T, nh, D}, f).to(at::kBFloat16).transpose(1, 2);
      at::Tensor k = at::randn({B, nkv, T, D}, f).to(at::kBFloat16), v = at::randn({B, nkv, T, D}, f).to(at::kBFloat16);
      q.select(-1, D - 1).fill_(1.0 / scale);
      at::Tensor lse = at::randn({B, nh, T}, f) * 2;
      at::Tensor dout = at::randn({B, nh, T, D}, f).to(at::kBFloat16);
      REQUIRE(dmc_blend_kernels_apply(q, k, past, v));
      auto [dq, dk, dpast, dv, dlse] = dmc_blend_backward_cuda(dout, q, k, past, v, lse, scale);
      // the oracle: autograd through the fp32 formula on the same bf16 values
      std::vector<at::Tensor> x = {q.to(at::kFloat), k.to(at::kFloat), past.to(at::kFloat), v.to(at::kFloat), lse};
      for (auto& t : x) t = t.detach().clone().requires_grad_(true);
      at::Tensor ke = x[1].repeat_interleave(G, 1), ve = x[3].repeat_interleave(G, 1);
      at::Tensor s = (x[0].narrow(-1, 0, D - 1) * ke.narrow(-1, 0, D - 1)).sum(-1) * scale;
      at::Tensor a = at::sigmoid(x[4] - s).unsqueeze(-1);
      ((a * x[2] + (1 - a) * ve) * dout.to(at::kFloat)).sum().backward();
      const std::vector<at::Tensor> got = {dq, dk, dpast, dv, dlse};
      const char* names[] = {"dq", "dk", "dpast", "dv", "dlse"};
      for (int i = 0; i < 5; ++i) {
        const at::Tensor want = i < 2 ? x[i].grad().narrow(-1, 0, D - 1) : x[i].grad();
        const at::Tensor have = i < 2 ? got[i].narrow(-1, 0, D - 1) : got[i];
        REQUIRE(have.sizes() == want.sizes());
        const double e = rel_err(have, want);
        INFO(names[i] << " rel err " << e);
        CHECK(e < 8e-3);
        std::cout << "[gpu-dmc-blend-bwd] " << nh << "/" << nkv << " D" << D << " " << names[i] << " rel err " << e
                  << std::endl;
      }
      // dimension D-1 of q and k carries the bias, not the diagonal score: no gradient from the blend
      CHECK(dq.select(-1, D - 1).abs().max().item<double>() == 0.0);
      CHECK(dk.select(-1, D - 1).abs().max().item<double>() == 0.0);
      // the flash backward's `out` carrying the lse gradient: rowsum(dpast * past_used) = rowsum(dpast * past) - dlse,
      // with dpast as returned (the same call again: the gradients must not change when past_used is asked for)
      at::Tensor pu;
      auto [dq2, dk2, dpast2, dv2, dlse2] = dmc_blend_backward_cuda(dout, q, k, past, v, lse, scale, &pu);
      CHECK(at::equal(dq2, dq));
      CHECK(at::equal(dpast2, dpast));
      CHECK(at::equal(dlse2, dlse));
      REQUIRE(pu.sizes() == past.sizes());
      const at::Tensor dp = dpast.to(at::kFloat);
      at::Tensor lhs = (dp * pu.to(at::kFloat)).sum(-1), rhs = (dp * past.to(at::kFloat)).sum(-1) - dlse;
      const double e_shift = rel_err(lhs, rhs);
      INFO("past_used: row sums rel err " << e_shift << ", |dlse| " << dlse.norm().item<double>());
      CHECK(e_shift < 1e-2);
      CHECK(dlse.abs().max().item<double>() > 0.0);  // the shift is exercised
      // only one channel of a row moves
      CHECK(((pu != past).sum(-1) <= 1).all().item<bool>());
    }
  }
#endif
}

// The whole eval-mode DMC attention of a layer through the inference kernels (bf16, no gradient) against the
// blockwise form in fp32 on the same inputs: output, the merged keys and values the prefill caches, the last
// window of raw (k, v) and the weights.
TEST_CASE("CUDA: eval-mode DMC attention through the inference kernels equals the fp32 blockwise form", "[gpu][dmc]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
#ifndef DMC_WITH_CUDA
  SKIP("built without the CUDA kernels");
#else
  at::NoGradGuard ng;
  torch::manual_seed(91);
  auto f = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const int64_t B = 2, T = 400, nh = 8, nkv = 4, D = 128;
  at::Tensor qkv = at::randn({B, T, (nh + 2 * nkv) * D}, f);
  // q[D-1] sets the weights; the decision logits k[D-1] - 5 lie on both sides of the threshold but at least 1 away
  // from it, where bf16 and fp32 decide alike
  qkv.view({B, T, nh + 2 * nkv, D}).select(-1, D - 1).mul_(3.0).add_(5.0);
  at::Tensor z = at::randn({B, T, nkv}, f);
  qkv.narrow(-1, nh * D, nkv * D).view({B, T, nkv, D}).select(-1, D - 1).copy_(z + z.sign() + 5.0);
  qkv = qkv.to(at::kBFloat16);
  auto split = [&](const at::Tensor& x) {
    return std::vector<at::Tensor>{x.narrow(-1, 0, nh * D).view({B, T, nh, D}),
                                   x.narrow(-1, nh * D, nkv * D).view({B, T, nkv, D}),
                                   x.narrow(-1, (nh + nkv) * D, nkv * D).view({B, T, nkv, D})};
  };
  at::Tensor doc = at::zeros({B, T}, f.dtype(at::kBool));
  doc.index_put_({1, 200}, true);
  LlamaConfig c;
  c.head_dim = D;
  auto [cos, sin] = rope_cos_sin(rope_inv_freq(c, at::kCUDA), at::arange(T, f.dtype(at::kLong)));
  DmcOptions o;
  auto fast_parts = split(qkv);
  REQUIRE(dmc_eval_kernels_apply(fast_parts[1], fast_parts[2], o.window));
  DmcAttention fast = dmc_attention(fast_parts[0], fast_parts[1], fast_parts[2], cos, sin, o, DmcMode::Eval, doc);
  DmcOptions ob = o;
  ob.attn_impl = DmcAttnImpl::Blocks;
  auto ref_parts = split(qkv.to(at::kFloat));
  DmcAttention ref = dmc_attention(ref_parts[0], ref_parts[1], ref_parts[2], cos, sin, ob, DmcMode::Eval, doc);
  const double frac = ref.hard.mean().item<double>();
  INFO("merge fraction " << frac);
  REQUIRE(frac > 0.2);
  REQUIRE(frac < 0.8);
  CHECK(at::equal(fast.hard.to(at::kFloat), ref.hard.to(at::kFloat)));
  const double eo = rel_err(fast.out, ref.out), ek = rel_err(fast.k_rot, ref.k_rot),
               ev = rel_err(fast.v_hat, ref.v_hat);
  INFO("out " << eo << " k_rot " << ek << " v_hat " << ev);
  CHECK(eo < 2e-2);  // bf16 flash attention against fp32, as in the flash-vs-blocks case above
  CHECK(ek < 5e-3);
  CHECK(ev < 5e-3);
  // dimension D-1 of the cached keys is zero (the decision neuron is not part of attention)
  CHECK(fast.k_rot.select(-1, D - 1).abs().max().item<double>() == 0.0);
  REQUIRE(fast.kv_raw.sizes() == at::IntArrayRef({B, o.window, nkv, 2 * D}));
  CHECK(rel_err(fast.kv_raw, ref.kv_raw) < 1e-6);
  CHECK(rel_err(fast.omega, ref.omega) < 1e-2);
  std::cout << "[gpu-dmc-eval-attn] out " << eo << " k_rot " << ek << " v_hat " << ev << std::endl;
#endif
}
