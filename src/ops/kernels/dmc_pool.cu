// Fused windowed weighted pooling of DMC training (dmc_pool in dmc/dmc.h), forward and backward, fp32, sm_90.
// The ATen reference accumulates W time-shifted copies (about 3 W passes over x per direction); these kernels read
// each input once from DRAM (the W-step window is served by L1/L2) and write each output once.
//
//   x [B, T, H, X], w, b [B, T, H] (b[:, 0] = 0):   C_{t,0} = 1, C_{t,m} = C_{t,m-1} b_{t-m+1}
//   num_t = sum_{m < W} C_{t,m} w_{t-m} x_{t-m},  den_t = sum_{m < W} C_{t,m} w_{t-m},  out_t = num_t / den_t
//
// Backward, with g = dL/d out, gn_t = g_t / den_t, dden_t = -(g_t . out_t) / den_t:
//   A_{t,m} = x_{t-m} . gn_t + dden_t            (dL/d(C_{t,m} w_{t-m}))
//   dx_s = w_s sum_m C_{s+m,m} gn_{s+m};  dw_s = sum_m C_{s+m,m} A_{s+m,m}
//   dC_{t,m} = w_{t-m} A_{t,m}; through C_{t,m} = C_{t,m-1} b_{t-m+1} in reverse: r_m = dC_{t,m} + r_{m+1} b_{t-m},
//   e_{t,m} = r_m C_{t,m-1} is t's share of db_{t-m+1};  db_u = sum_{m >= 1} e_{u+m-1,m}
// Kernel 1 (one warp per (b, t, h)) writes A, C, e [B, T, H, W]; kernel 2 (one warp per (b, s, h)) gathers dx, dw,
// db. Layout of every [B, T, H] tensor: contiguous, so (b, t, h) is the flat index i = (b T + t) H + h.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>
#include <type_traits>

#include "common/error.h"
#include "common/util.h"
#include "ops/dmc.h"

namespace dmc {
namespace {

constexpr int kMaxW = 64;
constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Every kernel is instantiated for a window bound WM (16, 32, 64 >= W) and fully unrolls its loops over the window:
// the per-row coefficient arrays then live in registers (with runtime-bounded loops they went to local memory), and
// the W row loads of a lane are independent instructions the compiler issues together. Rows of x, g, out are read
// as float4 where X % 4 == 0 (V = 4), else one float at a time (V = 1).
template <int V>
struct Row;
template <>
struct Row<4> {
  __device__ static float4 ld(const float* p) { return *reinterpret_cast<const float4*>(p); }
  __device__ static void st(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
  __device__ static float dot(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }
  __device__ static void fma(float4& acc, float c, float4 v) {
    acc.x += c * v.x;
    acc.y += c * v.y;
    acc.z += c * v.z;
    acc.w += c * v.w;
  }
  __device__ static float4 zero() { return make_float4(0.f, 0.f, 0.f, 0.f); }
  __device__ static float4 scale(float4 v, float c) { return make_float4(v.x * c, v.y * c, v.z * c, v.w * c); }
  using T = float4;
};
template <>
struct Row<1> {
  __device__ static float ld(const float* p) { return *p; }
  __device__ static void st(float* p, float v) { *p = v; }
  __device__ static float dot(float a, float b) { return a * b; }
  __device__ static void fma(float& acc, float c, float v) { acc += c * v; }
  __device__ static float zero() { return 0.f; }
  __device__ static float scale(float v, float c) { return v * c; }
  using T = float;
};

// One time step of each pass, for a warp. The kernels below differ only in where the window's rows come from:
// `row(m)` gives the row of x (forward, backward 1: time t - m) or of g (backward 2: time s + m), from global memory
// (row-per-warp kernels) or from the block's shared-memory tile (tiled kernels). i is the flat (b, t, h) index.
template <int WM, int V, typename RowAt>
__device__ __forceinline__ void pool_fwd_step(int64_t i, int t, const float* __restrict__ w,
                                              const float* __restrict__ b, int H, int X, int W, RowAt row,
                                              float* __restrict__ out, float* __restrict__ den_out) {
  using R = Row<V>;
  const int lane = threadIdx.x % 32;
  const int Wt = min(W, t + 1);
  float C = 1.f, den = 0.f;
  float coef[WM];
#pragma unroll
  for (int m = 0; m < WM; ++m) {
    coef[m] = 0.f;
    if (m < Wt) {
      if (m > 0) C *= b[i - (int64_t)(m - 1) * H];  // b_{t-m+1}
      coef[m] = C * w[i - (int64_t)m * H];
      den += coef[m];
    }
  }
  const float inv = 1.f / den;
  for (int c = lane * V; c < X; c += 32 * V) {
    typename R::T num = R::zero();
#pragma unroll
    for (int m = 0; m < WM; ++m)
      if (m < Wt) R::fma(num, coef[m], R::ld(row(m) + c));
    R::st(out + i * X + c, R::scale(num, inv));
  }
  if (lane == 0) den_out[i] = den;
}

template <int WM, int V, typename RowAt>
__device__ __forceinline__ void pool_bwd1_step(int64_t i, int t, const float* __restrict__ g,
                                               const float* __restrict__ w, const float* __restrict__ b,
                                               const float* __restrict__ out, const float* __restrict__ den, int H,
                                               int X, int W, RowAt row, float* __restrict__ A, float* __restrict__ Cs,
                                               float* __restrict__ E) {
  using R = Row<V>;
  const int lane = threadIdx.x % 32;
  const int Wt = min(W, t + 1);
  const float inv = 1.f / den[i];
  // per lane: its share of g_t . out_t and of x_{t-m} . g_t for every m, then one warp sum each
  float dd = 0.f, part[WM];
#pragma unroll
  for (int m = 0; m < WM; ++m) part[m] = 0.f;
  for (int c = lane * V; c < X; c += 32 * V) {
    const typename R::T gv = R::ld(g + i * X + c);
    dd += R::dot(gv, R::ld(out + i * X + c));
#pragma unroll
    for (int m = 0; m < WM; ++m)
      if (m < Wt) part[m] += R::dot(gv, R::ld(row(m) + c));
  }
  dd = -warp_sum(dd) * inv;
  float a[WM], C[WM];
  float Cm = 1.f;
#pragma unroll
  for (int m = 0; m < WM; ++m) {
    a[m] = C[m] = 0.f;
    if (m < Wt) {
      if (m > 0) Cm *= b[i - (int64_t)(m - 1) * H];
      C[m] = Cm;
      a[m] = warp_sum(part[m]) * inv + dd;
    }
  }
  if (lane == 0) {
    float r = 0.f;
#pragma unroll
    for (int m = WM - 1; m >= 1; --m) {
      if (m < Wt) {
        const float dC = w[i - (int64_t)m * H] * a[m];
        r = dC + (m + 1 < Wt ? r * b[i - (int64_t)m * H] : 0.f);  // r_{m+1} b_{t-m}
        E[i * W + m] = r * C[m - 1];
      }
    }
#pragma unroll
    for (int m = 0; m < WM; ++m) {
      if (m < W) {
        A[i * W + m] = m < Wt ? a[m] : 0.f;
        Cs[i * W + m] = m < Wt ? C[m] : 0.f;
        if (m == 0 || m >= Wt) E[i * W + m] = 0.f;
      }
    }
  }
}

template <int WM, int V, typename RowAt>
__device__ __forceinline__ void pool_bwd2_step(int64_t i, int s, int T, const float* __restrict__ w,
                                               const float* __restrict__ den, const float* __restrict__ A,
                                               const float* __restrict__ Cs, const float* __restrict__ E, int H, int X,
                                               int W, RowAt row, float* __restrict__ dx, float* __restrict__ dw,
                                               float* __restrict__ db) {
  using R = Row<V>;
  const int lane = threadIdx.x % 32;
  const int Ws = min(W, T - s);  // t = s + m < T
  float coef[WM];
  float dws = 0.f, dbs = 0.f;
#pragma unroll
  for (int m = 0; m < WM; ++m) {
    coef[m] = 0.f;
    if (m < Ws) {
      const int64_t it = i + (int64_t)m * H;  // (b, s + m, h)
      coef[m] = Cs[it * W + m] / den[it];
      dws += Cs[it * W + m] * A[it * W + m];
    }
  }
  // db_s = sum_{m >= 1} e_{s+m-1, m}
#pragma unroll
  for (int m = 1; m < WM; ++m)
    if (m < W && s + m - 1 < T) dbs += E[(i + (int64_t)(m - 1) * H) * W + m];
  const float ws = w[i];
  for (int c = lane * V; c < X; c += 32 * V) {
    typename R::T acc = R::zero();
#pragma unroll
    for (int m = 0; m < WM; ++m)
      if (m < Ws) R::fma(acc, coef[m], R::ld(row(m) + c));
    R::st(dx + i * X + c, R::scale(acc, ws));
  }
  if (lane == 0) {
    dw[i] = dws;
    db[i] = dbs;
  }
}

// ---- row-per-warp forms: one warp per (b, t, h), the window's rows read from global memory (served by L1/L2)
template <int WM, int V>
__global__ void pool_fwd_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                                int64_t BTH, int T, int H, int X, int W, float* __restrict__ out,
                                float* __restrict__ den_out) {
  const int64_t i = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;  // (b, t, h)
  if (i >= BTH) return;
  pool_fwd_step<WM, V>(i, (int)((i / H) % T), w, b, H, X, W,
                       [&](int m) { return x + (i - (int64_t)m * H) * X; }, out, den_out);
}

template <int WM, int V>
__global__ void pool_bwd1_kernel(const float* __restrict__ g, const float* __restrict__ x, const float* __restrict__ w,
                                 const float* __restrict__ b, const float* __restrict__ out,
                                 const float* __restrict__ den, int64_t BTH, int T, int H, int X, int W,
                                 float* __restrict__ A, float* __restrict__ Cs, float* __restrict__ E) {
  const int64_t i = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (i >= BTH) return;
  pool_bwd1_step<WM, V>(i, (int)((i / H) % T), g, w, b, out, den, H, X, W,
                        [&](int m) { return x + (i - (int64_t)m * H) * X; }, A, Cs, E);
}

template <int WM, int V>
__global__ void pool_bwd2_kernel(const float* __restrict__ g, const float* __restrict__ w,
                                 const float* __restrict__ den, const float* __restrict__ A,
                                 const float* __restrict__ Cs, const float* __restrict__ E, int64_t BTH, int T, int H,
                                 int X, int W, float* __restrict__ dx, float* __restrict__ dw, float* __restrict__ db) {
  const int64_t i = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;  // (b, s, h)
  if (i >= BTH) return;
  pool_bwd2_step<WM, V>(i, (int)((i / H) % T), T, w, den, A, Cs, E, H, X, W,
                        [&](int m) { return g + (i + (int64_t)m * H) * X; }, dx, dw, db);
}

// ---- tiled forms: one block per (b, h, tile of kTile time steps), the tile's rows plus the window's halo staged in
// shared memory once (the forms above read each row up to W times through L1/L2: ~0.6 TB/s on the H200, SmolLM2's
// shape). Each warp takes the tile's time steps in turn with the same step functions. smem: (kTile + WM - 1) rows of
// X floats; rows outside [0, T) read as zeros (never used: the window stops at t + 1 / T - s).
constexpr int kTile = 32;

// The block's (b, h) and first time step; rows first_t .. first_t + kTile + WM - 2 of src (b, ., h) into sm.
struct Tile {
  int64_t bT;  // b * T
  int h, t0;
};
template <int WM>
__device__ __forceinline__ Tile stage_tile(const float* __restrict__ src, int T, int H, int X, int first_offset,
                                           float* sm) {
  const int tiles = (T + kTile - 1) / kTile;
  const int64_t bh = blockIdx.x / tiles;
  const Tile tl{(bh / H) * T, (int)(bh % H), (int)(blockIdx.x % tiles) * kTile};
  const int first_t = tl.t0 + first_offset, n = kTile + WM - 1;
  for (int idx = threadIdx.x; idx < n * X; idx += blockDim.x) {
    const int j = idx / X, c = idx - j * X, t = first_t + j;
    sm[idx] = (t >= 0 && t < T) ? src[((tl.bT + t) * H + tl.h) * X + c] : 0.f;
  }
  __syncthreads();
  return tl;
}

template <int WM, int V>
__global__ void pool_fwd_tiled_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, int T, int H, int X, int W, float* __restrict__ out,
                                      float* __restrict__ den_out) {
  extern __shared__ float4 smem_f4[];
  float* sm = reinterpret_cast<float*>(smem_f4);
  const Tile tl = stage_tile<WM>(x, T, H, X, -(WM - 1), sm);  // sm row j holds time t0 - (WM - 1) + j
  for (int tt = threadIdx.x / 32; tt < kTile && tl.t0 + tt < T; tt += blockDim.x / 32)
    pool_fwd_step<WM, V>((tl.bT + tl.t0 + tt) * H + tl.h, tl.t0 + tt, w, b, H, X, W,
                         [&](int m) { return sm + (tt + WM - 1 - m) * X; }, out, den_out);
}

template <int WM, int V>
__global__ void pool_bwd1_tiled_kernel(const float* __restrict__ g, const float* __restrict__ x,
                                       const float* __restrict__ w, const float* __restrict__ b,
                                       const float* __restrict__ out, const float* __restrict__ den, int T, int H,
                                       int X, int W, float* __restrict__ A, float* __restrict__ Cs,
                                       float* __restrict__ E) {
  extern __shared__ float4 smem_f4[];
  float* sm = reinterpret_cast<float*>(smem_f4);
  const Tile tl = stage_tile<WM>(x, T, H, X, -(WM - 1), sm);
  for (int tt = threadIdx.x / 32; tt < kTile && tl.t0 + tt < T; tt += blockDim.x / 32)
    pool_bwd1_step<WM, V>((tl.bT + tl.t0 + tt) * H + tl.h, tl.t0 + tt, g, w, b, out, den, H, X, W,
                          [&](int m) { return sm + (tt + WM - 1 - m) * X; }, A, Cs, E);
}

template <int WM, int V>
__global__ void pool_bwd2_tiled_kernel(const float* __restrict__ g, const float* __restrict__ w,
                                       const float* __restrict__ den, const float* __restrict__ A,
                                       const float* __restrict__ Cs, const float* __restrict__ E, int T, int H, int X,
                                       int W, float* __restrict__ dx, float* __restrict__ dw, float* __restrict__ db) {
  extern __shared__ float4 smem_f4[];
  float* sm = reinterpret_cast<float*>(smem_f4);
  const Tile tl = stage_tile<WM>(g, T, H, X, 0, sm);  // sm row j holds time t0 + j (the window looks forward)
  for (int ss = threadIdx.x / 32; ss < kTile && tl.t0 + ss < T; ss += blockDim.x / 32)
    pool_bwd2_step<WM, V>((tl.bT + tl.t0 + ss) * H + tl.h, tl.t0 + ss, T, w, den, A, Cs, E, H, X, W,
                          [&](int m) { return sm + (ss + m) * X; }, dx, dw, db);
}

// The tiled forms run unless DMC_POOL_TILED=0 (the A/B against the row-per-warp forms) or their shared memory would
// exceed what the device gives a block. Returns the bytes of shared memory to launch with (0 = not tiled).
size_t tiled_smem(int WM, int64_t X) {
  if (env_off("DMC_POOL_TILED")) return 0;
  const size_t bytes = (size_t)(kTile + WM - 1) * (size_t)X * sizeof(float);
  int dev = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes <= (size_t)optin ? bytes : 0;
}

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

// calls f(std::integral_constant<int, WM>, std::integral_constant<int, V>) for the instance that serves (W, X)
template <typename F>
void dispatch_pool(int64_t W, int64_t X, F&& f) {
  auto v = [&](auto wm) {
    if (X % 4 == 0)
      f(wm, std::integral_constant<int, 4>{});
    else
      f(wm, std::integral_constant<int, 1>{});
  };
  if (W <= 16)
    v(std::integral_constant<int, 16>{});
  else if (W <= 32)
    v(std::integral_constant<int, 32>{});
  else
    v(std::integral_constant<int, kMaxW>{});
}

void check_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t W) {
  DMC_CHECK(x.is_cuda() && x.scalar_type() == at::kFloat && x.dim() == 4,
            "dmc_pool kernel: x must be fp32 CUDA [B, T, H, X]");
  DMC_CHECK(w.sizes() == x.sizes().slice(0, 3) && b.sizes() == w.sizes(), "dmc_pool kernel: w, b must be [B, T, H]");
  DMC_CHECK(W >= 1 && W <= kMaxW, "dmc_pool kernel: window ", W, " outside [1, ", kMaxW, "]");
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> dmc_pool_forward_cuda(const at::Tensor& x_in, const at::Tensor& w_in,
                                                         const at::Tensor& b_in, int64_t W) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous(), w = w_in.contiguous().to(at::kFloat), b = b_in.contiguous().to(at::kFloat);
  check_inputs(x, w, b, W);
  const int64_t BTH = w.numel();
  const int T = (int)x.size(1), H = (int)x.size(2), X = (int)x.size(3);
  at::Tensor out = at::empty_like(x), den = at::empty_like(w);
  const int64_t blocks = (BTH + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t tiled_blocks = (BTH / T) * ((T + kTile - 1) / kTile);  // (b, h) pairs x tiles
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_pool(W, X, [&](auto wm, auto vec) {
    constexpr int WM = decltype(wm)::value, V = decltype(vec)::value;
    if (const size_t smem = tiled_smem(WM, X)) {
      allow_smem(pool_fwd_tiled_kernel<WM, V>, smem);
      pool_fwd_tiled_kernel<WM, V><<<(unsigned)tiled_blocks, kWarpsPerBlock * 32, smem, stream>>>(
          x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), T, H, X, (int)W, out.data_ptr<float>(),
          den.data_ptr<float>());
      return;
    }
    pool_fwd_kernel<WM, V><<<(unsigned)blocks, kWarpsPerBlock * 32, 0, stream>>>(
        x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), BTH, T, H, X, (int)W, out.data_ptr<float>(),
        den.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, den};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dmc_pool_backward_cuda(const at::Tensor& g_in, const at::Tensor& x_in,
                                                                      const at::Tensor& w_in, const at::Tensor& b_in,
                                                                      const at::Tensor& out, const at::Tensor& den,
                                                                      int64_t W) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor g = g_in.contiguous().to(at::kFloat), x = x_in.contiguous(), w = w_in.contiguous(), b = b_in.contiguous();
  check_inputs(x, w, b, W);
  const int64_t BTH = w.numel();
  const int T = (int)x.size(1), H = (int)x.size(2), X = (int)x.size(3);
  auto f = w.options();
  at::Tensor A = at::empty({BTH, W}, f), Cs = at::empty({BTH, W}, f), E = at::empty({BTH, W}, f);
  at::Tensor dx = at::empty_like(x), dw = at::empty_like(w), db = at::empty_like(b);
  const int64_t blocks = (BTH + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t tiled_blocks = (BTH / T) * ((T + kTile - 1) / kTile);
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_pool(W, X, [&](auto wm, auto vec) {
    constexpr int WM = decltype(wm)::value, V = decltype(vec)::value;
    if (const size_t smem = tiled_smem(WM, X)) {
      allow_smem(pool_bwd1_tiled_kernel<WM, V>, smem);
      allow_smem(pool_bwd2_tiled_kernel<WM, V>, smem);
      pool_bwd1_tiled_kernel<WM, V><<<(unsigned)tiled_blocks, kWarpsPerBlock * 32, smem, stream>>>(
          g.data_ptr<float>(), x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(),
          den.data_ptr<float>(), T, H, X, (int)W, A.data_ptr<float>(), Cs.data_ptr<float>(), E.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      pool_bwd2_tiled_kernel<WM, V><<<(unsigned)tiled_blocks, kWarpsPerBlock * 32, smem, stream>>>(
          g.data_ptr<float>(), w.data_ptr<float>(), den.data_ptr<float>(), A.data_ptr<float>(), Cs.data_ptr<float>(),
          E.data_ptr<float>(), T, H, X, (int)W, dx.data_ptr<float>(), dw.data_ptr<float>(), db.data_ptr<float>());
      return;
    }
    pool_bwd1_kernel<WM, V><<<(unsigned)blocks, kWarpsPerBlock * 32, 0, stream>>>(
        g.data_ptr<float>(), x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(),
        den.data_ptr<float>(), BTH, T, H, X, (int)W, A.data_ptr<float>(), Cs.data_ptr<float>(), E.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pool_bwd2_kernel<WM, V><<<(unsigned)blocks, kWarpsPerBlock * 32, 0, stream>>>(
        g.data_ptr<float>(), w.data_ptr<float>(), den.data_ptr<float>(), A.data_ptr<float>(), Cs.data_ptr<float>(),
        E.data_ptr<float>(), BTH, T, H, X, (int)W, dx.data_ptr<float>(), dw.data_ptr<float>(), db.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dx, dw, db};
}

}  // namespace dmc
