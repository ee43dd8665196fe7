// Chunked parallel prefill for the eviction baselines (see evict_prefill.h).
#include "inference/evict_prefill.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/util.h"
#include "model/attention.h"
#include "ops/fused_ops.h"

namespace dmc {

namespace {

// The dense forms below (window's band, TOVA's held + chunk) unless DMC_EVICT_DENSE=0: the masked form throughout
// (scripts/gpu_job_lib.sh sets it where their GPU test fails).
bool dense_forms_on() { return !env_off("DMC_EVICT_DENSE"); }

// Attention with its row log-sum-exp, for the dense forms below.
//   q [n, nh, L, D]; k, v [n, nkv, S, D] (nh a multiple of nkv); causal only with S == L
//   -> out [n, nh, L, D] fp32, lse [n, nh, L] fp32
// FlashAttention-2 on CUDA in bf16 / fp16 (K/V at their KV heads), else fp32 (fp64) math.
std::pair<at::Tensor, at::Tensor> attention_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                bool causal, double scale) {
  const int64_t n = q.size(0), nh = q.size(1), L = q.size(2), D = q.size(3), nkv = k.size(1), S = k.size(2);
  if (q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf) && D <= 256 && D % 8 == 0) {
    auto r = at::_scaled_dot_product_flash_attention(q.contiguous(), k.contiguous(), v.contiguous(), 0.0, causal,
                                                     false, scale);
    return {std::get<0>(r).to(at::kFloat), std::get<1>(r).to(at::kFloat)};
  }
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor qg = q.reshape({n, nkv, nh / nkv, L, D}).to(acc);
  at::Tensor sc = at::matmul(qg, k.to(acc).unsqueeze(2).transpose(-1, -2)) * scale;  // [n, nkv, G, L, S]
  if (causal) sc = sc.masked_fill(at::ones({L, S}, q.options().dtype(at::kBool)).triu(1), -INFINITY);
  at::Tensor lse = at::logsumexp(sc, -1, true);
  at::Tensor out = at::matmul(at::exp(sc - lse), v.to(acc).unsqueeze(2));  // [n, nkv, G, L, D]
  return {out.reshape({n, nh, L, D}).to(at::kFloat), lse.squeeze(-1).reshape({n, nh, L}).to(at::kFloat)};
}

// Attentions over disjoint key sets merged into the attention over their union, by their log-sum-exps.
at::Tensor merge_lse(const std::vector<std::pair<at::Tensor, at::Tensor>>& parts) {
  std::vector<at::Tensor> l;
  for (const auto& p : parts) l.push_back(p.second);
  at::Tensor w = at::softmax(at::stack(l, 0), 0).unsqueeze(-1);  // [parts, n, nh, c, 1]
  at::Tensor o = parts[0].first * w[0];
  for (size_t i = 1; i < parts.size(); ++i) o = o + parts[i].first * w[(int64_t)i];
  return o;
}

// window + sinks for a chunk of c = budget - sinks queries at p0 >= budget, whose rows hold the sinks and then the
// c positions just before p0 (the rows still real at p0; the others' outputs are padding): three dense attentions
// and no mask of [c, budget + c]. Query i (position p0 + i) sees every sink, the held keys j >= i (within
// budget - sinks behind it: causal on the queries and those keys both reversed) and the chunk's keys j <= i (causal).
//   q [n, nh, c, D]; held k, v [n, nkv, budget, D]; chunk k, v [n, nkv, c, D] -> [n, nh, c, D] fp32
at::Tensor window_band_attention(const at::Tensor& q, const at::Tensor& hk, const at::Tensor& hv, const at::Tensor& k,
                                 const at::Tensor& v, int64_t sinks, double scale) {
  const int64_t c = q.size(2);
  auto held = attention_lse(q.flip(2), hk.narrow(2, sinks, c).flip(2), hv.narrow(2, sinks, c).flip(2), true, scale);
  return merge_lse({attention_lse(q, hk.narrow(2, 0, sinks), hv.narrow(2, 0, sinks), false, scale),
                    {held.first.flip(2), held.second.flip(2)}, attention_lse(q, k, v, true, scale)});
}

// TOVA for a chunk at p0 >= budget, whose rows (those still real at p0) hold budget slots, every one before p0: the
// held keys dense, the chunk's causal, merged (no mask of [c, budget + c]).
//   q [n, nh, c, D]; held k, v [n, nkv, budget, D]; chunk k, v [n, nkv, c, D] -> [n, nh, c, D] fp32
at::Tensor held_chunk_attention(const at::Tensor& q, const at::Tensor& hk, const at::Tensor& hv, const at::Tensor& k,
                                const at::Tensor& v, double scale) {
  return merge_lse({attention_lse(q, hk, hv, false, scale), attention_lse(q, k, v, true, scale)});
}

// The attention of one chunk: per layer, the chunk's queries over the held slots plus the chunk's keys, then the
// layer's slots cut back to the budget. Holds the per-layer slots in `st` between chunks.
//   qkv [n, c, (nh + 2 nkv) hd] -> [n, c, nh hd]
class EvictChunkAttention : public Attention {
 public:
  EvictChunkAttention(const EvictPrefillParams& p, const at::Tensor& lengths, EvictPrefillResult& st)
      : p_(p), len_(lengths), st_(st), dense_on_(dense_forms_on()) {}
  void begin(const Llama& m, const at::Tensor& ids, const at::Tensor& positions) override {
    Attention::begin(m, ids, positions);
    cpos_ = positions;  // [c], the same for every row
    p0_ = positions[0].item<int64_t>();
    if (st_.k.empty()) {
      const size_t L = m.layers.size();
      st_.k.assign(L, at::Tensor());
      st_.v.assign(L, at::Tensor());
      st_.pos.assign(L, at::Tensor());
      st_.score.assign(L, at::Tensor());
    }
  }
  bool checkpointable() const override { return false; }
  Out layer(int64_t l, const at::Tensor& qkv, bool recompute) override;

 private:
  EvictPrefillParams p_;
  at::Tensor len_;  // [n] int64
  EvictPrefillResult& st_;
  at::Tensor cpos_;
  int64_t p0_ = 0;
  bool dense_on_;  // DMC_EVICT_DENSE, read once a prefill
};

Attention::Out EvictChunkAttention::layer(int64_t l, const at::Tensor& qkv, bool recompute) {
  (void)recompute;
  const int64_t n = B_, c = T_, nkv = nkv_, G = nh_ / nkv_, D = hd_;
  const double inf = std::numeric_limits<double>::infinity();
  auto r = rope_qkv_fused(qkv, cos_, sin_, nh_, nkv_, hd_);                  // [n, c, heads, D] each
  at::Tensor q = r[0].view({n, c, nkv, G, D}).permute({0, 2, 3, 1, 4});     // [n, nkv, G, c, D]
  at::Tensor k = r[1].transpose(1, 2), v = r[2].transpose(1, 2);            // [n, nkv, c, D]
  at::Tensor real = cpos_.unsqueeze(0) < len_.unsqueeze(1);                 // [n, c]: not padding
  at::Tensor cp = at::where(real, cpos_.unsqueeze(0), at::full_like(real, -1, at::kLong));  // [n, c]
  at::Tensor cpk = cp.unsqueeze(1).expand({n, nkv, c});
  const bool held = st_.k[l].defined();
  at::Tensor keys = held ? at::cat({st_.k[l], k}, 2) : k;  // [n, nkv, S + c, D]
  at::Tensor vals = held ? at::cat({st_.v[l], v}, 2) : v;
  at::Tensor kpos = held ? at::cat({st_.pos[l], cpk}, 2) : cpk.contiguous();  // [n, nkv, S + c]
  at::Tensor kscore = held ? at::cat({st_.score[l], at::zeros({n, nkv, c}, st_.score[l].options())}, 2)
                           : at::zeros({n, nkv, c}, q.options().dtype(at::kFloat));
  const int64_t S = keys.size(2);
  // past the budget every live row holds budget slots: window + sinks in chunks of budget - sinks takes its banded
  // form (window_band_attention), TOVA its held + chunk form (held_chunk_attention), neither a mask
  const bool full = held && p0_ >= p_.budget && st_.k[l].size(2) == p_.budget && dense_on_;
  const bool band = full && p_.policy == CachePolicy::Window && p_.sinks >= 1 && c == p_.budget - p_.sinks;
  const bool dense = full && p_.policy == CachePolicy::Tova;
  // else visible: a held or real key at or before the query (window: a sink, or within budget - sinks behind it)
  at::Tensor kp = kpos.view({n, nkv, 1, 1, S}), qp = cpos_.view({1, 1, 1, c, 1});
  at::Tensor vis;
  if (!band && !dense) vis = (kp >= 0) & (kp <= qp);
  if (!band && p_.policy == CachePolicy::Window) vis = vis & ((kp < p_.sinks) | (qp - kp <= p_.budget - p_.sinks));
  const bool low = q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf);
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const double scale = 1.0 / std::sqrt((double)D);
  at::Tensor li = (len_ - 1 - p0_).clamp(0, c - 1);  // the row's last real query in the chunk
  at::Tensor o, key;
  if (p_.policy == CachePolicy::H2O) {
    // H2O scores a slot by the weight every query gives it: the weights are materialised. Scores in fp32: on CUDA
    // in bf16 / fp16 the tensor cores with fp32 accumulation and output (the weights then meet the values in the
    // model dtype, as a flash kernel does); elsewhere fp32 (fp64) math.
    at::Tensor qf = q.reshape({n * nkv, G * c, D}), kf = keys.reshape({n * nkv, S, D}).transpose(1, 2);
    at::Tensor sc = (low ? at::bmm(qf, kf, at::kFloat) : at::bmm(qf.to(acc), kf.to(acc))).view({n, nkv, G, c, S});
    sc.mul_(scale).masked_fill_(~vis, -inf);
    at::Tensor probs = at::softmax(sc, -1);  // [n, nkv, G, c, S]
    sc.reset();
    at::Tensor vf = vals.reshape({n * nkv, S, D});
    o = (low ? at::bmm(probs.view({n * nkv, G * c, S}).to(vf.scalar_type()), vf)
             : at::bmm(probs.view({n * nkv, G * c, S}), vf.to(acc)))
            .view({n, nkv, G, c, D});
    // accumulated weight (real queries only, mean over the group's query heads)
    probs.masked_fill_(~real.view({n, 1, 1, c, 1}), 0.0);
    kscore = kscore + probs.sum({2, 3}).to(at::kFloat) / (double)G;
    at::Tensor last_pos = (li + p0_).view({n, 1, 1});
    key = at::where(kpos > last_pos - p_.budget / 2, at::full_like(kscore, inf), kscore);
  } else {
    // TOVA and window need no weights but the last query's: past the budget the dense forms above, else the output
    // by SDPA with the visibility as its mask (the memory-efficient kernel on CUDA; batch = (row, KV head), heads =
    // the group's query heads)
    if (band) {
      o = window_band_attention(q.reshape({n, nkv * G, c, D}), st_.k[l], st_.v[l], k, v, p_.sinks, scale)
              .view({n, nkv, G, c, D});
    } else if (dense) {
      o = held_chunk_attention(q.reshape({n, nkv * G, c, D}), st_.k[l], st_.v[l], k, v, scale).view({n, nkv, G, c, D});
    } else {
      at::Tensor qb = q.reshape({n * nkv, G, c, D});
      at::Tensor kb = keys.reshape({n * nkv, 1, S, D}).expand({n * nkv, G, S, D});
      at::Tensor vb = vals.reshape({n * nkv, 1, S, D}).expand({n * nkv, G, S, D});
      at::Tensor bias = at::zeros({n * nkv, 1, c, S}, q.options())
                            .masked_fill_(~vis.reshape({n * nkv, 1, c, S}), -inf)
                            .expand({n * nkv, G, c, S});
      o = at::scaled_dot_product_attention(qb, kb, vb, bias, 0.0, false, scale).view({n, nkv, G, c, D});
    }
    if (p_.policy == CachePolicy::Tova) {
      // the weights of each row's last real query, mean over the group's query heads
      at::Tensor ql = q.gather(3, li.view({n, 1, 1, 1, 1}).expand({n, nkv, G, 1, D}));  // [n, nkv, G, 1, D]
      at::Tensor sl = at::matmul(ql.to(acc), keys.to(acc).unsqueeze(2).transpose(-1, -2)) * scale;  // [n,nkv,G,1,S]
      at::Tensor vl = dense ? ((kpos >= 0) & (kpos <= (li + p0_).view({n, 1, 1}))).view({n, nkv, 1, 1, S})
                            : vis.expand({n, nkv, 1, c, S}).gather(3, li.view({n, 1, 1, 1, 1}).expand({n, nkv, 1, 1, S}));
      key = at::softmax(sl.masked_fill(~vl, -inf), -1).mean(2).squeeze(2).to(at::kFloat);  // [n, nkv, S]
    } else {
      key = at::where(kpos < p_.sinks, at::full_like(kscore, inf), kpos.to(at::kFloat));
    }
  }
  // padding queries may see nothing (a NaN row); they feed nothing real, their output is zeroed
  o = at::where(real.view({n, 1, 1, c, 1}), o, at::zeros_like(o));
  o = o.to(qkv.scalar_type()).permute({0, 3, 1, 2, 4}).reshape({n, c, nh_ * D});
  key = key.masked_fill(kpos < 0, -inf);
  const int64_t keep = std::min(S, p_.budget);
  if (keep < S) {
    // the best `keep` slots, then back in arrival order with empty ones last
    at::Tensor idx = std::get<1>(key.topk(keep, -1));
    at::Tensor empty = kpos.gather(2, idx) < 0;
    idx = idx.gather(2, std::get<1>((idx + empty.to(at::kLong) * S).sort(-1)));
    at::Tensor gi = idx.unsqueeze(-1).expand({n, nkv, keep, D});
    keys = keys.gather(2, gi);
    vals = vals.gather(2, gi);
    kpos = kpos.gather(2, idx);
    kscore = kscore.gather(2, idx);
  }
  st_.k[l] = keys.contiguous();
  st_.v[l] = vals.contiguous();
  st_.pos[l] = kpos.contiguous();
  st_.score[l] = kscore.contiguous();
  return {o, {}};
}

}  // namespace

int64_t evict_prefill_chunk(const EvictPrefillParams& p) {
  if (p.policy != CachePolicy::Window) return p.chunk;
  return dense_forms_on() && p.budget > p.sinks && p.sinks >= 1 ? p.budget - p.sinks : std::max(p.chunk, p.budget);
}

EvictPrefillResult evict_prefill(const Llama& m, const at::Tensor& ids, const std::vector<int64_t>& lengths,
                                 const EvictPrefillParams& p) {
  DMC_CHECK(evicts(p.policy), "evict_prefill: policy ", cache_policy_name(p.policy), " does not evict");
  DMC_CHECK(p.budget >= 1, "evict_prefill: budget must be at least 1 slot, got ", p.budget);
  DMC_CHECK(p.chunk >= 1, "evict_prefill: chunk must be at least 1 token, got ", p.chunk);
  DMC_CHECK(ids.dim() == 2 && ids.size(0) == (int64_t)lengths.size(), "evict_prefill: ids [n, T] for n = ",
            lengths.size(), " lengths");
  at::NoGradGuard ng;
  const int64_t n = ids.size(0), Tmax = ids.size(1);
  for (int64_t t : lengths) DMC_CHECK(t >= 1 && t <= Tmax, "evict_prefill: a length of ", t, " (padded to ", Tmax, ")");
  auto lopt = at::TensorOptions().dtype(at::kLong).device(ids.device());
  at::Tensor len = at::tensor(lengths, at::kLong).to(ids.device());
  EvictPrefillResult st;
  EvictChunkAttention attn(p, len, st);
  st.last_hidden = at::zeros({n, m.config.hidden_size}, at::TensorOptions().dtype(m.dtype()).device(ids.device()));
  const int64_t chunk = evict_prefill_chunk(p);
  for (int64_t p0 = 0; p0 < Tmax; p0 += chunk) {
    const int64_t c = std::min(chunk, Tmax - p0);
    at::Tensor h = m.forward_hidden(ids.narrow(1, p0, c), at::arange(p0, p0 + c, lopt), attn);  // [n, c, H]
    std::vector<int64_t> rows, at;
    for (int64_t i = 0; i < n; ++i)
      if (lengths[i] - 1 >= p0 && lengths[i] - 1 < p0 + c) {
        rows.push_back(i);
        at.push_back(lengths[i] - 1 - p0);
      }
    if (rows.empty()) continue;
    at::Tensor ri = at::tensor(rows, at::kLong).to(ids.device()), ai = at::tensor(at, at::kLong).to(ids.device());
    st.last_hidden.index_copy_(0, ri, h.index_select(0, ri).gather(1, ai.view({-1, 1, 1}).expand({-1, 1, h.size(2)})).squeeze(1));
  }
  return st;
}

}  // namespace dmc
