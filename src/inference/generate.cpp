#include "inference/generate.h"

#include <chrono>

#include "common/error.h"
#include "inference/decoder.h"

#ifdef DMC_WITH_CUDA
#include <torch/cuda.h>
#endif

namespace dmc {

static void sync(const at::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

GenerateResult generate(const Llama& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts, const std::function<void(int64_t, int64_t)>& on_token) {
  DMC_CHECK(!prompts.empty(), "generate: no prompts");
  const int64_t B = (int64_t)prompts.size(), P = (int64_t)prompts[0].size();
  DMC_CHECK(P > 0, "generate: empty prompt");
  for (const auto& p : prompts) DMC_CHECK((int64_t)p.size() == P, "generate: prompts of one batch must have equal length");
  const auto& c = model.config;
  for (const auto& p : prompts)
    for (int64_t id : p)
      DMC_CHECK(id >= 0 && id < c.vocab_size, "generate: token id ", id, " out of range [0, ", c.vocab_size, ")");
  const int64_t total = P + opts.max_new_tokens;
  DMC_CHECK(total <= c.max_position_embeddings, "generate: prompt (", P, ") + max_new_tokens (", opts.max_new_tokens,
            ") exceeds max_position_embeddings (", c.max_position_embeddings, ")");
  const at::Device dev = model.device();
  at::NoGradGuard ng;
  if (c.dmc.enabled) {
    // DMC models decode through the paged cache; the prompt goes in one parallel (eval-mode) prefill per sequence
    DecoderOptions dopt;
    dopt.max_seqs = B;
    dopt.n_pages = c.num_hidden_layers * B * c.num_key_value_heads * ((total + dopt.page_size - 1) / dopt.page_size);
    Decoder dec(model, dopt);
    Sampler sampler(opts.sampling);
    GenerateResult res;
    res.tokens.assign(B, {});
    std::vector<int64_t> seqs(B);
    for (int64_t b = 0; b < B; ++b) seqs[b] = b;
    auto t0 = std::chrono::steady_clock::now();
    std::vector<at::Tensor> first;
    for (int64_t b = 0; b < B; ++b) first.push_back(dec.prefill(b, prompts[b]));
    at::Tensor logits = at::stack(first);
    auto t1 = std::chrono::steady_clock::now();
    res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
    std::vector<bool> done(B, false);
    for (int64_t s = 0; s < opts.max_new_tokens; ++s) {
      at::Tensor next = sampler.sample(logits).to(at::kCPU);
      std::vector<int64_t> ids(B);
      bool all = true;
      for (int64_t b = 0; b < B; ++b) {
        ids[b] = next[b].item<int64_t>();
        if (!done[b]) {
          res.tokens[b].push_back(ids[b]);
          if (on_token) on_token(b, ids[b]);
          if (opts.stop_at_eos &&
              std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), ids[b]) != c.eos_token_ids.end())
            done[b] = true;
        }
        all = all && done[b];
      }
      if ((opts.stop_at_eos && all) || s + 1 == opts.max_new_tokens) break;
      logits = dec.step(seqs, ids);
      ++res.decode_steps;
    }
    res.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    return res;
  }
  KVCache cache = KVCache::create(c, B, total, model.dtype(), dev);
  std::vector<int64_t> flat;
  for (const auto& p : prompts) flat.insert(flat.end(), p.begin(), p.end());
  at::Tensor ids = at::tensor(flat, at::kLong).view({B, P}).to(dev);
  Sampler sampler(opts.sampling);
  GenerateResult res;
  res.tokens.assign(B, {});
  if (opts.max_new_tokens <= 0) return res;

  auto t0 = std::chrono::steady_clock::now();
  at::Tensor logits = model.forward(ids, &cache).select(1, P - 1);  // [B, V]
  at::Tensor next = sampler.sample(logits);                         // [B]
  sync(dev);
  auto t1 = std::chrono::steady_clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  std::vector<at::Tensor> produced{next};
  std::vector<bool> done(B, false);
  auto emit = [&](const at::Tensor& tok) -> bool {  // returns true when all sequences are done
    if (!on_token && !opts.stop_at_eos) return false;
    at::Tensor cpu = tok.to(at::kCPU);
    bool all = true;
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      const int64_t id = cpu[b].item<int64_t>();
      if (on_token) on_token(b, id);
      if (opts.stop_at_eos && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) != c.eos_token_ids.end())
        done[b] = true;
      all = all && done[b];
    }
    return opts.stop_at_eos && all;
  };
  bool finished = emit(next);
  for (int64_t s = 1; s < opts.max_new_tokens && !finished; ++s) {
    logits = model.forward(next.view({B, 1}), &cache).select(1, 0);
    next = sampler.sample(logits);
    produced.push_back(next);
    ++res.decode_steps;
    finished = emit(next);
  }
  sync(dev);
  res.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  at::Tensor all = at::stack(produced, 1).to(at::kCPU);  // [B, steps]
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < all.size(1); ++s) {
      const int64_t id = all[b][s].item<int64_t>();
      res.tokens[b].push_back(id);
      if (opts.stop_at_eos && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) != c.eos_token_ids.end())
        break;
    }
  }
  return res;
}

}  // namespace dmc
