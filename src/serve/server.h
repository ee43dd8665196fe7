// `dmc serve`: an OpenAI-compatible HTTP server on the serving engine (serve/scheduler.h), with cpp-httplib
// (Debian's libcpp-httplib, what llama.cpp's server is built on) for HTTP and nlohmann-json for the bodies.
//
// Endpoints (OpenAI's request and response shapes):
//   POST /v1/completions        prompt: a string, a list of strings, token ids or a list of id lists; max_tokens,
//                               temperature, top_p, seed, stop (string or list), n = 1, stream (server-sent events,
//                               "data: [DONE]" last), logprobs (of the produced tokens, with top_logprobs), echo
//                               (with logprobs: the prompt's tokens scored by eval ppl's parallel forward first,
//                               a DMC model in eval mode: its compressed-cache loglikelihoods; max_tokens 0 scores)
//   POST /v1/chat/completions   messages (an optional system message, then user / assistant turns, the user's
//                               last) through the model's chat template, streaming as chat.completion.chunk events
//   GET  /v1/models   /health   /metrics (Prometheus text)
//   GET  /tokenizer_info   POST /tokenize {"prompt": ...}   POST /detokenize {"tokens": [...]}
// Errors: {"error": {"message", "type", "param", "code"}} with 400 (bad request), 401 (api key), 404 (model or
// route), 503 (shutting down); the server keeps serving. With an api key every /v1 route needs
// "Authorization: Bearer KEY".
//
//   Server srv(model, tok, opts);   srv.start();   ... srv.port() ...   srv.stop(grace_s);
#pragma once
#include <memory>
#include <string>

#include "serve/scheduler.h"

namespace dmc {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (port() tells which)
  std::string model_name = "dmc";
  std::string api_key;  // "" = no authentication
  int64_t max_prompt_tokens = 0;  // 0 = the model's max_position_embeddings - 1
  int64_t default_max_tokens = 16;
  ServeOptions engine;
};

class Server {
 public:
  Server(const Llama& model, const Tokenizer& tok, const ServerOptions& o);
  ~Server();
  // binds and starts serving on background threads; dmc::Error when the address cannot be bound
  void start();
  int port() const { return port_; }
  // stop accepting, let in-flight requests finish for up to grace_s (then cancel them), close
  void stop(double grace_s);
  // blocks until stop() (from another thread or a signal handler's flag) has run
  void wait();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// A value as /metrics writes it (Prometheus text): whole numbers in full ("2097152", not ostream's 6-digit
// "2.09715e+06"), fractions with enough digits to read back the same double.
std::string prometheus_value(double v);

}  // namespace dmc
