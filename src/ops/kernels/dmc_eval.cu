// The inference-time (no gradient) pieces of DMC attention around the attention kernel itself, sm_90, for
// fp16 / bf16 activations: the windowed weighted pooling read straight from the projection's k and v and written in
// the activation dtype, and the diagonal blend that closes the biased flash attention. Their general forms
// (dmc_pool over one fp32 [B, T, H, 2D] copy of k|v; the blend as eight ATen passes over fp32 copies of q, k, the
// attention output and v) cost a 4k prefill of the Llama 2 7B shape ~40 ms of the GPU's ~140 on an H100; these
// read each input once and write each output once, with fp32 arithmetic inside. Oracles: dmc_pool_ref and the
// ATen blend in dmc/dmc.cpp (tests/test_gpu.cpp checks both). The blend also has its backward here, for training
// (blend_bwd_kernel): at SmolLM2's shape the ATen blend's fp32 passes and their backward were a large part of the DMC
// training step (docs/benchmarks.md).
//
// Pooling (one warp per (b, t, h); lane m < W holds the coefficient of token t - m):
//   k, v        [B, T, H, D] any strides with unit inner stride (views into the fused QKV projection)
//   w, b        [B, T, H] fp32 contiguous (importance, boundary: b_t = 1 merges t into t - 1; b[:, 0] = 0)
//   k_out, v_out [B, T, H, D] any strides, unit inner stride, k's dtype
//   C_{t,0} = 1, C_{t,m} = C_{t,m-1} b_{t-m+1};  out_t = sum_{m<W} C_{t,m} w_{t-m} x_{t-m} / sum_{m<W} C_{t,m} w_{t-m}
// Blend (one warp per (b, head, t)):
//   q      [B, nh, T, D]   strided; dimension D-1 ignored (it carries the bias scale)
//   k, v   [B, nkv, T, D]  strided, the merged keys (RoPE'd) and values; query head j reads KV head j / (nh / nkv)
//   past   [B, nh, T, D]   strided, attention over the keys j < i (with their bias)
//   lse    [B, nh, T]      fp32 contiguous, log-sum-exp of those scores
//   out    [B, T, nh, D]   contiguous, q's dtype:  s = scale q.k (dims < D-1),  a = sigmoid(lse - s),
//                          out = a past + (1 - a) v
// Blend backward (one warp per (b, KV head, t), the G query heads of its group in turn, so that the key and value
// gradients are sums in registers, not atomics), from dO [B, nh, T, D] (strided):
//   dpast = a dO;  dv = sum_group (1 - a) dO;  z = lse - s,  dz = a (1 - a) sum_d dO_d (past_d - v_d);
//   dlse = dz;  dq_d = -dz scale k_d,  dk_d = -sum_group dz scale q_d  (d < D-1; dimension D-1 gets 0)
//   dq, dpast [B, T, nh, D] and dk, dv [B, T, nkv, D] contiguous in q's dtype; dlse [B, nh, T] fp32
//   past_used [B, T, nh, D] (optional): past moved along one channel so that rowsum(dpast * past_used) is
//   rowsum(dpast * past) - dlse: what the flash backward must be given as its `out` to carry the lse gradient
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "common/error.h"
#include "ops/dmc.h"

namespace dmc {
namespace {

constexpr int kWarps = 8;  // warps per block

__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half(v);
}

// N consecutive 16-bit values as one aligned vector load / store (N = 8: 16 bytes, N = 4: 8 bytes)
template <typename T, int N>
struct Vec;
template <typename T>
struct Vec<T, 8> {
  using raw = uint4;
};
template <typename T>
struct Vec<T, 4> {
  using raw = uint2;
};
template <typename T, int N>
__device__ __forceinline__ void load_f(const T* p, float* f) {
  union {
    typename Vec<T, N>::raw r;
    T e[N];
  } u;
  u.r = *reinterpret_cast<const typename Vec<T, N>::raw*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) f[i] = to_f(u.e[i]);
}
template <typename T, int N>
__device__ __forceinline__ void store_f(T* p, const float* f) {
  union {
    typename Vec<T, N>::raw r;
    T e[N];
  } u;
#pragma unroll
  for (int i = 0; i < N; ++i) u.e[i] = from_f<T>(f[i]);
  *reinterpret_cast<typename Vec<T, N>::raw*>(p) = u.r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct Strides4 {
  int64_t b, t, h;
};  // element strides of a [B, T, H, D] view (dim D unit)

template <typename T>
__global__ void pool_eval_kernel(const T* __restrict__ k, Strides4 ks, const T* __restrict__ v, Strides4 vs,
                                 const float* __restrict__ w, const float* __restrict__ bnd, int64_t BTH, int T_, int H,
                                 int D, int W, T* __restrict__ ko, Strides4 kos, T* __restrict__ vo, Strides4 vos) {
  constexpr int N = 8;
  const int64_t i = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;  // (b, t, h), the flat index of w and bnd
  const int lane = threadIdx.x % 32;
  if (i >= BTH) return;  // whole warps leave together
  const int h = (int)(i % H), t = (int)((i / H) % T_);
  const int64_t b = i / ((int64_t)H * T_);
  const int Wt = min(W, t + 1);
  // lane m: C_{t,m} as an inclusive product scan of b_{t-s+1}, s = 1..m (lane 0 multiplies by 1)
  float c = (lane >= 1 && lane < Wt) ? bnd[i - (int64_t)(lane - 1) * H] : 1.f;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, c, o);
    if (lane >= o) c *= y;
  }
  const float coef = lane < Wt ? c * w[i - (int64_t)lane * H] : 0.f;
  const float inv_den = 1.f / warp_sum(coef);
  const int nvec = 2 * D / N;  // vectors of N channels across (k | v)
  for (int c0 = 0; c0 < nvec; c0 += 32) {
    const int cv = c0 + lane;
    const bool active = cv < nvec;
    const int ch = cv * N;
    const bool is_k = ch < D;
    const int d = is_k ? ch : ch - D;
    const T* src = is_k ? k + b * ks.b + (int64_t)h * ks.h + d : v + b * vs.b + (int64_t)h * vs.h + d;
    const int64_t st = is_k ? ks.t : vs.t;
    float acc[N];
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] = 0.f;
#pragma unroll 4
    for (int m = 0; m < Wt; ++m) {
      const float cm = __shfl_sync(0xffffffffu, coef, m);
      if (active) {
        float x[N];
        load_f<T, N>(src + (int64_t)(t - m) * st, x);
#pragma unroll
        for (int e = 0; e < N; ++e) acc[e] += cm * x[e];
      }
    }
    if (active) {
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] *= inv_den;
      T* dst = is_k ? ko + b * kos.b + (int64_t)t * kos.t + (int64_t)h * kos.h + d
                    : vo + b * vos.b + (int64_t)t * vos.t + (int64_t)h * vos.h + d;
      store_f<T, N>(dst, acc);
    }
  }
}

template <typename T>
__global__ void blend_kernel(const T* __restrict__ q, Strides4 qs, const T* __restrict__ k, Strides4 ks,
                             const T* __restrict__ past, Strides4 ps, const T* __restrict__ v, Strides4 vs,
                             const float* __restrict__ lse, int64_t rows, int T_, int nh, int G, int D, float scale,
                             T* __restrict__ out) {
  constexpr int N = 4;
  const int64_t r = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;  // (b, head, t): lse's flat index
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int t = (int)(r % T_), j = (int)((r / T_) % nh);
  const int64_t b = r / ((int64_t)T_ * nh);
  const int hk = j / G;
  const T* qr = q + b * qs.b + (int64_t)j * qs.h + (int64_t)t * qs.t;
  const T* kr = k + b * ks.b + (int64_t)hk * ks.h + (int64_t)t * ks.t;
  const T* pr = past + b * ps.b + (int64_t)j * ps.h + (int64_t)t * ps.t;
  const T* vr = v + b * vs.b + (int64_t)hk * vs.h + (int64_t)t * vs.t;
  T* orow = out + ((b * T_ + t) * nh + j) * (int64_t)D;
  float s = 0.f;
  for (int c = lane * N; c < D; c += 32 * N) {
    float a[N], e[N];
    load_f<T, N>(qr + c, a);
    load_f<T, N>(kr + c, e);
#pragma unroll
    for (int x = 0; x < N; ++x) s += (c + x < D - 1) ? a[x] * e[x] : 0.f;
  }
  s = warp_sum(s) * scale;
  const float wp = 1.f / (1.f + __expf(s - lse[r]));  // sigmoid(lse - s)
  for (int c = lane * N; c < D; c += 32 * N) {
    float a[N], e[N];
    load_f<T, N>(pr + c, a);
    load_f<T, N>(vr + c, e);
#pragma unroll
    for (int x = 0; x < N; ++x) a[x] = wp * a[x] + (1.f - wp) * e[x];
    store_f<T, N>(orow + c, a);
  }
}

template <typename T>
__global__ void blend_bwd_kernel(const T* __restrict__ q, Strides4 qs, const T* __restrict__ k, Strides4 ks,
                                 const T* __restrict__ past, Strides4 ps, const T* __restrict__ v, Strides4 vs,
                                 const T* __restrict__ g, Strides4 gs, const float* __restrict__ lse, int64_t rows,
                                 int T_, int nkv, int G, int D, float scale, T* __restrict__ dq, T* __restrict__ dk,
                                 T* __restrict__ dpast, T* __restrict__ dv, float* __restrict__ dlse,
                                 T* __restrict__ past_used) {
  constexpr int N = 4, C = 2;                                         // C chunks of 32 N elements: D <= 256
  const int64_t r = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;  // (b, KV head, t)
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int t = (int)(r % T_), hk = (int)((r / T_) % nkv);
  const int64_t b = r / ((int64_t)T_ * nkv);
  const int nh = nkv * G;
  const T* kr = k + b * ks.b + (int64_t)hk * ks.h + (int64_t)t * ks.t;
  const T* vr = v + b * vs.b + (int64_t)hk * vs.h + (int64_t)t * vs.t;
  float kf[C][N], vf[C][N], dkf[C][N], dvf[C][N];
#pragma unroll
  for (int ci = 0; ci < C; ++ci) {
    const int c = (ci * 32 + lane) * N;
#pragma unroll
    for (int x = 0; x < N; ++x) kf[ci][x] = vf[ci][x] = dkf[ci][x] = dvf[ci][x] = 0.f;
    if (c < D) {
      load_f<T, N>(kr + c, kf[ci]);
      load_f<T, N>(vr + c, vf[ci]);
    }
  }
  for (int gi = 0; gi < G; ++gi) {
    const int j = hk * G + gi;
    const T* qr = q + b * qs.b + (int64_t)j * qs.h + (int64_t)t * qs.t;
    const T* pr = past + b * ps.b + (int64_t)j * ps.h + (int64_t)t * ps.t;
    const T* gr = g + b * gs.b + (int64_t)j * gs.h + (int64_t)t * gs.t;
    float qf[C][N], pf[C][N], gf[C][N];
    float s = 0.f, da = 0.f;
#pragma unroll
    for (int ci = 0; ci < C; ++ci) {
      const int c = (ci * 32 + lane) * N;
#pragma unroll
      for (int x = 0; x < N; ++x) qf[ci][x] = pf[ci][x] = gf[ci][x] = 0.f;
      if (c < D) {
        load_f<T, N>(qr + c, qf[ci]);
        load_f<T, N>(pr + c, pf[ci]);
        load_f<T, N>(gr + c, gf[ci]);
      }
#pragma unroll
      for (int x = 0; x < N; ++x) {
        s += (c + x < D - 1) ? qf[ci][x] * kf[ci][x] : 0.f;
        da += gf[ci][x] * (pf[ci][x] - vf[ci][x]);
      }
    }
    s = warp_sum(s) * scale;
    da = warp_sum(da);
    const int64_t li = (b * nh + j) * (int64_t)T_ + t;  // lse's [B, nh, T] index
    const float a = 1.f / (1.f + __expf(s - lse[li]));  // sigmoid(lse - s)
    const float dz = da * a * (1.f - a), ds = -dz * scale;
    if (lane == 0) dlse[li] = dz;
    const int64_t orow = ((b * T_ + t) * nh + j) * (int64_t)D;
    float op[C][N];  // dpast as the flash backward will read it (rounded to T)
#pragma unroll
    for (int ci = 0; ci < C; ++ci)
#pragma unroll
      for (int x = 0; x < N; ++x) op[ci][x] = to_f(from_f<T>(a * gf[ci][x]));
    if (past_used != nullptr) {
      // the log-sum-exp's gradient for the flash backward: its dS = P (dP - D) with D = rowsum(dO * out), so an
      // `out` lowered to give D - dz adds exactly P dz. Move out along the channel where |dO| is largest (the
      // smallest relative change); a row whose dO rounded to zero gets a tiny dO there (a negligible dO v_j in dP).
      float best = -1.f;
      int bi = 0;
#pragma unroll
      for (int ci = 0; ci < C; ++ci)
#pragma unroll
        for (int x = 0; x < N; ++x) {
          const int c = (ci * 32 + lane) * N + x;
          if (c < D && fabsf(op[ci][x]) > best) {
            best = fabsf(op[ci][x]);
            bi = c;
          }
        }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, off);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (ob > best || (ob == best && oi < bi)) {
          best = ob;
          bi = oi;
        }
      }
#pragma unroll
      for (int ci = 0; ci < C; ++ci) {
        const int c = (ci * 32 + lane) * N;
        if (c >= D) continue;
        float pu[N];
#pragma unroll
        for (int x = 0; x < N; ++x) {
          pu[x] = pf[ci][x];
          if (c + x == bi && dz != 0.f) {
            if (op[ci][x] == 0.f)
              op[ci][x] = std::is_same<T, __half>::value ? 6.103515625e-05f : 1e-30f;  // normal in T
            pu[x] = pf[ci][x] - dz / op[ci][x];
          }
        }
        store_f<T, N>(past_used + orow + c, pu);
      }
    }
#pragma unroll
    for (int ci = 0; ci < C; ++ci) {
      const int c = (ci * 32 + lane) * N;
      if (c >= D) continue;
      float oq[N];
#pragma unroll
      for (int x = 0; x < N; ++x) {
        const bool in = c + x < D - 1;
        oq[x] = in ? ds * kf[ci][x] : 0.f;
        dkf[ci][x] += in ? ds * qf[ci][x] : 0.f;
        dvf[ci][x] += (1.f - a) * gf[ci][x];
      }
      store_f<T, N>(dq + orow + c, oq);
      store_f<T, N>(dpast + orow + c, op[ci]);
    }
  }
  const int64_t krow = ((b * T_ + t) * nkv + hk) * (int64_t)D;
#pragma unroll
  for (int ci = 0; ci < C; ++ci) {
    const int c = (ci * 32 + lane) * N;
    if (c >= D) continue;
    store_f<T, N>(dk + krow + c, dkf[ci]);
    store_f<T, N>(dv + krow + c, dvf[ci]);
  }
}

template <typename F>
void dispatch16(at::ScalarType t, const char* what, F&& f) {
  if (t == at::kBFloat16)
    f(__nv_bfloat16{});
  else if (t == at::kHalf)
    f(__half{});
  else
    fail(what, ": fp16 or bf16 expected, got ", t);
}
Strides4 strides_bthd(const at::Tensor& x) { return {x.stride(0), x.stride(1), x.stride(2)}; }
// unit inner stride, 16-byte aligned vectors of `vec` elements at every (b, t, h) row start
bool vec_ok(const at::Tensor& x, int64_t vec) {
  const auto a = (uintptr_t)x.data_ptr();
  return x.stride(3) == 1 && a % (vec * 2) == 0 && x.stride(0) % vec == 0 && x.stride(1) % vec == 0 &&
         x.stride(2) % vec == 0;
}
unsigned warp_blocks(int64_t warps) { return (unsigned)((warps + kWarps - 1) / kWarps); }

}  // namespace

bool dmc_eval_kernels_apply(const at::Tensor& k, const at::Tensor& v, int64_t window) {
  if (!k.is_cuda() || (k.scalar_type() != at::kBFloat16 && k.scalar_type() != at::kHalf)) return false;
  const int64_t D = k.size(3);
  return window >= 1 && window <= 32 && D % 8 == 0 && D >= 8 && vec_ok(k, 8) && vec_ok(v, 8) &&
         v.scalar_type() == k.scalar_type();
}

void dmc_pool_eval_cuda(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w_in, const at::Tensor& b_in,
                        int64_t window, at::Tensor& k_out, at::Tensor& v_out) {
  DMC_CHECK(k.dim() == 4 && v.sizes() == k.sizes() && k_out.sizes() == k.sizes() && v_out.sizes() == k.sizes(),
            "dmc_pool_eval: k, v, k_out, v_out must be [B, T, H, D] alike");
  DMC_CHECK(dmc_eval_kernels_apply(k, v, window) && vec_ok(k_out, 8) && vec_ok(v_out, 8) &&
                k_out.scalar_type() == k.scalar_type() && v_out.scalar_type() == k.scalar_type(),
            "dmc_pool_eval: fp16/bf16 CUDA tensors with 16-byte aligned rows, D % 8 == 0, window in [1, 32]");
  const c10::cuda::CUDAGuard guard(k.device());
  at::Tensor w = w_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  DMC_CHECK(w.sizes() == k.sizes().slice(0, 3) && b.sizes() == w.sizes(), "dmc_pool_eval: w, b must be [B, T, H]");
  const int64_t BTH = w.numel();
  if (BTH == 0) return;
  dispatch16(k.scalar_type(), "dmc_pool_eval", [&](auto tv) {
    using T = decltype(tv);
    pool_eval_kernel<T><<<warp_blocks(BTH), kWarps * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const T*>(k.data_ptr()), strides_bthd(k), reinterpret_cast<const T*>(v.data_ptr()),
        strides_bthd(v), w.data_ptr<float>(), b.data_ptr<float>(), BTH, (int)k.size(1), (int)k.size(2), (int)k.size(3),
        (int)window, reinterpret_cast<T*>(k_out.data_ptr()), strides_bthd(k_out),
        reinterpret_cast<T*>(v_out.data_ptr()), strides_bthd(v_out));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool dmc_blend_kernels_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& past, const at::Tensor& v) {
  auto bthd = [](const at::Tensor& x) { return x.transpose(1, 2); };  // [B, n, T, D] views in [B, T, n, D] order
  const auto dt = q.scalar_type();
  const int64_t D = q.size(3);
  return q.is_cuda() && (dt == at::kBFloat16 || dt == at::kHalf) && k.scalar_type() == dt && past.scalar_type() == dt &&
         v.scalar_type() == dt && D % 4 == 0 && D <= 256 && vec_ok(bthd(q), 4) && vec_ok(bthd(k), 4) &&
         vec_ok(bthd(past), 4) && vec_ok(bthd(v), 4);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dmc_blend_backward_cuda(
    const at::Tensor& g_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& past, const at::Tensor& v,
    const at::Tensor& lse_in, double scale, at::Tensor* past_used) {
  const int64_t B = q.size(0), nh = q.size(1), T = q.size(2), D = q.size(3), nkv = k.size(1);
  DMC_CHECK(dmc_blend_kernels_apply(q, k, past, v) && g_in.sizes() == q.sizes() && v.sizes() == k.sizes() &&
                past.sizes() == q.sizes() && nh % nkv == 0,
            "dmc_blend_backward: q, past, dO [B, nh, T, D] and k, v [B, nkv, T, D] in fp16/bf16 on CUDA expected");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor g = g_in.to(q.scalar_type());
  if (!vec_ok(g.transpose(1, 2), 4)) g = g.contiguous();
  at::Tensor lse = lse_in.to(at::kFloat).reshape({B, nh, T}).contiguous();
  at::Tensor dq = at::empty({B, T, nh, D}, q.options()), dpast = at::empty({B, T, nh, D}, q.options());
  at::Tensor dk = at::empty({B, T, nkv, D}, q.options()), dv = at::empty({B, T, nkv, D}, q.options());
  at::Tensor dlse = at::empty({B, nh, T}, lse.options());
  at::Tensor pu;
  if (past_used) pu = at::empty({B, T, nh, D}, q.options());
  const int64_t rows = B * nkv * T;
  if (rows > 0) {
    dispatch16(q.scalar_type(), "dmc_blend_backward", [&](auto tv) {
      using TT = decltype(tv);
      auto p = [](const at::Tensor& x) { return reinterpret_cast<const TT*>(x.data_ptr()); };
      auto w = [](at::Tensor& x) { return reinterpret_cast<TT*>(x.data_ptr()); };
      auto s = [](const at::Tensor& x) { return Strides4{x.stride(0), x.stride(2), x.stride(1)}; };  // b, t, head
      blend_bwd_kernel<TT><<<warp_blocks(rows), kWarps * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
          p(q), s(q), p(k), s(k), p(past), s(past), p(v), s(v), p(g), s(g), lse.data_ptr<float>(), rows, (int)T,
          (int)nkv, (int)(nh / nkv), (int)D, (float)scale, w(dq), w(dk), w(dpast), w(dv), dlse.data_ptr<float>(),
          past_used ? w(pu) : nullptr);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (past_used) *past_used = pu.transpose(1, 2);
  return {dq.transpose(1, 2), dk.transpose(1, 2), dpast.transpose(1, 2), dv.transpose(1, 2),
          dlse.to(lse_in.scalar_type())};
}

at::Tensor dmc_blend_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& past, const at::Tensor& v,
                          const at::Tensor& lse_in, double scale) {
  const int64_t B = q.size(0), nh = q.size(1), T = q.size(2), D = q.size(3), nkv = k.size(1);
  DMC_CHECK(q.dim() == 4 && k.dim() == 4 && past.sizes() == q.sizes() && v.sizes() == k.sizes() && k.size(0) == B &&
                k.size(2) == T && k.size(3) == D && nkv >= 1 && nh % nkv == 0,
            "dmc_blend: q, past [B, nh, T, D] and k, v [B, nkv, T, D] expected");
  // views [B, n, T, D] are checked in the kernel's [B, T, n, D] stride order
  auto bthd = [](const at::Tensor& x) { return x.transpose(1, 2); };
  // one fp16/bf16 dtype, unit inner stride, 8-byte aligned rows, D % 4 == 0; else the caller's general form
  const auto dt = q.scalar_type();
  if (!q.is_cuda() || (dt != at::kBFloat16 && dt != at::kHalf) || k.scalar_type() != dt || past.scalar_type() != dt ||
      v.scalar_type() != dt || D % 4 != 0 || !vec_ok(bthd(q), 4) || !vec_ok(bthd(k), 4) || !vec_ok(bthd(past), 4) ||
      !vec_ok(bthd(v), 4))
    return at::Tensor();
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor lse = lse_in.to(at::kFloat).reshape({B, nh, T}).contiguous();
  at::Tensor out = at::empty({B, T, nh, D}, q.options());
  const int64_t rows = B * nh * T;
  if (rows == 0) return out.transpose(1, 2);
  dispatch16(q.scalar_type(), "dmc_blend", [&](auto tv) {
    using TT = decltype(tv);
    auto p = [](const at::Tensor& x) { return reinterpret_cast<const TT*>(x.data_ptr()); };
    auto s = [](const at::Tensor& x) { return Strides4{x.stride(0), x.stride(2), x.stride(1)}; };  // b, t, head
    blend_kernel<TT><<<warp_blocks(rows), kWarps * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        p(q), s(q), p(k), s(k), p(past), s(past), p(v), s(v), lse.data_ptr<float>(), rows, (int)T, (int)nh,
        (int)(nh / nkv), (int)D, (float)scale, reinterpret_cast<TT*>(out.data_ptr()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out.transpose(1, 2);  // [B, nh, T, D] view of [B, T, nh, D]
}

}  // namespace dmc
