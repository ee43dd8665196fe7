#include "inference/perplexity.h"

#include <chrono>
#include <cmath>

#include "common/error.h"
#include "common/util.h"
#include "inference/decoder.h"

namespace dmc {

double PplResult::ppl() const { return std::exp(nll()); }

double PplResult::cr() const {
  double t = 0, sl = 0;
  for (size_t l = 0; l < head_tokens.size(); ++l)
    for (size_t g = 0; g < head_tokens[l].size(); ++g) {
      t += head_tokens[l][g];
      sl += head_slots[l][g];
    }
  return sl > 0 ? t / sl : 1.0;
}

std::vector<std::vector<double>> PplResult::cr_per_head() const {
  auto r = head_tokens;
  for (size_t l = 0; l < r.size(); ++l)
    for (size_t g = 0; g < r[l].size(); ++g)
      r[l][g] = head_slots[l][g] > 0 ? head_tokens[l][g] / head_slots[l][g] : 1.0;
  return r;
}

namespace {
// The parallel forward's attention: the model's own (DMC in eval mode for a DMC model: hard decisions).
struct ModelAttention {
  explicit ModelAttention(const LlamaConfig& c) : dmc(DmcMode::Eval, model_dmc_options(c)), use_dmc(c.dmc.enabled) {}
  Attention& get() { return use_dmc ? static_cast<Attention&>(dmc) : vanilla; }
  DmcLayerAttention dmc;
  VanillaAttention vanilla;
  bool use_dmc;
};
}  // namespace

PplResult perplexity(const Llama& model, const std::vector<int64_t>& tokens, const PplOptions& o) {
  const int64_t L = (int64_t)tokens.size();
  const int64_t S = o.seq_len, stride = o.stride > 0 ? o.stride : o.seq_len;
  DMC_CHECK(S >= 2, "seq_len: must be at least 2, got ", S);
  DMC_CHECK(stride <= S, "stride: must be <= seq_len (", S, "), got ", stride);
  DMC_CHECK(S <= model.config.max_position_embeddings, "seq_len: ", S, " exceeds the model's max_position_embeddings (",
            model.config.max_position_embeddings, ")");
  DMC_CHECK(L >= 2, "perplexity: the text has ", L, " tokens, need at least 2");
  for (int64_t id : tokens)
    DMC_CHECK(id >= 0 && id < model.config.vocab_size, "perplexity: token id ", id, " out of range");
  at::NoGradGuard ng;
  const at::Tensor all = at::tensor(tokens, at::kLong);
  DMC_CHECK(o.mode == "parallel" || o.mode == "incremental", "mode: expected parallel or incremental, got '", o.mode,
            "'");
  PplResult r;
  auto t0 = std::chrono::steady_clock::now();
  DMC_CHECK(o.batch >= 1, "batch: must be at least 1, got ", o.batch);
  const auto& c = model.config;
  DecoderOptions dopt;
  dopt.max_seqs = 1;
  dopt.n_pages = c.num_hidden_layers * model.local_kv_heads() * PagedKVCache::pages_for(S + 1, dopt.page_size);
  const CachePolicy cache = parse_cache_policy(o.cache, "cache policy (--cache)");  // the one parse of the name
  dopt.policy = cache;
  dopt.sinks = o.sinks;
  const bool evicting = evicts(cache);
  if (evicting) {
    DMC_CHECK(o.budget > 0 || o.cr > 1.0, "--cache ", o.cache, ": give --budget (slots per head) or --cr (> 1)");
    dopt.budget = o.budget > 0 ? o.budget : (int64_t)std::ceil((double)S / o.cr);
  }
  DMC_CHECK(o.mode == "incremental" || cache == CachePolicy::Auto ||
                cache == (c.dmc.enabled ? CachePolicy::Dmc : CachePolicy::Vanilla),
            "--cache ", o.cache, " needs --mode incremental (the parallel forward runs the model's own attention)");
  const bool dmc = c.dmc.enabled || evicting;
  ModelAttention ma(c);
  Attention& attn = ma.get();
  DmcLayerAttention& dmc_attn = ma.dmc;
  if (dmc) {
    r.head_tokens.assign(c.num_hidden_layers, std::vector<double>(c.num_key_value_heads, 0.0));
    r.head_slots = r.head_tokens;
  }
  // the windows: [begin, end) of the stream, scoring positions first..end-1
  struct Window {
    int64_t begin, end, first;
  };
  std::vector<Window> wins;
  for (int64_t begin = 0, prev_end = 0; begin < L; begin += stride) {
    const int64_t end = std::min(begin + S, L);
    wins.push_back({begin, end, std::max(prev_end, begin + 1)});
    prev_end = end;
    if (end == L) break;
  }
  Progress prog("eval ppl", (int64_t)wins.size(), 5.0);
  if (o.mode == "incremental") {
    // groups of up to o.batch windows decode together, one sequence each, a token of every window per step
    const int64_t per_seq_pages = dopt.n_pages;
    for (size_t g0 = 0; g0 < wins.size(); g0 += (size_t)o.batch) {
      const size_t n = std::min(wins.size() - g0, (size_t)o.batch);
      DecoderOptions d = dopt;
      d.max_seqs = (int64_t)n;
      d.n_pages = per_seq_pages * (int64_t)n;
      Decoder dec(model, d);
      int64_t steps = 0;
      for (size_t i = 0; i < n; ++i) steps = std::max(steps, wins[g0 + i].end - 1 - wins[g0 + i].begin);
      at::Tensor nll = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(model.device()));
      for (int64_t t = 0; t < steps; ++t) {
        std::vector<int64_t> seqs, ids, rows, targets;
        for (size_t i = 0; i < n; ++i) {
          const Window& w = wins[g0 + i];
          const int64_t p = w.begin + t;
          if (p >= w.end - 1) continue;
          if (p + 1 >= w.first) {
            rows.push_back((int64_t)seqs.size());
            targets.push_back(tokens[p + 1]);
          }
          seqs.push_back((int64_t)i);
          ids.push_back(tokens[p]);
        }
        at::Tensor lg = dec.step(seqs, ids);  // [n_active, vocab]
        if (rows.empty()) continue;
        at::Tensor sel = lg.index_select(0, at::tensor(rows, at::kLong).to(lg.device())).to(at::kFloat);
        at::Tensor tg = at::tensor(targets, at::kLong).to(lg.device());
        nll += at::cross_entropy_loss(sel, tg, {}, at::Reduction::Sum).to(at::kDouble);
      }
      r.nll_sum += nll.item<double>();
      for (size_t i = 0; i < n; ++i) {
        const Window& w = wins[g0 + i];
        r.tokens_scored += w.end - w.first;
        if (!dmc) continue;
        const int64_t T = w.end - 1 - w.begin;                                     // tokens the decoder consumed
        at::Tensor slots = dec.slot_counts((int64_t)i).to(at::kCPU, at::kDouble);  // [layers, kv heads]
        for (int64_t l = 0; l < c.num_hidden_layers; ++l)
          for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
            r.head_tokens[l][h] += (double)T;
            r.head_slots[l][h] += slots[l][h].item<double>();
          }
      }
      r.windows += (int64_t)n;
      if (o.progress) prog.update(r.windows, cat("ppl so far ", std::exp(r.nll())));
    }
  } else {
    for (const Window& w : wins) {
      const int64_t begin = w.begin, end = w.end, first = w.first;
      if (end > first) {
        at::Tensor ids = all.slice(0, begin, end).unsqueeze(0).to(model.device());
        at::Tensor h = model.forward_hidden(ids, attn).squeeze(0);  // [T, H]
        if (c.dmc.enabled) {
          const int64_t T = end - begin;
          for (size_t l = 0; l < dmc_attn.boundaries.size(); ++l) {
            at::Tensor merges = dmc_attn.boundaries[l].to(at::kFloat).sum(at::IntArrayRef{0, 1}).to(at::kCPU);  // [nkv]
            for (int64_t g = 0; g < merges.size(0); ++g) {
              r.head_tokens[l][g] += (double)T;
              r.head_slots[l][g] += (double)T - merges[g].item<double>();
            }
          }
        }
        // positions first..end-1 are predicted from hidden states first-1..end-2
        at::Tensor hs = h.slice(0, first - 1 - begin, end - 1 - begin);
        at::Tensor logits = at::linear(hs, model.lm_head).to(at::kFloat);
        at::Tensor target = all.slice(0, first, end).to(model.device());
        at::Tensor nll = at::cross_entropy_loss(logits, target, {}, at::Reduction::Sum);
        r.nll_sum += nll.item<double>();
        r.tokens_scored += end - first;
      }
      ++r.windows;
      if (o.progress) prog.update(r.windows, cat("ppl so far ", std::exp(r.nll())));
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

TokenLogprobs prompt_logprobs(const Llama& model, const std::vector<int64_t>& ids, int64_t top_k) {
  at::NoGradGuard ng;
  const auto& c = model.config;
  const int64_t T = (int64_t)ids.size();
  DMC_CHECK(T >= 1 && T <= c.max_position_embeddings, "prompt_logprobs: ", T, " tokens (max ",
            c.max_position_embeddings, ")");
  for (int64_t id : ids)
    DMC_CHECK(id >= 0 && id < c.vocab_size, "prompt_logprobs: token id ", id, " out of range [0, ", c.vocab_size, ")");
  TokenLogprobs out;
  if (T < 2) return out;
  ModelAttention ma(c);
  Attention& attn = ma.get();
  at::Tensor x = at::tensor(ids, at::kLong).unsqueeze(0).to(model.device());
  at::Tensor h = model.forward_hidden(x, attn).squeeze(0).narrow(0, 0, T - 1);       // [T-1, H]: predicts 1..T-1
  at::Tensor lp = at::log_softmax(at::linear(h, model.lm_head).to(at::kFloat), -1);  // [T-1, V]
  at::Tensor tgt = x[0].narrow(0, 1, T - 1).unsqueeze(1);
  at::Tensor got = lp.gather(1, tgt).squeeze(1).to(at::kCPU, at::kDouble);
  out.logprob.assign(got.data_ptr<double>(), got.data_ptr<double>() + (T - 1));
  out.top.resize(T - 1);
  if (top_k > 0) {
    auto [v, i] = lp.topk(std::min<int64_t>(top_k, lp.size(1)), 1);
    at::Tensor vc = v.to(at::kCPU, at::kDouble), ic = i.to(at::kCPU);
    for (int64_t t = 0; t < T - 1; ++t)
      for (int64_t k = 0; k < vc.size(1); ++k) out.top[t].emplace_back(ic[t][k].item<int64_t>(), vc[t][k].item<double>());
  }
  return out;
}

}  // namespace dmc
