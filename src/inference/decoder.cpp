#include "inference/decoder.h"

#include "ops/forced_decisions.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/util.h"
#include "ops/dmc.h"
#include "inference/evict_prefill.h"

#ifdef DMC_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>
#endif

namespace dmc {

#ifdef DMC_WITH_CUDA
struct Decoder::Graph {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor ids, seq, pos, forced, out;  // static inputs and output of the captured step
  bool warmed = false;
};
#else
struct Decoder::Graph {};
#endif

int64_t graph_bucket(int64_t n, int64_t step, int64_t max_batch) {
  if (step <= 1) return n;
  int64_t b = 1;
  while (b < n && b < step) b *= 2;             // 1, 2, 4, ... below the step
  if (b < n) b = (n + step - 1) / step * step;  // then multiples of the step
  return std::max(n, std::min(b, max_batch));
}

PagedCacheOptions decoder_cache_options(const Llama& m, const DecoderOptions& o) {
  PagedCacheOptions c;
  const auto& cfg = m.config;
  c.n_layers = cfg.num_hidden_layers;
  c.max_seqs = o.max_seqs;
  c.n_kv_heads = m.local_kv_heads();  // this rank's KV heads under tensor parallelism
  c.head_dim = cfg.head_dim;
  c.page_size = o.page_size;
  c.max_slots_per_row = cfg.max_position_embeddings + 1;  // baselines hold budget + 1 for a moment
  c.memory_budget_bytes = o.memory_budget_bytes;
  c.n_pages = o.n_pages;
  if (o.n_pages <= 0 && o.memory_budget_bytes <= 0)
    c.n_pages = cfg.num_hidden_layers * o.max_seqs * m.local_kv_heads() *
                PagedKVCache::pages_for(cfg.max_position_embeddings, o.page_size);
  c.dtype = m.dtype();
  c.device = m.device();
  return c;
}

CachePolicy parse_cache_policy(const std::string& name, const std::string& field) {
  if (name == "auto") return CachePolicy::Auto;
  if (name == "vanilla") return CachePolicy::Vanilla;
  if (name == "dmc") return CachePolicy::Dmc;
  if (name == "tova") return CachePolicy::Tova;
  if (name == "h2o") return CachePolicy::H2O;
  if (name == "window") return CachePolicy::Window;
  fail(field, ": expected auto, vanilla, dmc, tova, h2o or window, got '", name, "'");
}

std::string cache_policy_name(CachePolicy p) {
  switch (p) {
    case CachePolicy::Auto: return "auto";
    case CachePolicy::Vanilla: return "vanilla";
    case CachePolicy::Dmc: return "dmc";
    case CachePolicy::Tova: return "tova";
    case CachePolicy::H2O: return "h2o";
    case CachePolicy::Window: return "window";
  }
  return "?";
}

namespace {
CachePolicy resolve_policy(const Llama& m, const DecoderOptions& o) {
  const CachePolicy p =
      o.policy == CachePolicy::Auto ? (m.config.dmc.enabled ? CachePolicy::Dmc : CachePolicy::Vanilla) : o.policy;
  if (evicts(p))
    DMC_CHECK(o.budget >= 1, "cache policy ", cache_policy_name(p),
              ": needs a budget of at least 1 slot per head, got ", o.budget);
  if (p == CachePolicy::Window)
    DMC_CHECK(o.sinks >= 0 && o.sinks < o.budget, "window: sinks (", o.sinks, ") must be below the budget (", o.budget,
              ")");
  if (p == CachePolicy::Dmc && !m.config.dmc.enabled && o.force_cr <= 0)
    fail(
        "cache policy dmc: the model has no DMC stanza in its config.json (retrofit it first, or use force_cr for a "
        "benchmark)");
  return p;
}

// the eviction prefill's parameters from the decoder's options (its chunk also sizes a prompt's working set)
EvictPrefillParams evict_params(CachePolicy policy, const DecoderOptions& o) {
  EvictPrefillParams ep;
  ep.policy = policy;
  ep.budget = o.budget;
  ep.sinks = o.sinks;
  ep.chunk = o.prefill_chunk;
  return ep;
}
}  // namespace

Decoder::Decoder(const Llama& model, const DecoderOptions& o)
    : m_(model),
      o_(o),
      gemm_(o.gemm_row_tuning),
      policy_(resolve_policy(model, o)),
      dmc_(policy_ == CachePolicy::Dmc),
      kernels_(o.use_kernels && decode_kernels_available(model.device(), model.config.head_dim)),
      cache_(decoder_cache_options(model, o)) {
  const auto& c = model.config;
  DMC_CHECK(o.max_seqs >= 1, "decoder: max_seqs must be at least 1");
  pos_.assign(o.max_seqs, 0);
  const int64_t R = c.num_hidden_layers * o.max_seqs * model.local_kv_heads();
  if (dmc_) st_ = DmcState::create(R, c.head_dim, c.dmc.window, model.dtype(), model.device());
  auto [cs, sn] = rope_cos_sin(
      m_.inv_freq, at::arange(c.max_position_embeddings, at::TensorOptions().dtype(at::kLong).device(model.device())));
  cos_ = cs.contiguous();
  sin_ = sn.contiguous();
#ifdef DMC_WITH_CUDA
  graphs_on_ = o.cuda_graphs && kernels_ && model.tp.size == 1 &&
               (!evicts(policy_) || (o.evict_graphs && !env_off("DMC_EVICT_GRAPHS")));
#endif
  if (evicts(policy_)) {
    auto dev = model.device();
    // one more row than the cache: the scratch row that a padding row's (sequence -1) writes go to
    slot_pos_ = at::zeros({R + 1, o.budget + 1}, at::TensorOptions().dtype(at::kLong).device(dev));
    slot_score_ = at::zeros({R + 1, o.budget + 1}, at::TensorOptions().dtype(at::kFloat).device(dev));
  }
}

int64_t Decoder::state_bytes() const {
  auto b = [](const at::Tensor& t) { return t.defined() ? t.numel() * (int64_t)t.element_size() : 0; };
  return b(st_.acc) + b(st_.ring_kv) + b(st_.ring_w) + b(st_.group) + b(cache_.table) + b(cache_.lengths) +
         b(cache_.free_list) + b(slot_pos_) + b(slot_score_);
}

int64_t Decoder::state_bytes_per_row(const LlamaConfig& c, CachePolicy policy, int64_t budget, int64_t page_size,
                                     at::ScalarType dtype) {
  const bool evicting = evicts(policy);
  const int64_t table_row =
      PagedKVCache::pages_for(c.max_position_embeddings + 1, page_size) * 4 + 4;  // int32 table, length
  return (policy == CachePolicy::Dmc ? DmcState::bytes_per_row(c.head_dim, c.dmc.window, dtype) : 0) + table_row +
         (evicting ? (budget + 1) * (8 + 4) : 0);  // int64 position + fp32 score per slot
}

void Decoder::free(int64_t seq) {
  DMC_CHECK(seq >= 0 && seq < o_.max_seqs, "decoder: sequence ", seq, " out of range");
  cache_.free_seq(seq);
  pos_[seq] = 0;
}

at::Tensor Decoder::slot_counts(int64_t seq) const {
  const auto& c = m_.config;
  return cache_.lengths.view({c.num_hidden_layers, o_.max_seqs, m_.local_kv_heads()})
      .select(1, seq)
      .to(at::kCPU, at::kLong);
}

void Decoder::bench_fill(const std::vector<int64_t>& seqs, int64_t T) {
  at::NoGradGuard ng;
  const auto& c = m_.config;
  DMC_CHECK(policy_ == CachePolicy::Vanilla || (policy_ == CachePolicy::Dmc && o_.force_cr > 0),
            "bench_fill: only vanilla or dmc with force_cr (slot counts must be known without running the model)");
  DMC_CHECK(T >= 1 && T < c.max_position_embeddings, "bench_fill: prompt_len ", T, " out of range");
  const int64_t nkv = m_.local_kv_heads(), D = c.head_dim, X = 2 * D + 1, W = std::max<int64_t>(1, c.dmc.window);
  const auto dev = m_.device();
  auto lopt = at::TensorOptions().dtype(at::kLong).device(dev);
  // slots per head and the decode state of the last group
  std::vector<int64_t> counts(nkv, T), group(nkv, 1);
  if (dmc_) {
    for (int64_t h = 0; h < nkv; ++h) {
      int64_t n = 1, last = 0;
      for (int64_t t = 1; t < T; ++t)
        if (!dmc_forced_merge(t, h, o_.force_cr)) {
          ++n;
          last = t;
        }
      counts[h] = n;
      group[h] = T - last;
    }
  }
  const int64_t maxc = *std::max_element(counts.begin(), counts.end());
  const int64_t chunk =
      std::max<int64_t>(1, (int64_t(1) << 27) / std::max<int64_t>(1, nkv * maxc * D));  // ~256 MB temporaries
  for (size_t s0 = 0; s0 < seqs.size(); s0 += chunk) {
    const size_t s1 = std::min(seqs.size(), s0 + (size_t)chunk);
    std::vector<int64_t> part(seqs.begin() + s0, seqs.begin() + s1);
    for (int64_t s : part) DMC_CHECK(pos_[s] == 0, "bench_fill: sequence ", s, " is not empty");
    at::Tensor seq_t = at::tensor(part, at::kLong).to(dev);
    const int64_t m = (int64_t)part.size();
    at::Tensor cnt = at::tensor(counts, at::kLong).to(dev).repeat({m});  // [m nkv]
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      at::Tensor rows = cache_rows(cache_, l, seq_t).flatten();
      at::Tensor k = at::randn({m * nkv, maxc, D}, lopt.dtype(m_.dtype())) * 0.5;
      at::Tensor v = at::randn({m * nkv, maxc, D}, lopt.dtype(m_.dtype()));
      cache_.write_rows(rows, k, v, cnt);
      if (dmc_) {
        at::Tensor acc = at::randn({m * nkv, X}, lopt.dtype(at::kFloat));
        acc.select(1, 2 * D).uniform_(1.0, 2.0);
        st_.acc.index_copy_(0, rows, acc);
        st_.ring_kv.index_copy_(0, rows, at::randn({m * nkv, W, 2 * D}, lopt.dtype(m_.dtype())));
        st_.ring_w.index_copy_(0, rows, at::rand({m * nkv, W}, lopt.dtype(at::kFloat)));
        st_.group.index_copy_(0, rows, at::tensor(group, at::kInt).to(dev).repeat({m}));
      }
    }
    for (int64_t s : part) pos_[s] = T;
  }
}

std::vector<int64_t> Decoder::slot_positions(int64_t layer, int64_t seq, int64_t head) const {
  DMC_CHECK(slot_pos_.defined(), "slot_positions: only the eviction baselines track slot positions");
  const int64_t r = cache_.row(layer, seq, head), n = cache_.length(r);
  at::Tensor p = slot_pos_[r].narrow(0, 0, n).to(at::kCPU);
  return std::vector<int64_t>(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + n);
}

std::pair<int64_t, int64_t> Decoder::step_need(const std::vector<int64_t>& seqs) const {
  const auto& c = m_.config;
  if (seqs.empty()) return {0, cache_.free_pages()};
  at::Tensor s = at::tensor(seqs, at::kLong).to(m_.device());
  at::Tensor len = cache_.lengths.view({c.num_hidden_layers, o_.max_seqs, m_.local_kv_heads()}).index_select(1, s);
  at::Tensor need = (len % o_.page_size == 0).sum().to(at::kInt).reshape({1});
  at::Tensor both = at::cat({need, cache_.alloc.narrow(0, 0, 1)}).to(at::kCPU);
  return {both[0].item<int64_t>(), both[1].item<int64_t>()};
}

bool Decoder::can_step(const std::vector<int64_t>& seqs) const {
  auto [need, free] = step_need(seqs);
  return need <= free;
}

int64_t Decoder::pages_for_prompt(int64_t prompt_len) const {
  const auto& c = m_.config;
  const int64_t slots = evicts(policy_) ? std::min(prompt_len + 1, o_.budget + 1) : prompt_len + 1;
  return c.num_hidden_layers * m_.local_kv_heads() * cache_.pages_for(slots);
}

int64_t Decoder::prefill_tokens_for(int64_t prompt_len) const {
  if (!evicts(policy_)) return prompt_len;
  return std::min(prompt_len, evict_prefill_chunk(evict_params(policy_, o_)) + o_.budget);
}

at::Tensor Decoder::prefill(int64_t seq, const std::vector<int64_t>& prompt) {
  return prefill(std::vector<int64_t>{seq}, std::vector<std::vector<int64_t>>{prompt})[0];
}

at::Tensor Decoder::prefill(const std::vector<int64_t>& seqs, const std::vector<std::vector<int64_t>>& prompts) {
  at::NoGradGuard ng;
  const auto& c = m_.config;
  const int64_t n = (int64_t)seqs.size(), nkv = m_.local_kv_heads(), D = c.head_dim, L = c.num_hidden_layers,
                W = std::max<int64_t>(1, c.dmc.window);
  DMC_CHECK(n >= 1 && (int64_t)prompts.size() == n, "prefill: ", n, " sequences for ", prompts.size(), " prompts");
  std::vector<int64_t> lens;
  int64_t need = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t seq = seqs[i], T = (int64_t)prompts[i].size();
    DMC_CHECK(seq >= 0 && seq < o_.max_seqs, "prefill: sequence ", seq, " out of range");
    DMC_CHECK(pos_[seq] == 0, "prefill: sequence ", seq, " is not empty");
    DMC_CHECK(std::count(seqs.begin(), seqs.end(), seq) == 1, "prefill: sequence ", seq, " listed twice");
    DMC_CHECK(T >= 1 && T <= c.max_position_embeddings, "prefill: prompt of ", T, " tokens (max ",
              c.max_position_embeddings, ")");
    for (int64_t id : prompts[i])
      DMC_CHECK(id >= 0 && id < c.vocab_size, "prefill: token id ", id, " out of range [0, ", c.vocab_size, ")");
    lens.push_back(T);
    need += L * nkv * cache_.pages_for(evicts(policy_) ? std::min(T, o_.budget) : T);
  }
  if (need > cache_.free_pages())
    fail("kv cache exhausted: the prompts may need ", need, " pages, ", cache_.free_pages(), " are free");
  const int64_t Tmax = *std::max_element(lens.begin(), lens.end()),
                Tmin = *std::min_element(lens.begin(), lens.end());
  const auto dev = m_.device();
  auto lopt = at::TensorOptions().dtype(at::kLong).device(dev);
  std::vector<int64_t> padded(n * Tmax, 0);  // right padding with token 0: no real token attends to it
  for (int64_t i = 0; i < n; ++i) std::copy(prompts[i].begin(), prompts[i].end(), padded.begin() + i * Tmax);
  at::Tensor ids = at::tensor(padded, at::kLong).view({n, Tmax}).to(dev);
  at::Tensor len = at::tensor(lens, at::kLong).to(dev);  // [n]
  at::Tensor t_idx = at::arange(Tmax, lopt);
  at::Tensor real = t_idx.unsqueeze(0) < len.unsqueeze(1);  // [n, Tmax]
  // the cache build works on all layers at once wherever the tensors are small (page accounting, decode state), so
  // that the host launches a few dozen operations, not a few dozen a layer; only the k/v payload goes layer by layer
  const int64_t layer_stride = cache_.row(1, 0, 0) - cache_.row(0, 0, 0);
  at::Tensor seq_t = at::tensor(seqs, at::kLong).to(dev);
  at::Tensor rows_all = (cache_rows(cache_, 0, seq_t).unsqueeze(0) + at::arange(L, lopt).view({L, 1, 1}) * layer_stride)
                            .flatten();  // [L n nkv] rows (layer, seq, head)
  // per layer the slots' keys and values [n nkv, >= most, D], and the slot counts [L, n, nkv]
  std::vector<at::Tensor> ks(L), vs(L);
  at::Tensor counts_all, h_last, b_all;
  DmcOptions dopt = model_dmc_options(c);
  dopt.force_cr = o_.force_cr;
  dopt.capture_tail = Tmax - Tmin + W;  // each row's last W raw tokens, whatever its padding
  DmcLayerAttention da(DmcMode::Eval, dopt, {}, {}, /*capture=*/true);
  if (evicts(policy_)) {
    EvictPrefillResult r = evict_prefill(m_, ids, lens, evict_params(policy_, o_));
    std::vector<at::Tensor> cs;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t S = r.k[l].size(2);
      ks[l] = r.k[l].view({n * nkv, S, D});
      vs[l] = r.v[l].view({n * nkv, S, D});
      cs.push_back((r.pos[l] >= 0).sum(-1));
    }
    counts_all = at::stack(cs);  // [L, n, nkv]
    // slot metadata as a token-by-token prefill leaves it: positions and accumulated weights, budget + 1 columns
    auto pad = [&](const std::vector<at::Tensor>& per_layer, const at::Tensor& like) {
      at::Tensor t = at::stack(per_layer).view({L * n * nkv, -1});
      return at::constant_pad_nd(t, {0, o_.budget + 1 - t.size(1)}, 0).to(like.scalar_type());
    };
    slot_pos_.index_copy_(0, rows_all, pad(r.pos, slot_pos_).clamp_min(0));
    slot_score_.index_copy_(0, rows_all, pad(r.score, slot_score_));
    h_last = r.last_hidden;
  } else {
    // the prompts through the model's one forward, its attention capturing what the cache needs
    VanillaAttention va(/*capture=*/true);
    Attention& attn = dmc_ ? static_cast<Attention&>(da) : va;
    const at::Tensor h = m_.forward_hidden(ids, {}, attn);  // [n, Tmax, H]
    h_last = h.gather(1, (len - 1).view({n, 1, 1}).expand({n, 1, h.size(2)})).squeeze(1);
    if (dmc_) {
      // slots per (layer, head): one per group; a group ends at the token before the next append, or at the row's
      // last token. Slot s of a head takes the token that ends its (s+1)-th group.
      std::vector<at::Tensor> bs;
      for (int64_t l = 0; l < L; ++l) bs.push_back(da.boundaries[l]);  // [n, Tmax, nkv]: merge into the previous
      b_all = at::stack(bs).to(at::kBool).permute({0, 1, 3, 2});      // [L, n, nkv, Tmax]
      at::Tensor next_appends = at::cat({~b_all.narrow(3, 1, Tmax - 1), at::ones({L, n, nkv, 1}, b_all.options())}, 3);
      at::Tensor is_last = (t_idx.unsqueeze(0) == (len - 1).unsqueeze(1)).view({1, n, 1, Tmax});
      at::Tensor ends = (next_appends | is_last) & real.view({1, n, 1, Tmax});
      counts_all = ends.sum(3);
      const int64_t most = counts_all.max().item<int64_t>();
      for (int64_t l = 0; l < L; ++l) {
        at::Tensor cs = at::cumsum(ends[l].reshape({n * nkv, Tmax}).to(at::kLong), 1);  // [n nkv, Tmax]
        at::Tensor src =
            at::searchsorted(cs, at::arange(1, most + 1, lopt).unsqueeze(0).expand({n * nkv, most}).contiguous())
                .clamp_max(Tmax - 1);  // [n nkv, most]
        at::Tensor gi = src.unsqueeze(-1).expand({n * nkv, most, D});
        ks[l] = da.k_rot[l].reshape({n * nkv, Tmax, D}).gather(1, gi);
        vs[l] = da.v_hat[l].reshape({n * nkv, Tmax, D}).gather(1, gi);
      }
    } else {
      counts_all = len.view({1, n, 1}).expand({L, n, nkv});
      for (int64_t l = 0; l < L; ++l) {
        ks[l] = va.k_rot[l].reshape({n * nkv, Tmax, D});
        vs[l] = va.v[l].reshape({n * nkv, Tmax, D});
      }
    }
  }
  const int64_t R = L * n * nkv;
  at::Tensor host = at::cat({counts_all.flatten().to(at::kLong), cache_.alloc.narrow(0, 0, 1).to(at::kLong)}).to(at::kCPU);
  const int64_t* hc = host.data_ptr<int64_t>();
  // every layer's pages at once: an exhausted pool fails here, before anything is written
  cache_.allocate_rows(rows_all, counts_all.flatten(), cache_.plan_rows(hc, R, hc[R]));
  for (int64_t l = 0; l < L; ++l) {
    const int64_t most = *std::max_element(hc + l * n * nkv, hc + (l + 1) * n * nkv);
    cache_.write_slots(rows_all.narrow(0, l * n * nkv, n * nkv), ks[l], vs[l], counts_all[l].flatten(), most);
  }
  if (dmc_) {
    // decode state after each prompt, every layer at once: group length, ring of the last W entries (by position
    // mod W), sums over the last min(group, W) of them (only the last W tokens can take part). kv_raw holds the
    // padded batch's last nt tokens, positions [Tmax - nt, Tmax); row i needs [T_i - W, T_i).
    const int64_t nt = da.kv_raw[0].size(1);
    at::Tensor t = len.unsqueeze(1) - W + at::arange(W, lopt).unsqueeze(0);  // [n, W] positions of the window
    at::Tensor ok = t >= 0;
    at::Tensor gk = (t - (Tmax - nt)).clamp(0, nt - 1).view({n, W, 1, 1}).expand({n, W, nkv, 2 * D});
    at::Tensor go = t.clamp_min(0).view({n, W, 1}).expand({n, W, nkv});
    std::vector<at::Tensor> kvs, oms;
    for (int64_t l = 0; l < L; ++l) {
      kvs.push_back(da.kv_raw[l].gather(1, gk));     // [n, W, nkv, 2D]
      oms.push_back(da.omega[l].gather(1, go));      // [n, W, nkv]
    }
    at::Tensor okf = ok.view({1, n, 1, W, 1});
    at::Tensor kw = at::stack(kvs).permute({0, 1, 3, 2, 4}).to(at::kFloat) * okf;  // [L, n, nkv, W, 2D]
    at::Tensor ow = at::stack(oms).to(at::kFloat).permute({0, 1, 3, 2}).unsqueeze(-1) * okf;  // [L, n, nkv, W, 1]
    at::Tensor last_append =
        (t_idx.view({1, 1, 1, Tmax}) * (~b_all & real.view({1, n, 1, Tmax})).to(at::kLong)).amax(3);  // [L, n, nkv]
    at::Tensor group = len.view({1, n, 1}) - last_append;
    st_.group.index_copy_(0, rows_all, group.flatten().to(at::kInt));
    at::Tensor e = at::cat({ow * kw, ow}, -1);  // [L, n, nkv, W, 2D + 1]
    at::Tensor inwin = t.view({1, n, 1, W}) >= (len.view({1, n, 1}) - at::minimum(group, at::full_like(group, W)))
                                                   .unsqueeze(-1);  // [L, n, nkv, W]
    st_.acc.index_copy_(0, rows_all, (e * (inwin & ok.view({1, n, 1, W})).unsqueeze(-1)).sum(3).view({R, 2 * D + 1}));
    // the ring by position mod W (the W window positions fill every ring slot once)
    at::Tensor slot = ((t % W) + W) % W;  // [n, W]
    at::Tensor ring_kv = at::zeros_like(kw).scatter(3, slot.view({1, n, 1, W, 1}).expand_as(kw), kw);
    at::Tensor ring_w = at::zeros_like(ow).scatter(3, slot.view({1, n, 1, W, 1}).expand_as(ow), ow);
    st_.ring_kv.view({-1, W, 2 * D}).index_copy_(0, rows_all, ring_kv.view({R, W, 2 * D}).to(st_.ring_kv.scalar_type()));
    st_.ring_w.view({-1, W}).index_copy_(0, rows_all, ring_w.view({R, W}).to(st_.ring_w.scalar_type()));
  }
  for (int64_t i = 0; i < n; ++i) pos_[seqs[i]] = lens[i];
  return gather_vocab(at::linear(h_last, m_.lm_head), m_.tp);
}

at::Tensor Decoder::step(const std::vector<int64_t>& seqs, const std::vector<int64_t>& ids,
                         const std::vector<bool>& doc_start) {
  at::NoGradGuard ng;
  const auto& c = m_.config;
  const int64_t n = (int64_t)seqs.size();
  DMC_CHECK(n >= 1, "decoder: a step needs at least one sequence");
  DMC_CHECK((int64_t)ids.size() == n, "decoder: ", ids.size(), " ids for ", n, " sequences");
  DMC_CHECK(doc_start.empty() || (int64_t)doc_start.size() == n, "decoder: doc_start needs ", n, " entries");
  for (int64_t id : ids)
    DMC_CHECK(id >= 0 && id < c.vocab_size, "decoder: token id ", id, " out of range [0, ", c.vocab_size, ")");
  std::vector<bool> seen(o_.max_seqs, false);
  int64_t max_len = 1;
  std::vector<int64_t> pos(n), forced(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = seqs[i];
    DMC_CHECK(s >= 0 && s < o_.max_seqs, "decoder: sequence ", s, " out of range");
    DMC_CHECK(!seen[s], "decoder: sequence ", s, " listed twice in one step");
    seen[s] = true;
    DMC_CHECK(pos_[s] < c.max_position_embeddings, "decoder: sequence ", s, " reached max_position_embeddings (",
              c.max_position_embeddings, ")");
    pos[i] = pos_[s];
    forced[i] = pos_[s] == 0 || (!doc_start.empty() && doc_start[i]);
    max_len = std::max(max_len, pos_[s] + 1);
  }
  if (o_.budget > 0 && evicts(policy_)) max_len = std::min(max_len, o_.budget + 1);
  // worst case every row crosses a page: refuse up front so that no sequence is left half-updated
  auto [need, free] = step_need(seqs);
  if (need > free) fail("kv cache exhausted: this step may need ", need, " pages, ", free, " are free");

  const auto dev = m_.device();
  at::Tensor ids_h = at::tensor(ids, at::kLong), seq_h = at::tensor(seqs, at::kLong),
             pos_h = at::tensor(pos, at::kLong);
  at::Tensor forced_h = at::tensor(forced, at::kLong).to(at::kBool);
  at::Tensor logits;
  // a graph runs a fixed attention bound (the split count must not change between replays; empty splits exit at
  // once): the eviction baselines hold at most budget + 1 slots a row, the others up to max_position_embeddings
  const int64_t bound = evicts(policy_) && o_.budget > 0 ? o_.budget + 1 : c.max_position_embeddings;
  const bool graph = graphs_on_ && n <= o_.graph_max_batch;
  if (graph || o_.pad_steps) {
    // the step of its batch bucket; rows past n are padding (sequence -1: the kernels and the reference ops leave
    // the cache and the state alone; their logits are dropped)
    const int64_t nb = graph_bucket(n, o_.graph_batch_step, o_.graph_max_batch);
    if (nb > n) {
      const int64_t pad = nb - n;
      ids_h = at::cat({ids_h, at::zeros({pad}, at::kLong)});
      seq_h = at::cat({seq_h, at::full({pad}, -1, at::kLong)});
      pos_h = at::cat({pos_h, at::zeros({pad}, at::kLong)});
      forced_h = at::cat({forced_h, at::ones({pad}, at::kBool)});
    }
#ifdef DMC_WITH_CUDA
    if (graph) {
      auto& g = graphs_[nb];
      if (!g) {
        g = std::make_shared<Graph>();
        g->ids = ids_h.to(dev);
        g->seq = seq_h.to(dev);
        g->pos = pos_h.to(dev);
        g->forced = forced_h.to(dev);
      } else {
        g->ids.copy_(ids_h);
        g->seq.copy_(seq_h);
        g->pos.copy_(pos_h);
        g->forced.copy_(forced_h);
      }
      if (g->graph) {
        g->graph->replay();
        logits = g->out;
      } else if (!g->warmed) {
        logits = run_step(g->ids, g->seq, g->pos, g->forced, bound);  // eager warm-up (cuBLAS plans, allocator)
        g->warmed = true;
      } else {
        torch::cuda::synchronize(dev.index());
        auto cg = std::make_unique<at::cuda::CUDAGraph>();
        {
          c10::cuda::CUDAStreamGuard sg(c10::cuda::getStreamFromPool(false, dev.index()));
          cg->capture_begin(graph_pool_);
          g->out = run_step(g->ids, g->seq, g->pos, g->forced, bound);
          cg->capture_end();
          if (graph_pool_.first == 0 && graph_pool_.second == 0) graph_pool_ = cg->pool();
        }
        torch::cuda::synchronize(dev.index());
        g->graph = std::move(cg);
        g->graph->replay();
        logits = g->out;
      }
    }
#endif
    // pad_steps without a graph: the padded step eagerly, at the bound the graph would run
    if (!logits.defined()) logits = run_step(ids_h.to(dev), seq_h.to(dev), pos_h.to(dev), forced_h.to(dev), bound);
    logits = logits.narrow(0, 0, n);
  }
  if (!logits.defined()) logits = run_step(ids_h.to(dev), seq_h.to(dev), pos_h.to(dev), forced_h.to(dev), max_len);
  for (int64_t s : seqs) ++pos_[s];
  return logits.clone();
}

int64_t Decoder::graphs_captured() const {
  int64_t k = 0;
#ifdef DMC_WITH_CUDA
  for (const auto& [n, g] : graphs_) k += g && g->graph ? 1 : 0;
#endif
  return k;
}

// The attention of a decode step: every listed sequence's next token through the paged cache (the fused DMC state
// update + cache write, then the paged attention; eviction baselines take the reference attention, which yields
// the weights they evict by). Positions are per sequence (pos_t), so the model's RoPE tables are not used.
//   qkv [n, 1, (nh + 2 nkv) D] -> [n, 1, nh D]
class PagedDecodeAttention : public Attention {
 public:
  PagedDecodeAttention(Decoder& d, const at::Tensor& seq_t, const at::Tensor& pos_t, const at::Tensor& forced_t,
                       int64_t max_len)
      : d_(d), seq_t_(seq_t), pos_t_(pos_t), forced_t_(forced_t), max_len_(max_len) {}
  void begin(const Llama& m, const at::Tensor& ids, const at::Tensor& positions) override {
    (void)positions;
    begin_shapes(m, ids);
    const auto& c = m.config;
    p_.n_heads = nh_;
    p_.n_kv_heads = nkv_;
    p_.head_dim = hd_;
    p_.dmc = d_.dmc_;
    p_.init_val = c.dmc.init_val;
    p_.window = c.dmc.window;
    p_.force_cr = d_.o_.force_cr;
  }
  Out layer(int64_t l, const at::Tensor& qkv, bool recompute) override {
    (void)recompute;
    const int64_t n = qkv.size(0);
    const double scale = 1.0 / std::sqrt((double)hd_);
    p_.layer = l;
    at::Tensor qr = decode_update(qkv.view({n, -1}), seq_t_, pos_t_, forced_t_, d_.cos_, d_.sin_, p_, d_.st_, d_.cache_,
                                  d_.kernels_);
    at::Tensor o;
    if (d_.slot_pos_.defined()) {  // eviction baselines
      at::Tensor probs;
      o = paged_attention_weights(qr, d_.cache_, l, seq_t_, max_len_, scale, probs);
      d_.evict(l, seq_t_, pos_t_, probs);
    } else {
      o = paged_attention(qr, d_.cache_, l, seq_t_, max_len_, scale, d_.kernels_);
    }
    return {o.reshape({n, 1, nh_ * hd_}), {}};
  }

 private:
  Decoder& d_;
  const at::Tensor &seq_t_, &pos_t_, &forced_t_;
  int64_t max_len_;
  DecodeUpdateParams p_;
};

at::Tensor Decoder::run_step(const at::Tensor& ids_t, const at::Tensor& seq_t, const at::Tensor& pos_t,
                             const at::Tensor& forced_t, int64_t max_len) {
  const int64_t n = ids_t.size(0), H = m_.config.hidden_size;
  PagedDecodeAttention attn(*this, seq_t, pos_t, forced_t, max_len);
  const Llama::Gemm gemm = [this](const at::Tensor& x, const at::Tensor& w) { return gemm_.linear(x, w); };
  at::Tensor h = m_.forward_hidden(ids_t.view({n, 1}), pos_t, attn, &gemm);  // [n, 1, H]
  return gather_vocab(gemm_.linear(h.view({n, H}), m_.lm_head), m_.tp);
}

void Decoder::evict(int64_t layer, const at::Tensor& seq_t, const at::Tensor& pos_t, const at::Tensor& probs) {
  // probs [n, nkv, G, S]; the step has just appended its token at slot len - 1 of every row
  const int64_t n = probs.size(0), nkv = probs.size(1), S = probs.size(3), D = m_.config.head_dim, P = o_.page_size,
                B = o_.budget, cap = B + 1;
  // padding rows (sequence -1, a graph bucket's spare rows) read row 0, write the scratch row of slot_pos_ /
  // slot_score_ and the trash page, and neither evict nor change a length: no host sync, so the step can be captured
  at::Tensor pad = (seq_t < 0).unsqueeze(1).expand({n, nkv}).reshape({-1});       // [n nkv]
  at::Tensor rows_raw = cache_rows(cache_, layer, seq_t).flatten();
  at::Tensor rows = rows_raw.masked_fill(pad, 0);                                 // [n nkv], for reads
  at::Tensor wrows = rows_raw.masked_fill(pad, slot_pos_.size(0) - 1);            // for slot_pos_ / slot_score_
  at::Tensor len = cache_.lengths.index_select(0, rows).to(at::kLong).masked_fill(pad, 1);  // [n nkv]
  at::Tensor w = probs.mean(2).reshape({n * nkv, S});                   // [n nkv, S]
  if (S < cap) w = at::constant_pad_nd(w, {0, cap - S}, 0);
  w = w.narrow(1, 0, cap);
  at::Tensor spos = slot_pos_.index_select(0, rows);  // [n nkv, cap]
  at::Tensor sscore = slot_score_.index_select(0, rows);
  at::Tensor last = len - 1;
  at::Tensor posr = pos_t.unsqueeze(1).expand({n, nkv}).reshape({-1});
  // the new token's metadata at its slot
  at::Tensor col = at::arange(cap, rows.options()).unsqueeze(0);
  at::Tensor is_new = col == last.unsqueeze(1);
  spos = at::where(is_new, posr.unsqueeze(1), spos);
  sscore = at::where(is_new, at::zeros_like(sscore), sscore);
  at::Tensor valid = col < len.unsqueeze(1);
  sscore = sscore + w * valid;
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor key;
  if (policy_ == CachePolicy::Tova)
    key = w.clone();
  else if (policy_ == CachePolicy::H2O)
    key = at::where(spos > posr.unsqueeze(1) - B / 2, at::full_like(sscore, inf), sscore);
  else
    key = at::where(spos < o_.sinks, at::full_like(sscore, inf), spos.to(at::kFloat));
  key = key.masked_fill(~valid, inf);
  at::Tensor j = key.argmin(1);  // [n nkv]
  at::Tensor ev = (len > B) & ~pad;
  // move the last slot into the evicted one (a no-op when the newest is evicted, or no eviction)
  at::Tensor dst = at::where(ev, j, last);
  at::Tensor sidx = cache_.slot_index(rows, cap);
  const int64_t trash = cache_.n_pages() * P;  // a padding row copies the trash page's slot onto itself
  at::Tensor flat_src = sidx.gather(1, last.clamp_min(0).unsqueeze(1)).squeeze(1).masked_fill(pad, trash);
  at::Tensor flat_dst = sidx.gather(1, dst.clamp_min(0).unsqueeze(1)).squeeze(1).masked_fill(pad, trash);
  at::Tensor kp = cache_.k_pages.view({-1, D}), vp = cache_.v_pages.view({-1, D});
  kp.index_copy_(0, flat_dst, kp.index_select(0, flat_src));
  vp.index_copy_(0, flat_dst, vp.index_select(0, flat_src));
  auto move = [&](at::Tensor t) {
    at::Tensor moved = t.gather(1, last.clamp_min(0).unsqueeze(1));
    at::Tensor out = t.scatter(1, dst.clamp_min(0).unsqueeze(1), moved);
    return at::where(ev.unsqueeze(1), out, t);
  };
  spos = move(spos);
  sscore = move(sscore);
  slot_pos_.index_copy_(0, wrows, spos);
  slot_score_.index_copy_(0, wrows, sscore);
  // a row that shrinks back onto a page boundary gives its last page back to the pool
  at::Tensor drop = ev & (last % P == 0);
  at::Tensor pages = cache_.table.index_select(0, rows)
                         .gather(1, last.div(P, "floor").clamp_max(cache_.max_pages_per_row() - 1).unsqueeze(1))
                         .squeeze(1);
  cache_.give_pages(pages, drop);
  // an evicting row shrinks by one; as a sum (padding rows add 0 to row 0: atomic adds, so a repeated row cannot
  // race, and no sort or host sync inside a captured step)
  cache_.lengths.scatter_add_(0, rows, -ev.to(at::kInt));
}

}  // namespace dmc
