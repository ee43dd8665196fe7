// The OpenAI-compatible HTTP layer of `dmc serve` (see server.h).
#include "serve/server.h"

#include <httplib.h>

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/utf8.h"
#include "common/util.h"
#include "tokenizer/chat.h"

namespace dmc {

std::string prometheus_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[40];
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e15)
    std::snprintf(buf, sizeof buf, "%lld", (long long)v);
  else
    std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
using json = nlohmann::json;

namespace {
// A request the API refuses: status, message, the offending parameter.
struct ApiError {
  int status;
  std::string message, param;
};
[[noreturn]] void bad(const std::string& param, const std::string& message, int status = 400) {
  throw ApiError{status, param.empty() ? message : param + ": " + message, param};
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& param) {
  const char* type = status == 401   ? "authentication_error"
                     : status == 404 ? "not_found_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  json e = {{"message", message}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", status}};
  res.status = status;
  res.set_content(json({{"error", e}}).dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

json parse_body(const httplib::Request& req) {
  json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) bad("", "the request body is not valid JSON");
  if (!j.is_object()) bad("", "the request body must be a JSON object");
  return j;
}
// optional fields, type-checked (null = absent, as OpenAI's clients send)
bool has(const json& j, const char* k) { return j.contains(k) && !j[k].is_null(); }
int64_t get_int(const json& j, const char* k, int64_t def, int64_t lo, int64_t hi) {
  if (!has(j, k)) return def;
  if (!j[k].is_number_integer()) bad(k, "expected an integer");
  const int64_t v = j[k].get<int64_t>();
  if (v < lo || v > hi) bad(k, cat("expected a value in [", lo, ", ", hi, "], got ", v));
  return v;
}
double get_num(const json& j, const char* k, double def, double lo, double hi) {
  if (!has(j, k)) return def;
  if (!j[k].is_number()) bad(k, "expected a number");
  const double v = j[k].get<double>();
  if (!(v >= lo && v <= hi)) bad(k, cat("expected a value in [", lo, ", ", hi, "], got ", v));
  return v;
}
bool get_bool(const json& j, const char* k, bool def) {
  if (!has(j, k)) return def;
  if (!j[k].is_boolean()) bad(k, "expected true or false");
  return j[k].get<bool>();
}
std::vector<std::string> get_stop(const json& j) {
  std::vector<std::string> out;
  if (!has(j, "stop")) return out;
  if (j["stop"].is_string()) return {j["stop"].get<std::string>()};
  if (!j["stop"].is_array()) bad("stop", "expected a string or a list of strings");
  for (const auto& s : j["stop"]) {
    if (!s.is_string()) bad("stop", "expected a string or a list of strings");
    out.push_back(s.get<std::string>());
  }
  return out;
}
// the length of text's prefix that is safe to send while generation goes on: whole UTF-8 characters, and nothing
// that could still turn out to begin a stop string
size_t settled(const std::string& text, const std::vector<std::string>& stop) {
  size_t n = text.size();
  size_t hold = 0;
  for (const auto& s : stop) hold = std::max(hold, s.empty() ? 0 : s.size() - 1);
  n = n > hold ? n - hold : 0;
  // back off an incomplete UTF-8 character at the cut
  size_t b = n;
  while (b > 0 && ((unsigned char)text[b - 1] & 0xC0) == 0x80) --b;
  if (b > 0) {
    const unsigned char lead = (unsigned char)text[b - 1];
    const size_t len = utf8_step(lead);
    if (b - 1 + len > n) n = b - 1;
  }
  return n;
}
int64_t now_s() { return (int64_t)std::time(nullptr); }
}  // namespace

struct Server::Impl {
  const Llama& m;
  const Tokenizer& tok;
  ServerOptions o;
  ServeEngine eng;
  httplib::Server http;
  std::thread th;
  std::atomic<int64_t> next_id{0};
  std::atomic<bool> draining{false};
  std::mutex mu;
  std::condition_variable cv;
  bool stopped = false;

  Impl(const Llama& model, const Tokenizer& t, const ServerOptions& opts)
      : m(model), tok(t), o(opts), eng(model, t, opts.engine) {}

  int64_t max_prompt() const {
    return o.max_prompt_tokens > 0 ? o.max_prompt_tokens : m.config.max_position_embeddings - 1;
  }
  std::vector<int64_t> check_ids(std::vector<int64_t> ids) const {
    if (ids.empty()) bad("prompt", "empty");
    for (int64_t id : ids)
      if (id < 0 || id >= m.config.vocab_size)
        bad("prompt", cat("token id ", id, " out of range [0, ", m.config.vocab_size, ")"));
    if ((int64_t)ids.size() > max_prompt())
      bad("prompt", cat(ids.size(), " tokens, more than the limit of ", max_prompt()));
    return ids;
  }
  // the prompts of a completions request: a string, a list of strings, token ids, a list of id lists
  std::vector<std::vector<int64_t>> prompts(const json& j) const {
    if (!has(j, "prompt")) bad("prompt", "required");
    const json& p = j["prompt"];
    auto ids_of = [&](const json& a) {
      std::vector<int64_t> ids;
      for (const auto& x : a) {
        if (!x.is_number_integer()) bad("prompt", "a token list must hold integers");
        ids.push_back(x.get<int64_t>());
      }
      return check_ids(ids);
    };
    if (p.is_string()) return {check_ids(tok.encode(p.get<std::string>(), /*add_bos=*/true))};
    if (!p.is_array() || p.empty()) bad("prompt", "expected a string, a list of strings, or token ids");
    if (p[0].is_number_integer()) return {ids_of(p)};
    std::vector<std::vector<int64_t>> out;
    for (const auto& x : p) {
      if (x.is_string())
        out.push_back(check_ids(tok.encode(x.get<std::string>(), true)));
      else if (x.is_array())
        out.push_back(ids_of(x));
      else
        bad("prompt", "expected a string, a list of strings, or token ids");
    }
    return out;
  }
  void check_model(const json& j) const {
    if (has(j, "model") && (!j["model"].is_string() || j["model"].get<std::string>() != o.model_name))
      bad("model", cat("the model '", j["model"].is_string() ? j["model"].get<std::string>() : j["model"].dump(-1, ' ', false, json::error_handler_t::replace),
                       "' does not exist (this server has '", o.model_name, "')"),
          404);
  }
  // the request fields every generation shares
  GenerationRequest gen_request(const json& j, const std::vector<int64_t>& prompt) const {
    GenerationRequest g;
    g.prompt = prompt;
    const int64_t room = m.config.max_position_embeddings - (int64_t)prompt.size();
    g.max_tokens = get_int(j, "max_tokens", std::min<int64_t>(o.default_max_tokens, room), 0, 1 << 30);
    if (has(j, "max_completion_tokens")) g.max_tokens = get_int(j, "max_completion_tokens", 16, 0, 1 << 30);
    if (g.max_tokens > room)
      bad("max_tokens", cat("the prompt (", prompt.size(), " tokens) and max_tokens (", g.max_tokens,
                            ") exceed the model's context of ", m.config.max_position_embeddings, " tokens"));
    g.sampling.temperature = get_num(j, "temperature", 1.0, 0.0, 2.0);
    g.sampling.top_p = get_num(j, "top_p", 1.0, 1e-9, 1.0);
    g.sampling.seed = (uint64_t)get_int(j, "seed", (int64_t)(next_id.load() * 7919 + 17), INT64_MIN, INT64_MAX);
    g.stop = get_stop(j);
    if (get_int(j, "n", 1, 1, 1 << 20) != 1) bad("n", "only n = 1 is supported");
    if (get_int(j, "best_of", 1, 1, 1 << 20) != 1) bad("best_of", "only best_of = 1 is supported");
    g.ignore_eos = get_bool(j, "ignore_eos", false);  // vLLM's extension: exactly max_tokens (benchmarks)
    return g;
  }
  // waits for r; "length" / "stop"; an engine error becomes a 500
  void finished(RequestState& r) {
    r.wait();
    if (r.finish_reason == "error") bad("", "generation failed: " + r.error, 500);
  }
  std::string piece_text(int64_t id) const { return tok.decode({id}); }
  json usage(int64_t prompt, int64_t completion) const {
    return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  }
  // the legacy completions logprobs object; with echo the prompt's tokens come first (the first without a value)
  json completion_logprobs(RequestState& r, bool echo) const {
    json lp = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
               {"text_offset", json::array()}};
    size_t off = 0;
    if (echo) {
      const auto& p = r.req.prompt;
      for (size_t i = 0; i < p.size(); ++i) {
        const std::string t = piece_text(p[i]);
        lp["tokens"].push_back(t);
        lp["text_offset"].push_back(off);
        off += t.size();
        if (i == 0 || i - 1 >= r.prompt.logprob.size()) {
          lp["token_logprobs"].push_back(nullptr);
          lp["top_logprobs"].push_back(nullptr);
          continue;
        }
        lp["token_logprobs"].push_back(r.prompt.logprob[i - 1]);
        json top = json::object();
        for (const auto& [id, v] : r.prompt.top[i - 1]) top[piece_text(id)] = v;
        lp["top_logprobs"].push_back(top);
      }
    }
    for (size_t i = 0; i < r.tokens.size(); ++i) {
      const std::string t = piece_text(r.tokens[i]);
      lp["tokens"].push_back(t);
      lp["token_logprobs"].push_back(r.logprobs[i]);
      json top = json::object();
      for (const auto& [id, v] : r.top[i]) top[piece_text(id)] = v;
      lp["top_logprobs"].push_back(top);
      lp["text_offset"].push_back(off);
      off += t.size();
    }
    return lp;
  }

  // ---- streaming: server-sent events from a request's progress ----
  // with stream_options.include_usage: one more chunk after the last, empty choices and the usage (OpenAI's shape)
  std::function<json(const RequestState&)> usage_chunk(const json& j, const std::string& id, const std::string& object,
                                                         int64_t created) const {
    if (!has(j, "stream_options")) return nullptr;
    if (!j["stream_options"].is_object()) bad("stream_options", "expected an object");
    if (!get_bool(j["stream_options"], "include_usage", false)) return nullptr;
    return [this, id, object, created](const RequestState& r) {
      return json{{"id", id}, {"object", object}, {"created", created}, {"model", o.model_name},
                  {"choices", json::array()}, {"usage", usage((int64_t)r.req.prompt.size(), (int64_t)r.tokens.size())}};
    };
  }
  void stream(httplib::Response& res, std::shared_ptr<RequestState> r, std::function<json(const std::string&)> delta,
              std::function<json(const std::string&)> last,
              std::function<json(const RequestState&)> with_usage = nullptr) {
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, r, delta, last, with_usage, sent = size_t(0), first = true](size_t, httplib::DataSink& sink) mutable {
          std::unique_lock<std::mutex> l(r->mu);
          r->cv.wait_for(l, std::chrono::milliseconds(200), [&] { return r->done || r->text.size() > sent; });
          const bool done = r->done;
          const std::string text = r->text;
          const std::string reason = r->finish_reason;
          l.unlock();
          auto send = [&](const json& j) {
            const std::string ev = "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
            return sink.write(ev.data(), ev.size());
          };
          const size_t upto = done ? text.size() : settled(text, r->req.stop);
          bool ok = true;
          if (upto > sent || first) {
            ok = send(delta(text.substr(sent, upto > sent ? upto - sent : 0)));
            sent = std::max(sent, upto);
            first = false;
          }
          if (ok && done) {
            ok = send(last(reason)) && (!with_usage || send(with_usage(*r))) && sink.write("data: [DONE]\n\n", 14);
            sink.done();
            return ok;
          }
          if (!ok || !sink.is_writable()) {  // the client went away: its sequence is freed
            std::lock_guard<std::mutex> g(r->mu);
            r->cancel = true;
            return false;
          }
          return true;
        },
        [r](bool success) {
          if (!success) {
            std::lock_guard<std::mutex> g(r->mu);
            r->cancel = true;
          }
        });
  }

  void completions(const httplib::Request& req, httplib::Response& res) {
    const json j = parse_body(req);
    check_model(j);
    const bool echo = get_bool(j, "echo", false);
    const int64_t want_lp = has(j, "logprobs") ? get_int(j, "logprobs", 0, 0, 20) : -1;
    const bool streaming = get_bool(j, "stream", false);
    const auto ps = prompts(j);
    std::vector<GenerationRequest> gens;
    for (const auto& p : ps) {
      GenerationRequest g = gen_request(j, p);
      g.want_logprobs = want_lp >= 0;
      g.top_logprobs = std::max<int64_t>(0, want_lp);
      g.score_prompt = echo && want_lp >= 0;  // the prompt's own log-probabilities, as eval ppl computes them
      gens.push_back(g);
    }
    const std::string id = cat("cmpl-", next_id++);
    const int64_t created = now_s();
    if (streaming) {
      if (gens.size() != 1) bad("stream", "one prompt at a time when streaming");
      if (echo) bad("echo", "not with stream");
      auto r = eng.submit(gens[0]);
      auto chunk = [=](const std::string& text, const json& reason) {
        return json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", o.model_name},
                    {"choices", json::array({{{"index", 0}, {"text", text}, {"logprobs", nullptr},
                                              {"finish_reason", reason}}})}};
      };
      stream(res, r, [=](const std::string& t) { return chunk(t, nullptr); },
             [=](const std::string& reason) { return chunk("", reason); },
             usage_chunk(j, id, "text_completion", created));
      return;
    }
    std::vector<std::shared_ptr<RequestState>> rs;
    for (const auto& g : gens) rs.push_back(eng.submit(g));
    json choices = json::array();
    int64_t prompt_tokens = 0, completion_tokens = 0;
    for (size_t i = 0; i < rs.size(); ++i) {
      finished(*rs[i]);
      prompt_tokens += (int64_t)gens[i].prompt.size();
      completion_tokens += (int64_t)rs[i]->tokens.size();
      choices.push_back({{"index", i},
                         {"text", echo ? tok.decode(gens[i].prompt) + rs[i]->text : rs[i]->text},
                         {"logprobs", want_lp >= 0 ? completion_logprobs(*rs[i], echo) : json(nullptr)},
                         {"finish_reason", rs[i]->finish_reason}});
    }
    res.set_content(json{{"id", id},
                         {"object", "text_completion"},
                         {"created", created},
                         {"model", o.model_name},
                         {"choices", choices},
                         {"usage", usage(prompt_tokens, completion_tokens)}}
                        .dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
  }

  void chat(const httplib::Request& req, httplib::Response& res) {
    const json j = parse_body(req);
    check_model(j);
    if (!has(j, "messages") || !j["messages"].is_array() || j["messages"].empty())
      bad("messages", "expected a non-empty list of {role, content}");
    std::vector<ChatMessage> conv;
    const json& ms = j["messages"];
    for (size_t i = 0; i < ms.size(); ++i) {
      const json& msg = ms[i];
      if (!msg.is_object() || !has(msg, "role") || !msg["role"].is_string() || !has(msg, "content") ||
          !msg["content"].is_string())
        bad("messages", cat("message ", i, ": expected {\"role\": string, \"content\": string}"));
      conv.push_back({msg["role"].get<std::string>(), msg["content"].get<std::string>()});
    }
    ChatPrompt cp;
    try {
      cp = apply_chat(tok, ChatFormat::Auto, conv);
    } catch (const Error& e) {
      bad("messages", e.what());
    }
    const std::vector<int64_t> ids = cp.ids(tok);
    GenerationRequest g = gen_request(j, check_ids(ids));
    if (get_bool(j, "logprobs", false)) {
      g.want_logprobs = true;
      g.top_logprobs = get_int(j, "top_logprobs", 0, 0, 20);
    }
    const std::string id = cat("chatcmpl-", next_id++);
    const int64_t created = now_s();
    auto r = eng.submit(g);
    if (get_bool(j, "stream", false)) {
      auto chunk = [=](const json& delta, const json& reason) {
        return json{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", o.model_name},
                    {"choices", json::array({{{"index", 0}, {"delta", delta}, {"logprobs", nullptr},
                                              {"finish_reason", reason}}})}};
      };
      auto first = std::make_shared<bool>(true);
      stream(res, r,
             [=](const std::string& t) {
               json d = {{"content", t}};
               if (*first) d["role"] = "assistant";
               *first = false;
               return chunk(d, nullptr);
             },
             [=](const std::string& reason) { return chunk(json::object(), reason); },
             usage_chunk(j, id, "chat.completion.chunk", created));
      return;
    }
    finished(*r);
    json choice = {{"index", 0},
                   {"message", {{"role", "assistant"}, {"content", r->text}}},
                   {"logprobs", nullptr},
                   {"finish_reason", r->finish_reason}};
    if (g.want_logprobs) {
      json content = json::array();
      for (size_t i = 0; i < r->tokens.size(); ++i) {
        json top = json::array();
        for (const auto& [tid, v] : r->top[i]) top.push_back({{"token", piece_text(tid)}, {"logprob", v}});
        content.push_back({{"token", piece_text(r->tokens[i])}, {"logprob", r->logprobs[i]}, {"top_logprobs", top}});
      }
      choice["logprobs"] = {{"content", content}};
    }
    res.set_content(json{{"id", id},
                         {"object", "chat.completion"},
                         {"created", created},
                         {"model", o.model_name},
                         {"choices", json::array({choice})},
                         {"usage", usage((int64_t)g.prompt.size(), (int64_t)r->tokens.size())}}
                        .dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
  }

  std::string metrics() {
    const auto s = eng.stats();
    std::string out;
    auto put = [&](const char* name, const char* type, const char* help, double v) {
      out += cat("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ", prometheus_value(v), "\n");
    };
    put("dmc_requests_total", "counter", "generation requests received", (double)s.requests);
    put("dmc_prompt_tokens_total", "counter", "prompt tokens received", (double)s.prompt_tokens);
    put("dmc_generation_tokens_total", "counter", "tokens generated", (double)s.generated_tokens);
    put("dmc_num_requests_running", "gauge", "sequences decoding", (double)s.running);
    put("dmc_num_requests_waiting", "gauge", "requests waiting for a sequence slot or pages", (double)s.waiting);
    put("dmc_cache_pages_used", "gauge", "KV-cache pages in use", (double)s.pages_used);
    put("dmc_cache_pages_total", "gauge", "KV-cache pages in the pool", (double)s.pages_total);
    put("dmc_cache_compression_ratio", "gauge",
        "tokens the finished sequences' caches stood for per slot they held (1 = vanilla)",
        s.cache_slots > 0 ? s.cache_tokens / s.cache_slots : 1.0);
    put("dmc_step_seconds", "gauge", "duration of the last decode step", s.last_step_s);
    put("dmc_preemptions_total", "counter", "sequences preempted when pages ran out", (double)s.preemptions);
    return out;
  }

  void routes() {
    auto guard = [this](auto fn) {
      return [this, fn](const httplib::Request& req, httplib::Response& res) {
        try {
          if (draining) bad("", "the server is shutting down", 503);
          fn(req, res);
        } catch (const ApiError& e) {
          send_error(res, e.status, e.message, e.param);
        } catch (const std::exception& e) {
          send_error(res, 500, e.what(), "");
        }
      };
    };
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (o.api_key.empty() || req.path.rfind("/v1", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") == "Bearer " + o.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, 401, "a valid API key is required (Authorization: Bearer KEY)", "");
      return httplib::Server::HandlerResponse::Handled;
    });
    http.Post("/v1/completions", guard([this](const auto& q, auto& s) { completions(q, s); }));
    http.Post("/v1/chat/completions", guard([this](const auto& q, auto& s) { chat(q, s); }));
    http.Get("/v1/models", guard([this](const auto&, auto& s) {
      json d = {{"id", o.model_name}, {"object", "model"}, {"created", now_s()}, {"owned_by", "dmc"},
                {"max_model_len", m.config.max_position_embeddings}};
      s.set_content(json{{"object", "list"}, {"data", json::array({d})}}.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
    }));
    http.Get("/health", [this](const auto&, auto& s) {
      s.status = draining ? 503 : 200;
      s.set_content(json{{"status", draining ? "shutting down" : "ok"}}.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
    });
    http.Get("/metrics", [this](const auto&, auto& s) { s.set_content(metrics(), "text/plain; version=0.0.4"); });
    http.Get("/tokenizer_info", guard([this](const auto&, auto& s) {
      s.set_content(json{{"vocab_size", tok.vocab_size()},
                         {"bos_token_id", tok.bos_id() >= 0 ? json(tok.bos_id()) : json(nullptr)},
                         {"eos_token_id", tok.eos_id() >= 0 ? json(tok.eos_id()) : json(nullptr)},
                         // the spellings, as HF's tokenizer config gives them (lm-evaluation-harness's remote
                         // tokenizer requires eos_token)
                         {"bos_token", tok.bos_id() >= 0 ? json(tok.piece(tok.bos_id())) : json(nullptr)},
                         {"eos_token", tok.eos_id() >= 0 ? json(tok.piece(tok.eos_id())) : json(nullptr)},
                         {"pad_token", nullptr},
                         {"tokenizer_class", tok.kind() == "bpe" ? "PreTrainedTokenizerFast" : "LlamaTokenizer"},
                         {"model_max_length", m.config.max_position_embeddings},
                         {"chat_template", tok.chat_template()}}
                        .dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
    }));
    http.Post("/tokenize", guard([this](const auto& q, auto& s) {
      const json j = parse_body(q);
      if (!has(j, "prompt") || !j["prompt"].is_string()) bad("prompt", "expected a string");
      const auto ids = tok.encode(j["prompt"].get<std::string>(), get_bool(j, "add_special_tokens", true));
      s.set_content(
          json{{"tokens", ids}, {"count", ids.size()}, {"max_model_len", m.config.max_position_embeddings}}.dump(-1, ' ', false, json::error_handler_t::replace),
          "application/json");
    }));
    http.Post("/detokenize", guard([this](const auto& q, auto& s) {
      const json j = parse_body(q);
      if (!has(j, "tokens") || !j["tokens"].is_array()) bad("tokens", "expected a list of token ids");
      std::vector<int64_t> ids;
      for (const auto& x : j["tokens"]) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= tok.vocab_size())
          bad("tokens", cat("expected token ids in [0, ", tok.vocab_size(), ")"));
        ids.push_back(x.get<int64_t>());
      }
      s.set_content(json{{"prompt", tok.decode(ids)}}.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
    }));
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404 && res.body.empty()) send_error(res, 404, "no route " + req.method + " " + req.path, "");
    });
  }
};

Server::Server(const Llama& model, const Tokenizer& tok, const ServerOptions& o)
    : impl_(std::make_unique<Impl>(model, tok, o)) {}

Server::~Server() { stop(0.0); }

void Server::start() {
  Impl& s = *impl_;
  s.routes();
  // a thread per connection up to this many: waiting handlers must not keep new requests from joining the batch
  s.http.new_task_queue = [] { return new httplib::ThreadPool(256); };
  // the listening socket, to raise the library's accept backlog of 5 (compiled into Debian's libcpp-httplib) after
  // bind: a burst of clients must queue, not be reset
  int listen_fd = -1;
  s.http.set_socket_options([&listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = (int)sock;
  });
  port_ = s.o.port == 0 ? s.http.bind_to_any_port(s.o.host) : (s.http.bind_to_port(s.o.host, s.o.port) ? s.o.port : -1);
  if (port_ < 0) fail("serve: cannot listen on ", s.o.host, ":", s.o.port, " (in use, or not an address of this host)");
  if (listen_fd >= 0) ::listen(listen_fd, SOMAXCONN);  // Linux takes a second listen() as the new backlog
  s.th = std::thread([&s] { s.http.listen_after_bind(); });
  log::info(cat("serve: listening on http://", s.o.host, ":", port_, " (model '", s.o.model_name, "')"));
}

void Server::stop(double grace_s) {
  Impl& s = *impl_;
  {
    std::lock_guard<std::mutex> l(s.mu);
    if (s.stopped) return;
  }
  s.draining = true;
  s.eng.shutdown(grace_s);  // in-flight requests finish (or end cancelled); their handlers answer
  s.http.stop();
  if (s.th.joinable()) s.th.join();
  std::lock_guard<std::mutex> l(s.mu);
  s.stopped = true;
  s.cv.notify_all();
}

void Server::wait() {
  std::unique_lock<std::mutex> l(impl_->mu);
  impl_->cv.wait(l, [&] { return impl_->stopped; });
}

}  // namespace dmc
