// dmc serve on the CPU: a tiny random model behind the OpenAI-compatible server on 127.0.0.1 (a free port), talked
// to with cpp-httplib's client. Greedy answers must equal `generate` on the same ids, streamed text the non-streamed
// text; bad requests get their status and OpenAI's error body while the server keeps serving; 200 concurrent
// requests in a pool small enough to preempt all get their one-at-a-time answers and the pool ends empty.
#ifdef DMC_WITH_SERVE
#include <httplib.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <cmath>
#include <fstream>
#include <thread>
#include <unistd.h>

#include "common/util.h"
#include "helpers.h"
#include "inference/generate.h"
#include "inference/perplexity.h"
#include "serve/server.h"
#include "train_fixture.h"

using namespace dmc;
using namespace dmc::test;
using json = nlohmann::json;

namespace {
Llama serve_model(const Tokenizer& tok) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = tok.vocab_size();
  c.max_position_embeddings = 256;
  c.eos_token_ids = {tok.eos_id()};
  return Llama::random(c, 77, at::kFloat, at::kCPU, 0.3);
}
std::string as_served(const std::string& s) {
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}
// a completion's text as OpenAI servers give it: what the output adds to the prompt's text, decoded with the prompt
// as context (the first piece keeps its leading space); StreamDecoder's equality with one decode is its own test
std::string completion_text(const Tokenizer& tok, const std::vector<int64_t>& prompt, const std::vector<int64_t>& out) {
  StreamDecoder d(tok, prompt);
  std::string text;
  for (int64_t id : out) text += d.push(id);
  return as_served(text + d.flush());
}
// a server's options for the tiny model: any free port
ServerOptions tiny_server(int64_t max_batch) {
  ServerOptions so;
  so.port = 0;
  so.engine.max_batch = max_batch;
  return so;
}
json post(httplib::Client& cl, const std::string& path, const std::string& body, int want = 200) {
  auto r = cl.Post(path.c_str(), body, "application/json");
  REQUIRE(r);
  INFO(path << " " << body << " -> " << r->status << " " << r->body);
  CHECK(r->status == want);
  return json::parse(r->body, nullptr, false);
}
int64_t metric(httplib::Client& cl, const std::string& name) {
  auto r = cl.Get("/metrics");
  REQUIRE(r);
  const size_t at = r->body.find("\n" + name + " ");
  REQUIRE(at != std::string::npos);
  const std::string v = r->body.substr(at + name.size() + 2, r->body.find('\n', at + 1) - at - name.size() - 2);
  INFO(name << " " << v);
  CHECK(v.find_first_not_of("0123456789") == std::string::npos);  // a count in full, no exponent
  return (int64_t)std::stoll(v);
}
}  // namespace

TEST_CASE("dmc serve: /metrics values are written in full", "[serve]") {
  CHECK(prometheus_value(2097152) == "2097152");  // ostream's default gave "2.09715e+06" (2097150)
  CHECK(prometheus_value(0) == "0");
  CHECK(prometheus_value(-3) == "-3");
  CHECK(std::stod(prometheus_value(3.99306123456789)) == 3.99306123456789);
  CHECK(std::stod(prometheus_value(1e-7)) == 1e-7);
  CHECK(prometheus_value(std::nan("")) == "NaN");  // Prometheus' spellings
  CHECK(prometheus_value(-HUGE_VAL) == "-Inf");
}

TEST_CASE("dmc serve: completions equal generate, streaming, stop strings, seeds, logprobs, errors, api key",
          "[serve]") {
  auto tok = Tokenizer::load(fx().tok);
  auto m = serve_model(tok);
  ServerOptions so = tiny_server(8);
  so.model_name = "tiny";
  so.max_prompt_tokens = 100;
  Server srv(m, tok, so);
  srv.start();
  httplib::Client cl("127.0.0.1", srv.port());
  cl.set_read_timeout(120, 0);
  const std::vector<std::string> texts = {"The quick brown fox", "Once upon a time there was", "In the beginning"};
  // greedy: what generate() gives for the same ids
  GenerateOptions go;
  go.sampling.temperature = 0;
  go.max_new_tokens = 12;
  std::vector<std::string> want;
  for (const auto& t : texts) {
    auto out = generate(m, {tok.encode(t, true)}, go).tokens[0];
    if (!out.empty() && out.back() == tok.eos_id()) out.pop_back();
    want.push_back(completion_text(tok, tok.encode(t, true), out));
  }
  json r = post(cl, "/v1/completions", json{{"model", "tiny"}, {"prompt", texts[0]}, {"max_tokens", 12}, {"temperature", 0}}.dump());
  CHECK(r["object"] == "text_completion");
  CHECK(r["choices"][0]["text"] == want[0]);
  CHECK(r["usage"]["prompt_tokens"] == (int64_t)tok.encode(texts[0], true).size());
  // a list of prompts, and token ids
  r = post(cl, "/v1/completions", json{{"prompt", texts}, {"max_tokens", 12}, {"temperature", 0}}.dump());
  REQUIRE(r["choices"].size() == 3);
  for (size_t i = 0; i < 3; ++i) CHECK(r["choices"][i]["text"] == want[i]);
  r = post(cl, "/v1/completions", json{{"prompt", tok.encode(texts[1], true)}, {"max_tokens", 12}, {"temperature", 0}}.dump());
  CHECK(r["choices"][0]["text"] == want[1]);
  // streaming: the events' text joined is the same text; the last event carries the finish reason, then [DONE]
  {
    std::string body;
    auto sr = cl.Post("/v1/completions", json{{"prompt", texts[2]}, {"max_tokens", 12}, {"temperature", 0}, {"stream", true}}.dump(),
                      "application/json");
    REQUIRE(sr);
    CHECK(sr->status == 200);
    std::string joined, reason;
    size_t at = 0, events = 0;
    const std::string& b = sr->body;
    for (size_t e; (e = b.find("\n\n", at)) != std::string::npos; at = e + 2) {
      const std::string ev = b.substr(at, e - at);
      REQUIRE(ev.rfind("data: ", 0) == 0);
      if (ev == "data: [DONE]") break;
      const json j = json::parse(ev.substr(6));
      joined += j["choices"][0]["text"].get<std::string>();
      if (!j["choices"][0]["finish_reason"].is_null()) reason = j["choices"][0]["finish_reason"];
      ++events;
    }
    CHECK(b.find("data: [DONE]") != std::string::npos);
    CHECK(events >= 2);
    CHECK(joined == want[2]);
    CHECK((reason == "length" || reason == "stop"));
  }
  // a stop string: the text ends before it
  size_t cut = want[0].size() / 2;  // three ASCII characters from the middle on (a stop string must be text)
  while (cut + 3 <= want[0].size() &&
         !(std::isprint((unsigned char)want[0][cut]) && std::isprint((unsigned char)want[0][cut + 1]) &&
           std::isprint((unsigned char)want[0][cut + 2])))
    ++cut;
  if (cut + 3 <= want[0].size() && cut > 0) {
    const std::string stop = want[0].substr(cut, 3);
    r = post(cl, "/v1/completions", json{{"prompt", texts[0]}, {"max_tokens", 12}, {"temperature", 0}, {"stop", stop}}.dump());
    CHECK(r["choices"][0]["text"] == want[0].substr(0, want[0].find(stop)));
    CHECK(r["choices"][0]["finish_reason"] == "stop");
  }
  // sampling with a seed is reproducible
  const std::string sampled = json{{"prompt", texts[1]}, {"max_tokens", 10}, {"temperature", 1.0}, {"seed", 5}}.dump();
  CHECK(post(cl, "/v1/completions", sampled)["choices"][0]["text"] == post(cl, "/v1/completions", sampled)["choices"][0]["text"]);
  // logprobs of the produced tokens: greedy picks the best of its alternatives
  r = post(cl, "/v1/completions", json{{"prompt", texts[0]}, {"max_tokens", 5}, {"temperature", 0}, {"logprobs", 2}}.dump());
  const json& lp = r["choices"][0]["logprobs"];
  REQUIRE(lp["token_logprobs"].size() == r["usage"]["completion_tokens"].get<size_t>());
  for (size_t i = 0; i < lp["token_logprobs"].size(); ++i) {
    CHECK(lp["token_logprobs"][i].get<double>() <= 0.0);
    double best = -1e30;
    for (const auto& [k, v] : lp["top_logprobs"][i].items()) best = std::max(best, v.get<double>());
    CHECK(lp["token_logprobs"][i].get<double>() == Approx(best));
  }
  // bad requests: status and OpenAI's error body; the server goes on serving
  const std::string long_prompt(2000, 'a');
  for (const auto& [body, status, what] : std::vector<std::tuple<std::string, int, std::string>>{
           {"{bad json", 400, "not valid JSON"},
           {"[1, 2]", 400, "JSON object"},
           {json{{"prompt", texts[0]}, {"max_tokens", "ten"}}.dump(), 400, "max_tokens"},
           {json{{"prompt", texts[0]}, {"max_tokens", -1}}.dump(), 400, "max_tokens"},
           {json{{"prompt", texts[0]}, {"temperature", 5}}.dump(), 400, "temperature"},
           {json{{"prompt", texts[0]}, {"n", 2}}.dump(), 400, "n"},
           {json{{"prompt", 3}}.dump(), 400, "prompt"},
           {json{{"prompt", std::vector<int64_t>{1, 99999}}}.dump(), 400, "out of range"},
           {json{{"prompt", long_prompt}}.dump(), 400, "more than the limit"},
           {json{{"prompt", texts[0]}, {"max_tokens", 250}}.dump(), 400, "context"},
           {json{{"prompt", texts[0]}, {"model", "gpt-4"}}.dump(), 404, "does not exist"},
           {json{{"prompt", texts[0]}, {"stop", 3}}.dump(), 400, "stop"}}) {
    const json e = post(cl, "/v1/completions", body, status);
    INFO(body << " -> " << e.dump());
    REQUIRE(e.contains("error"));
    CHECK(e["error"]["message"].get<std::string>().find(what) != std::string::npos);
    CHECK(e["error"].contains("type"));
  }
  CHECK(post(cl, "/v1/chat/completions", json{{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}}.dump(), 400)
            ["error"]["param"] == "messages");  // this tokenizer has no chat template: said, not guessed
  {
    auto nr = cl.Get("/v1/nothing");
    REQUIRE(nr);
    CHECK(nr->status == 404);
  }
  CHECK(post(cl, "/v1/completions", json{{"prompt", texts[0]}, {"max_tokens", 12}, {"temperature", 0}}.dump())["choices"][0]["text"] ==
        want[0]);
  // tokenizer routes, models, metrics
  r = post(cl, "/tokenize", json{{"prompt", texts[0]}}.dump());
  CHECK(r["tokens"].get<std::vector<int64_t>>() == tok.encode(texts[0], true));
  CHECK(post(cl, "/detokenize", json{{"tokens", tok.encode(texts[0])}}.dump())["prompt"] == texts[0]);
  auto mr = cl.Get("/v1/models");
  REQUIRE(mr);
  CHECK(json::parse(mr->body)["data"][0]["id"] == "tiny");
  auto ti = cl.Get("/tokenizer_info");
  REQUIRE(ti);
  CHECK(json::parse(ti->body)["vocab_size"] == tok.vocab_size());
  CHECK(json::parse(ti->body)["eos_token"] == tok.piece(tok.eos_id()));
  CHECK(metric(cl, "dmc_requests_total") >= 10);  // the generations above (prompts of a list count one each)
  srv.stop(5);

  // an api key: /v1 routes need the bearer token, /health does not
  ServerOptions ko = so;
  ko.api_key = "sekret";
  Server ksrv(m, tok, ko);
  ksrv.start();
  httplib::Client kc("127.0.0.1", ksrv.port());
  const std::string body = json{{"prompt", texts[0]}, {"max_tokens", 2}, {"temperature", 0}}.dump();
  CHECK(post(kc, "/v1/completions", body, 401)["error"]["type"] == "authentication_error");
  kc.set_bearer_token_auth("wrong");
  post(kc, "/v1/completions", body, 401);
  kc.set_bearer_token_auth("sekret");
  post(kc, "/v1/completions", body, 200);
  httplib::Client hc("127.0.0.1", ksrv.port());
  auto h = hc.Get("/health");
  REQUIRE(h);
  CHECK(h->status == 200);
  ksrv.stop(5);
}

TEST_CASE("dmc serve under load: 200 concurrent requests in a pool that preempts, answers as one at a time, pool empty",
          "[serve]") {
  auto tok = Tokenizer::load(fx().tok);
  auto m = serve_model(tok);
  ServerOptions so = tiny_server(16);
  so.engine.cache.page_size = 4;
  // about 6 sequences of 60 tokens: 16 decoding together must preempt
  so.engine.cache.n_pages = m.config.num_hidden_layers * m.config.num_key_value_heads * 90;
  Server srv(m, tok, so);
  srv.start();
  // 20 distinct prompts of mixed lengths and output budgets, each asked 10 times
  std::vector<std::vector<int64_t>> prompts;
  std::vector<int64_t> budgets;
  torch::manual_seed(12);
  for (int i = 0; i < 20; ++i) {
    const int64_t n = 3 + (i * 7) % 40;
    at::Tensor t = at::randint(3, tok.vocab_size(), {n}, at::kLong);
    prompts.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
    budgets.push_back(4 + (i * 5) % 20);
  }
  std::vector<std::string> want;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateOptions go;
    go.sampling.temperature = 0;
    go.max_new_tokens = budgets[i];
    auto out = generate(m, {prompts[i]}, go).tokens[0];
    if (!out.empty() && out.back() == tok.eos_id()) out.pop_back();
    want.push_back(completion_text(tok, prompts[i], out));
  }
  // resident memory after each round (the process's, server and clients): flat from the first round to the second
  auto rss_mib = [] {
    long pages = 0, resident = 0;
    std::ifstream f("/proc/self/statm");
    f >> pages >> resident;
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1 << 20);
  };
  std::vector<double> rss;
  for (int round = 0; round < 2; ++round) {
    std::vector<std::string> got(200);
    std::vector<int> status(200, 0);
    std::vector<std::thread> th;
    for (int k = 0; k < 200; ++k)
      th.emplace_back([&, k] {
        httplib::Client c("127.0.0.1", srv.port());
        c.set_read_timeout(300, 0);
        const size_t i = (size_t)k % prompts.size();
        auto r = c.Post("/v1/completions",
                        json{{"prompt", prompts[i]}, {"max_tokens", budgets[i]}, {"temperature", 0}}.dump(),
                        "application/json");
        if (!r) {
          status[k] = -(int)r.error();  // httplib::Error, negated
          return;
        }
        status[k] = r->status;
        if (r->status == 200) got[k] = json::parse(r->body)["choices"][0]["text"];
      });
    for (auto& t : th) t.join();
    int same = 0;
    for (int k = 0; k < 200; ++k) {
      INFO("round " << round << " request " << k);
      CHECK(status[k] == 200);
      same += got[k] == want[(size_t)k % prompts.size()];
    }
    CHECK(same == 200);
    httplib::Client c("127.0.0.1", srv.port());
    // the pool is empty again once the engine is idle
    for (int w = 0; w < 100 && metric(c, "dmc_num_requests_running") + metric(c, "dmc_num_requests_waiting") > 0; ++w)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(metric(c, "dmc_cache_pages_used") == 0);
    if (round == 1) CHECK(metric(c, "dmc_preemptions_total") > 0);
    rss.push_back(rss_mib());
  }
#if !defined(__SANITIZE_ADDRESS__)  // AddressSanitizer's quarantine holds freed memory on purpose
  INFO("resident MiB after round 1: " << rss[0] << ", after round 2: " << rss[1]);
  CHECK(rss[1] < rss[0] + 32.0);
#endif
  // a streaming client that goes away after its first event: its sequence is cancelled and its pages come back
  {
    httplib::Client c("127.0.0.1", srv.port());
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = json{{"prompt", prompts[0]}, {"max_tokens", 200}, {"temperature", 0}, {"stream", true},
                    {"stop", std::vector<std::string>{}}}.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
    c.send(req);
    CHECK(chunks >= 1);
    for (int w = 0; w < 100 && metric(c, "dmc_num_requests_running") > 0; ++w)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(metric(c, "dmc_num_requests_running") == 0);
    CHECK(metric(c, "dmc_cache_pages_used") == 0);
  }
  srv.stop(5);
}
TEST_CASE("dmc serve echo + logprobs: the prompt's log-probabilities are eval ppl's, vanilla and DMC", "[serve]") {
  auto tok = Tokenizer::load(fx().tok);
  for (bool dmc_model : {false, true}) {
    DYNAMIC_SECTION((dmc_model ? "dmc" : "vanilla")) {
      auto m = serve_model(tok);
      if (dmc_model) {  // decisions that merge: the scores are the compressed-cache ones
        m.config.dmc.enabled = true;
        m.config.dmc.init_val = 0.2;
        m.config.dmc.window = 4;
      }
      Server srv(m, tok, tiny_server(4));
      srv.start();
      httplib::Client cl("127.0.0.1", srv.port());
      const std::vector<int64_t> ids = tok.encode("The quick brown fox jumps over the lazy dog again and again", true);
      // lm-evaluation-harness's loglikelihood request: token ids, echo, max_tokens 0, logprobs 1, temperature 0
      json r = post(cl, "/v1/completions",
                    json{{"prompt", ids}, {"echo", true}, {"max_tokens", 0}, {"logprobs", 1}, {"temperature", 0}}.dump());
      const json& lp = r["choices"][0]["logprobs"];
      REQUIRE(lp["token_logprobs"].size() == ids.size());
      CHECK(lp["token_logprobs"][0].is_null());
      CHECK(r["usage"]["completion_tokens"] == 0);
      double sum = 0;
      for (size_t i = 1; i < ids.size(); ++i) {
        sum += lp["token_logprobs"][i].get<double>();
        CHECK(lp["top_logprobs"][i].size() == 1);
      }
      PplOptions po;
      po.seq_len = (int64_t)ids.size();
      po.progress = false;
      const PplResult ppl = perplexity(m, ids, po);
      REQUIRE(ppl.tokens_scored == (int64_t)ids.size() - 1);
      CHECK(std::abs(sum + ppl.nll_sum) < 1e-4 * std::max(1.0, ppl.nll_sum));
      if (dmc_model) CHECK(ppl.cr() > 1.0);  // the forward merged
      // echo with generation: the prompt's text first, then the produced tokens after the prompt's logprobs
      r = post(cl, "/v1/completions",
               json{{"prompt", ids}, {"echo", true}, {"max_tokens", 3}, {"logprobs", 0}, {"temperature", 0}}.dump());
      CHECK(r["choices"][0]["logprobs"]["token_logprobs"].size() ==
            ids.size() + r["usage"]["completion_tokens"].get<size_t>());
      CHECK(r["choices"][0]["text"].get<std::string>().rfind(as_served(tok.decode(ids)), 0) == 0);
      srv.stop(5);
    }
  }
}

// The official openai client (PyPI) against SmolLM2-135M-Instruct served from its GGUF: completions, streaming,
// stop strings, seeds, chat streamed and not. Skipped without the GGUF or the package.
TEST_CASE("dmc serve with the openai Python client: SmolLM2 completions, chat, streaming, stop, seed", "[serve][smollm2]") {
  const std::string gguf = smollm2_gguf();
  if (gguf.empty()) SKIP("SmolLM2 GGUF not fetched (scripts/get_smollm2.sh --fetch-only)");
  if (run(python() + " -c 'import openai'").status != 0) SKIP("python package openai not installed: " + python());
  auto tok = Tokenizer::load(gguf);
  auto m = Llama::load(gguf, at::kFloat, at::kCPU);
  ServerOptions so = tiny_server(4);
  so.model_name = "smollm2";
  so.api_key = "k1";
  so.engine.cache.n_pages = m.config.num_hidden_layers * m.config.num_key_value_heads * 4 * 16;  // 4 x 256 tokens
  Server srv(m, tok, so);
  srv.start();
  const auto log = tmp_dir("openai") + "/client.log";
  auto r = run("{ " + python() + " " + std::string(DMC_SOURCE_DIR) + "/tests/reference/openai_client.py http://127.0.0.1:" +
               std::to_string(srv.port()) + "/v1 smollm2 k1 2>" + log + "; }");
  INFO(r.output << (fs::exists(log) ? dmc::read_file(log) : std::string()));
  REQUIRE(r.status == 0);
  const json j = json::parse(r.output);
  INFO(j.dump(1));
  // greedy: the engine's own generate on the same ids
  GenerateOptions go;
  go.sampling.temperature = 0;
  go.max_new_tokens = 12;
  auto out = generate(m, {tok.encode("The capital of France is", true)}, go).tokens[0];
  if (!out.empty() && out.back() == tok.eos_id()) out.pop_back();
  CHECK(j["completion"] == completion_text(tok, tok.encode("The capital of France is", true), out));
  CHECK(j["completion"].get<std::string>().find("Paris") != std::string::npos);
  CHECK(j["stream_joined"] == j["completion"]);
  const std::string stopped = j["stopped"], full = j["completion"], stop = j["stop"];
  CHECK(stopped == full.substr(0, full.find(stop)));
  CHECK(j["seed_same"] == true);
  CHECK(j["chat_role"] == "assistant");
  CHECK(j["chat"].get<std::string>().find("Paris") != std::string::npos);
  CHECK(j["chat_stream_joined"] == j["chat"]);
  CHECK(j["unknown_model"] == "404");
  srv.stop(5);
}

// lm-evaluation-harness (PyPI lm_eval) as a user runs it against the server: `local-completions` with the server's
// own tokenizer (tokenizer_backend=remote), a multiple-choice task and a generate-until task defined from local JSONL
// files (tests/reference/lm_eval_client.py). Every loglikelihood it got equals dmc's own forward over the same
// tokens, its accuracy equals the argmax over those, and every generation equals dmc's greedy generate cut at the
// task's stop strings. Skipped when lm_eval is not installed.
TEST_CASE("dmc serve with lm-evaluation-harness: loglikelihoods, accuracy and generations recomputed with dmc",
          "[serve][lm_eval]") {
  if (run(python() + " -c 'import lm_eval'").status != 0) SKIP("python package lm_eval not installed: " + python());
  auto tok = Tokenizer::load(fx().tok);
  auto m = serve_model(tok);
  ServerOptions so = tiny_server(4);
  so.model_name = "tiny";
  Server srv(m, tok, so);
  srv.start();
  const auto w = tmp_dir("lmeval");
  auto r = run("{ " + python() + " " + std::string(DMC_SOURCE_DIR) + "/tests/reference/lm_eval_client.py http://127.0.0.1:" +
               std::to_string(srv.port()) + " tiny " + w + " 2>" + w + "/client.log; }");
  INFO(r.output << (fs::exists(w + "/client.log") ? dmc::read_file(w + "/client.log") : std::string()));
  REQUIRE(r.status == 0);
  const json j = json::parse(r.output.substr(r.output.find('{')));
  torch::NoGradGuard ng;
  // lm_eval's tokenization of a (context, continuation) pair: trailing spaces of the context move to the
  // continuation, whole = encode(context + continuation), the context's ids are encode(context), no BOS
  auto loglikelihood = [&](std::string ctx, std::string cont) {
    const size_t keep = ctx.find_last_not_of(' ') + 1;
    cont = ctx.substr(keep) + cont;
    ctx.resize(keep);
    const auto whole = tok.encode(ctx + cont, false);
    const size_t n_ctx = tok.encode(ctx, false).size();
    REQUIRE(n_ctx < whole.size());
    at::Tensor ids = at::tensor(whole, at::kLong).view({1, -1});
    at::Tensor lp = at::log_softmax(m.forward(ids)[0].to(at::kDouble), -1);  // [T, vocab]
    double sum = 0;
    for (size_t i = n_ctx; i < whole.size(); ++i) sum += lp[(int64_t)i - 1][whole[i]].item<double>();
    return sum;
  };
  const json& mc = j["mc"];
  REQUIRE(mc["samples"].size() == 6);
  int64_t correct = 0;
  for (const auto& s : mc["samples"]) {
    INFO(s.dump());
    const auto& reqs = s["requests"];
    REQUIRE(reqs.size() == s["loglikelihoods"].size());
    REQUIRE(reqs.size() >= 3);
    size_t best = 0;
    std::vector<double> mine;
    for (size_t k = 0; k < reqs.size(); ++k) {
      mine.push_back(loglikelihood(reqs[k]["context"], reqs[k]["continuation"]));
      const double theirs = s["loglikelihoods"][k];
      CHECK(std::abs(theirs - mine[k]) < 1e-4 * std::max(1.0, std::abs(mine[k])));
      if (mine[k] > mine[best]) best = k;
    }
    correct += (int64_t)best == s["gold"].get<int64_t>();
  }
  CHECK(mc["acc"].get<double>() == Approx((double)correct / 6.0).margin(1e-12));
  // generations: greedy, cut before the first stop string (the task's until, plus the EOS spelling lm_eval adds)
  const json& gen = j["gen"];
  REQUIRE(gen["samples"].size() == 4);
  int64_t exact = 0;
  for (const auto& s : gen["samples"]) {
    INFO(s.dump());
    const auto prompt = tok.encode(s["context"].get<std::string>(), false);
    GenerateOptions go;
    go.sampling.temperature = 0;
    go.max_new_tokens = 6;
    auto out = generate(m, {prompt}, go).tokens[0];
    if (!out.empty() && out.back() == tok.eos_id()) out.pop_back();
    std::string text = completion_text(tok, prompt, out);
    std::vector<std::string> stops = s["until"];
    stops.push_back(tok.piece(tok.eos_id()));
    for (const auto& st : stops) text = text.substr(0, text.find(st));
    CHECK(s["response"] == text);
    exact += text == s["target"].get<std::string>();
  }
  CHECK(gen["exact_match"].get<double>() == Approx((double)exact / 4.0).margin(1e-12));
  httplib::Client cl("127.0.0.1", srv.port());
  CHECK(metric(cl, "dmc_num_requests_running") == 0);
  CHECK(metric(cl, "dmc_cache_pages_used") == 0);
  srv.stop(5);
}

// scripts/bench_serve.py (vLLM's serving benchmark shape) against the tiny server: it verifies the streamed path
// before timing, every request produces exactly output-len tokens (ignore_eos), the usage chunk counts them, and
// the numbers it reports are consistent (TTFT <= end-to-end, tokens = requests x output-len).
TEST_CASE("bench_serve.py: Poisson and burst arrivals against dmc serve, verified before timed, JSON summaries",
          "[serve][bench]") {
  auto tok = Tokenizer::load(fx().tok);
  auto m = serve_model(tok);
  Server srv(m, tok, tiny_server(4));
  srv.start();
  const auto w = tmp_dir("benchserve");
  const std::string cmd = python() + " " + std::string(DMC_SOURCE_DIR) + "/scripts/bench_serve.py --base-url http://127.0.0.1:" +
                          std::to_string(srv.port()) + " --num-prompts 10 --input-len 20 --output-len 6 ";
  auto r = run("{ " + cmd + "--request-rate 40,inf --label tiny --json " + w + "/b.json 2>" + w + "/err.log; }");
  INFO(r.output << dmc::read_file(w + "/err.log"));
  REQUIRE(r.status == 0);
  CHECK(r.output.find("Serving Benchmark Result") != std::string::npos);
  CHECK(r.output.find("P99 TTFT (ms):") != std::string::npos);
  const json j = json::parse(dmc::read_file(w + "/b.json"));
  REQUIRE(j.size() == 2);
  CHECK(j[0]["request_rate"] == 40.0);
  CHECK(j[1]["request_rate"] == "inf");
  for (const auto& s : j) {
    CHECK(s["completed"] == 10);
    CHECK(s["failed"] == 0);
    CHECK(s["total_output_tokens"] == 60);
    CHECK(s["total_input_tokens"] == 200);
    CHECK(s["mean_ttft_ms"].get<double>() > 0);
    CHECK(s["p99_ttft_ms"].get<double>() <= s["p99_e2el_ms"].get<double>());
    CHECK(s["median_tpot_ms"].get<double>() > 0);
  }
  // streamed usage: exactly max_tokens with ignore_eos, counted in the chunk after the last
  httplib::Client cl("127.0.0.1", srv.port());
  auto sr = cl.Post("/v1/completions",
                    json{{"prompt", "The quick"}, {"max_tokens", 5}, {"temperature", 0}, {"ignore_eos", true},
                         {"stream", true}, {"stream_options", {{"include_usage", true}}}}.dump(),
                    "application/json");
  REQUIRE(sr);
  const std::string body = sr->body;
  const size_t u = body.find("\"usage\"");
  REQUIRE(u != std::string::npos);
  CHECK(body.find("\"completion_tokens\":5", u) != std::string::npos);
  CHECK(body.find("data: [DONE]") > u);
  // bad arguments: a clear message and status 1 (argparse: 2), nothing timed
  auto b = run("{ " + cmd + "--request-rate 0 2>&1; }");
  CHECK(b.status != 0);
  CHECK(b.output.find("--request-rate") != std::string::npos);
  srv.stop(5);
  // what the GPU benchmark compares against the full cache: DMC with decisions forced to CR 4 on a plain model
  ServerOptions fo = tiny_server(4);
  fo.engine.cache.policy = CachePolicy::Dmc;
  fo.engine.cache.force_cr = 4;
  Server fsrv(m, tok, fo);
  fsrv.start();
  auto f = run("{ " + python() + " " + std::string(DMC_SOURCE_DIR) + "/scripts/bench_serve.py --base-url http://127.0.0.1:" +
               std::to_string(fsrv.port()) + " --num-prompts 6 --input-len 40 --output-len 8 --json " + w +
               "/f.json 2>&1; }");
  INFO(f.output);
  CHECK(f.status == 0);
  httplib::Client fc("127.0.0.1", fsrv.port());
  CHECK(metric(fc, "dmc_cache_pages_used") == 0);
  auto fm = fc.Get("/metrics");
  REQUIRE(fm);
  const std::string key = "\ndmc_cache_compression_ratio ";
  const size_t at = fm->body.find(key);
  REQUIRE(at != std::string::npos);
  CHECK(std::stod(fm->body.substr(at + key.size())) > 2.5);  // 48 tokens a sequence at forced CR 4 (the window unmerged)
  fsrv.stop(5);
}
#endif
