// dmc serve: the OpenAI-compatible server (serve/server.h) in the foreground until SIGTERM / SIGINT, which stop
// accepting, let in-flight requests finish for --grace seconds (then cancel them) and exit 0.
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <iostream>
#include <thread>

#include "cli/commands.h"
#include "cli/load.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "config/options.h"
#include "inference/decoder.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#ifdef DMC_WITH_SERVE
#include "serve/server.h"
#endif

namespace dmc::cli {

namespace {
std::atomic<int> g_serve_signal{0};
void on_serve_signal(int sig) { g_serve_signal.store(sig); }
}  // namespace

int cmd_serve(const Args& a) {
#ifndef DMC_WITH_SERVE
  (void)a;
  fail("dmc serve: this build has no HTTP library (install libcpp-httplib-dev and rebuild)");
#else
  std::string model_dir, tok_path, cache = "auto", device = "auto", dtype = "auto";
  ServerOptions so;
  double cr = 0, memory_gib = 4, grace = 30;
  int64_t budget = 0, sinks = 4, port = 8000, force_cr = 0;
  OptionTable t("serve",
                "dmc serve --model M [--tokenizer T] [--host 127.0.0.1] [--port P] [--cache vanilla|dmc|tova|h2o|window "
                "--cr R] [--memory-gib G] [--max-batch N] [--api-key K]");
  t.add("model", &model_dir, "model directory or a .gguf file", true);
  t.add("tokenizer", &tok_path, "tokenizer (default: the model's own)");
  t.add("host", &so.host, "address to listen on");
  t.add("port", &port, "port to listen on (0 = any free port, printed)").min(0).max(65535);
  t.add("served_model_name", &so.model_name, "the model's name in the API (/v1/models, the `model` field)");
  t.add("cache", &cache, "auto (dmc for a DMC model, else vanilla), vanilla, dmc, tova, h2o or window")
      .one_of({"auto", "vanilla", "dmc", "tova", "h2o", "window"});
  t.add("cr", &cr, "tova / h2o / window: budget = ceil(max_position_embeddings / cr) slots a head").min(0);
  t.add("budget", &budget, "tova / h2o / window: slots a head (instead of --cr)").min(0);
  t.add("sinks", &sinks, "window: first positions never evicted").min(0);
  t.add("force_cr", &force_cr,
        "benchmark only: --cache dmc with decisions forced to merge at this ratio (any model; its answers are "
        "meaningless, its speed and memory are a DMC model's at that ratio)")
      .min(0);
  t.add("memory_gib", &memory_gib, "KV-cache pages in GiB").above(0);
  t.add("max_batch", &so.engine.max_batch, "sequences decoding together").min(1);
  t.add("max_prompt_tokens", &so.max_prompt_tokens, "longest prompt accepted (0 = the model's context - 1)").min(0);
  t.add("default_max_tokens", &so.default_max_tokens, "max_tokens of a request that gives none").min(1);
  t.add("api_key", &so.api_key, "require 'Authorization: Bearer KEY' on /v1 routes");
  t.add("grace", &grace, "seconds in-flight requests get to finish after SIGTERM").min(0);
  t.add("device", &device, "cpu, cuda, cuda:N or auto");
  t.add("dtype", &dtype, "bf16, fp16, fp32 or auto");
  t.parse(a);
  log::info(t.to_yaml());
  auto [tok, model] = load_model_and_tokenizer(model_dir, tok_path, device, dtype);
  so.port = (int)port;
  so.engine.cache.policy = parse_cache_policy(cache, "--cache");
  if (evicts(so.engine.cache.policy)) {
    DMC_CHECK(budget > 0 || cr > 1, "--cache ", cache, ": give --budget or --cr (> 1)");
    so.engine.cache.budget = budget > 0 ? budget : (int64_t)std::ceil((double)model.config.max_position_embeddings / cr);
  }
  so.engine.cache.sinks = sinks;
  DMC_CHECK(force_cr == 0 || so.engine.cache.policy == CachePolicy::Dmc, "--force-cr: only with --cache dmc");
  so.engine.cache.force_cr = force_cr;
  so.engine.cache.memory_budget_bytes = (int64_t)(memory_gib * (double)(1LL << 30));
  Server srv(model, tok, so);
  srv.start();
  std::cout << "serving " << so.model_name << " on http://" << so.host << ":" << srv.port() << std::endl;
  std::signal(SIGTERM, on_serve_signal);
  std::signal(SIGINT, on_serve_signal);
  while (g_serve_signal.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  log::info(cat("serve: signal ", g_serve_signal.load(), ", stopping (grace ", grace, " s)"));
  srv.stop(grace);
  return 0;
#endif
}

}  // namespace dmc::cli
