// The attention of one Llama forward. Llama::forward_hidden runs the same block code for every caller (norms, the
// fused q/k/v projection, the output projection, the SwiGLU MLP, tensor and sequence parallelism, activation
// checkpointing); what happens between the q/k/v projection and the output projection is the Attention object the
// caller passes, which also owns whatever it captures. Implementations:
//   VanillaAttention    causal SDPA with RoPE (training, evaluation, prefill; capture = the cache a prefill writes)
//   ZeroOutAttention    retrofit stage 1: q/k[D-1] scaled by a factor around RoPE
//   DmcLayerAttention   DMC in training (Gumbel-sigmoid decisions, fed noise) or eval mode (hard decisions), with
//                       the decision means, boundaries and (eval, capture) the merged cache contents per layer
//   PagedDecodeAttention (inference/decoder.cpp) one token per sequence through the paged cache: vanilla, DMC
//                       or the eviction baselines
//
// Layouts at the boundary (this rank's heads under tensor parallelism: nh = local_heads, nkv = local_kv_heads):
//   qkv    [B, T, (nh + 2 nkv) hd]   rows of the fused projection: q heads, k heads, v heads
//   return [B, T, nh hd]             the attention output before the output projection
//   positions (begin)  [T] int64     the positions of this forward's tokens (a contiguous run in every caller that
//                                    uses them; the decode attention keeps each sequence's own position)
//
//   VanillaAttention a;
//   at::Tensor h = model.forward_hidden(ids, a);          // [B, T, hidden]
#pragma once
#include <torch/types.h>

#include <vector>

#include "ops/dmc.h"

namespace dmc {

class Llama;
struct LlamaConfig;

class Attention {
 public:
  virtual ~Attention() = default;
  // Once per forward, before layer 0: ids [B, T], positions [T] (RoPE tables of the forward are built here).
  virtual void begin(const Llama& m, const at::Tensor& ids, const at::Tensor& positions);
  struct Out {
    at::Tensor o;    // [B, T, nh hd]
    at::Tensor aux;  // differentiable per-layer output, or undefined (DMC: decision mean [B])
  };
  // Layer l. `recompute` is true when activation checkpointing runs the layer again in backward: outputs the
  // object records (boundaries, captures) were recorded by the first run and must not be disturbed.
  virtual Out layer(int64_t l, const at::Tensor& qkv, bool recompute) = 0;
  // Whether layer() may run under activation checkpointing (no state that a second run would change).
  virtual bool checkpointable() const { return true; }
  int64_t batch() const { return B_; }
  int64_t seq_len() const { return T_; }
  // RoPE tables of the forward's positions: [T, hd] fp32 (set by begin)
  const at::Tensor& cos() const { return cos_; }
  const at::Tensor& sin() const { return sin_; }
  // Per layer, the aux output of the last forward (filled by the model; DMC: the decision means [B]).
  std::vector<at::Tensor> aux;

 protected:
  // this rank's heads and head_dim, and the forward's ids [B, T] (set by begin)
  int64_t nh_ = 0, nkv_ = 0, hd_ = 0, B_ = 0, T_ = 0;
  // the part of begin() every attention needs: shapes, and the RoPE tables when positions are given
  void begin_shapes(const Llama& m, const at::Tensor& ids);
  at::Tensor cos_, sin_;
};

// Causal scaled-dot-product attention with RoPE on q and k (fused from the projection on CUDA).
// capture: per layer the rotated keys and the values, as a prefill writes them into the cache.
class VanillaAttention : public Attention {
 public:
  explicit VanillaAttention(bool capture = false) : capture_(capture) {}
  void begin(const Llama& m, const at::Tensor& ids, const at::Tensor& positions) override;
  Out layer(int64_t l, const at::Tensor& qkv, bool recompute) override;
  std::vector<at::Tensor> k_rot, v;  // capture: per layer [B, nkv, T, hd]

 private:
  bool capture_;
};

// Retrofit stage 1 (zero-out): q and k's last dimension scaled by `mult` before and after RoPE (RoPE leaks
// dimension D/2-1 into D-1), then causal attention.
class ZeroOutAttention : public Attention {
 public:
  explicit ZeroOutAttention(double mult) : mult_(mult) {}
  Out layer(int64_t l, const at::Tensor& qkv, bool recompute) override;

 private:
  double mult_;
};

// The DMC options a retrofitted model's config carries (its dmc.init_val and dmc.window; the rest at their
// defaults): what its eval-mode forward runs with, in every evaluation path.
DmcOptions model_dmc_options(const LlamaConfig& c);

// DMC attention of every layer (dmc/dmc.h dmc_attention): training (relaxed decisions; noise per layer
// [B, T, nkv] fed so that a recompute sees the same draw) or eval (hard decisions).
class DmcLayerAttention : public Attention {
 public:
  DmcLayerAttention(DmcMode mode, const DmcOptions& o, at::Tensor doc_start = {}, std::vector<at::Tensor> noise = {},
                    bool capture = false);
  void begin(const Llama& m, const at::Tensor& ids, const at::Tensor& positions) override;
  Out layer(int64_t l, const at::Tensor& qkv, bool recompute) override;
  bool checkpointable() const override { return mode_ == DmcMode::Eval || !noise_.empty(); }
  DmcMode mode() const { return mode_; }
  // per layer, outputs of the last forward:
  std::vector<at::Tensor> boundaries;    // [B, T, nkv] 0/1, detached
  std::vector<at::Tensor> k_rot, v_hat;  // capture: [B, nkv, T, hd]
  std::vector<at::Tensor> kv_raw;        // capture: [B, min(T, max(window, capture_tail)), nkv, 2 hd] last (k, v)
  std::vector<at::Tensor> omega;         // capture: [B, T, nkv] fp32 importance weights

 private:
  DmcMode mode_;
  DmcOptions o_;
  at::Tensor doc_start_;
  std::vector<at::Tensor> noise_;
  bool capture_;
};

}  // namespace dmc
