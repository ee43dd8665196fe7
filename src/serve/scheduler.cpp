// The serving engine's decode loop (see scheduler.h).
#include "serve/scheduler.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"

namespace dmc {

void RequestState::wait() {
  std::unique_lock<std::mutex> l(mu);
  cv.wait(l, [&] { return done; });
}

namespace {
DecoderOptions engine_cache(const Llama& m, const ServeOptions& o) {
  DecoderOptions d = o.cache;
  d.max_seqs = o.max_batch;
  if (d.n_pages <= 0 && d.memory_budget_bytes <= 0)  // room for every sequence at full length
    d.n_pages = m.config.num_hidden_layers * o.max_batch * m.local_kv_heads() *
                PagedKVCache::pages_for(m.config.max_position_embeddings + 1, d.page_size);
  return d;
}
}  // namespace

ServeEngine::ServeEngine(const Llama& model, const Tokenizer& tok, const ServeOptions& o)
    : m_(model), tok_(tok), o_(o), dec_(model, engine_cache(model, o)) {
  DMC_CHECK(o.max_batch >= 1, "max_batch: must be at least 1");
  stats_.pages_total = dec_.cache().n_pages();
  th_ = std::thread([this] { loop(); });
}

ServeEngine::~ServeEngine() { shutdown(0.0); }

std::shared_ptr<RequestState> ServeEngine::submit(const GenerationRequest& req) {
  auto r = std::make_shared<RequestState>();
  r->req = req;
  r->detok = std::make_shared<StreamDecoder>(tok_, req.prompt);
  std::lock_guard<std::mutex> l(mu_);
  if (draining_ || stop_) {
    r->done = true;
    r->finish_reason = "error";
    r->error = "the server is shutting down";
    return r;
  }
  ++stats_.requests;
  stats_.prompt_tokens += (int64_t)req.prompt.size();
  incoming_.push_back(r);
  cv_.notify_all();
  return r;
}

void ServeEngine::shutdown(double grace_s) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!th_.joinable()) return;
    draining_ = true;
  }
  // let running requests finish for up to grace_s, then stop the loop (it cancels what is left)
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
  while (std::chrono::steady_clock::now() < until) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stats_.running == 0 && stats_.waiting == 0 && incoming_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  th_.join();
}

ServeEngine::Stats ServeEngine::stats() {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

void ServeEngine::finish(const std::shared_ptr<RequestState>& r, const std::string& reason) {
  std::lock_guard<std::mutex> l(r->mu);
  r->done = true;
  r->finish_reason = reason;
  r->cv.notify_all();
}

void ServeEngine::loop() {
  at::NoGradGuard ng;
  const auto& c = m_.config;
  struct Running {
    std::shared_ptr<RequestState> r;
    int64_t slot, next;
  };
  std::deque<std::shared_ptr<RequestState>> waiting;
  std::vector<Running> active;
  std::map<RequestState*, std::unique_ptr<Sampler>> samplers;
  std::vector<int64_t> free_slots;
  for (int64_t s = o_.max_batch - 1; s >= 0; --s) free_slots.push_back(s);
  auto is_eos = [&](int64_t id) {
    return std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) != c.eos_token_ids.end();
  };
  auto release = [&](const Running& a, bool measure) {
    if (measure) {
      const double fed = (double)(a.r->req.prompt.size() + a.r->tokens.size());
      const double slots = (double)dec_.slot_counts(a.slot).sum().item<int64_t>();
      std::lock_guard<std::mutex> l(mu_);
      stats_.cache_tokens += fed * (double)c.num_hidden_layers * (double)m_.local_kv_heads();
      stats_.cache_slots += slots;
    }
    dec_.free(a.slot);
    free_slots.push_back(a.slot);
  };
  // a produced token: logprobs, text, stop conditions; true when the request is finished
  auto emit = [&](Running& a, int64_t id, const at::Tensor& logits_row) {
    RequestState& r = *a.r;
    std::string reason;
    {
      std::lock_guard<std::mutex> l(r.mu);
      if (is_eos(id) && !r.req.ignore_eos) {
        r.text += r.detok->flush();
        reason = "stop";
      } else {
        r.tokens.push_back(id);
        if (r.req.want_logprobs) {
          at::Tensor lp = at::log_softmax(logits_row.to(at::kFloat), -1).to(at::kCPU);
          r.logprobs.push_back(lp[id].item<double>());
          std::vector<std::pair<int64_t, double>> alt;
          if (r.req.top_logprobs > 0) {
            auto [v, i] = lp.topk(std::min<int64_t>(r.req.top_logprobs, lp.size(0)));
            for (int64_t k = 0; k < v.size(0); ++k) alt.emplace_back(i[k].item<int64_t>(), v[k].item<double>());
          }
          r.top.push_back(std::move(alt));
        }
        // the text grows by what the token adds (decoded with the ids before it); a stop string can only begin
        // within its length of the old end
        const size_t old_size = r.text.size();
        r.text += r.detok->push(id);
        size_t cut = std::string::npos;
        for (const auto& s : r.req.stop)
          if (!s.empty()) cut = std::min(cut, r.text.find(s, old_size >= s.size() ? old_size - s.size() + 1 : 0));
        if (cut != std::string::npos) {
          r.text.resize(cut);
          reason = "stop";
        } else if ((int64_t)r.tokens.size() >= r.req.max_tokens ||
                   dec_.position(a.slot) + 1 >= c.max_position_embeddings) {
          r.text += r.detok->flush();
          reason = "length";
        }
      }
      r.cv.notify_all();
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      ++stats_.generated_tokens;
    }
    if (reason.empty()) return false;
    release(a, true);
    samplers.erase(a.r.get());
    finish(a.r, reason);
    return true;
  };
  std::vector<std::shared_ptr<RequestState>> join;  // requests of the prefill in progress
  while (true) {
    join.clear();
    {
      std::unique_lock<std::mutex> l(mu_);
      while (!incoming_.empty()) {
        waiting.push_back(incoming_.front());
        incoming_.pop_front();
      }
      stats_.running = (int64_t)active.size();
      stats_.waiting = (int64_t)waiting.size();
      if (stop_) break;
      if (active.empty() && waiting.empty()) {
        stats_.pages_used = dec_.cache().n_pages() - dec_.cache().free_pages();  // idle: what finished gave back
        cv_.wait(l, [&] { return stop_ || !incoming_.empty(); });
        continue;
      }
    }
    try {
      // clients that went away
      for (size_t i = 0; i < active.size();) {
        bool cancel;
        {
          std::lock_guard<std::mutex> l(active[i].r->mu);
          cancel = active[i].r->cancel;
        }
        if (!cancel) {
          ++i;
          continue;
        }
        release(active[i], false);
        samplers.erase(active[i].r.get());
        finish(active[i].r, "cancelled");
        active.erase(active.begin() + (long)i);
      }
      for (auto it = waiting.begin(); it != waiting.end();) {
        bool cancel;
        {
          std::lock_guard<std::mutex> l((*it)->mu);
          cancel = (*it)->cancel;
        }
        if (cancel) {
          samplers.erase(it->get());
          finish(*it, "cancelled");
          it = waiting.erase(it);
        } else {
          ++it;
        }
      }
      // admit: one batched prefill of the joining prompts (each its prompt plus its output before a preemption)
      std::vector<int64_t> running;
      for (const auto& a : active) running.push_back(a.slot);
      auto [reserve, free_pages] = dec_.step_need(running);
      std::vector<int64_t> join_slot;
      std::vector<std::vector<int64_t>> join_ctx;
      int64_t pages = reserve, longest = 0;
      while (!waiting.empty() && join.size() < free_slots.size()) {
        const auto r = waiting.front();
        bool scored;
        {
          std::lock_guard<std::mutex> l(r->mu);
          scored = !r->prompt.logprob.empty() || r->req.prompt.size() < 2;
        }
        if (r->req.score_prompt && !scored) {  // the prompt's log-probabilities, once (a preempted one keeps them)
          TokenLogprobs p = prompt_logprobs(m_, r->req.prompt, r->req.top_logprobs);
          std::lock_guard<std::mutex> l(r->mu);
          r->prompt = std::move(p);
        }
        if (r->req.max_tokens <= 0) {  // nothing to generate (a scoring request)
          waiting.pop_front();
          finish(r, "length");
          continue;
        }
        std::vector<int64_t> ctx = r->req.prompt;
        {
          std::lock_guard<std::mutex> l(r->mu);
          ctx.insert(ctx.end(), r->tokens.begin(), r->tokens.end());
        }
        const int64_t p = dec_.pages_for_prompt((int64_t)ctx.size());
        const int64_t lg = std::max<int64_t>(longest, (int64_t)ctx.size());
        if (!join.empty() && (int64_t)(join.size() + 1) * lg > o_.prefill_tokens) break;
        if (pages + p > free_pages) {
          if (active.empty() && join.empty()) {  // not even alone: this request cannot be served
            std::lock_guard<std::mutex> l(r->mu);
            r->error = cat("the prompt needs ", p, " cache pages, the server has ", dec_.cache().n_pages());
            r->done = true;
            r->finish_reason = "error";
            r->cv.notify_all();
            waiting.pop_front();
            continue;
          }
          break;
        }
        pages += p;
        longest = lg;
        join_slot.push_back(free_slots[free_slots.size() - 1 - join_slot.size()]);
        join.push_back(r);
        join_ctx.push_back(std::move(ctx));
        if (!samplers.count(r.get())) samplers[r.get()] = std::make_unique<Sampler>(r->req.sampling);
        waiting.pop_front();
      }
      if (!join.empty()) {
        free_slots.resize(free_slots.size() - join.size());
        at::Tensor logits = dec_.prefill(join_slot, join_ctx);
        for (size_t k = 0; k < join.size(); ++k) {
          Running a{join[k], join_slot[k], 0};
          at::Tensor row = logits[(int64_t)k];
          const int64_t id = samplers[a.r.get()]->sample(row.unsqueeze(0)).to(at::kCPU)[0].item<int64_t>();
          if (!emit(a, id, row)) {
            a.next = id;
            active.push_back(a);
          }
        }
        continue;  // more may join before the next step
      }
      if (active.empty()) continue;
      std::vector<int64_t> seqs, ids;
      for (const auto& a : active) {
        seqs.push_back(a.slot);
        ids.push_back(a.next);
      }
      if (!dec_.can_step(seqs)) {
        // preempt the newest sequence: its pages back, the request first in line again with what it produced
        Running victim = active.back();
        active.pop_back();
        release(victim, false);
        waiting.push_front(victim.r);
        std::lock_guard<std::mutex> l(mu_);
        ++stats_.preemptions;
        continue;
      }
      auto t0 = std::chrono::steady_clock::now();
      at::Tensor logits = dec_.step(seqs, ids);
      std::vector<Running> still;
      for (size_t i = 0; i < active.size(); ++i) {
        at::Tensor row = logits[(int64_t)i];
        const int64_t id = samplers[active[i].r.get()]->sample(row.unsqueeze(0)).to(at::kCPU)[0].item<int64_t>();
        if (!emit(active[i], id, row)) {
          active[i].next = id;
          still.push_back(active[i]);
        }
      }
      active.swap(still);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int64_t used = dec_.cache().n_pages() - dec_.cache().free_pages();
      std::lock_guard<std::mutex> l(mu_);
      stats_.last_step_s = dt;
      stats_.pages_used = used;
    } catch (const std::exception& e) {
      // an engine failure ends every request in flight with the error; the loop keeps serving new ones
      log::error(cat("serve: engine error: ", e.what()));
      for (auto& a : active) {
        {
          std::lock_guard<std::mutex> l(a.r->mu);
          a.r->error = e.what();
        }
        finish(a.r, "error");
      }
      active.clear();
      for (auto& r : join) {  // a failed prefill: its requests end with the error (their slots come back)
        bool done;
        {
          std::lock_guard<std::mutex> l(r->mu);
          done = r->done;
          r->error = e.what();
        }
        if (!done) finish(r, "error");
      }
      samplers.clear();
      free_slots.clear();
      for (int64_t s = o_.max_batch - 1; s >= 0; --s) {
        free_slots.push_back(s);
        if (dec_.position(s) > 0) dec_.free(s);
      }
    }
  }
  // stopped: whatever is left ends cancelled
  for (auto& a : active) {
    dec_.free(a.slot);
    finish(a.r, "cancelled");
  }
  for (auto& r : waiting) finish(r, "cancelled");
  std::lock_guard<std::mutex> l(mu_);
  for (auto& r : incoming_) finish(r, "cancelled");
  incoming_.clear();
  stats_.running = stats_.waiting = 0;
}

}  // namespace dmc
