#include "inference/generate.h"

#include <algorithm>
#include <chrono>
#include <deque>

#include "common/error.h"
#include "common/util.h"

namespace dmc {

namespace {
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GenerateResult generate(const Llama& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts, const std::function<void(int64_t, int64_t)>& on_token) {
  DMC_CHECK(!prompts.empty(), "generate: no prompts");
  const auto& c = model.config;
  const int64_t N = (int64_t)prompts.size();
  DMC_CHECK(opts.max_new_per_prompt.empty() || (int64_t)opts.max_new_per_prompt.size() == N,
            "generate: max_new_per_prompt needs one entry per prompt");
  for (int64_t i = 0; i < N; ++i) {
    const auto& p = prompts[i];
    DMC_CHECK(!p.empty(), "generate: empty prompt");
    for (int64_t id : p)
      DMC_CHECK(id >= 0 && id < c.vocab_size, "generate: token id ", id, " out of range [0, ", c.vocab_size, ")");
    const int64_t n_new = opts.max_new_per_prompt.empty() ? opts.max_new_tokens
                                                          : std::min(opts.max_new_tokens, opts.max_new_per_prompt[i]);
    DMC_CHECK((int64_t)p.size() + n_new <= c.max_position_embeddings, "generate: prompt (", p.size(),
              ") + max_new_tokens (", n_new, ") exceeds max_position_embeddings (", c.max_position_embeddings, ")");
  }
  GenerateResult res;
  res.tokens.assign(N, {});
  if (opts.max_new_tokens <= 0) return res;
  const int64_t B = opts.max_batch > 0 ? std::min(opts.max_batch, N) : N;
  DecoderOptions dopt = opts.cache;
  dopt.max_seqs = B;
  if (dopt.n_pages <= 0 && dopt.memory_budget_bytes <= 0) {
    int64_t longest = 0;
    for (const auto& p : prompts) longest = std::max<int64_t>(longest, (int64_t)p.size());
    int64_t slots = longest + opts.max_new_tokens + 1;
    if (evicts(dopt.policy)) slots = std::min(slots, dopt.budget + 1);  // a baseline's row never holds more
    const int64_t per_row = PagedKVCache::pages_for(slots, dopt.page_size);
    dopt.n_pages = c.num_hidden_layers * B * model.local_kv_heads() * per_row;
  }
  Decoder dec(model, dopt);
  Sampler sampler(opts.sampling);
  at::NoGradGuard ng;

  struct Active {
    int64_t req, slot, next;  // request, cache sequence slot, token to feed next
  };
  std::deque<int64_t> queue;
  for (int64_t i = 0; i < N; ++i) queue.push_back(i);
  std::vector<Active> active;
  std::vector<int64_t> free_slots;
  for (int64_t s = B - 1; s >= 0; --s) free_slots.push_back(s);
  auto is_eos = [&](int64_t id) {
    return std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) != c.eos_token_ids.end();
  };
  // records a produced token; true when the request is finished
  DMC_CHECK(opts.stop_ids_for.empty() || (int64_t)opts.stop_ids_for.size() == N,
            "generate: stop_ids_for needs one entry per prompt");
  auto budget = [&](int64_t req) {
    return opts.max_new_per_prompt.empty() ? opts.max_new_tokens
                                           : std::min(opts.max_new_tokens, opts.max_new_per_prompt[req]);
  };
  std::vector<bool> has_text(N, false);  // produced a token outside leading_ids
  auto is_stop = [&](int64_t req, int64_t id) {
    return !opts.stop_ids_for.empty() && opts.stop_ids_for[req] && has_text[req] &&
           std::find(opts.stop_ids.begin(), opts.stop_ids.end(), id) != opts.stop_ids.end();
  };
  auto emit = [&](int64_t req, int64_t id) {
    res.tokens[req].push_back(id);
    if (std::find(opts.leading_ids.begin(), opts.leading_ids.end(), id) == opts.leading_ids.end()) has_text[req] = true;
    if (on_token) on_token(req, id);
    return (opts.stop_at_eos && is_eos(id)) || is_stop(req, id) || (int64_t)res.tokens[req].size() >= budget(req);
  };
  // a finished sequence: what its cache held (when measured), then its slot and pages back
  auto finish = [&](int64_t req, int64_t slot) {
    if (opts.measure_cache) {
      const int64_t fed = (int64_t)(prompts[req].size() + res.tokens[req].size()) - 1;  // the last token is not fed
      res.cache_tokens += (double)fed * (double)c.num_hidden_layers * (double)model.local_kv_heads();
      res.cache_slots += (double)dec.slot_counts(slot).sum().item<int64_t>();
    }
    dec.free(slot);
    free_slots.push_back(slot);
  };
  const at::Device dev = model.device();
  while (!queue.empty() || !active.empty()) {
    // admit: the joining requests (each its prompt plus whatever it produced before a preemption) while slots,
    // pages (with the next step of the running sequences kept free) and the prefill's token bound allow
    std::vector<int64_t> running;
    for (const auto& a : active) running.push_back(a.slot);
    auto [reserve, free_pages] = dec.step_need(running);
    std::vector<int64_t> join_req, join_slot;
    std::vector<std::vector<int64_t>> join_ctx;
    int64_t pages = reserve, longest = 0;
    while (!queue.empty() && join_req.size() < free_slots.size()) {
      const int64_t req = queue.front();
      std::vector<int64_t> ctx = prompts[req];
      ctx.insert(ctx.end(), res.tokens[req].begin(), res.tokens[req].end());
      const int64_t p = dec.pages_for_prompt((int64_t)ctx.size());
      const int64_t lg = std::max<int64_t>(longest, dec.prefill_tokens_for((int64_t)ctx.size()));
      if (!join_req.empty() && (int64_t)(join_req.size() + 1) * lg > opts.prefill_tokens) break;
      if (pages + p > free_pages) {
        DMC_CHECK(!active.empty() || !join_req.empty(), "generate: the kv cache (", dec.cache().n_pages(),
                  " pages) cannot hold one prompt of ", ctx.size(), " tokens; raise the memory budget");
        break;
      }
      queue.pop_front();
      pages += p;
      longest = lg;
      join_slot.push_back(free_slots[free_slots.size() - 1 - join_slot.size()]);
      join_req.push_back(req);
      join_ctx.push_back(std::move(ctx));
    }
    // a chunked prefill (the eviction baselines) runs a forward per chunk of the longest prompt whatever the batch:
    // while others decode, wait until a quarter of a full group (by the token bound and the slots) can join, or the
    // whole rest of the queue, rather than paying a prompt's worth of forwards for each slot that frees
    if (!join_req.empty() && !active.empty() && evicts(dopt.policy)) {
      const int64_t full = std::min<int64_t>(B, std::max<int64_t>(1, opts.prefill_tokens / std::max<int64_t>(1, longest)));
      const int64_t want = std::min<int64_t>((int64_t)(join_req.size() + queue.size()), std::max<int64_t>(1, full / 4));
      if ((int64_t)join_req.size() < want) {
        for (auto it = join_req.rbegin(); it != join_req.rend(); ++it) queue.push_front(*it);  // back, in order
        join_req.clear();
        join_slot.clear();
        join_ctx.clear();
      }
    }
    if (!join_req.empty()) {
      ++res.prefill_groups;
      free_slots.resize(free_slots.size() - join_req.size());
      auto t0 = std::chrono::steady_clock::now();
      at::Tensor logits = dec.prefill(join_slot, join_ctx);
      at::Tensor ids = sampler.sample(logits).to(at::kCPU);
      res.prefill_seconds += since(t0);
      for (size_t k = 0; k < join_req.size(); ++k) {
        const int64_t id = ids[(int64_t)k].item<int64_t>();
        if (emit(join_req[k], id)) {
          finish(join_req[k], join_slot[k]);
        } else {
          active.push_back({join_req[k], join_slot[k], id});
        }
      }
      if (!queue.empty() && !free_slots.empty()) continue;  // more may join before the next step
    }
    if (active.empty()) continue;
    std::vector<int64_t> seqs, ids;
    for (const auto& a : active) {
      seqs.push_back(a.slot);
      ids.push_back(a.next);
    }
    if (!dec.can_step(seqs)) {
      // preempt the newest sequence: free its pages, requeue it at the front
      DMC_CHECK(active.size() > 1,
                "generate: the kv cache cannot take one more step of a single sequence; raise the memory budget");
      const Active victim = active.back();
      active.pop_back();
      dec.free(victim.slot);
      free_slots.push_back(victim.slot);
      queue.push_front(victim.req);
      ++res.preemptions;
      continue;
    }
    auto t0 = std::chrono::steady_clock::now();
    at::Tensor logits = dec.step(seqs, ids);
    at::Tensor next = sampler.sample(logits).to(at::kCPU);
    sync_device(dev);
    res.decode_seconds += since(t0);
    ++res.decode_steps;
    res.decoded_tokens += (int64_t)active.size();
    res.max_active = std::max<int64_t>(res.max_active, (int64_t)active.size());
    std::vector<Active> still;
    for (size_t i = 0; i < active.size(); ++i) {
      const int64_t id = next[(int64_t)i].item<int64_t>();
      if (emit(active[i].req, id)) {
        finish(active[i].req, active[i].slot);
      } else {
        still.push_back({active[i].req, active[i].slot, id});
      }
    }
    active.swap(still);
  }
  return res;
}

}  // namespace dmc
