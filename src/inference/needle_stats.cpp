// Needle statistics of a DMC model's decisions (see needle_stats.h).
#include "inference/needle_stats.h"

#include <torch/torch.h>

#include <cmath>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "model/attention.h"

namespace dmc {

std::pair<int64_t, int64_t> token_span(const Tokenizer& tok, const std::vector<int64_t>& ids, size_t char_begin,
                                       size_t char_end) {
  const int64_t n = (int64_t)ids.size();
  auto chars = [&](int64_t k) {  // length of decode(ids[0, k))
    return tok.decode(std::vector<int64_t>(ids.begin(), ids.begin() + k)).size();
  };
  if (char_begin >= char_end || chars(n) < char_end) return {-1, -1};
  // first token: the last k with chars(k) <= char_begin (token k starts at or before the span)
  int64_t lo = 0, hi = n;  // chars(lo) <= char_begin < chars(hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    (chars(mid) <= char_begin ? lo : hi) = mid;
  }
  const int64_t begin = lo;
  // end: the first k with chars(k) >= char_end
  lo = begin;
  hi = n;  // chars(lo) < char_end <= chars(hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    (chars(mid) >= char_end ? hi : lo) = mid;
  }
  return {begin, hi};
}

NeedleStats needle_stats(const Llama& model, const Tokenizer& tok, const std::vector<TaskSample>& samples,
                         bool progress, int64_t threads) {
  const auto& c = model.config;
  DMC_CHECK(c.dmc.enabled, "needle statistics: the model is not a DMC model (no dmc section in its config)");
  const int64_t L = c.num_hidden_layers, H = model.local_kv_heads();
  NeedleStats s;
  s.isolated.assign(L, std::vector<double>(H, 0.0));
  s.merge_rate.assign(L, std::vector<double>(H, 0.0));
  std::vector<std::vector<double>> merged(L, std::vector<double>(H, 0.0));
  double tokens = 0;
  // the token spans first, on every core: locating a value decodes ~2 log2(T) prefixes of the prompt, which took
  // longer than the forward itself on the GPU machine (one core per prompt)
  struct Located {
    std::vector<int64_t> ids;
    std::vector<std::pair<int64_t, int64_t>> spans;
  };
  std::vector<Located> located(samples.size());
  parallel_for((int64_t)samples.size(), threads, [&](int64_t i) {
    const TaskSample& smp = samples[i];
    Located& lc = located[i];
    lc.ids = tok.encode(smp.prompt, /*add_bos=*/true);
    const std::string text = tok.decode(lc.ids);
    for (const std::string& v : smp.expected)
      for (size_t at = text.find(v); !v.empty() && at != std::string::npos; at = text.find(v, at + v.size())) {
        auto sp = token_span(tok, lc.ids, at, at + v.size());
        if (sp.first >= 0) lc.spans.push_back(sp);
      }
  });
  DmcLayerAttention attn(DmcMode::Eval, model_dmc_options(c));
  at::NoGradGuard ng;
  Progress prog("needle statistics", (int64_t)samples.size(), progress ? 5.0 : 1e9);
  for (size_t i = 0; i < samples.size(); ++i) {
    prog.update(s.prompts + s.unlocated, samples[i].task);
    const auto& [ids, spans] = located[i];
    if (spans.empty()) {
      ++s.unlocated;
      continue;
    }
    const int64_t T = (int64_t)ids.size();
    at::Tensor x = at::tensor(ids, at::kLong).unsqueeze(0).to(model.device());
    model.forward_hidden(x, attn);
    // every layer's hard decisions in one copy to the host: [L, T, H], 1 = merged into the slot before
    at::Tensor hard = at::stack(attn.boundaries).squeeze(1).to(at::kFloat).to(at::kCPU);
    at::Tensor sum = hard.sum(1);  // [L, H]
    auto a = hard.accessor<float, 3>();
    auto sa = sum.accessor<float, 2>();
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < H; ++h) {
        merged[l][h] += (double)sa[l][h];
        for (const auto& [b, e] : spans)
          s.isolated[l][h] += (a[l][b][h] == 0.0f && (e >= T || a[l][e][h] == 0.0f)) ? 1.0 : 0.0;
      }
    tokens += (double)T;
    s.occurrences += (int64_t)spans.size();
    ++s.prompts;
  }
  DMC_CHECK(s.prompts > 0, "needle statistics: no expected value was found in any of the ", samples.size(),
            " prompts");
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h) {
      s.isolated[l][h] /= (double)s.occurrences;
      s.merge_rate[l][h] = merged[l][h] / tokens;
    }
  if (s.unlocated > 0) log::warn(cat("needle statistics: ", s.unlocated, " prompt(s) without a located value left out"));
  return s;
}

nlohmann::json needle_stats_json(const NeedleStats& s) {
  return {{"prompts", s.prompts},
          {"occurrences", s.occurrences},
          {"unlocated", s.unlocated},
          {"isolated", s.isolated},
          {"merge_rate", s.merge_rate}};
}

std::string needle_stats_line(const NeedleStats& s) {
  std::string by_layer;
  for (size_t l = 0; l < s.isolated.size(); ++l) {
    double m = 0;
    for (double x : s.isolated[l]) m += x / (double)s.isolated[l].size();
    by_layer += cat(l ? " " : "", std::lround(100 * m));
  }
  return cat("needle values kept in slots of their own, % by layer (mean over KV heads), ", s.occurrences,
             " occurrences in ", s.prompts, " prompts: ", by_layer);
}

}  // namespace dmc
