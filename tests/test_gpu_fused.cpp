// CUDA: the fused RMSNorm, SwiGLU and RoPE kernels (model/fused_ops.h) against their ATen references on fresh random
// inputs, values and gradients, for the dtype combinations training and inference use; then a whole bf16-autocast
// training loss and its gradients with the fused ops on and off.
#include <torch/torch.h>

#include <iostream>

#include "helpers.h"
#include "ops/fused_ops.h"
#include "model/llama.h"
#include "train/autocast.h"

using namespace dmc;
using namespace dmc::test;

TEST_CASE("CUDA: fused RMSNorm and SwiGLU equal the ATen forms, values and gradients", "[gpu][fused]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  torch::manual_seed(11);
  const auto dev = at::Device(at::kCUDA, 0);
  struct Case {
    at::ScalarType x, w, out;
    int64_t H;
  };
  // training (fp32 residual and weight, bf16 out), fp32 runs, bf16 inference, odd width
  for (Case cs : {Case{at::kFloat, at::kFloat, at::kBFloat16, 2048}, Case{at::kFloat, at::kFloat, at::kFloat, 512},
                  Case{at::kBFloat16, at::kBFloat16, at::kBFloat16, 4096},
                  Case{at::kFloat, at::kFloat, at::kBFloat16, 1000}, Case{at::kHalf, at::kHalf, at::kHalf, 8192}}) {
    DYNAMIC_SECTION("rms " << c10::toString(cs.x) << " w " << c10::toString(cs.w) << " -> " << c10::toString(cs.out)
                           << " H " << cs.H) {
      at::Tensor x = (at::randn({3, 77, cs.H}, at::TensorOptions().device(dev)) * 3).to(cs.x);
      at::Tensor w = (1 + 0.1 * at::randn({cs.H}, at::TensorOptions().device(dev))).to(cs.w);
      at::Tensor R = at::randn({3, 77, cs.H}, at::TensorOptions().device(dev)).to(cs.out);
      std::vector<at::Tensor> y, gx, gw;
      for (int k = 0; k < 2; ++k) {
        at::Tensor xx = x.clone().requires_grad_(true), ww = w.clone().requires_grad_(true);
        at::Tensor o = k == 0 ? rms_norm_ref(xx, ww, 1e-5, cs.out) : rms_norm_fused(xx, ww, 1e-5, cs.out);
        REQUIRE(o.scalar_type() == cs.out);
        (o.to(at::kFloat) * R.to(at::kFloat)).sum().backward();
        y.push_back(o.detach().to(at::kFloat));
        gx.push_back(xx.grad().to(at::kFloat));
        gw.push_back(ww.grad().to(at::kFloat));
      }
      // one rounding of the output dtype (bf16: 2^-8) on each side; fp32 within reduction order
      const double tol = cs.out == at::kFloat && cs.x == at::kFloat ? 1e-5 : 8e-3;
      INFO("y " << rel_err(y[1], y[0]) << " dx " << rel_err(gx[1], gx[0]) << " dw " << rel_err(gw[1], gw[0]));
      CHECK(rel_err(y[1], y[0]) < tol);
      CHECK(rel_err(gx[1], gx[0]) < tol);
      CHECK(rel_err(gw[1], gw[0]) < tol);
      std::cout << "[gpu-fused] rms " << c10::toString(cs.x) << "->" << c10::toString(cs.out) << " H " << cs.H << ": y "
                << rel_err(y[1], y[0]) << " dx " << rel_err(gx[1], gx[0]) << " dw " << rel_err(gw[1], gw[0])
                << std::endl;
    }
  }
  for (at::ScalarType dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("swiglu " << c10::toString(dt)) {
      at::Tensor gu = (at::randn({2, 333, 2 * 1408}, at::TensorOptions().device(dev)) * 2).to(dt);
      at::Tensor R = at::randn({2, 333, 1408}, at::TensorOptions().device(dev)).to(dt);
      std::vector<at::Tensor> y, g;
      for (int k = 0; k < 2; ++k) {
        at::Tensor a = gu.clone().requires_grad_(true);
        at::Tensor o = k == 0 ? swiglu_ref(a) : swiglu_fused(a);
        (o.to(at::kFloat) * R.to(at::kFloat)).sum().backward();
        y.push_back(o.detach().to(at::kFloat));
        g.push_back(a.grad().to(at::kFloat));
      }
      // bf16: the ATen form rounds silu(g) before the product, the kernel once at the end
      const double tol = dt == at::kFloat ? 1e-5 : 8e-3;
      INFO("y " << rel_err(y[1], y[0]) << " dgu " << rel_err(g[1], g[0]));
      CHECK(rel_err(y[1], y[0]) < tol);
      CHECK(rel_err(g[1], g[0]) < tol);
      std::cout << "[gpu-fused] swiglu " << c10::toString(dt) << ": y " << rel_err(y[1], y[0]) << " dgu "
                << rel_err(g[1], g[0]) << std::endl;
    }
  }
}

TEST_CASE("CUDA: fused RoPE on the QKV projection equals the ATen form, values and the qkv gradient", "[gpu][fused]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  torch::manual_seed(12);
  const auto dev = at::Device(at::kCUDA, 0);
  for (at::ScalarType dt : {at::kBFloat16, at::kFloat}) {
    DYNAMIC_SECTION("rope " << c10::toString(dt)) {
      const int64_t B = 2, T = 300, nh = 8, nkv = 2, hd = 128;
      LlamaConfig c = LlamaConfig::preset("tiny");
      c.head_dim = hd;
      at::Tensor pos = at::arange(7, 7 + T, at::TensorOptions().dtype(at::kLong).device(dev));
      auto [cos, sin] = rope_cos_sin(rope_inv_freq(c, dev), pos);
      at::Tensor qkv = at::randn({B, T, (nh + 2 * nkv) * hd}, at::TensorOptions().device(dev)).to(dt);
      std::vector<at::Tensor> R;
      for (int64_t n : {nh, nkv, nkv}) R.push_back(at::randn({B, T, n, hd}, at::TensorOptions().device(dev)).to(dt));
      std::vector<std::vector<at::Tensor>> outs(2);
      std::vector<at::Tensor> grads;
      for (int k = 0; k < 2; ++k) {
        at::Tensor a = qkv.clone().requires_grad_(true);
        auto o = k == 0 ? rope_qkv_ref(a, cos, sin, nh, nkv, hd) : rope_qkv_fused(a, cos, sin, nh, nkv, hd);
        at::Tensor l = at::zeros({}, at::TensorOptions().device(dev));
        for (int i = 0; i < 3; ++i) {
          l = l + (o[i].to(at::kFloat) * R[i].to(at::kFloat)).sum();
          outs[k].push_back(o[i].detach().to(at::kFloat));
        }
        l.backward();
        grads.push_back(a.grad().to(at::kFloat));
      }
      const double tol = dt == at::kFloat ? 1e-6 : 8e-3;
      for (int i = 0; i < 3; ++i) {
        INFO("output " << i << " rel err " << rel_err(outs[1][i], outs[0][i]));
        CHECK(rel_err(outs[1][i], outs[0][i]) < tol);
      }
      INFO("dqkv rel err " << rel_err(grads[1], grads[0]));
      CHECK(rel_err(grads[1], grads[0]) < tol);
      std::cout << "[gpu-fused] rope " << c10::toString(dt) << ": q " << rel_err(outs[1][0], outs[0][0]) << " k "
                << rel_err(outs[1][1], outs[0][1]) << " dqkv " << rel_err(grads[1], grads[0]) << std::endl;
    }
  }
}

TEST_CASE("CUDA: fused row RoPE (DMC's drop-last form too) equals the ATen form on strided inputs, values and gradient",
          "[gpu][fused]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  torch::manual_seed(13);
  const auto dev = at::Device(at::kCUDA, 0);
  for (at::ScalarType dt : {at::kBFloat16, at::kFloat})
    for (bool drop : {true, false}) {
      DYNAMIC_SECTION("rope rows " << c10::toString(dt) << (drop ? " drop-last" : "")) {
        const int64_t B = 2, T = 257, n = 4, D = 128;
        LlamaConfig c = LlamaConfig::preset("tiny");
        c.head_dim = D;
        auto [cos, sin] =
            rope_cos_sin(rope_inv_freq(c, dev), at::arange(T, at::TensorOptions().dtype(at::kLong).device(dev)));
        // like DMC's pooled keys: a narrow of [B, T, n, 2D], seen as [B, n, T, D]
        at::Tensor base = at::randn({B, T, n, 2 * D}, at::TensorOptions().device(dev)).to(dt);
        at::Tensor R = at::randn({B, n, T, D}, at::TensorOptions().device(dev)).to(dt);
        std::vector<at::Tensor> y, g;
        for (int k = 0; k < 2; ++k) {
          set_fused_ops(k == 1);
          at::Tensor a = base.clone().requires_grad_(true);
          at::Tensor o = rope_rows_fused(a.narrow(-1, 0, D).transpose(1, 2), cos, sin, drop);
          (o.to(at::kFloat) * R.to(at::kFloat)).sum().backward();
          y.push_back(o.detach().to(at::kFloat));
          g.push_back(a.grad().to(at::kFloat));
        }
        set_fused_ops(true);
        const double tol = dt == at::kFloat ? 1e-6 : 8e-3;
        INFO("y " << rel_err(y[1], y[0]) << " dx " << rel_err(g[1], g[0]));
        CHECK(rel_err(y[1], y[0]) < tol);
        CHECK(rel_err(g[1], g[0]) < tol);
        if (drop) CHECK(y[1].select(-1, D - 1).abs().max().item<double>() == 0.0);
        std::cout << "[gpu-fused] rope rows " << c10::toString(dt) << (drop ? " drop-last" : "") << ": y "
                  << rel_err(y[1], y[0]) << " dx " << rel_err(g[1], g[0]) << std::endl;
      }
    }
}

TEST_CASE("CUDA bf16 autocast: a training loss and its gradients with fused ops equal the unfused step",
          "[gpu][fused]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 3;
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  auto m = Llama::random(c, 3, at::kFloat, at::Device(at::kCUDA, 0));
  auto params = m.parameters();
  for (auto& p : params) p.second->requires_grad_(true);
  torch::manual_seed(5);
  at::Tensor tok = at::randint(3, c.vocab_size, {2, 129}, at::TensorOptions().dtype(at::kLong)).cuda();
  std::vector<double> losses;
  std::vector<std::vector<at::Tensor>> grads(2);
  for (int fused = 0; fused < 2; ++fused) {
    set_fused_ops(fused == 1);
    for (auto& p : params) p.second->mutable_grad() = at::Tensor();
    at::Tensor loss;
    {
      train::AutocastScope ac(true);
      at::Tensor h = m.forward_hidden(tok.narrow(1, 0, 128));
      at::Tensor logits = at::linear(h, m.lm_head).to(at::kFloat);
      loss = at::cross_entropy_loss(logits.view({-1, c.vocab_size}), tok.narrow(1, 1, 128).reshape({-1}));
    }
    loss.backward();
    losses.push_back(loss.item<double>());
    for (auto& p : params) grads[fused].push_back(p.second->grad().clone());
  }
  set_fused_ops(true);
  INFO("loss unfused " << losses[0] << " fused " << losses[1]);
  CHECK(std::abs(losses[1] - losses[0]) < 2e-3 * losses[0]);
  double worst = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const double e = rel_err(grads[1][i], grads[0][i]);
    INFO(params[i].first << " gradient rel. err " << e);
    CHECK(e < 2e-2);
    worst = std::max(worst, e);
  }
  std::cout << "[gpu-fused] training step: loss " << losses[0] << " / " << losses[1] << ", worst gradient rel. err "
            << worst << std::endl;
}
