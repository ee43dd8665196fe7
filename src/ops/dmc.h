// The DMC math alone (the spec's sections 1-2), shared by training, evaluation and the inference paths:
// decision logits from the key's last dimension, importance weights from the query group's last dimension,
// Gumbel-sigmoid relaxation, windowed weighted merging ("poolsum"), the partial-merge attention bias shifted by
// one position with the diagonal exempt, and RoPE with the last dimension removed.
//
// Layouts (pre-RoPE projections, activation dtype):
//   q        [batch, seq, n_heads, head_dim]       k, v  [batch, seq, n_kv_heads, head_dim]
//   logits a, weights omega, boundaries b, bias m      [batch, seq, n_kv_heads]
//   doc_start [batch, seq] bool (optional): an append is forced there and neither merging nor the bias
//             crosses it
//   cos, sin [seq, head_dim] fp32 (the model's RoPE tables)
// Output of dmc_attention: [batch, seq, n_heads, head_dim], before the output projection.
#pragma once
#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace dmc {

// The DMC attention of the parallel forward: flash (fused kernel + log-sum-exp merge; on CUDA for fp16/bf16, fp32
// there takes blocks) | blocks (the plain query-block twin).
enum class DmcAttnImpl { Flash, Blocks };
const std::vector<std::pair<std::string, DmcAttnImpl>>& dmc_attn_impl_names();  // {"flash", Flash}, {"blocks", ...}

struct DmcOptions {
  double init_val = 5.0;       // c: a = k[D-1] - c, omega = sigmoid(mean q[D-1] + c) + eps
  int64_t window = 12;         // W: merging looks back at most W tokens of the current group
  double temperature = 0.1;    // tau of the Gumbel-sigmoid relaxation
  bool doc_boundaries = true;  // force an append at each document start; no merge or bias across it
  int64_t attn_block = 256;    // query block of the "blocks" attention
  DmcAttnImpl attn_impl = DmcAttnImpl::Flash;
  // Benchmark-only decision policy for random weights (eval mode): head h merges at position t unless
  // (t + h) % force_cr == 0, a compression ratio of force_cr. 0 = the model's own decisions.
  int64_t force_cr = 0;
  // Eval without gradient: kv_raw holds the last max(window, capture_tail) tokens (a batched prefill of right-padded
  // prompts needs each row's last window, which ends before the padding).
  int64_t capture_tail = 0;
  // DmcAttention::decision_mean per KV head ([batch, n_kv_heads]) instead of over them ([batch]): the per-head hinge
  bool decision_mean_per_head = false;
};

enum class DmcMode { Train, Eval };

struct DmcAttention {
  at::Tensor out;            // [batch, seq, n_heads, head_dim]
  at::Tensor decision_mean;  // [batch]: STE-hard decisions averaged over time (t = 0 included) and KV heads
                             // ([batch, n_kv_heads], over time only, with DmcOptions::decision_mean_per_head)
  at::Tensor hard;           // [batch, seq, n_kv_heads] 0/1 boundaries actually used (after t=0/doc forcing), no grad
  // for building a decode cache from a parallel prefill (no grad):
  at::Tensor k_rot;   // [batch, n_kv_heads, seq, head_dim] merged keys, RoPE at their position, dim D-1 dropped
  at::Tensor v_hat;   // [batch, n_kv_heads, seq, head_dim] merged values
  at::Tensor kv_raw;  // [batch, min(seq, max(window, capture_tail)), n_kv_heads, 2 head_dim] (k, v) of the last tokens before
                      // merging, activation dtype (all a decode state needs)
  at::Tensor omega;   // [batch, seq, n_kv_heads] fp32 importance weights
};

// The benchmark's forced decisions (forced_decisions.h) as a tensor: pos [n] int64 -> [n, n_kv_heads] bool (true =
// merge), on pos's device; built on the host from dmc_forced_merge (the one definition of the pattern).
at::Tensor dmc_forced_merges(const at::Tensor& pos, int64_t n_kv_heads, int64_t cr);
// a = k[..., D-1] - c                                 -> [B, T, nkv]
at::Tensor dmc_decision_logits(const at::Tensor& k, double init_val);
// omega = sigmoid(mean over the group's query heads of q[..., D-1] + c) + eps(dtype)   -> [B, T, nkv]
at::Tensor dmc_importance(const at::Tensor& q, int64_t n_kv_heads, double init_val);
// Windowed weighted prefix pooling: x [B, T, H, X] (fp32), w, b [B, T, H] (b[:, 0] must be 0):
//   out_t = sum_{m<W} C_{t,m} w_{t-m} x_{t-m} / sum_{m<W} C_{t,m} w_{t-m},  C_{t,0} = 1, C_{t,m} = prod_{s<m} b_{t-s}
// On CUDA in fp32 the fused kernels of kernels/dmc_pool.cu (forward and backward) run it; dmc_pool_ref is the plain
// ATen form (W in-place accumulations into time-shifted views), used on the CPU and as the kernels' oracle.
at::Tensor dmc_pool(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t window);
at::Tensor dmc_pool_ref(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t window);
#ifdef DMC_WITH_CUDA
// kernels/dmc_pool.cu: fp32, contiguous; forward returns (out, den [B, T, H]); backward (dx, dw, db)
std::tuple<at::Tensor, at::Tensor> dmc_pool_forward_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                                         int64_t window);
std::tuple<at::Tensor, at::Tensor, at::Tensor> dmc_pool_backward_cuda(const at::Tensor& g, const at::Tensor& x,
                                                                      const at::Tensor& w, const at::Tensor& b,
                                                                      const at::Tensor& out, const at::Tensor& den,
                                                                      int64_t window);
// kernels/dmc_eval.cu, the no-gradient forms for fp16/bf16 (see there):
//   dmc_eval_kernels_apply: whether they take these k, v [B, T, H, D] views and window (else the general forms run)
//   dmc_pool_eval_cuda: pooled k, v into k_out, v_out [B, T, H, D] (k's dtype) from k, v views and w, b [B, T, H]
//   dmc_blend_cuda: out = sigmoid(lse - s) past + sigmoid(s - lse) v, s = scale q.k over dims < D-1; q, past
//                   [B, nh, T, D], k, v [B, nkv, T, D], lse [B, nh, T]; returns [B, nh, T, D] (a view of
//                   [B, T, nh, D] memory), or an undefined tensor when a layout does not suit the kernel
bool dmc_eval_kernels_apply(const at::Tensor& k, const at::Tensor& v, int64_t window);
void dmc_pool_eval_cuda(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& b,
                        int64_t window, at::Tensor& k_out, at::Tensor& v_out);
at::Tensor dmc_blend_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& past, const at::Tensor& v,
                          const at::Tensor& lse, double scale);
// The blend's backward (training), for the layouts dmc_blend_kernels_apply accepts (fp16/bf16, D % 4 == 0, D <= 256,
// unit inner stride, 8-byte aligned rows): from dO [B, nh, T, D] the gradients (dq, dk, dpast, dv, dlse), dimension
// D-1 of dq and dk zero (it carries the bias, not the diagonal score); dq, dpast [B, nh, T, D] and dk, dv
// [B, nkv, T, D] are views of [B, T, n, D] memory, dlse [B, nh, T] in lse's dtype.
bool dmc_blend_kernels_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& past, const at::Tensor& v);
// With past_used, also the flash backward's `out` that carries dlse (rowsum(dpast * past_used) = rowsum(dpast *
// past) - dlse), so that the attention's backward needs no separate pass for the log-sum-exp's gradient.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dmc_blend_backward_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& past, const at::Tensor& v,
    const at::Tensor& lse, double scale, at::Tensor* past_used = nullptr);
#endif
// Attention with an additive per-key-column bias m [B, nkv, T] applied to keys j < i (the diagonal exempt),
// causal, GQA; q [B, nh, T, D], k, v [B, nkv, T, D]; computed in query blocks, never as a full T x T bias.
at::Tensor biased_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& m,
                                   double scale, int64_t block);
// The same through the fused flash-attention kernel, O(T) memory: the bias rides in the spare dimension D-1
// (q[D-1] = 1/scale, k[D-1] = m_j, as the reference packs it) over keys shifted one step right behind a dummy
// key, which gives exactly the keys j < i; the diagonal term is merged in with the kernel's log-sum-exp:
//   out_i = sigmoid(lse_i - s_ii) * past_i + sigmoid(s_ii - lse_i) * v_i.
// The log-sum-exp's gradient is fed to the kernel's backward by shifting `out` so that rowsum(dO * out) drops by
// it (the backward uses `out` only for that sum). q, k must have dim D-1 zeroed (rope_drop_last does).
at::Tensor biased_causal_attention_flash(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& m, double scale);
// RoPE with the last dimension zeroed before and after (the spec's treatment of the repurposed neuron).
at::Tensor rope_drop_last(const at::Tensor& x_bhtd, const at::Tensor& cos, const at::Tensor& sin);

// The whole DMC attention of one layer. `noise` [B, T, nkv] is the logistic sample G1 - G2 used in Train mode
// (drawn here from the default generator when undefined: Gumbel in fp32, cast to the activation dtype).
DmcAttention dmc_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                           const at::Tensor& sin, const DmcOptions& o, DmcMode mode, const at::Tensor& doc_start,
                           const at::Tensor& noise = {});

// Logistic noise G1 - G2 [B, T, nkv] for the relaxed decisions: Gumbel samples drawn in fp32 from the default
// generator of `device`, each cast to `dtype` before the difference (as the reference does for bf16).
at::Tensor dmc_logistic_noise(int64_t B, int64_t T, int64_t nkv, at::ScalarType dtype, at::Device device);

// Compression loss: decision means [n_layers, B] -> mean_b max(0, P - mean_layers d_b), P = 1 - 1/CR.
at::Tensor dmc_loss(const at::Tensor& decision_means, double target_cr);
// The hinge per (layer, sample, KV head): mean over [layers, batch, n_kv_heads] of max(0, P - d). A head past the
// target gets no push (under the reference's hinge on the mean the fastest heads keep being pushed until the mean
// reaches it, and run away to ratios of 100x and more while others stay at 1).
at::Tensor dmc_loss_per_head(const at::Tensor& decision_means, double target_cr);

}  // namespace dmc
