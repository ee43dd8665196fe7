#include "ops/dmc.h"
#include "ops/fused_ops.h"

#include <cmath>
#include <limits>

#include "common/error.h"
#include "ops/forced_decisions.h"

#include <torch/csrc/autograd/custom_function.h>

namespace dmc {

namespace {
// x shifted by s along dim 1 (time): out[:, t] = x[:, t - s], zeros for t < s.
at::Tensor shift_time(const at::Tensor& x, int64_t s) {
  if (s == 0) return x;
  const int64_t T = x.size(1);
  if (s >= T) return at::zeros_like(x);
  std::vector<int64_t> pad(2 * x.dim(), 0);
  // constant_pad_nd pads from the last dim backwards: dim 1 is pair index (dim() - 2)
  pad[2 * (x.dim() - 2)] = s;
  return at::constant_pad_nd(x.narrow(1, 0, T - s), pad, 0);
}
double machine_eps(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return 0.0078125;  // 2^-7
    case at::kHalf: return 0.0009765625;   // 2^-10
    case at::kDouble: return std::numeric_limits<double>::epsilon();
    default: return std::numeric_limits<float>::epsilon();
  }
}
}  // namespace

const std::vector<std::pair<std::string, DmcAttnImpl>>& dmc_attn_impl_names() {
  static const std::vector<std::pair<std::string, DmcAttnImpl>> names = {{"flash", DmcAttnImpl::Flash},
                                                                         {"blocks", DmcAttnImpl::Blocks}};
  return names;
}

at::Tensor dmc_forced_merges(const at::Tensor& pos, int64_t n_kv_heads, int64_t cr) {
  DMC_CHECK(cr > 0, "forced decisions: compression ratio must be > 0, got ", cr);
  // one period of the pattern (t in [0, cr)) from the scalar definition on the host, then looked up by t mod cr on
  // pos's device: no synchronisation, cr x n_kv_heads host work
  at::Tensor period = at::empty({cr, n_kv_heads}, at::kBool);
  bool* o = period.data_ptr<bool>();
  for (int64_t t = 0; t < cr; ++t)
    for (int64_t h = 0; h < n_kv_heads; ++h) o[t * n_kv_heads + h] = dmc_forced_merge(t, h, cr);
  return period.to(pos.device(), /*non_blocking=*/false).index_select(0, pos.to(at::kLong).remainder(cr));
}

at::Tensor dmc_decision_logits(const at::Tensor& k, double c) { return k.select(-1, k.size(-1) - 1) - c; }

at::Tensor dmc_importance(const at::Tensor& q, int64_t nkv, double c) {
  const int64_t B = q.size(0), T = q.size(1), nh = q.size(2), D = q.size(3);
  at::Tensor last = q.select(-1, D - 1).reshape({B, T, nkv, nh / nkv}).mean(-1);
  return at::sigmoid(last + c) + machine_eps(q.scalar_type());
}

#ifdef DMC_WITH_CUDA
namespace {
struct DmcPoolFn : public torch::autograd::Function<DmcPoolFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& w, const at::Tensor& b, int64_t window) {
    auto [out, den] = dmc_pool_forward_cuda(x, w, b, window);
    ctx->save_for_backward({x, w, b, out, den});
    ctx->saved_data["W"] = window;
    return {out};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto s = ctx->get_saved_variables();
    auto [dx, dw, db] = dmc_pool_backward_cuda(g[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["W"].toInt());
    return {dx, dw, db, at::Tensor()};
  }
};
}  // namespace
#endif

at::Tensor dmc_pool(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t window) {
  DMC_CHECK(window >= 1, "dmc window: must be >= 1, got ", window);
#ifdef DMC_WITH_CUDA
  if (x.is_cuda() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
      window <= 64)
    return DmcPoolFn::apply(x.contiguous(), w.contiguous(), b.contiguous(), window)[0];
#endif
  return dmc_pool_ref(x, w, b, window);
}

at::Tensor dmc_pool_ref(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t window) {
  DMC_CHECK(window >= 1, "dmc window: must be >= 1, got ", window);
  const int64_t T = x.size(1);
  at::Tensor wx = w.unsqueeze(-1) * x;  // [B, T, H, X]
  at::Tensor num = wx.clone(), den = w.clone();
  at::Tensor C = at::ones_like(w);
  // in-place accumulation into time-shifted views: autograd keeps only the small [B, T, H] coefficients per
  // step, not a shifted copy of x
  for (int64_t m = 1; m < window && m < T; ++m) {
    C = C * shift_time(b, m - 1);  // C_{t,m} = C_{t,m-1} * b_{t-m+1}
    at::Tensor Cm = C.narrow(1, m, T - m);
    num.narrow(1, m, T - m).addcmul_(Cm.unsqueeze(-1), wx.narrow(1, 0, T - m));
    den.narrow(1, m, T - m).addcmul_(Cm, w.narrow(1, 0, T - m));
  }
  return num / den.unsqueeze(-1);
}

at::Tensor biased_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& m,
                                   double scale, int64_t block) {
  const int64_t B = q.size(0), nh = q.size(1), T = q.size(2), D = q.size(3), nkv = k.size(1), G = nh / nkv;
  const at::Tensor qg = q.view({B, nkv, G, T, D});
  std::vector<at::Tensor> outs;
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // scores and softmax
  const auto fopt = at::TensorOptions().dtype(acc).device(q.device());
  for (int64_t i0 = 0; i0 < T; i0 += block) {
    const int64_t n = std::min(block, T - i0), i1 = i0 + n;
    at::Tensor qb = qg.narrow(3, i0, n);                                  // [B, nkv, G, n, D]
    at::Tensor kb = k.narrow(2, 0, i1).unsqueeze(2);                      // [B, nkv, 1, i1, D]
    at::Tensor s = at::matmul(qb, kb.transpose(-1, -2)).to(acc) * scale;  // [B, nkv, G, n, i1]
    // bias on every visible key, then removed again on the diagonal
    at::Tensor mb = m.narrow(2, 0, i1).to(acc).view({B, nkv, 1, 1, i1});
    at::Tensor rows = at::arange(i0, i1, fopt.dtype(at::kLong)).view({n, 1});
    at::Tensor cols = at::arange(0, i1, fopt.dtype(at::kLong)).view({1, i1});
    at::Tensor below = (cols < rows).to(acc);  // [n, i1]: keys j < i
    s = s + mb * below;
    s = s.masked_fill(cols > rows, -std::numeric_limits<float>::infinity());
    at::Tensor p = at::softmax(s, -1).to(v.scalar_type());
    outs.push_back(at::matmul(p, v.narrow(2, 0, i1).unsqueeze(2)));  // [B, nkv, G, n, D]
  }
  return at::cat(outs, 3).view({B, nh, T, D});
}

namespace {
// Causal flash attention returning (out, logsumexp), both differentiable.   q, k, v: [B, H, T, D]
struct FlashLse : public torch::autograd::Function<FlashLse> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v, double scale) {
    at::Tensor out, lse;
    std::vector<at::Tensor> saved{q, k, v};
    if (q.is_cuda()) {
      auto r = at::_scaled_dot_product_flash_attention(q, k, v, 0.0, /*is_causal=*/true, false, scale);
      out = std::get<0>(r);
      lse = std::get<1>(r);
      ctx->saved_data["max_q"] = std::get<4>(r).expect_int();
      ctx->saved_data["max_k"] = std::get<5>(r).expect_int();
      saved.insert(saved.end(), {out, lse, std::get<2>(r), std::get<3>(r), std::get<6>(r), std::get<7>(r)});
    } else {
      auto r = at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, /*is_causal=*/true, {}, scale);
      out = std::get<0>(r);
      lse = std::get<1>(r);
      saved.insert(saved.end(), {out, lse});
    }
    ctx->saved_data["scale"] = scale;
    ctx->save_for_backward(saved);
    return {out, lse};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &q = s[0], &k = s[1], &v = s[2], &out = s[3], &lse = s[4];
    const double scale = ctx->saved_data["scale"].toDouble();
    at::Tensor dout = g[0].defined() ? g[0].contiguous() : at::zeros_like(out);
    at::Tensor out_used = out;
    if (g[1].defined()) {
      // d lse_i / d s_ij = P_ij: the backward computes dS = P (dP - D), D_i = rowsum(dO_i * out_i); lowering D_i by
      // g_i adds exactly P_ij g_i. Shift out_i along the channel where |dO_i| is largest (a tiny dO there when the
      // row is all zero: it adds a negligible dO v_j to dP).
      const auto acc = out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      at::Tensor gl = g[1].to(acc);                  // [B, H, T]
      at::Tensor idx = dout.abs().argmax(-1, true);  // [B, H, T, 1]
      at::Tensor dsel = dout.gather(-1, idx).to(acc);
      const double tiny = out.scalar_type() == at::kDouble ? 1e-150 : 1e-30;
      at::Tensor zero = dsel == 0;
      dsel = at::where(zero, at::full_like(dsel, tiny), dsel);
      dout = dout.scatter(-1, idx, dsel.to(dout.scalar_type()));
      at::Tensor alpha = -gl.unsqueeze(-1) / dsel;
      at::Tensor osel = out.gather(-1, idx).to(acc) + alpha;
      out_used = out.scatter(-1, idx, osel.to(out.scalar_type()));
    }
    at::Tensor dq, dk, dv;
    if (q.is_cuda()) {
      std::tie(dq, dk, dv) = at::_scaled_dot_product_flash_attention_backward(
          dout, q, k, v, out_used, lse, s[5], s[6], ctx->saved_data["max_q"].toInt(), ctx->saved_data["max_k"].toInt(),
          0.0, /*is_causal=*/true, s[7], s[8], scale);
    } else {
      std::tie(dq, dk, dv) =
          at::_scaled_dot_product_flash_attention_for_cpu_backward(dout, q, k, v, out_used, lse, 0.0, true, {}, scale);
    }
    return {dq, dk, dv, at::Tensor()};
  }
};
}  // namespace

namespace {
// x [B, nkv, T, ...] as [B, nkv * G, T, ...], each KV head repeated for the G query heads of its group (head h reads
// KV head h / G). A broadcast copy: its gradient is a sum over the group, not repeat_interleave's scatter-add.
at::Tensor expand_groups(const at::Tensor& x, int64_t G) {
  if (G == 1) return x;
  std::vector<int64_t> shape = x.sizes().vec();
  shape.insert(shape.begin() + 2, G);
  std::vector<int64_t> out = x.sizes().vec();
  out[1] *= G;
  return x.unsqueeze(2).expand(shape).reshape(out);
}

// out = sigmoid(lse - s_ii) past + sigmoid(s_ii - lse) v, s_ii = scale q.k over dims < D-1 (the ATen form, any dtype)
//   q, past [B, nh, T, D]; k, v [B, nkv, T, D]; lse [B, nh, T]
// The query heads are viewed in their groups [B, nkv, G, T, D] and k, v broadcast over G: no copies at nh width.
at::Tensor blend_diag_ref(const at::Tensor& q, const at::Tensor& k, const at::Tensor& past, const at::Tensor& v,
                          const at::Tensor& lse, double scale) {
  const int64_t B = q.size(0), nh = q.size(1), T = q.size(2), D = q.size(3), nkv = k.size(1), G = nh / nkv;
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor qg = q.reshape({B, nkv, G, T, D}).narrow(-1, 0, D - 1).to(acc);
  at::Tensor kg = k.narrow(-1, 0, D - 1).to(acc).unsqueeze(2);  // [B, nkv, 1, T, D-1]
  at::Tensor s_diag = (qg * kg).sum(-1) * scale;                // [B, nkv, G, T]
  at::Tensor w_past = at::sigmoid(lse.to(acc).reshape({B, nkv, G, T}) - s_diag).unsqueeze(-1);
  at::Tensor vg = v.to(acc).unsqueeze(2);
  at::Tensor out = vg + w_past * (past.reshape({B, nkv, G, T, D}).to(acc) - vg);
  return out.to(q.scalar_type()).reshape({B, nh, T, D});
}

#ifdef DMC_WITH_CUDA
// The training form on CUDA in one node: FlashAttention-2 over the shifted keys (K/V at the KV heads), then the blend
// kernel; backward: the blend's backward kernel, which also gives the flash backward its `out` carrying the
// log-sum-exp's gradient (FlashLse's argmax / gather / scatter passes folded into it), then the flash backward.
//   qs [B, nh, T, D] (1/scale in D-1); ks, vs [B, nkv, T, D] (dummy first, bias in ks's D-1); k, v [B, nkv, T, D]
struct FlashBlendFn : public torch::autograd::Function<FlashBlendFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& qs,
                                                const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& k,
                                                const at::Tensor& v, double scale) {
    auto r = at::_scaled_dot_product_flash_attention(qs, ks, vs, 0.0, /*is_causal=*/true, false, scale);
    const at::Tensor &past = std::get<0>(r), &lse = std::get<1>(r);
    at::Tensor out = dmc_blend_cuda(qs, k, past, v, lse, scale);
    DMC_CHECK(out.defined(), "dmc flash blend: the kernel refused layouts dmc_blend_kernels_apply accepted");
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["max_q"] = std::get<4>(r).expect_int();
    ctx->saved_data["max_k"] = std::get<5>(r).expect_int();
    ctx->save_for_backward(
        {qs, ks, vs, k, v, past, lse, std::get<2>(r), std::get<3>(r), std::get<6>(r), std::get<7>(r)});
    return {out};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &qs = s[0], &ks = s[1], &vs = s[2], &k = s[3], &v = s[4], &past = s[5], &lse = s[6];
    const double scale = ctx->saved_data["scale"].toDouble();
    at::Tensor past_used;
    auto [dq_b, dk, dpast, dv, dlse] = dmc_blend_backward_cuda(g[0], qs, k, past, v, lse, scale, &past_used);
    (void)dlse;  // carried by past_used
    auto [dq_f, dks, dvs] = at::_scaled_dot_product_flash_attention_backward(
        dpast, qs, ks, vs, past_used, lse, s[7], s[8], ctx->saved_data["max_q"].toInt(),
        ctx->saved_data["max_k"].toInt(), 0.0, /*is_causal=*/true, s[9], s[10], scale);
    return {dq_f + dq_b, dks, dvs, dk, dv, at::Tensor()};
  }
};

// The inference form on CUDA (no gradient): cuDNN's fused attention (faster than FA2 on sm_90; it also returns the
// row log-sum-exp) over the keys shifted one step right behind a dummy, then the diagonal blend (dmc_blend_cuda).
//   qs [B, nh, T, D] with 1/scale in dimension D-1; k (dimension D-1 zero), v [B, nkv, T, D]; m [B, nkv, T].
// The shifted keys / values are written once each into [B, T, nh, D] memory, the layout of the queries the RoPE
// kernel writes.
at::Tensor biased_attention_infer_cuda(const at::Tensor& qs, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& m, double scale) {
  const int64_t B = qs.size(0), nh = qs.size(1), T = qs.size(2), D = qs.size(3), nkv = k.size(1), G = nh / nkv;
  at::Tensor ke = expand_groups(k, G);  // [B, nh, T, D]
  at::Tensor ve = expand_groups(v, G);
  at::Tensor me = expand_groups(m, G);  // [B, nh, T]
  at::Tensor ks = at::empty({B, T, nh, D}, k.options()).transpose(1, 2);
  at::Tensor vs = at::empty({B, T, nh, D}, v.options()).transpose(1, 2);
  // key 0 is the dummy (score -30000 through the spare dimension: weight 0 unless alone), key t is k_{t-1} with
  // its bias m_{t-1} in dimension D-1
  ks.narrow(2, 0, 1).zero_();
  ks.narrow(2, 0, 1).select(-1, D - 1).fill_(-30000.0);
  ks.narrow(2, 1, T - 1).copy_(ke.narrow(2, 0, T - 1));
  ks.narrow(2, 1, T - 1).select(-1, D - 1).copy_(me.narrow(2, 0, T - 1));
  vs.narrow(2, 0, 1).zero_();
  vs.narrow(2, 1, T - 1).copy_(ve.narrow(2, 0, T - 1));
  auto r = at::_scaled_dot_product_cudnn_attention(qs, ks, vs, std::nullopt, /*compute_log_sumexp=*/true, 0.0,
                                                   /*is_causal=*/true, false, scale);
  const at::Tensor& past = std::get<0>(r);                      // [B, nh, T, D]
  at::Tensor lse = std::get<1>(r).reshape({B, nh, T});          // fp32
  at::Tensor out = dmc_blend_cuda(qs, k, past, v, lse, scale);  // fused when the layouts suit it
  return out.defined() ? out : blend_diag_ref(qs, k, past, v, lse, scale);
}
#endif
}  // namespace

at::Tensor biased_causal_attention_flash(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& m, double scale) {
  const int64_t B = q.size(0), nh = q.size(1), T = q.size(2), D = q.size(3), nkv = k.size(1), G = nh / nkv;
  // the bias rides in the spare dimension: q[D-1] = 1/scale
  at::Tensor spare = at::zeros({D}, q.options());
  spare.index_put_({D - 1}, 1.0);
  at::Tensor qs = (q + spare * (1.0 / scale)).contiguous();
#ifdef DMC_WITH_CUDA
  if (!at::GradMode::is_enabled() && q.is_cuda()) return biased_attention_infer_cuda(qs, k, v, m, scale);
#endif
  // keys shifted right behind a dummy (score -30000: weight 0 unless alone), each with its bias in dimension D-1,
  // kept at the KV heads: FlashAttention-2 reads each KV head for its G query heads itself (and sums their key /
  // value gradients), so the GQA copy at nh width and its backward never exist on CUDA
  at::Tensor dummy_k = (spare * -30000.0).expand({B, nkv, 1, D});
  at::Tensor kb = k + m.unsqueeze(-1).to(q.scalar_type()) * spare;
  at::Tensor ks = at::cat({dummy_k, kb.narrow(2, 0, T - 1)}, 2);
  at::Tensor vs = at::cat({at::zeros({B, nkv, 1, D}, v.options()), v.narrow(2, 0, T - 1)}, 2);
  if (!q.is_cuda()) {  // ATen's CPU flash kernel wants as many KV heads as query heads
    ks = expand_groups(ks, G);
    vs = expand_groups(vs, G);
  }
#ifdef DMC_WITH_CUDA
  // flash and blend in one node with the blend kernels (DMC_FUSED_OPS=0: FlashLse and the ATen blend, for A/B)
  if (use_fused_ops(q) && dmc_blend_kernels_apply(qs, k, qs, v))
    return FlashBlendFn::apply(qs, ks.contiguous(), vs.contiguous(), k, v, scale)[0];
#endif
  auto r = FlashLse::apply(qs, ks.contiguous(), vs.contiguous(), scale);  // past [B, nh, T, D], lse [B, nh, T]
  // the diagonal scores without the bias (k's dimension D-1 is zero; q's carries 1/scale, left out)
  return blend_diag_ref(qs, k, r[0], v, r[1], scale);
}

at::Tensor rope_drop_last(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // one kernel each way on CUDA for [B, n, T, D] with cos/sin [T, D]; else the ATen form
  return rope_rows_fused(x, cos, sin, /*drop_last=*/true);
}

DmcAttention dmc_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                           const at::Tensor& sin, const DmcOptions& o, DmcMode mode, const at::Tensor& doc_start,
                           const at::Tensor& noise) {
  const int64_t B = q.size(0), T = q.size(1), D = q.size(3), nkv = k.size(2);
  const auto dt = q.scalar_type();
  at::Tensor a = dmc_decision_logits(k, o.init_val);  // [B, T, nkv]
  at::Tensor p, ell;
  if (mode == DmcMode::Train) {
    at::Tensor n = noise.defined() ? noise : dmc_logistic_noise(B, T, nkv, dt, q.device());
    ell = (a + n.to(dt)) / o.temperature;
    p = at::sigmoid(ell);
  } else if (o.force_cr > 0) {
    p = dmc_forced_merges(at::arange(T, q.options().dtype(at::kLong)), nkv, o.force_cr)
            .to(dt)
            .unsqueeze(0)
            .expand({B, T, nkv})
            .contiguous();
  } else {
    at::Tensor soft = at::sigmoid(a);
    p = (soft > 0.5).to(dt) + soft - soft.detach();  // straight-through
  }
  at::Tensor hard_p = (p.detach() > 0.5).to(dt);
  // decisions kept for the loss: the STE-hard value of p (noisy in training), t = 0 included
  at::Tensor ste = hard_p + p - p.detach();
  at::Tensor decision_mean = o.decision_mean_per_head ? ste.mean({1}) : ste.mean({1, 2});

  // boundaries: never at t = 0, never at a document start
  at::Tensor allow = at::ones({B, T, nkv}, q.options().dtype(dt));
  allow.narrow(1, 0, 1).zero_();
  if (o.doc_boundaries && doc_start.defined()) allow = allow * (~doc_start).to(dt).unsqueeze(-1);
  at::Tensor bnd = (mode == DmcMode::Train ? p : p) * allow;  // Eval: p is already hard (STE)

  // bias on key column j from the decision at j + 1; the last column has none
  at::Tensor m_next;
  if (mode == DmcMode::Train)
    m_next = at::log_sigmoid(-ell.narrow(1, 1, T - 1));
  else
    m_next = -50000.0 * p.narrow(1, 1, T - 1);
  if (o.doc_boundaries && doc_start.defined()) m_next = m_next * (~doc_start.narrow(1, 1, T - 1)).to(dt).unsqueeze(-1);
  at::Tensor m = at::cat({m_next, at::zeros({B, 1, nkv}, m_next.options())}, 1);  // [B, T, nkv]

  // merging in fp32 (fp64 when the activations are fp64)
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor w = dmc_importance(q, nkv, o.init_val);  // [B, T, nkv]
  const double scale = 1.0 / std::sqrt((double)D);
  const bool no_grad = !at::GradMode::is_enabled();
  at::Tensor out, kr, v_hat;  // out [B, nh, T, D]; kr, v_hat [B, nkv, T, D]
#ifdef DMC_WITH_CUDA
  if (no_grad && o.attn_impl == DmcAttnImpl::Flash && dmc_eval_kernels_apply(k, v, o.window)) {
    // inference on the GPU (prefill, evaluation): pooling straight from the projection's k and v into the
    // activation dtype, the queries rotated with the bias scale 1/scale already in dimension D-1, the fused blend
    at::Tensor k_hat = at::empty({B, T, nkv, D}, k.options()), vh = at::empty({B, T, nkv, D}, v.options());
    dmc_pool_eval_cuda(k, v, w.to(at::kFloat), bnd.to(at::kFloat), o.window, k_hat, vh);
    v_hat = vh.transpose(1, 2);
    kr = rope_drop_last(k_hat.transpose(1, 2), cos, sin);
    at::Tensor qs = rope_rows_cuda(q.transpose(1, 2), cos, sin, /*drop_last=*/true, /*inverse=*/false, 1.0 / scale);
    out = biased_attention_infer_cuda(qs, kr, v_hat, m.transpose(1, 2), scale);
  }
#endif
  if (!out.defined()) {
    at::Tensor x = at::cat({k, v}, -1).to(acc);  // [B, T, nkv, 2D]
    at::Tensor pooled = dmc_pool(x, w.to(acc), bnd.to(acc), o.window).to(dt);
    at::Tensor k_hat = pooled.narrow(-1, 0, D);
    v_hat = pooled.narrow(-1, D, D).transpose(1, 2);
    at::Tensor qr = rope_drop_last(q.transpose(1, 2), cos, sin);  // [B, nh, T, D]
    kr = rope_drop_last(k_hat.transpose(1, 2), cos, sin);
    // The CUDA flash kernel takes fp16/bf16 only: fp32 on CUDA (a verification pass, say) takes the blockwise twin.
    // Both are checked against each other on the GPU (tests/test_gpu.cpp).
    const bool flash_ok = !q.is_cuda() || dt == at::kBFloat16 || dt == at::kHalf;
    out = o.attn_impl == DmcAttnImpl::Blocks || !flash_ok
              ? biased_causal_attention(qr, kr, v_hat, m.transpose(1, 2), scale, o.attn_block)
              : biased_causal_attention_flash(qr, kr, v_hat, m.transpose(1, 2), scale);
  }
  DmcAttention res;
  res.out = out.transpose(1, 2);
  res.decision_mean = decision_mean;
  res.hard = (hard_p * allow).detach();
  if (no_grad) {
    res.k_rot = kr;
    res.v_hat = v_hat;
    const int64_t n = std::min<int64_t>(T, std::max<int64_t>({1, o.window, o.capture_tail}));  // the decode ring
    res.kv_raw = at::cat({k.narrow(1, T - n, n), v.narrow(1, T - n, n)}, -1);
    res.omega = w.to(acc);
  }
  return res;
}

at::Tensor dmc_logistic_noise(int64_t B, int64_t T, int64_t nkv, at::ScalarType dtype, at::Device device) {
  auto f = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor u1 = at::rand({B, T, nkv}, f).clamp_(1e-20, 1.0), u2 = at::rand({B, T, nkv}, f).clamp_(1e-20, 1.0);
  return (-at::log(-at::log(u1))).to(dtype) - (-at::log(-at::log(u2))).to(dtype);
}

at::Tensor dmc_loss(const at::Tensor& decision_means, double target_cr) {
  const double P = 1.0 - 1.0 / target_cr;
  at::Tensor d = decision_means.mean(0);  // [B]
  return at::relu(P - d).mean();
}

at::Tensor dmc_loss_per_head(const at::Tensor& decision_means, double target_cr) {
  DMC_CHECK(decision_means.dim() == 3, "dmc_loss_per_head: expected decisions [layers, batch, kv heads], got ",
            decision_means.dim(), " dimensions");
  return at::relu((1.0 - 1.0 / target_cr) - decision_means).mean();
}

}  // namespace dmc
