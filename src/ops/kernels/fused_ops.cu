// Fused elementwise pieces of the Llama training step (model/fused_ops.h), forward and backward, sm_90.
// The ATen forms (model/llama.cpp rms_norm, silu(g) * u) make several passes over fp32 activations each (square,
// mean, rsqrt, two products, the autocast cast to bf16; silu, product) and save their intermediates; these
// kernels read each input once and write each output once, and save only what the backward needs.
//
// RMSNorm   x [N, H] (fp32 | bf16 | fp16), w [H] (fp32 or x's type) -> y [N, H] (out dtype), rstd [N] fp32
//           y = w * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps), arithmetic in fp32; as HF (and rms_norm_ref),
//           x * rstd is rounded to x's dtype before the product with w (a no-op for fp32 x).
//   backward with g = w * dy, xh = x * rstd:  dx = rstd * (g - xh * mean(g * xh)),  dw = sum over rows of dy * xh
//           (per-block partial sums [blocks, H] fp32, then one reduction).
// SwiGLU    gu [N, 2F] (gate | up, as the fused gate_up projection writes them) -> out [N, F] = silu(gate) * up
//   backward: dgate = dout * up * s * (1 + gate * (1 - s)), dup = dout * silu(gate), s = sigmoid(gate).
// RoPE      qkv [B, T, (nh + 2 nkv) hd] (the fused QKV projection, contiguous), cos, sin [T, hd] fp32 (HF's
//           emb = cat(freqs, freqs)) -> q [B, T, nh, hd], k [B, T, nkv, hd] rotated, v [B, T, nkv, hd] copied, each
//           contiguous in qkv's dtype: with h = hd / 2, out_i = x_i c_i - x_{i+h} s_i, out_{i+h} = x_{i+h} c_i + x_i
//           s_i.
//   backward: one kernel writes d qkv whole: R^T dq | R^T dk | dv, R^T: d_i c_i + d_{i+h} s_i, d_{i+h} c_i - d_i s_i
//           (the ATen form's narrow/cat/neg passes and the zero-fill + adds of three view gradients go away).
// Norm forward: one block per row (rows of up to 16384); backward: a few blocks per SM, each a strided set of
// rows (hidden size up to 12288). RoPE: one warp per head vector (rope_row, shared by all three RoPE kernels).
// Grid-stride loops for SwiGLU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/error.h"
#include "ops/fused_ops.h"

namespace dmc {
namespace {

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ld(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T st(float v);
template <>
__device__ __forceinline__ float st<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half st<__half>(float v) {
  return __float2half(v);
}

constexpr int kMaxPer = 16;  // columns per thread held in registers by the norm kernels

__device__ __forceinline__ float block_sum(float v, float* shared) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  __syncthreads();  // shared is reused between calls
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < nw ? shared[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}

template <typename TX, typename TW, typename TO>
__global__ void rms_fwd_kernel(const TX* __restrict__ x, const TW* __restrict__ w, int64_t N, int H, float eps,
                               TO* __restrict__ y, float* __restrict__ rstd) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const TX* xr = x + row * H;
  float v[kMaxPer];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kMaxPer; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    v[k] = c < H ? ld(xr[c]) : 0.f;
    ss += v[k] * v[k];
  }
  const float r = rsqrtf(block_sum(ss, shared) / (float)H + eps);
  TO* yr = y + row * H;
#pragma unroll
  for (int k = 0; k < kMaxPer; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < H) yr[c] = st<TO>(ld(w[c]) * ld(st<TX>(v[k] * r)));  // x * rstd rounded to x's dtype first, as HF
  }
  if (threadIdx.x == 0) rstd[row] = r;
}

// dw accumulates in shared memory (dynamic, H floats; thread-owned columns, no atomics): per-thread register
// arrays of 4 x H / threads values exceed the register file at H = 8192.
template <typename TX, typename TW, typename TO>
__global__ void rms_bwd_kernel(const TO* __restrict__ dy, const TX* __restrict__ x, const TW* __restrict__ w,
                               const float* __restrict__ rstd, int64_t N, int H, TX* __restrict__ dx,
                               float* __restrict__ dw_part) {
  __shared__ float shared[32];
  extern __shared__ float dw[];  // [H]
  for (int c = threadIdx.x; c < H; c += blockDim.x) dw[c] = 0.f;
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const float r = rstd[row];
    const TO* dyr = dy + row * H;
    const TX* xr = x + row * H;
    float dot = 0.f;
    for (int c = threadIdx.x; c < H; c += blockDim.x) dot += ld(dyr[c]) * ld(w[c]) * ld(xr[c]);
    const float mean = block_sum(dot, shared) * r / (float)H;  // mean(g * xh)
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
      const float d = ld(dyr[c]), xh = ld(xr[c]) * r;
      dx[row * H + c] = st<TX>(r * (d * ld(w[c]) - xh * mean));
      dw[c] += d * xh;
    }
  }
  for (int c = threadIdx.x; c < H; c += blockDim.x) dw_part[(int64_t)blockIdx.x * H + c] = dw[c];
}

template <typename T>
__global__ void swiglu_fwd_kernel(const T* __restrict__ gu, int64_t N, int64_t F, T* __restrict__ out) {
  const int64_t n = N * F;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / F, col = i - row * F;
    const float g = ld(gu[row * 2 * F + col]), u = ld(gu[row * 2 * F + F + col]);
    out[i] = st<T>(g / (1.f + __expf(-g)) * u);
  }
}

template <typename T>
__global__ void swiglu_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ gu, int64_t N, int64_t F,
                                  T* __restrict__ dgu) {
  const int64_t n = N * F;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / F, col = i - row * F;
    const float g = ld(gu[row * 2 * F + col]), u = ld(gu[row * 2 * F + F + col]), d = ld(dout[i]);
    const float s = 1.f / (1.f + __expf(-g));
    dgu[row * 2 * F + col] = st<T>(d * u * s * (1.f + g * (1.f - s)));
    dgu[row * 2 * F + F + col] = st<T>(d * g * s);
  }
}

// RoPE of one head vector (D = 2h values) at one position, the piece all three RoPE kernels share: with cs, sn the
// position's cos / sin rows, out_i = x_i c_i - x_{i+h} s_i, out_{i+h} = x_{i+h} c_i + x_i s_i (inverse = R^T:
// x_i c_i + x_{i+h} s_i, x_{i+h} c_i - x_i s_i); kCopy copies, kZero writes zeros (a missing gradient). drop_last:
// x_{D-1} counts as 0 and out_{D-1} = last_value (DMC: the decision neuron never rotates into dimension D/2-1).
// One warp per row, lane l takes the pairs (i, i + h), i = l + 32 k: the kernels decode a row's indices once, not
// once per element.
enum RopeMode { kRotate = 0, kInverse = 1, kCopy = 2, kZero = 3 };
template <typename T>
__device__ __forceinline__ void rope_row(const T* __restrict__ src, T* __restrict__ dst, const float* __restrict__ cs,
                                         const float* __restrict__ sn, int D, int mode, bool drop_last,
                                         float last_value, int lane) {
  const int h = D / 2;
  for (int d = lane; d < h; d += 32) {
    if (mode == kZero) {
      dst[d] = st<T>(0.f);
      dst[d + h] = st<T>(0.f);
      continue;
    }
    if (mode == kCopy) {
      dst[d] = src[d];
      dst[d + h] = src[d + h];
      continue;
    }
    const bool last = drop_last && d == h - 1;  // the pair (D/2-1, D-1)
    const float a = ld(src[d]), b = last ? 0.f : ld(src[d + h]);
    const float c = cs[d], s = sn[d];
    if (mode == kRotate) {
      dst[d] = st<T>(a * c - b * s);
      dst[d + h] = st<T>(last ? last_value : b * c + a * s);
    } else {
      dst[d] = st<T>(a * c + b * s);
      dst[d + h] = st<T>(last ? last_value : b * c - a * s);
    }
  }
}
constexpr int kRopeWarps = 8;  // rows per block

// qkv [BT, heads = nh + 2 nkv, hd] -> q [BT, nh, hd], k [BT, nkv, hd] rotated, v [BT, nkv, hd] copied
template <typename T>
__global__ void rope_fwd_kernel(const T* __restrict__ qkv, const float* __restrict__ cos, const float* __restrict__ sin,
                                int64_t BT, int T_, int nh, int nkv, int hd, T* __restrict__ q, T* __restrict__ k,
                                T* __restrict__ v) {
  const int heads = nh + 2 * nkv, lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kRopeWarps + threadIdx.x / 32;  // (bt, j)
  if (row >= BT * heads) return;
  const int j = (int)(row % heads);
  const int64_t bt = row / heads;
  const int t = (int)(bt % T_);
  T* dst = j < nh         ? q + (bt * nh + j) * hd
           : j < nh + nkv ? k + (bt * nkv + (j - nh)) * hd
                          : v + (bt * nkv + (j - nh - nkv)) * hd;
  rope_row<T>(qkv + row * hd, dst, cos + (int64_t)t * hd, sin + (int64_t)t * hd, hd, j < nh + nkv ? kRotate : kCopy,
              false, 0.f, lane);
}

// d qkv [BT, heads, hd] = R^T dq | R^T dk | dv (zeros for a missing gradient)
template <typename T>
__global__ void rope_bwd_kernel(const T* __restrict__ dq, const T* __restrict__ dk, const T* __restrict__ dv,
                                const float* __restrict__ cos, const float* __restrict__ sin, int64_t BT, int T_,
                                int nh, int nkv, int hd, T* __restrict__ dqkv) {
  const int heads = nh + 2 * nkv, lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kRopeWarps + threadIdx.x / 32;
  if (row >= BT * heads) return;
  const int j = (int)(row % heads);
  const int64_t bt = row / heads;
  const int t = (int)(bt % T_);
  const T* src = j < nh         ? (dq ? dq + (bt * nh + j) * hd : nullptr)
                 : j < nh + nkv ? (dk ? dk + (bt * nkv + (j - nh)) * hd : nullptr)
                                : (dv ? dv + (bt * nkv + (j - nh - nkv)) * hd : nullptr);
  const int mode = !src ? kZero : j < nh + nkv ? kInverse : kCopy;
  rope_row<T>(src, dqkv + row * hd, cos + (int64_t)t * hd, sin + (int64_t)t * hd, hd, mode, false, 0.f, lane);
}

// RoPE of [B, n, T, D] rows with arbitrary strides (inner dimension contiguous) into a [B, T, n, D] buffer, with
// rope_row's drop_last / last_value; inverse = true applies R^T (the backward), with the same drop.
template <typename T>
__global__ void rope_rows_kernel(const T* __restrict__ x, int64_t sb, int64_t sn, int64_t st_, int B, int n, int T_,
                                 int D, const float* __restrict__ cos, const float* __restrict__ sin, bool drop_last,
                                 bool inverse, float last_value, T* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kRopeWarps + threadIdx.x / 32;  // (b, t, j) of the output
  if (row >= (int64_t)B * T_ * n) return;
  const int j = (int)(row % n), t = (int)((row / n) % T_);
  const int64_t b = row / ((int64_t)n * T_);
  rope_row<T>(x + b * sb + j * sn + t * st_, out + row * D, cos + (int64_t)t * D, sin + (int64_t)t * D, D,
              inverse ? kInverse : kRotate, drop_last, last_value, lane);
}

int norm_threads(int64_t H) {
  DMC_CHECK(H <= 1024 * kMaxPer, "fused rms_norm: hidden size ", H, " exceeds ", 1024 * kMaxPer);
  int t = 128;
  while (t * kMaxPer < H) t *= 2;
  return t;
}

// dispatch over (x, w, out) dtypes: w is fp32 or x's type
template <typename F>
void dispatch3(at::ScalarType tx, at::ScalarType tw, at::ScalarType to, F&& f) {
  auto with_out = [&](auto xv, auto wv) {
    switch (to) {
      case at::kFloat: f(xv, wv, float{}); return;
      case at::kBFloat16: f(xv, wv, __nv_bfloat16{}); return;
      case at::kHalf: f(xv, wv, __half{}); return;
      default: fail("fused rms_norm: unsupported output dtype ", to);
    }
  };
  auto with_w = [&](auto xv) {
    using TXv = decltype(xv);
    if (tw == at::kFloat)
      with_out(xv, float{});
    else if (tw == tx)
      with_out(xv, TXv{});
    else
      fail("fused rms_norm: weight dtype ", tw, " must be fp32 or the input's ", tx);
  };
  switch (tx) {
    case at::kFloat: with_w(float{}); return;
    case at::kBFloat16: with_w(__nv_bfloat16{}); return;
    case at::kHalf: with_w(__half{}); return;
    default: fail("fused rms_norm: unsupported input dtype ", tx);
  }
}
template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rms_norm_forward_cuda(const at::Tensor& x, const at::Tensor& w, double eps,
                                                         at::ScalarType out_dtype) {
  DMC_CHECK(x.is_contiguous() && w.is_contiguous(), "fused rms_norm: contiguous inputs expected");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t H = x.size(-1), N = x.numel() / H;
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(out_dtype));
  at::Tensor rstd = at::empty({N}, x.options().dtype(at::kFloat));
  if (N == 0) return {y, rstd};
  const int threads = norm_threads(H);
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch3(x.scalar_type(), w.scalar_type(), out_dtype, [&](auto xv, auto wv, auto ov) {
    using TX = decltype(xv);
    using TW = decltype(wv);
    using TO = decltype(ov);
    rms_fwd_kernel<TX, TW, TO><<<(unsigned)N, threads, 0, stream>>>(ptr<TX>(x), ptr<TW>(w), N, (int)H, (float)eps,
                                                                    ptr<TO>(y), rstd.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                          const at::Tensor& w, const at::Tensor& rstd) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor g = dy.contiguous();
  const int64_t H = x.size(-1), N = x.numel() / H;
  at::Tensor dx = at::empty_like(x);
  DMC_CHECK(H <= 12288, "fused rms_norm backward: hidden size ", H, " exceeds 12288 (48 KiB of shared memory)");
  const int threads = 256;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t)sms * 4));
  at::Tensor part = at::empty({blocks, H}, x.options().dtype(at::kFloat));
  if (N > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    dispatch3(x.scalar_type(), w.scalar_type(), g.scalar_type(), [&](auto xv, auto wv, auto ov) {
      using TX = decltype(xv);
      using TW = decltype(wv);
      using TO = decltype(ov);
      rms_bwd_kernel<TX, TW, TO><<<(unsigned)blocks, threads, H * sizeof(float), stream>>>(
          ptr<TO>(g), ptr<TX>(x), ptr<TW>(w), rstd.data_ptr<float>(), N, (int)H, ptr<TX>(dx), part.data_ptr<float>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    part.zero_();
  }
  return {dx, part.sum(0).to(w.scalar_type())};
}

namespace {
template <typename F>
void dispatch1(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); return;
    case at::kBFloat16: f(__nv_bfloat16{}); return;
    case at::kHalf: f(__half{}); return;
    default: fail("fused swiglu: unsupported dtype ", t);
  }
}
unsigned rope_blocks(int64_t rows) { return (unsigned)((rows + kRopeWarps - 1) / kRopeWarps); }
unsigned elementwise_blocks(int64_t n) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, (int64_t)sms * 16));
}
}  // namespace

at::Tensor swiglu_forward_cuda(const at::Tensor& gu) {
  DMC_CHECK(gu.is_contiguous() && gu.size(-1) % 2 == 0, "fused swiglu: contiguous [.., 2F] input expected");
  const c10::cuda::CUDAGuard guard(gu.device());
  const int64_t F = gu.size(-1) / 2, N = gu.numel() / (2 * F);
  auto sizes = gu.sizes().vec();
  sizes.back() = F;
  at::Tensor out = at::empty(sizes, gu.options());
  if (N * F == 0) return out;
  dispatch1(gu.scalar_type(), [&](auto v) {
    using T = decltype(v);
    swiglu_fwd_kernel<T>
        <<<elementwise_blocks(N * F), 256, 0, at::cuda::getCurrentCUDAStream()>>>(ptr<T>(gu), N, F, ptr<T>(out));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor swiglu_backward_cuda(const at::Tensor& dout, const at::Tensor& gu) {
  const c10::cuda::CUDAGuard guard(gu.device());
  at::Tensor d = dout.to(gu.scalar_type()).contiguous();
  const int64_t F = gu.size(-1) / 2, N = gu.numel() / (2 * F);
  at::Tensor dgu = at::empty_like(gu);
  if (N * F == 0) return dgu;
  dispatch1(gu.scalar_type(), [&](auto v) {
    using T = decltype(v);
    swiglu_bwd_kernel<T><<<elementwise_blocks(N * F), 256, 0, at::cuda::getCurrentCUDAStream()>>>(ptr<T>(d), ptr<T>(gu),
                                                                                                  N, F, ptr<T>(dgu));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dgu;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rope_qkv_forward_cuda(const at::Tensor& qkv, const at::Tensor& cos,
                                                                     const at::Tensor& sin, int64_t nh, int64_t nkv,
                                                                     int64_t hd) {
  DMC_CHECK(qkv.dim() == 3 && qkv.is_contiguous() && qkv.size(2) == (nh + 2 * nkv) * hd && hd % 2 == 0,
            "fused rope: qkv [B, T, (nh + 2 nkv) hd] contiguous expected");
  const int64_t B = qkv.size(0), T = qkv.size(1);
  DMC_CHECK(cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous() && cos.size(0) == T &&
                cos.size(1) == hd,
            "fused rope: cos/sin [T, hd] fp32 expected");
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor q = at::empty({B, T, nh, hd}, qkv.options()), k = at::empty({B, T, nkv, hd}, qkv.options()),
             v = at::empty({B, T, nkv, hd}, qkv.options());
  const int64_t n = B * T * (nh + 2 * nkv) * (hd / 2);
  if (n == 0) return {q, k, v};
  dispatch1(qkv.scalar_type(), [&](auto tv) {
    using TT = decltype(tv);
    rope_fwd_kernel<TT><<<rope_blocks(B * T * (nh + 2 * nkv)), kRopeWarps * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        ptr<TT>(qkv), cos.data_ptr<float>(), sin.data_ptr<float>(), B * T, (int)T, (int)nh, (int)nkv, (int)hd,
        ptr<TT>(q), ptr<TT>(k), ptr<TT>(v));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, k, v};
}

at::Tensor rope_qkv_backward_cuda(const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                                  const at::Tensor& cos, const at::Tensor& sin, int64_t B, int64_t T, int64_t nh,
                                  int64_t nkv, int64_t hd, at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(cos.device());
  auto prep = [&](const at::Tensor& g) { return g.defined() ? g.to(dtype).contiguous() : g; };
  at::Tensor q = prep(dq), k = prep(dk), v = prep(dv);
  at::Tensor dqkv = at::empty({B, T, (nh + 2 * nkv) * hd}, cos.options().dtype(dtype));
  const int64_t n = B * T * (nh + 2 * nkv) * (hd / 2);
  if (n == 0) return dqkv;
  dispatch1(dtype, [&](auto tv) {
    using TT = decltype(tv);
    auto p = [](const at::Tensor& g) { return g.defined() ? ptr<TT>(g) : (TT*)nullptr; };
    rope_bwd_kernel<TT><<<rope_blocks(B * T * (nh + 2 * nkv)), kRopeWarps * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        p(q), p(k), p(v), cos.data_ptr<float>(), sin.data_ptr<float>(), B * T, (int)T, (int)nh, (int)nkv, (int)hd,
        ptr<TT>(dqkv));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dqkv;
}

at::Tensor rope_rows_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool drop_last,
                          bool inverse, double last_value) {
  DMC_CHECK(x.dim() == 4 && x.stride(3) == 1 && x.size(3) % 2 == 0, "fused rope rows: [B, n, T, D], inner stride 1");
  const int64_t B = x.size(0), n = x.size(1), T = x.size(2), D = x.size(3);
  DMC_CHECK(cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous() && cos.size(0) == T &&
                cos.size(1) == D,
            "fused rope rows: cos/sin [T, D] fp32 expected");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({B, T, n, D}, x.options());
  const int64_t total = B * T * n * (D / 2);
  if (total == 0) return out.transpose(1, 2);
  dispatch1(x.scalar_type(), [&](auto tv) {
    using TT = decltype(tv);
    rope_rows_kernel<TT><<<rope_blocks(B * T * n), kRopeWarps * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        ptr<TT>(x), x.stride(0), x.stride(1), x.stride(2), (int)B, (int)n, (int)T, (int)D, cos.data_ptr<float>(),
        sin.data_ptr<float>(), drop_last, inverse, (float)last_value, ptr<TT>(out));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out.transpose(1, 2);  // [B, n, T, D] view
}

}  // namespace dmc
