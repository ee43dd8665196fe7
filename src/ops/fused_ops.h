// Fused RMSNorm and SwiGLU for the training step on CUDA (kernels/fused_ops.cu), with autograd, and the plain
// ATen forms they replace (the references: CPU, fp32 runs, and the kernels' oracle in the GPU tests).
//
//   rms_norm(x [.., H], w [H], eps, out_dtype)   y = w * x / sqrt(mean(x^2) + eps), arithmetic in fp32.
//       out_dtype: the dtype of y. Under bf16 autocast the next op is a GEMM that would cast y to bf16 anyway,
//       so the layer asks for bf16 directly (one rounding of the same fp32 value); else the ATen result type.
//   swiglu(gu [.., 2F])                           silu(gu[.., :F]) * gu[.., F:], in gu's dtype.
//   rope_qkv(qkv [B, T, (nh + 2 nkv) hd], cos, sin [T, hd] fp32, nh, nkv, hd)
//       -> {q [B, T, nh, hd], k [B, T, nkv, hd] with RoPE (HF's rotate_half form), v [B, T, nkv, hd]}, contiguous.
// use_fused_ops(t): CUDA tensor, kernels built, and not switched off (DMC_FUSED_OPS=0 in the environment, or
// set_fused_ops(false), e.g. for an A/B benchmark). The same switch gates DMC attention's blend kernels in training
// (ops/dmc.cpp).
#pragma once
#include <torch/types.h>

namespace dmc {

at::Tensor rms_norm_fused(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype);
at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype);
at::Tensor swiglu_fused(const at::Tensor& gu);
at::Tensor swiglu_ref(const at::Tensor& gu);
std::vector<at::Tensor> rope_qkv_fused(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t nh,
                                       int64_t nkv, int64_t hd);
// x [B, n, T, D] (any strides, inner contiguous), cos/sin [T, D] fp32 -> RoPE(x) [B, n, T, D] (a transposed view of
// a contiguous [B, T, n, D]); drop_last: dimension D-1 zeroed before and after (DMC). Falls back to the ATen form.
at::Tensor rope_rows_fused(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool drop_last);
std::vector<at::Tensor> rope_qkv_ref(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t nh,
                                     int64_t nkv, int64_t hd);

// The layer-level forms the model and the attention call (each dispatches to the fused op where it applies):
// RMSNorm as HF computes it: normalise in fp32, cast back, then scale.   x [..., hidden]
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
// silu(gu[.., :F]) * gu[.., F:] of the fused gate/up projection output [.., 2F]
at::Tensor swiglu(const at::Tensor& gu);
// cos, sin [seq, head_dim] (fp32) for positions [seq] int64 and inv_freq [head_dim / 2] fp32.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& positions);
// x [batch, heads, seq, head_dim]; cos/sin [seq, head_dim] fp32, cast to x's dtype first (as HF does).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

bool use_fused_ops(const at::Tensor& t);
void set_fused_ops(bool on);

#ifdef DMC_WITH_CUDA
// kernels/fused_ops.cu (contiguous inputs): forward -> (y, rstd [N] fp32); backward -> (dx, dw)
std::tuple<at::Tensor, at::Tensor> rms_norm_forward_cuda(const at::Tensor& x, const at::Tensor& w, double eps,
                                                         at::ScalarType out_dtype);
std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                          const at::Tensor& w, const at::Tensor& rstd);
at::Tensor swiglu_forward_cuda(const at::Tensor& gu);
at::Tensor swiglu_backward_cuda(const at::Tensor& dout, const at::Tensor& gu);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rope_qkv_forward_cuda(const at::Tensor& qkv, const at::Tensor& cos,
                                                                     const at::Tensor& sin, int64_t nh, int64_t nkv,
                                                                     int64_t hd);
// drop_last: the output's dimension D-1 is last_value (0 but for DMC's inference attention, which puts the bias
// scale there)
at::Tensor rope_rows_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool drop_last,
                          bool inverse, double last_value = 0.0);
at::Tensor rope_qkv_backward_cuda(const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                                  const at::Tensor& cos, const at::Tensor& sin, int64_t B, int64_t T, int64_t nh,
                                  int64_t nkv, int64_t hd, at::ScalarType dtype);
#endif

}  // namespace dmc
