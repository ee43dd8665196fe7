#include "inference/decoder.h"

#include <cmath>
#include <limits>

#include "common/error.h"
#include "dmc/dmc.h"

namespace dmc {

namespace {
PagedCacheOptions cache_options(const Llama& m, const DecoderOptions& o) {
  PagedCacheOptions c;
  const auto& cfg = m.config;
  c.n_layers = cfg.num_hidden_layers;
  c.max_seqs = o.max_seqs;
  c.n_kv_heads = cfg.num_key_value_heads;
  c.head_dim = cfg.head_dim;
  c.page_size = o.page_size;
  c.n_pages = o.n_pages > 0 ? o.n_pages
                            : cfg.num_hidden_layers * o.max_seqs * cfg.num_key_value_heads *
                                  ((cfg.max_position_embeddings + o.page_size - 1) / o.page_size);
  c.dtype = m.dtype();
  c.device = m.device();
  return c;
}
}  // namespace

Decoder::Decoder(const Llama& model, const DecoderOptions& o)
    : m_(model), o_(o), dmc_(model.config.dmc.enabled), cache_(cache_options(model, o)) {
  const auto& c = model.config;
  pos_.assign(o.max_seqs, 0);
  const int64_t X = 2 * c.head_dim + 1, W = std::max<int64_t>(1, c.dmc.window);
  auto f = at::TensorOptions().dtype(m_.dtype() == at::kDouble ? at::kDouble : at::kFloat).device(model.device());
  acc_ = at::zeros({c.num_hidden_layers, o.max_seqs, c.num_key_value_heads, X}, f);
  ring_ = at::zeros({c.num_hidden_layers, o.max_seqs, c.num_key_value_heads, W, X}, f);
  group_.assign(c.num_hidden_layers * o.max_seqs * c.num_key_value_heads, 0);
}

void Decoder::free(int64_t seq) {
  cache_.free_seq(seq);
  pos_[seq] = 0;
}

at::Tensor Decoder::prefill(int64_t seq, const std::vector<int64_t>& prompt) {
  at::NoGradGuard ng;
  const auto& c = m_.config;
  const int64_t T = (int64_t)prompt.size(), nkv = c.num_key_value_heads, D = c.head_dim,
                W = std::max<int64_t>(1, c.dmc.window);
  DMC_CHECK(seq >= 0 && seq < o_.max_seqs, "prefill: sequence ", seq, " out of range");
  DMC_CHECK(pos_[seq] == 0, "prefill: sequence ", seq, " is not empty");
  DMC_CHECK(T >= 1 && T <= c.max_position_embeddings, "prefill: prompt of ", T, " tokens (max ",
            c.max_position_embeddings, ")");
  for (int64_t id : prompt) DMC_CHECK(id >= 0 && id < c.vocab_size, "prefill: token id ", id, " out of range");
  AttentionRuntime rt;
  rt.capture = true;
  if (dmc_) {
    rt.mode = AttentionRuntime::Mode::DmcEval;
    rt.dmc.init_val = c.dmc.init_val;
    rt.dmc.window = c.dmc.window;
  }
  Llama& m = const_cast<Llama&>(m_);
  m.runtime = &rt;
  at::Tensor h;
  try {
    h = m.forward_hidden(at::tensor(prompt, at::kLong).unsqueeze(0).to(m.device()));
  } catch (...) {
    m.runtime = nullptr;
    throw;
  }
  m.runtime = nullptr;
  // slots needed: one per group (every token for vanilla)
  std::vector<at::Tensor> bnd(c.num_hidden_layers);
  int64_t need = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    bnd[l] = dmc_ ? rt.boundaries[l][0].to(at::kCPU, at::kFloat) : at::zeros({T, nkv});  // [T, nkv]
    for (int64_t g = 0; g < nkv; ++g) need += cache_.pages_for(T - (int64_t)bnd[l].select(1, g).sum().item<double>());
  }
  if (need > cache_.free_pages())
    fail("kv cache exhausted: the prompt needs ", need, " pages, ", cache_.free_pages(), " are free");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (int64_t g = 0; g < nkv; ++g) {
      const int64_t r = cache_.row(l, seq, g);
      at::Tensor kr = rt.k_rot[l][0][g], vh = rt.v_hat[l][0][g];  // [T, D]
      // a slot per group: the group's state at its last token (the token before the next append, or T - 1)
      int64_t group = 0;
      for (int64_t t = 0; t < T; ++t) {
        const bool last_of_group = t == T - 1 || bnd[l][t + 1][g].item<float>() == 0;
        group = bnd[l][t][g].item<float>() > 0 ? group + 1 : 1;
        if (last_of_group) cache_.try_append(r, kr[t], vh[t]);
      }
      if (dmc_) {
        // decode state after the prompt: ring of the last W entries (by position mod W), sums over the last
        // min(group, W) of them, the group length
        group_[(l * o_.max_seqs + seq) * nkv + g] = group;
        at::Tensor e = rt.entries[l][0].select(1, g).to(acc_.scalar_type());  // [T, 2D+1]
        at::Tensor ring = ring_[l][seq][g], acc = acc_[l][seq][g];
        ring.zero_();
        for (int64_t t = std::max<int64_t>(0, T - W); t < T; ++t) ring[t % W].copy_(e[t]);
        acc.copy_(e.narrow(0, T - std::min(group, W), std::min(group, W)).sum(0));
      }
    }
  }
  pos_[seq] = T;
  (void)D;
  return at::linear(h[0][T - 1], m_.lm_head);
}

at::Tensor Decoder::step(const std::vector<int64_t>& seqs, const std::vector<int64_t>& ids,
                         const std::vector<bool>& doc_start) {
  at::NoGradGuard ng;
  const auto& c = m_.config;
  const int64_t n = (int64_t)seqs.size(), nh = c.num_attention_heads, nkv = c.num_key_value_heads, D = c.head_dim,
                G = nh / nkv, W = std::max<int64_t>(1, c.dmc.window);
  DMC_CHECK((int64_t)ids.size() == n, "decoder: ", ids.size(), " ids for ", n, " sequences");
  for (int64_t id : ids) DMC_CHECK(id >= 0 && id < c.vocab_size, "decoder: token id ", id, " out of range [0, ", c.vocab_size, ")");
  for (int64_t s : seqs) {
    DMC_CHECK(s >= 0 && s < o_.max_seqs, "decoder: sequence ", s, " out of range");
    DMC_CHECK(pos_[s] < c.max_position_embeddings, "decoder: sequence ", s, " reached max_position_embeddings (",
              c.max_position_embeddings, ")");
  }
  // Worst case every head appends: refuse up front so that no sequence is left half-updated.
  int64_t need = 0;
  for (int64_t s : seqs)
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      for (int64_t h = 0; h < nkv; ++h) need += cache_.length(cache_.row(l, s, h)) % o_.page_size == 0;
  if (need > cache_.free_pages())
    fail("kv cache exhausted: this step may need ", need, " pages, ", cache_.free_pages(), " are free");

  const auto dev = m_.device();
  at::Tensor pos = at::empty({n}, at::kLong);
  for (int64_t i = 0; i < n; ++i) pos[i] = pos_[seqs[i]];
  auto [cos, sin] = rope_cos_sin(m_.inv_freq, pos.to(dev));  // [n, D]
  at::Tensor x = at::embedding(m_.embed, at::tensor(ids, at::kLong).to(dev));  // [n, H]
  const double scale = 1.0 / std::sqrt((double)D);
  const auto acc_t = acc_.scalar_type();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& L = m_.layers[l];
    at::Tensor qkv = at::linear(rms_norm(x, L.attn_norm, c.rms_norm_eps), L.wqkv);
    at::Tensor q = qkv.narrow(-1, 0, nh * D).view({n, nh, D});
    at::Tensor k = qkv.narrow(-1, nh * D, nkv * D).view({n, nkv, D});
    at::Tensor v = qkv.narrow(-1, (nh + nkv) * D, nkv * D).view({n, nkv, D});
    at::Tensor qr, k_out, v_out, alpha;
    if (dmc_) {
      // rotate each token's q at its position: [n, nh, D] as [n, nh, 1, D] with per-token tables
      qr = rope_drop_last(q.unsqueeze(2), cos.unsqueeze(1).unsqueeze(1), sin.unsqueeze(1).unsqueeze(1)).squeeze(2);
      // the same decision and weight functions as the parallel path, on a length-1 sequence
      at::Tensor a = dmc_decision_logits(k, c.dmc.init_val);                    // [n, nkv]
      alpha = (at::sigmoid(a) > 0.5).to(acc_t);
      at::Tensor w = dmc_importance(q.unsqueeze(1), nkv, c.dmc.init_val).squeeze(1).to(acc_t);  // [n, nkv]
      at::Tensor entry = at::cat({w.unsqueeze(-1) * at::cat({k, v}, -1).to(acc_t), w.unsqueeze(-1)}, -1);  // [n, nkv, X]
      std::vector<at::Tensor> kos, vos;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t s = seqs[i], t = pos_[s];
        const bool forced = t == 0 || (!doc_start.empty() && doc_start[i]);
        if (forced) alpha[i].zero_();
        at::Tensor acc = acc_[l][s], ring = ring_[l][s];  // [nkv, X], [nkv, W, X]
        at::Tensor al = alpha[i];                         // [nkv]
        at::Tensor slot = ring.select(1, t % W);          // [nkv, X] entry written W tokens ago
        at::Tensor over = at::zeros({nkv}, al.options());
        for (int64_t h = 0; h < nkv; ++h) {
          int64_t& g = group_[(l * o_.max_seqs + s) * nkv + h];
          g = (al[h].item<double>() > 0 ? g : 0) + 1;
          over[h] = g > W ? 1.0 : 0.0;
        }
        acc.copy_(al.unsqueeze(-1) * acc - over.unsqueeze(-1) * slot + entry[i]);
        slot.copy_(entry[i]);
        kos.push_back(acc.narrow(-1, 0, D) / acc.narrow(-1, 2 * D, 1));
        vos.push_back(acc.narrow(-1, D, D) / acc.narrow(-1, 2 * D, 1));
      }
      at::Tensor kraw = at::stack(kos).to(m_.dtype());  // [n, nkv, D]
      v_out = at::stack(vos).to(m_.dtype());
      k_out = rope_drop_last(kraw.unsqueeze(2), cos.unsqueeze(1).unsqueeze(1), sin.unsqueeze(1).unsqueeze(1)).squeeze(2);
    } else {
      qr = apply_rope(q.unsqueeze(2), cos.unsqueeze(1).unsqueeze(1), sin.unsqueeze(1).unsqueeze(1)).squeeze(2);
      k_out = apply_rope(k.unsqueeze(2), cos.unsqueeze(1).unsqueeze(1), sin.unsqueeze(1).unsqueeze(1)).squeeze(2);
      v_out = v;
      alpha = at::zeros({n, nkv}, acc_.options());
    }
    // cache update: merge overwrites the last slot, append opens one
    at::Tensor al_cpu = alpha.to(at::kCPU);
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < nkv; ++h) {
        const int64_t r = cache_.row(l, seqs[i], h);
        rows.push_back(r);
        if (al_cpu[i][h].item<double>() > 0) cache_.overwrite_last(r, k_out[i][h], v_out[i][h]);
        else if (!cache_.try_append(r, k_out[i][h], v_out[i][h])) fail("kv cache exhausted");
      }
    // attention of each query head over its KV head's slots
    auto [kc, vc, lens] = cache_.gather(rows);  // [n * nkv, S, D]
    const int64_t S = kc.size(1);
    at::Tensor qg = qr.reshape({n * nkv, G, D});
    at::Tensor sc = at::matmul(qg.to(acc_t), kc.transpose(1, 2).to(acc_t)) * scale;  // [n nkv, G, S]
    at::Tensor valid = at::arange(S, at::kLong).unsqueeze(0) < lens.unsqueeze(1);      // [n nkv, S]
    sc = sc.masked_fill(~valid.to(dev).unsqueeze(1), -std::numeric_limits<double>::infinity());
    at::Tensor o = at::matmul(at::softmax(sc, -1), vc.to(acc_t)).to(m_.dtype());      // [n nkv, G, D]
    x = x + at::linear(o.reshape({n, nh * D}), L.wo);
    const int64_t F = c.intermediate_size;
    at::Tensor gu = at::linear(rms_norm(x, L.mlp_norm, c.rms_norm_eps), L.w_gate_up);
    x = x + at::linear(at::silu(gu.narrow(-1, 0, F)) * gu.narrow(-1, F, F), L.w_down);
  }
  for (int64_t s : seqs) ++pos_[s];
  return at::linear(rms_norm(x, m_.norm, c.rms_norm_eps), m_.lm_head);
}

}  // namespace dmc
