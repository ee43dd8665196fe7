// CUDA kernels of the decode step (sm_90), the fast twins of the ATen references in inference/decode_ops.cpp:
//
//   decode_update_kernel   one warp per (sequence, KV head), D/64 dim pairs a lane: DMC decision and importance (with
//                          the same bf16/fp16 roundings ATen applies), the fp32 windowed sums and ring, the cache
//                          write (merge overwrites the last slot, append pops a page from the device free stack
//                          with an atomic when the row crosses a page), RoPE of the slot with dim D-1 dropped, and
//                          the rotated queries. Vanilla: RoPE + append.
//   paged_attn_split_kernel one block per (split, KV head, sequence), 4 warps; each warp takes one slot at a time
//                          (lane l holds dims [l V, l V + V) of q, k and v, V = D / 32), scores the group's G query
//                          heads with a warp reduction and keeps an online softmax; the warps are merged in shared
//                          memory; the block writes an unnormalised partial (o, max, sum) for its split.
//   paged_attn_combine_kernel  log-sum-exp merge of the splits: one block per (query head, sequence).
// A row whose sequence is -1 (padding of a CUDA-graph batch bucket) is skipped by the update and attends to nothing.
//
// Layouts: see decode_ops.h and paged_cache.h. k_pages, v_pages [n_pages, P, D]; table [R, max_pages] int32;
// lengths [R] int32; partials o_part [n, nh, n_split, D] fp32, ml_part [n, nh, n_split, 2] fp32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <type_traits>

#include "common/error.h"
#include "ops/decode_ops.h"
#include "ops/forced_decisions.h"

namespace dmc {
namespace {

template <typename T>
__device__ __forceinline__ float rnd(float x) {  // store as T, read back: the rounding an ATen op in T applies
  return static_cast<float>(static_cast<T>(x));
}
__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }

// RoPE of the pair (d0, d0 + D/2) = (x0, x1): each product and the sum rounded to T, as apply_rope in T
template <typename T>
__device__ __forceinline__ void rope_pair(float x0, float x1, int d0, int d1, const float* cs, const float* sn,
                                          float& o0, float& o1) {
  o0 = rnd<T>(rnd<T>(x0 * rnd<T>(cs[d0])) + rnd<T>(-x1 * rnd<T>(sn[d0])));
  o1 = rnd<T>(rnd<T>(x1 * rnd<T>(cs[d1])) + rnd<T>(x0 * rnd<T>(sn[d1])));
}

// One warp per (token i, KV head h), PPL = D / 64 dimension pairs a lane: lane l owns dims d0 = l + 32 c and
// d0 + D/2 (c < PPL) of k, v, the sums and the queries, so RoPE needs no exchange between lanes. Every lane loads
// its inputs and state and works out the decision itself (the same arithmetic, the same result). The page
// accounting needs no barrier: every lane reads the row's length and, when the slot's page exists, its table
// entry; only a new page (the row crosses one) is popped by lane 0 and handed round with a shuffle. Lane 0 writes
// the row's length, group length and ring weight after a __syncwarp (every lane has read the old values by then).
// The entry leaving the window is read only when the group outgrows it (g > W).
constexpr int kUpdWarps = 4;  // (token, KV head) warps per block

// The kernel's arguments: the step's inputs, the DMC state, the cache's pages and its pool (page_pool.h).
template <typename T>
struct DecodeUpdateArgs {
  const T* qkv;  // [n, qkv_stride] rows: q | k | v
  int64_t qkv_stride;
  const int64_t* seq;      // [n] cache sequence (-1: a padding row)
  const int64_t* pos;      // [n]
  const bool* forced;      // [n] an append is forced
  const float *cos, *sin;  // [max_pos, D]
  int n, nh, nkv, layer;
  int dmc;  // 0: vanilla (RoPE + append)
  float init_val, eps;
  int W;                 // merge window
  int force_cr;          // > 0: the benchmark's forced decisions (DecodeUpdateParams::force_cr)
  float* acc;            // DmcState [R, 2D + 1]
  T* ring_kv;            // [R, W, 2D]
  float* ring_w;         // [R, W]
  int* group;            // [R]
  T *k_pages, *v_pages;  // [n_pages + 1, P, D]
  PagePool pool;
  T* q_out;  // [n, nh, D]
};

template <typename T, int PPL>
__global__ void __launch_bounds__(kUpdWarps * 32) decode_update_kernel(const DecodeUpdateArgs<T> a) {
  constexpr int D = 64 * PPL, half = D / 2, X = 2 * D + 1;
  const int nh = a.nh, nkv = a.nkv, W = a.W, P = a.pool.page_size, dmc = a.dmc;
  const float init_val = a.init_val;
  const int wid = blockIdx.x * kUpdWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (wid >= a.n * nkv) return;  // whole warps
  const int i = wid / nkv, h = wid % nkv, G = nh / nkv;
  if (a.seq[i] < 0) return;  // a padding row of a graph bucket: no cache or state to touch
  const int64_t t = a.pos[i];
  const int64_t r = a.pool.row(a.layer, a.seq[i], h);
  const T* q = a.qkv + (int64_t)i * a.qkv_stride;
  const T* k = q + (int64_t)nh * D + (int64_t)h * D;
  const T* v = q + (int64_t)(nh + nkv) * D + (int64_t)h * D;
  const float* cs = a.cos + t * D;
  const float* sn = a.sin + t * D;

  // independent loads first, so their latencies overlap
  T kt0[PPL], kt1[PPL], vt0[PPL], vt1[PPL];
#pragma unroll
  for (int c = 0; c < PPL; ++c) {
    const int d0 = lane + 32 * c;
    kt0[c] = k[d0], kt1[c] = k[d0 + half], vt0[c] = v[d0], vt1[c] = v[d0 + half];
  }
  const int len = a.pool.lengths[r];
  float alpha = 0.f, omega = 0.f, over = 0.f;
  int gn = 0;
  float* ap = nullptr;
  T* rkv = nullptr;
  float* rw = nullptr;
  float a_k0[PPL], a_k1[PPL], a_v0[PPL], a_v1[PPL], a_w = 0.f;
  if (dmc) {
    ap = a.acc + r * X;
    rkv = a.ring_kv + (r * W + t % W) * (2 * D);
    rw = a.ring_w + r * W + t % W;
#pragma unroll
    for (int c = 0; c < PPL; ++c) {
      const int d0 = lane + 32 * c;
      a_k0[c] = ap[d0], a_k1[c] = ap[d0 + half], a_v0[c] = ap[D + d0], a_v1[c] = ap[D + d0 + half];
    }
    a_w = ap[2 * D];
    const int g_old = a.group[r];
    if (a.force_cr > 0) {
      alpha = dmc_forced_merge(t, h, a.force_cr) ? 1.f : 0.f;
    } else {
      const float logit = rnd<T>(static_cast<float>(k[D - 1]) - init_val);
      alpha = rnd<T>(sigmoidf(logit)) > 0.5f ? 1.f : 0.f;
    }
    if (a.forced[i]) alpha = 0.f;
    float s = 0.f;
    for (int g = 0; g < G; ++g) s += static_cast<float>(q[(int64_t)(h * G + g) * D + D - 1]);
    const float z = rnd<T>(rnd<T>(s / G) + init_val);
    omega = rnd<T>(rnd<T>(sigmoidf(z)) + a.eps);
    gn = alpha > 0.f ? g_old + 1 : 1;
    over = gn > W ? 1.f : 0.f;
  }
  // the slot: a merge rewrites the last one, an append opens one (a new page when the row crosses one)
  const bool merge = alpha > 0.f && len > 0;
  const int slot = merge ? len - 1 : len;
  int64_t flat = -1;
  if (!merge && len % P == 0) {
    int page = lane == 0 ? a.pool.pop(r, len / P) : -1;
    page = __shfl_sync(0xffffffffu, page, 0);
    if (page >= 0) flat = (int64_t)page * P + slot % P;
  } else {
    flat = a.pool.slot(r, slot);
  }
  float kk0[PPL], kk1[PPL];  // the keys before RoPE
  if (dmc) {
    float w_old = 0.f;
    float o_k0[PPL], o_k1[PPL], o_v0[PPL], o_v1[PPL];
#pragma unroll
    for (int c = 0; c < PPL; ++c) o_k0[c] = o_k1[c] = o_v0[c] = o_v1[c] = 0.f;
    if (over > 0.f) {  // the entry written W tokens ago leaves the window
      w_old = *rw;
#pragma unroll
      for (int c = 0; c < PPL; ++c) {
        const int d0 = lane + 32 * c;
        o_k0[c] = static_cast<float>(rkv[d0]), o_k1[c] = static_cast<float>(rkv[d0 + half]);
        o_v0[c] = static_cast<float>(rkv[D + d0]), o_v1[c] = static_cast<float>(rkv[D + d0 + half]);
      }
    }
    // new sums: alpha * old - over * (the entry leaving the window) + omega * (k, v, 1)
    auto upd = [&](float a_old, float x, float leaving) {
      return __fadd_rn(__fsub_rn(__fmul_rn(alpha, a_old), __fmul_rn(over, leaving)), __fmul_rn(omega, x));
    };
    const float wsum = upd(a_w, 1.f, w_old);
    __syncwarp();  // every lane has read the length, the group, the sums' weight and the old ring entry
#pragma unroll
    for (int c = 0; c < PPL; ++c) {
      const int d0 = lane + 32 * c, d1 = d0 + half;
      a_k0[c] = upd(a_k0[c], static_cast<float>(kt0[c]), __fmul_rn(w_old, o_k0[c]));
      a_k1[c] = upd(a_k1[c], static_cast<float>(kt1[c]), __fmul_rn(w_old, o_k1[c]));
      a_v0[c] = upd(a_v0[c], static_cast<float>(vt0[c]), __fmul_rn(w_old, o_v0[c]));
      a_v1[c] = upd(a_v1[c], static_cast<float>(vt1[c]), __fmul_rn(w_old, o_v1[c]));
      ap[d0] = a_k0[c], ap[d1] = a_k1[c], ap[D + d0] = a_v0[c], ap[D + d1] = a_v1[c];
      rkv[d0] = kt0[c], rkv[d1] = kt1[c], rkv[D + d0] = vt0[c], rkv[D + d1] = vt1[c];
      kk0[c] = rnd<T>(a_k0[c] / wsum);
      kk1[c] = d1 == D - 1 ? 0.f : rnd<T>(a_k1[c] / wsum);
      if (flat >= 0) {
        a.v_pages[flat * D + d0] = static_cast<T>(a_v0[c] / wsum);
        a.v_pages[flat * D + d1] = static_cast<T>(a_v1[c] / wsum);
      }
    }
    if (lane == 0) {
      if (flat >= 0) a.pool.lengths[r] = slot + 1;
      a.group[r] = gn;
      ap[2 * D] = wsum;
      *rw = omega;
    }
  } else {
    __syncwarp();  // every lane has read the length
    if (lane == 0 && flat >= 0) a.pool.lengths[r] = slot + 1;
#pragma unroll
    for (int c = 0; c < PPL; ++c) {
      const int d0 = lane + 32 * c;
      kk0[c] = static_cast<float>(kt0[c]);
      kk1[c] = static_cast<float>(kt1[c]);
      if (flat >= 0) {
        a.v_pages[flat * D + d0] = vt0[c];
        a.v_pages[flat * D + d0 + half] = vt1[c];
      }
    }
  }
  float r0, r1;
#pragma unroll
  for (int c = 0; c < PPL; ++c) {
    const int d0 = lane + 32 * c, d1 = d0 + half;
    if (flat >= 0) {
      rope_pair<T>(kk0[c], kk1[c], d0, d1, cs, sn, r0, r1);
      a.k_pages[flat * D + d0] = static_cast<T>(r0);
      a.k_pages[flat * D + d1] = static_cast<T>(dmc && d1 == D - 1 ? 0.f : r1);
    }
  }
  // the group's queries (DMC: dim D-1 zeroed before and after RoPE)
  for (int g = 0; g < G; ++g) {
    const int64_t qo = (int64_t)(h * G + g) * D;
#pragma unroll
    for (int c = 0; c < PPL; ++c) {
      const int d0 = lane + 32 * c, d1 = d0 + half;
      const float x0 = static_cast<float>(q[qo + d0]);
      const float x1 = dmc && d1 == D - 1 ? 0.f : static_cast<float>(q[qo + d1]);
      rope_pair<T>(x0, x1, d0, d1, cs, sn, r0, r1);
      a.q_out[(int64_t)i * nh * D + qo + d0] = static_cast<T>(r0);
      a.q_out[(int64_t)i * nh * D + qo + d1] = static_cast<T>(dmc && d1 == D - 1 ? 0.f : r1);
    }
  }
}

template <typename T, int V>
struct alignas(sizeof(T) * V) VecT {
  T v[V];
};

constexpr int kWarps = 4;

// The split kernel keeps plain __restrict__ parameters: the same kernel taking a params struct (pointers as struct
// fields, where __restrict__ does not reach the compiler) measured 13-18% slower on one H200 (7B shape, batch 58 x
// 3840 slots: 33.2 vs 27.9 ms of attention a step), with or without explicit __ldg loads.

template <typename T, int D, int GM>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attn_split_kernel(const T* __restrict__ q, const T* __restrict__ k_pages, const T* __restrict__ v_pages,
                            const int* __restrict__ table, int max_pages, const int* __restrict__ lengths,
                            const int64_t* __restrict__ seq, int layer, int max_seqs, int nh, int nkv, int P, int chunk,
                            float scale, int n_split, float* __restrict__ o_part, float* __restrict__ ml_part) {
  // lanes per slot: each lane loads VE contiguous elements (16 bytes where D allows); a warp covers KPW slots at once
  constexpr int VE = (16 / (int)sizeof(T)) > (D / 32) ? (16 / (int)sizeof(T)) : (D / 32);
  constexpr int KL = D / VE;
  constexpr int KPW = 32 / KL;
  constexpr int U = 4;  // slot groups per round: U * KPW slots per warp with all loads issued before the first use
  constexpr int NP = kWarps * KPW;  // partial softmax states merged at the end
  const int split = blockIdx.x, h = blockIdx.y, i = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / KL, sl = lane % KL;
  const int G = nh / nkv;
  const int64_t r = ((int64_t)layer * max_seqs + seq[i]) * nkv + h;
  const int len = seq[i] < 0 ? 0 : lengths[r];  // a padding row attends to nothing (its output is 0)
  const int start = split * chunk, end = min(len, start + chunk);

  float qr[GM][VE], o[GM][VE], m[GM], l[GM];
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < VE; ++e) {
      o[g][e] = 0.f;
      qr[g][e] = g < G ? static_cast<float>(q[((int64_t)i * nh + h * G + g) * D + sl * VE + e]) * scale : 0.f;
    }
  }
  const int* trow = table + r * max_pages;
  for (int j0 = start + warp * KPW * U; j0 < end; j0 += kWarps * KPW * U) {
    VecT<T, VE> kv[U], vv[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = min(j0 + u * KPW + sub, end - 1);
      const int64_t base = ((int64_t)trow[j / P] * P + j % P) * D + sl * VE;
      kv[u] = *reinterpret_cast<const VecT<T, VE>*>(k_pages + base);
      vv[u] = *reinterpret_cast<const VecT<T, VE>*>(v_pages + base);
    }
    // the online softmax once per round of U slots, not once per slot: one rescale of the running output and U + 1
    // exponentials per head instead of U rescales and 2U exponentials (the G heads of a group share every slot, so
    // at head_dim 64 with groups of 3 this arithmetic, not the loads, set the pace)
#pragma unroll
    for (int g = 0; g < GM; ++g) {
      if (g >= G) break;
      float s[U];
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < VE; ++e) d += qr[g][e] * static_cast<float>(kv[u].v[e]);
#pragma unroll
        for (int off = KL / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
        s[u] = j0 + u * KPW + sub < end ? d : -INFINITY;
        mx = fmaxf(mx, s[u]);
      }
      const float base = mx == -INFINITY ? 0.f : mx;  // nothing seen yet: every weight below is exp(-inf) = 0
      const float corr = __expf(m[g] - base);
      float p[U], psum = 0.f;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        p[u] = __expf(s[u] - base);
        psum += p[u];
      }
      l[g] = l[g] * corr + psum;
#pragma unroll
      for (int e = 0; e < VE; ++e) {
        float acc = o[g][e] * corr;
#pragma unroll
        for (int u = 0; u < U; ++u) acc += p[u] * static_cast<float>(vv[u].v[e]);
        o[g][e] = acc;
      }
      m[g] = mx;
    }
  }
  // merge the NP partial states (warps x slot lanes groups)
  __shared__ float s_m[NP][GM], s_l[NP][GM];
  __shared__ float s_o[NP][GM][D];
  const int pid = warp * KPW + sub;
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    if (sl == 0) {
      s_m[pid][g] = m[g];
      s_l[pid][g] = l[g];
    }
#pragma unroll
    for (int e = 0; e < VE; ++e) s_o[pid][g][sl * VE + e] = o[g][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * D; idx += kWarps * 32) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
    for (int w = 0; w < NP; ++w) M = fmaxf(M, s_m[w][g]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
      for (int w = 0; w < NP; ++w) {
        if (s_m[w][g] == -INFINITY) continue;
        const float f = __expf(s_m[w][g] - M);
        L += s_l[w][g] * f;
        O += s_o[w][g][d] * f;
      }
    }
    const int64_t pidx = ((int64_t)i * nh + h * G + g) * n_split + split;
    o_part[pidx * D + d] = O;
    if (d == 0) {
      ml_part[pidx * 2] = M;
      ml_part[pidx * 2 + 1] = L;
    }
  }
}

template <typename T>
__global__ void paged_attn_combine_kernel(const float* __restrict__ o_part, const float* __restrict__ ml_part,
                                          int n_split, int D, int nh, T* __restrict__ out) {
  const int qh = blockIdx.x, i = blockIdx.y;
  const int64_t base = (int64_t)i * nh + qh;
  float M = -INFINITY;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, ml_part[(base * n_split + s) * 2]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float L = 0.f, O = 0.f;
    for (int s = 0; s < n_split; ++s) {
      const float ms = ml_part[(base * n_split + s) * 2];
      if (ms == -INFINITY) continue;
      const float f = __expf(ms - M);
      L += ml_part[(base * n_split + s) * 2 + 1] * f;
      O += o_part[(base * n_split + s) * D + d] * f;
    }
    out[base * D + d] = static_cast<T>(L > 0.f ? O / L : 0.f);  // L = 0: a padding row, no slots
  }
}

template <typename T, int D>
void launch_attn(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq, int chunk,
                 int n_split, double scale, at::Tensor& o_part, at::Tensor& ml_part, int G, cudaStream_t stream) {
  const auto& c = cache.options();
  const int n = (int)q.size(0), nh = (int)q.size(1), nkv = (int)c.n_kv_heads;
  dim3 grid(n_split, nkv, n);
#define DMC_ATTN_LAUNCH(GM)                                                                                   \
  paged_attn_split_kernel<T, D, GM><<<grid, kWarps * 32, 0, stream>>>(                                        \
      q.data_ptr<T>(), cache.k_pages.data_ptr<T>(), cache.v_pages.data_ptr<T>(), cache.table.data_ptr<int>(), \
      (int)cache.max_pages_per_row(), cache.lengths.data_ptr<int>(), seq.data_ptr<int64_t>(), (int)layer,     \
      (int)c.max_seqs, nh, nkv, (int)c.page_size, chunk, (float)scale, n_split, o_part.data_ptr<float>(),     \
      ml_part.data_ptr<float>())
  if (G == 1)
    DMC_ATTN_LAUNCH(1);
  else if (G == 2)
    DMC_ATTN_LAUNCH(2);
  else if (G == 3)  // SmolLM2
    DMC_ATTN_LAUNCH(3);
  else if (G <= 4)
    DMC_ATTN_LAUNCH(4);
  else if (G <= 8)
    DMC_ATTN_LAUNCH(8);
  else
    fail("paged_attention kernel: ", G, " query heads per KV head (at most 8)");
#undef DMC_ATTN_LAUNCH
}

}  // namespace

void decode_update_cuda(const at::Tensor& qkv_in, const at::Tensor& seq_in, const at::Tensor& pos_in,
                        const at::Tensor& forced_in, const at::Tensor& cos, const at::Tensor& sin,
                        const DecodeUpdateParams& p, DmcState& st, PagedKVCache& cache, at::Tensor& q_out) {
  const c10::cuda::CUDAGuard guard(qkv_in.device());
  at::Tensor qkv = qkv_in.contiguous(), seq = seq_in.to(at::kLong).contiguous(),
             pos = pos_in.to(at::kLong).contiguous(), forced = forced_in.to(at::kBool).contiguous();
  DMC_CHECK(cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous(),
            "decode_update: cos/sin must be contiguous fp32");
  DMC_CHECK(qkv.scalar_type() == cache.k_pages.scalar_type(), "decode_update kernel: qkv and cache dtypes differ");
  const int n = (int)qkv.size(0), D = (int)p.head_dim, W = (int)std::max<int64_t>(1, p.window);
  if (p.dmc)
    DMC_CHECK(st.acc.defined() && st.ring_kv.size(1) == W && st.ring_kv.scalar_type() == qkv.scalar_type(),
              "decode_update kernel: DMC state missing, of another window or of another dtype");
  DMC_CHECK(D == 64 || D == 128 || D == 256, "decode_update kernel: head_dim ", D, " (supported: 64, 128, 256)");
  const int64_t warps = (int64_t)n * p.n_kv_heads;  // one per (token, KV head)
  if (warps == 0) return;
  const unsigned blocks = (unsigned)((warps + kUpdWarps - 1) / kUpdWarps);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "decode_update", [&] {
    const float eps = qkv.scalar_type() == at::kBFloat16 ? 0.0078125f
                      : qkv.scalar_type() == at::kHalf   ? 0.0009765625f
                      : qkv.scalar_type() == at::kDouble ? 2.220446049250313e-16f
                                                         : 1.1920928955078125e-07f;
    auto launch = [&](auto ppl) {
      DecodeUpdateArgs<scalar_t> a;
      a.qkv = qkv.data_ptr<scalar_t>();
      a.qkv_stride = qkv.stride(0);
      a.seq = seq.data_ptr<int64_t>();
      a.pos = pos.data_ptr<int64_t>();
      a.forced = forced.data_ptr<bool>();
      a.cos = cos.data_ptr<float>();
      a.sin = sin.data_ptr<float>();
      a.n = n;
      a.nh = (int)p.n_heads;
      a.nkv = (int)p.n_kv_heads;
      a.layer = (int)p.layer;
      a.dmc = p.dmc ? 1 : 0;
      a.init_val = (float)p.init_val;
      a.eps = eps;
      a.W = W;
      a.force_cr = (int)p.force_cr;
      a.acc = p.dmc ? st.acc.data_ptr<float>() : nullptr;
      a.ring_kv = p.dmc ? st.ring_kv.data_ptr<scalar_t>() : nullptr;
      a.ring_w = p.dmc ? st.ring_w.data_ptr<float>() : nullptr;
      a.group = p.dmc ? st.group.data_ptr<int>() : nullptr;
      a.k_pages = cache.k_pages.data_ptr<scalar_t>();
      a.v_pages = cache.v_pages.data_ptr<scalar_t>();
      a.pool = cache.pool();
      a.q_out = q_out.data_ptr<scalar_t>();
      decode_update_kernel<scalar_t, decltype(ppl)::value><<<blocks, kUpdWarps * 32, 0, stream>>>(a);
    };
    if (D == 64)
      launch(std::integral_constant<int, 1>{});
    else if (D == 128)
      launch(std::integral_constant<int, 2>{});
    else
      launch(std::integral_constant<int, 4>{});
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void paged_attention_cuda(const at::Tensor& q_in, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq_in,
                          int64_t max_len, double scale, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  at::Tensor q = q_in.contiguous(), seq = seq_in.to(at::kLong).contiguous();
  const int n = (int)q.size(0), nh = (int)q.size(1), D = (int)q.size(2), nkv = (int)cache.options().n_kv_heads;
  const int G = nh / nkv;
  DMC_CHECK(q.scalar_type() == cache.k_pages.scalar_type(), "paged_attention kernel: q and cache dtypes differ");
  // splits: enough blocks to fill the GPU several times over, at least 64 slots each
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t L = std::max<int64_t>(1, max_len);
  int64_t n_split = std::max<int64_t>(1, (8 * sms + (int64_t)n * nkv - 1) / ((int64_t)n * nkv));
  n_split = std::min<int64_t>(n_split, (L + 63) / 64);
  const int chunk = (int)((L + n_split - 1) / n_split);
  n_split = (L + chunk - 1) / chunk;
  auto f = q.options().dtype(at::kFloat);
  at::Tensor o_part = at::empty({n, nh, n_split, D}, f), ml_part = at::empty({n, nh, n_split, 2}, f);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
    if (D == 64)
      launch_attn<scalar_t, 64>(q, cache, layer, seq, chunk, (int)n_split, scale, o_part, ml_part, G, stream);
    else if (D == 128)
      launch_attn<scalar_t, 128>(q, cache, layer, seq, chunk, (int)n_split, scale, o_part, ml_part, G, stream);
    else if (D == 256)
      launch_attn<scalar_t, 256>(q, cache, layer, seq, chunk, (int)n_split, scale, o_part, ml_part, G, stream);
    else
      fail("paged_attention kernel: head_dim ", D, " (supported: 64, 128, 256)");
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    paged_attn_combine_kernel<scalar_t><<<dim3(nh, n), std::min(D, 256), 0, stream>>>(
        o_part.data_ptr<float>(), ml_part.data_ptr<float>(), (int)n_split, D, nh, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dmc
