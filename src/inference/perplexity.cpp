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
    for (size_t g = 0; g < r[l].size(); ++g) r[l][g] = head_slots[l][g] > 0 ? head_tokens[l][g] / head_slots[l][g] : 1.0;
  return r;
}

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
  DMC_CHECK(o.mode == "parallel" || o.mode == "incremental", "mode: expected parallel or incremental, got '", o.mode, "'");
  PplResult r;
  auto t0 = std::chrono::steady_clock::now();
  int64_t n_windows = 1;
  for (int64_t b = 0; b + S < L; b += stride) ++n_windows;
  Progress prog("eval ppl", n_windows, 5.0);
  const auto& c = model.config;
  AttentionRuntime rt;
  DecoderOptions dopt;
  dopt.max_seqs = 1;
  dopt.n_pages = c.num_hidden_layers * c.num_key_value_heads * ((S + 1 + dopt.page_size - 1) / dopt.page_size);
  dopt.policy = o.cache;
  dopt.sinks = o.sinks;
  dopt.force_cr = o.force_cr;
  const bool evicting = o.cache == "tova" || o.cache == "h2o" || o.cache == "window";
  if (evicting) {
    DMC_CHECK(o.budget > 0 || o.cr > 1.0, "--cache ", o.cache, ": give --budget (slots per head) or --cr (> 1)");
    dopt.budget = o.budget > 0 ? o.budget : (int64_t)std::ceil((double)S / o.cr);
  }
  DMC_CHECK(o.mode == "incremental" || o.cache == "auto" || o.cache == (c.dmc.enabled ? "dmc" : "vanilla"),
            "--cache ", o.cache, " needs --mode incremental (the parallel forward runs the model's own attention)");
  const bool dmc = c.dmc.enabled || evicting || o.force_cr > 0;
  if (c.dmc.enabled) {
    rt.mode = AttentionRuntime::Mode::DmcEval;
    rt.dmc.init_val = c.dmc.init_val;
    rt.dmc.window = c.dmc.window;
    r.head_tokens.assign(c.num_hidden_layers, std::vector<double>(c.num_key_value_heads, 0.0));
    r.head_slots = r.head_tokens;
  }
  struct Unset {
    const Llama& m;
    ~Unset() { const_cast<Llama&>(m).runtime = nullptr; }
  } unset{model};
  if (dmc) {
    r.head_tokens.assign(c.num_hidden_layers, std::vector<double>(c.num_key_value_heads, 0.0));
    r.head_slots = r.head_tokens;
  }
  if (c.dmc.enabled) const_cast<Llama&>(model).runtime = &rt;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < L; begin += stride) {
    const int64_t end = std::min(begin + S, L);
    const int64_t first = std::max(prev_end, begin + 1);  // first scored absolute position
    if (end > first && o.mode == "incremental") {
      Decoder dec(model, dopt);
      std::vector<at::Tensor> rows;
      for (int64_t p = begin; p < end - 1; ++p) {
        at::Tensor lg = dec.step({0}, {tokens[p]});
        if (p + 1 >= first) rows.push_back(lg[0]);
      }
      at::Tensor logits = at::stack(rows).to(at::kFloat);
      at::Tensor target = all.slice(0, first, end).to(model.device());
      r.nll_sum += at::cross_entropy_loss(logits, target, {}, at::Reduction::Sum).item<double>();
      r.tokens_scored += end - first;
      if (dmc) {
        const int64_t T = end - 1 - begin;  // tokens the decoder consumed
        at::Tensor slots = dec.slot_counts(0);  // [layers, kv heads]
        for (int64_t l = 0; l < model.config.num_hidden_layers; ++l)
          for (int64_t g = 0; g < model.config.num_key_value_heads; ++g) {
            r.head_tokens[l][g] += (double)T;
            r.head_slots[l][g] += slots[l][g].item<double>();
          }
      }
    } else if (end > first) {
      at::Tensor ids = all.slice(0, begin, end).unsqueeze(0).to(model.device());
      at::Tensor h = model.forward_hidden(ids).squeeze(0);  // [T, H]
      if (dmc) {
        const int64_t T = end - begin;
        for (size_t l = 0; l < rt.boundaries.size(); ++l) {
          at::Tensor merges = rt.boundaries[l].to(at::kFloat).sum(at::IntArrayRef{0, 1}).to(at::kCPU);  // [nkv]
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
    prev_end = end;
    if (end == L) break;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace dmc
