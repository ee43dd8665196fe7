// The two batched operations of a decode step, each as a plain ATen reference (any device, used by the CPU path
// and as the oracle of the GPU tests) and a CUDA kernel (kernels/decode_kernels.cu, sm_90):
//
//   decode_update:   per (sequence, KV head) of one layer: the DMC decision and importance, the windowed merge
//                    state (fp32 running sums + a ring of the last W entries), RoPE at the token's position with
//                    dim D-1 dropped, and the paged-cache write (merge: overwrite the last slot; append: a new slot,
//                    a page popped from the device free stack when the row crosses a page). Vanilla: RoPE and
//                    append only. Also rotates the queries.
//   paged_attention: each query head over its KV head's variable-length paged slots (GQA), split-K over the slots
//                    with a log-sum-exp combine; fp32 scores and sums.
//
// Layouts (n = sequences in the step, nh / nkv query / KV heads, D = head_dim, X = 2D + 1, R = cache rows):
//   qkv      [n, (nh + 2 nkv) D]  model dtype, the fused projection (q | k | v)
//   seq      [n] int64            cache sequence slot of each token (-1: a padding row, which reads and writes
//                                 nothing of the cache; its outputs are finite and meaningless);  pos [n] int64 its
//                                 position
//   forced   [n] bool             an append is forced (position 0 or a document start)
//   cos, sin [max_pos, D] fp32    RoPE tables (rope_cos_sin of every position)
//   q_out    [n, nh, D]           rotated queries (dim D-1 zeroed for DMC)
//   DmcState: acc [R, X] fp32 = sums of (w k, w v, w) of the current group's last <= W tokens;
//             ring_kv [R, W, 2D] model dtype = (k, v) of the last W tokens by position mod W, ring_w [R, W] fp32
//             their weights (the entry w (k, v, 1) is recomputed from them bit for bit in fp32, at half the bytes
//             of storing it);  group [R] int32 = group length
//   attention out [n, nh, D] model dtype
#pragma once
#include <torch/types.h>

#include "ops/paged_cache.h"

namespace dmc {

struct DmcState {
  at::Tensor acc;      // [R, 2D + 1] fp32
  at::Tensor ring_kv;  // [R, W, 2D] model dtype
  at::Tensor ring_w;   // [R, W] fp32
  at::Tensor group;    // [R] int32
  static DmcState create(int64_t rows, int64_t head_dim, int64_t window, at::ScalarType dtype, at::Device device);
  static int64_t bytes_per_row(int64_t head_dim, int64_t window, at::ScalarType dtype) {
    return (2 * head_dim + 1) * 4 + window * (2 * head_dim * (int64_t)c10::elementSize(dtype) + 4) + 4;
  }
};

struct DecodeUpdateParams {
  int64_t layer = 0;
  int64_t n_heads = 1, n_kv_heads = 1, head_dim = 64;
  bool dmc = false;
  double init_val = 5.0;
  int64_t window = 12;
  // Benchmark-only decision policy standing in for trained decisions (random weights): when > 0, head h merges
  // at position t unless (t + h) % force_cr == 0, which gives a compression ratio of force_cr.
  int64_t force_cr = 0;
};

// Whether the CUDA kernels were compiled in and apply to tensors on `device`.
// The CUDA decode kernels serve this device and head_dim (0: any supported one); otherwise the reference ops run.
bool decode_kernels_available(const at::Device& device, int64_t head_dim = 0);

at::Tensor decode_update(const at::Tensor& qkv, const at::Tensor& seq, const at::Tensor& pos, const at::Tensor& forced,
                         const at::Tensor& cos, const at::Tensor& sin, const DecodeUpdateParams& p, DmcState& st,
                         PagedKVCache& cache, bool use_kernel);
at::Tensor decode_update_ref(const at::Tensor& qkv, const at::Tensor& seq, const at::Tensor& pos,
                             const at::Tensor& forced, const at::Tensor& cos, const at::Tensor& sin,
                             const DecodeUpdateParams& p, DmcState& st, PagedKVCache& cache);

// q [n, nh, D] (rotated), slots of rows (layer, seq[i], head); max_len: an upper bound of those rows' lengths
// (positions + 1 will do). Returns [n, nh, D] in q's dtype.
at::Tensor paged_attention(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq,
                           int64_t max_len, double scale, bool use_kernel);
// The reference; when probs is given it receives the softmax weights [n, nkv, G, max_len] (fp32, 0 past a row's
// length), which the eviction baselines score slots with.
at::Tensor paged_attention_ref(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq,
                               int64_t max_len, double scale, at::Tensor* probs = nullptr);
// The eviction baselines' decode attention: the reference's computation and weights, but on CUDA in bf16 / fp16 the
// products on tensor cores with fp32 scores and no fp32 copies of the gathered slots (the weights meet the values in
// the model dtype, as a flash kernel does). Elsewhere the reference itself.
at::Tensor paged_attention_weights(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq,
                                   int64_t max_len, double scale, at::Tensor& probs);

// Rows (layer, seq[i], head h) for all heads: [n, nkv] int64.
at::Tensor cache_rows(const PagedKVCache& cache, int64_t layer, const at::Tensor& seq);

#ifdef DMC_WITH_CUDA
// kernels/decode_kernels.cu
void decode_update_cuda(const at::Tensor& qkv, const at::Tensor& seq, const at::Tensor& pos, const at::Tensor& forced,
                        const at::Tensor& cos, const at::Tensor& sin, const DecodeUpdateParams& p, DmcState& st,
                        PagedKVCache& cache, at::Tensor& q_out);
void paged_attention_cuda(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq,
                          int64_t max_len, double scale, at::Tensor& out);
#endif

}  // namespace dmc
