// The serving engine: requests arriving at any time join one continuous-batching decode loop on a thread of its
// own (the Decoder is used by that thread only). Each loop iteration
//   1. drops cancelled requests (a client that went away) and frees their sequences,
//   2. admits waiting requests while sequence slots and pages allow: their prompts go in one batched parallel
//      prefill (interleaving: a prefill runs between decode steps, so running sequences pause for it),
//   3. runs one decode step of every running sequence, samples each with its own sampler (temperature, top-p, seed),
//      and hands the token to its request, which ends at EOS, max_tokens, a stop string or the position limit;
// when the pool cannot take the next step, the newest sequence is preempted (pages freed) and requeued with its
// output so far, prefilled again later: resumed, never dropped.
//
//   ServeEngine eng(model, tok, opts);                 // starts the loop thread
//   auto r = eng.submit(req);                          // RequestState: wait() / next_tokens() from any thread
//   r->wait();  r->text ...
#pragma once
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "inference/decoder.h"
#include "inference/perplexity.h"
#include "inference/sampler.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace dmc {

struct ServeOptions {
  DecoderOptions cache;            // policy, budget / cr, memory, page size
  int64_t max_batch = 64;          // sequences decoding together
  int64_t prefill_tokens = 16384;  // joining prompts prefill together up to this many padded tokens
};

struct GenerationRequest {
  std::vector<int64_t> prompt;
  int64_t max_tokens = 16;
  SamplingOptions sampling;
  std::vector<std::string> stop;  // stop strings: the output ends before the first one
  bool want_logprobs = false;     // log-probability of each produced token (and top_logprobs alternatives)
  int64_t top_logprobs = 0;
  bool score_prompt = false;      // echo + logprobs: each prompt token's log-probability (eval ppl's forward)
  bool ignore_eos = false;        // EOS is an ordinary token: exactly max_tokens (benchmarks; vLLM's ignore_eos)
};

// One request's progress, shared by the engine thread (writer) and the HTTP handler (reader).
struct RequestState {
  GenerationRequest req;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int64_t> tokens;           // produced so far
  std::vector<double> logprobs;          // with want_logprobs: of each produced token
  std::vector<std::vector<std::pair<int64_t, double>>> top;  // with top_logprobs: the best alternatives
  std::string text;                      // the decoded output, cut before a stop string once one appears
  std::shared_ptr<StreamDecoder> detok;  // engine thread only: the output decoded as it grows (prompt as context)
  TokenLogprobs prompt;                  // with score_prompt: tokens 1..T-1 of the prompt
  bool done = false;
  std::string finish_reason;             // "stop" | "length" | "cancelled" | "error"
  std::string error;
  bool cancel = false;                   // set by the handler: the client went away
  // blocks until done
  void wait();
};

class ServeEngine {
 public:
  ServeEngine(const Llama& model, const Tokenizer& tok, const ServeOptions& o);
  ~ServeEngine();  // stops the loop (unfinished requests end "cancelled")
  std::shared_ptr<RequestState> submit(const GenerationRequest& req);
  // stop admitting; finish what runs (or cancel it after grace_s seconds); joins the loop thread
  void shutdown(double grace_s);
  struct Stats {
    int64_t requests = 0, prompt_tokens = 0, generated_tokens = 0, running = 0, waiting = 0, pages_used = 0,
            pages_total = 0, preemptions = 0;
    double cache_tokens = 0, cache_slots = 0, last_step_s = 0;
  };
  Stats stats();
  const Decoder& decoder() const { return dec_; }

 private:
  void loop();
  void finish(const std::shared_ptr<RequestState>& r, const std::string& reason);
  const Llama& m_;
  const Tokenizer& tok_;
  ServeOptions o_;
  Decoder dec_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<RequestState>> incoming_;
  bool stop_ = false, draining_ = false;
  Stats stats_;
  std::thread th_;
};

}  // namespace dmc
