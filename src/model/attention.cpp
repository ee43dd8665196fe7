#include "model/attention.h"

#include "common/error.h"
#include "ops/fused_ops.h"
#include "model/llama.h"

namespace dmc {

void Attention::begin_shapes(const Llama& m, const at::Tensor& ids) {
  nh_ = m.local_heads();
  nkv_ = m.local_kv_heads();
  hd_ = m.config.head_dim;
  B_ = ids.size(0);
  T_ = ids.size(1);
}

void Attention::begin(const Llama& m, const at::Tensor& ids, const at::Tensor& positions) {
  begin_shapes(m, ids);
  std::tie(cos_, sin_) = rope_cos_sin(m.inv_freq, positions);
}

namespace {
// q, k, v [B, heads, T, hd] as transposed views of the projection [B, T, heads * hd]
std::array<at::Tensor, 3> split_heads(const at::Tensor& qkv, int64_t nh, int64_t nkv, int64_t hd) {
  const int64_t B = qkv.size(0), T = qkv.size(1);
  return {qkv.narrow(-1, 0, nh * hd).view({B, T, nh, hd}).transpose(1, 2),
          qkv.narrow(-1, nh * hd, nkv * hd).view({B, T, nkv, hd}).transpose(1, 2),
          qkv.narrow(-1, (nh + nkv) * hd, nkv * hd).view({B, T, nkv, hd}).transpose(1, 2)};
}
// causal SDPA (GQA) -> [B, T, nh hd]
at::Tensor causal_sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t B = q.size(0), nh = q.size(1), T = q.size(2), hd = q.size(3);
  at::Tensor o = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, /*is_causal=*/T > 1, std::nullopt,
                                                  /*enable_gqa=*/k.size(1) != nh);
  return o.transpose(1, 2).reshape({B, T, nh * hd});
}
}  // namespace

void VanillaAttention::begin(const Llama& m, const at::Tensor& ids, const at::Tensor& positions) {
  Attention::begin(m, ids, positions);
  if (capture_) {
    k_rot.assign(m.layers.size(), at::Tensor());
    v.assign(m.layers.size(), at::Tensor());
  }
}

Attention::Out VanillaAttention::layer(int64_t l, const at::Tensor& qkv, bool recompute) {
  // RoPE on q and k straight from the fused projection (one kernel each way on CUDA, model/fused_ops.h)
  auto r = rope_qkv_fused(qkv, cos_, sin_, nh_, nkv_, hd_);
  at::Tensor q = r[0].transpose(1, 2), k = r[1].transpose(1, 2), vv = r[2].transpose(1, 2);
  if (capture_ && !recompute) {
    k_rot[l] = k;
    v[l] = vv;
  }
  return {causal_sdpa(q, k, vv), {}};
}

Attention::Out ZeroOutAttention::layer(int64_t l, const at::Tensor& qkv, bool recompute) {
  (void)l;
  (void)recompute;
  auto [q, k, v] = split_heads(qkv, nh_, nkv_, hd_);
  at::Tensor scale = at::ones({hd_}, q.options());
  scale.index_put_({hd_ - 1}, mult_);
  q = apply_rope(q * scale, cos_, sin_) * scale;
  k = apply_rope(k * scale, cos_, sin_) * scale;
  return {causal_sdpa(q, k, v), {}};
}

DmcOptions model_dmc_options(const LlamaConfig& c) {
  DmcOptions o;
  o.init_val = c.dmc.init_val;
  o.window = c.dmc.window;
  return o;
}

DmcLayerAttention::DmcLayerAttention(DmcMode mode, const DmcOptions& o, at::Tensor doc_start,
                                     std::vector<at::Tensor> noise, bool capture)
    : mode_(mode), o_(o), doc_start_(std::move(doc_start)), noise_(std::move(noise)), capture_(capture) {}

void DmcLayerAttention::begin(const Llama& m, const at::Tensor& ids, const at::Tensor& positions) {
  Attention::begin(m, ids, positions);
  const size_t L = m.layers.size();
  DMC_CHECK(noise_.empty() || noise_.size() >= L, "DMC attention: noise for ", noise_.size(), " layers, the model has ",
            L);
  boundaries.assign(L, at::Tensor());
  if (capture_) {
    k_rot.assign(L, at::Tensor());
    v_hat.assign(L, at::Tensor());
    kv_raw.assign(L, at::Tensor());
    omega.assign(L, at::Tensor());
  }
}

Attention::Out DmcLayerAttention::layer(int64_t l, const at::Tensor& qkv, bool recompute) {
  const int64_t B = qkv.size(0), T = qkv.size(1);
  at::Tensor q = qkv.narrow(-1, 0, nh_ * hd_).view({B, T, nh_, hd_});
  at::Tensor k = qkv.narrow(-1, nh_ * hd_, nkv_ * hd_).view({B, T, nkv_, hd_});
  at::Tensor v = qkv.narrow(-1, (nh_ + nkv_) * hd_, nkv_ * hd_).view({B, T, nkv_, hd_});
  at::Tensor noise = mode_ == DmcMode::Train && !noise_.empty() ? noise_[l] : at::Tensor();
  DmcAttention r = dmc_attention(q, k, v, cos_, sin_, o_, mode_, doc_start_, noise);
  if (!recompute) {
    boundaries[l] = r.hard;
    if (capture_) {
      k_rot[l] = r.k_rot;
      v_hat[l] = r.v_hat;
      kv_raw[l] = r.kv_raw;
      omega[l] = r.omega;
    }
  }
  return {r.out.reshape({B, T, nh_ * hd_}), r.decision_mean};
}

}  // namespace dmc
