#include "ops/fused_ops.h"

#include <ATen/autocast_mode.h>

#include <torch/torch.h>

#include <atomic>

#include "common/error.h"
#include "common/util.h"

namespace dmc {

namespace {
std::atomic<int> g_fused{-1};  // -1: not read from the environment yet
}

void set_fused_ops(bool on) { g_fused.store(on ? 1 : 0); }

namespace {
// dtypes the kernels are built for (others, fp64 say, take the ATen forms)
[[maybe_unused]] bool kernel_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}
}  // namespace

bool use_fused_ops(const at::Tensor& t) {
#ifdef DMC_WITH_CUDA
  if (g_fused.load() < 0) {
    g_fused.store(env_off("DMC_FUSED_OPS") ? 0 : 1);
  }
  return t.is_cuda() && g_fused.load() == 1;
#else
  (void)t;
  return false;
#endif
}

at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(var + eps);
  return (w * xf.to(x.scalar_type())).to(out_dtype);
}

at::Tensor swiglu_ref(const at::Tensor& gu) {
  const int64_t F = gu.size(-1) / 2;
  return at::silu(gu.narrow(-1, 0, F)) * gu.narrow(-1, F, F);
}

std::vector<at::Tensor> rope_qkv_ref(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t nh,
                                     int64_t nkv, int64_t hd) {
  const int64_t B = qkv.size(0), T = qkv.size(1);
  at::Tensor q = qkv.narrow(-1, 0, nh * hd).view({B, T, nh, hd});
  at::Tensor k = qkv.narrow(-1, nh * hd, nkv * hd).view({B, T, nkv, hd});
  at::Tensor v = qkv.narrow(-1, (nh + nkv) * hd, nkv * hd).view({B, T, nkv, hd});
  // x [B, T, n, hd] against cos/sin [T, 1, hd]
  const at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
  return {apply_rope(q, c, s), apply_rope(k, c, s), v};
}

#ifdef DMC_WITH_CUDA
namespace {
struct RopeQkvFn : public torch::autograd::Function<RopeQkvFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& qkv,
                                                const at::Tensor& cos, const at::Tensor& sin, int64_t nh, int64_t nkv,
                                                int64_t hd) {
    auto [q, k, v] = rope_qkv_forward_cuda(qkv, cos, sin, nh, nkv, hd);
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["shape"] = std::vector<int64_t>{qkv.size(0), qkv.size(1), nh, nkv, hd, (int64_t)qkv.scalar_type()};
    return {q, k, v};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto s = ctx->get_saved_variables();
    auto sh = ctx->saved_data["shape"].toIntVector();
    at::Tensor d =
        rope_qkv_backward_cuda(g[0], g[1], g[2], s[0], s[1], sh[0], sh[1], sh[2], sh[3], sh[4], (at::ScalarType)sh[5]);
    return {d, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
struct RopeRowsFn : public torch::autograd::Function<RopeRowsFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& cos, const at::Tensor& sin, bool drop_last) {
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["drop"] = drop_last;
    return {rope_rows_cuda(x, cos, sin, drop_last, false)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto s = ctx->get_saved_variables();
    at::Tensor d = g[0];
    if (d.stride(3) != 1) d = d.contiguous();
    return {rope_rows_cuda(d, s[0], s[1], ctx->saved_data["drop"].toBool(), true), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};
struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& w, double eps, int64_t out_dtype) {
    auto [y, rstd] = rms_norm_forward_cuda(x, w, eps, (at::ScalarType)out_dtype);
    ctx->save_for_backward({x, w, rstd});
    return {y};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto s = ctx->get_saved_variables();
    auto [dx, dw] = rms_norm_backward_cuda(g[0], s[0], s[1], s[2]);
    return {dx, dw, at::Tensor(), at::Tensor()};
  }
};
struct SwigluFn : public torch::autograd::Function<SwigluFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& gu) {
    ctx->save_for_backward({gu});
    return {swiglu_forward_cuda(gu)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    return {swiglu_backward_cuda(g[0], ctx->get_saved_variables()[0])};
  }
};
}  // namespace
#endif

at::Tensor rms_norm_fused(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype) {
#ifdef DMC_WITH_CUDA
  if (use_fused_ops(x) && kernel_dtype(x) && (w.scalar_type() == at::kFloat || w.scalar_type() == x.scalar_type()) &&
      (out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf) && x.size(-1) <= 12288)
    return RmsNormFn::apply(x.contiguous(), w.contiguous(), eps, (int64_t)out_dtype)[0];
#endif
  return rms_norm_ref(x, w, eps, out_dtype);
}

std::vector<at::Tensor> rope_qkv_fused(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t nh,
                                       int64_t nkv, int64_t hd) {
#ifdef DMC_WITH_CUDA
  if (use_fused_ops(qkv) && kernel_dtype(qkv) && qkv.dim() == 3 && cos.dim() == 2 && cos.size(0) == qkv.size(1) &&
      cos.scalar_type() == at::kFloat)
    return RopeQkvFn::apply(qkv.contiguous(), cos.contiguous(), sin.contiguous(), nh, nkv, hd);
#endif
  return rope_qkv_ref(qkv, cos, sin, nh, nkv, hd);
}

at::Tensor rope_rows_fused(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool drop_last) {
#ifdef DMC_WITH_CUDA
  if (use_fused_ops(x) && kernel_dtype(x) && x.dim() == 4 && x.stride(3) == 1 && cos.dim() == 2 &&
      cos.size(0) == x.size(2) && cos.size(1) == x.size(3) && cos.scalar_type() == at::kFloat)
    return RopeRowsFn::apply(x, cos.contiguous(), sin.contiguous(), drop_last)[0];
#endif
  if (!drop_last) return apply_rope(x, cos, sin);
  at::Tensor keep = at::ones({x.size(-1)}, x.options());
  keep.index_put_({x.size(-1) - 1}, 0);
  return apply_rope(x * keep, cos, sin) * keep;
}

at::Tensor swiglu_fused(const at::Tensor& gu) {
#ifdef DMC_WITH_CUDA
  if (use_fused_ops(gu) && kernel_dtype(gu)) return SwigluFn::apply(gu.contiguous())[0];
#endif
  return swiglu_ref(gu);
}

// ---- the layer-level forms (dispatch to the fused ops where they apply) ----------------------------------

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // Under CUDA autocast the consumer is a GEMM that casts to the autocast dtype: produce that dtype directly.
  const at::ScalarType out = x.is_cuda() && at::autocast::is_autocast_enabled(at::kCUDA)
                                 ? at::autocast::get_autocast_dtype(at::kCUDA)
                                 : at::promote_types(weight.scalar_type(), x.scalar_type());
  return rms_norm_fused(x, weight, eps, out);
}

at::Tensor swiglu(const at::Tensor& gu) { return swiglu_fused(gu); }

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& positions) {
  at::Tensor freqs = at::outer(positions.to(inv_freq.scalar_type()), inv_freq);  // [seq, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                                  // [seq, hd]
  return {emb.cos(), emb.sin()};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor c = cos.to(x.scalar_type()), s = sin.to(x.scalar_type());
  at::Tensor rot = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * c + rot * s;
}

}  // namespace dmc
