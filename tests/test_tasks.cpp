// Long-context task samples: the published prompt strings, sizing in the model's tokens, depths, determinism,
// scoring, bad input.
#include <torch/torch.h>

#include <set>

#include "helpers.h"
#include "common/util.h"
#include "inference/needle_stats.h"
#include "inference/tasks.h"
#include "model/llama.h"

#include <nlohmann/json.hpp>
#include "tokenizer/tokenizer.h"

using namespace dmc;
using namespace dmc::test;

namespace {
const Tokenizer& task_tokenizer() {
  static Tokenizer t = [] {
    const auto work = tmp_dir("tasks-tok");
    write_text(work + "/t.txt", sample_text(300, 11) + "\nThe grass is green. The sky is blue. 0123456789\n");
    Tokenizer::train({{work + "/t.txt"}, work + "/tok", 600, 100000});
    return Tokenizer::load(work + "/tok.model");
  }();
  return t;
}
std::vector<std::string> essays() {
  std::vector<std::string> d;
  for (unsigned s = 0; s < 4; ++s) d.push_back(sample_text(40, 100 + s));
  return d;
}
// samples of `tasks` at 600 tokens with the essays above
TaskOptions short_tasks(std::vector<std::string> tasks, int64_t samples, uint64_t seed) {
  TaskOptions o;
  o.tasks = std::move(tasks);
  o.lengths = {600};
  o.samples = samples;
  o.seed = seed;
  o.essays = essays();
  return o;
}
}  // namespace

TEST_CASE("long-context tasks: the published prompt strings, sized to the length in the model's tokens", "[tasks]") {
  const Tokenizer& tok = task_tokenizer();
  TaskOptions o;
  o.tasks = task_names();
  o.lengths = {1024, 1536};
  o.samples = 5;
  o.seed = 3;
  o.essays = essays();
  const auto all = make_task_samples(tok, o);
  REQUIRE(all.size() == task_names().size() * 2 * 5);
  for (const auto& s : all) {
    INFO(s.task << " length " << s.length << " #" << s.index);
    const int64_t n = (int64_t)tok.encode(s.prompt, true).size();
    CHECK(n == s.prompt_tokens);
    CHECK(n + s.max_new_tokens <= s.length);          // fits
    CHECK(n + s.max_new_tokens > s.length * 9 / 10);  // and fills it (the haystack grew to the length)
    CHECK(!s.expected.empty());
    for (const auto& v : s.expected) CHECK(s.prompt.find(v) != std::string::npos);  // every answer is in the text
  }
  auto first = [&](const std::string& task) {
    for (const auto& s : all)
      if (s.task == task) return s;
    FAIL("no sample of " << task);
    return all[0];
  };
  // passkey: task \n prefix \n info \n suffix \n question, 10 new tokens, exact integer
  const auto pk = first("passkey");
  CHECK(pk.prompt.rfind("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                        "them. I will quiz you about the important information there.\n",
                        0) == 0);
  const std::string k = pk.expected[0];
  CHECK(pk.prompt.find("\nThe pass key is " + k + ". Remember it. " + k + " is the pass key.\n") != std::string::npos);
  const std::string question = "\nWhat is the pass key? The pass key is";
  REQUIRE(pk.prompt.size() > question.size());
  CHECK(pk.prompt.substr(pk.prompt.size() - question.size()) == question);
  CHECK(pk.max_new_tokens == 10);
  // niah_single_1: the singular template, noise lines, plural needle (as RULER writes it)
  const auto n1 = first("niah_single_1");
  CHECK(n1.prompt.rfind("A special magic number is hidden within the following text. Make sure to memorize it. I "
                        "will quiz you about the number afterwards.\n",
                        0) == 0);
  CHECK(
      n1.prompt.find("\nThe grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n") !=
      std::string::npos);
  CHECK(n1.prompt.find("One of the special magic numbers for ") != std::string::npos);
  const size_t q = n1.prompt.find("\nWhat is the special magic number for ");
  REQUIRE(q != std::string::npos);
  const std::string tail = n1.prompt.substr(q);
  const size_t kb = std::string("\nWhat is the special magic number for ").size();
  const std::string key = tail.substr(kb, tail.find(" mentioned") - kb);
  CHECK(tail == "\nWhat is the special magic number for " + key +
                    " mentioned in the provided text? The special magic number for " + key +
                    " mentioned in the provided text is");
  CHECK(key.find('-') != std::string::npos);  // adjective-noun
  CHECK(n1.expected[0].size() == 7);
  CHECK(n1.max_new_tokens == 128);
  CHECK(n1.stop_at_newline);
  // niah_single_3: a UUID; multivalue: 4 values, plural template; multiquery: 4 keys joined RULER's way
  CHECK(first("niah_single_3").expected[0].size() == 36);
  const auto mv = first("niah_multivalue");
  CHECK(mv.expected.size() == 4);
  CHECK(mv.prompt.rfind("Some special magic numbers are hidden", 0) == 0);
  CHECK(mv.prompt.find("What are all the special magic numbers for ") != std::string::npos);
  const auto mq = first("niah_multiquery");
  CHECK(mq.expected.size() == 4);
  CHECK(mq.prompt.find(", and ") != std::string::npos);
  // vt: 5 variables, the chain in order, the published question and answer prefix
  const auto vt = first("vt");
  CHECK(vt.expected.size() == 5);
  CHECK(vt.prompt.find("Question: Find all variables that are assigned the value ") != std::string::npos);
  CHECK(vt.prompt.find(" Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
                       "assigned the value ") != std::string::npos);
  CHECK(vt.prompt.find("VAR " + vt.expected[1] + " = VAR " + vt.expected[0]) != std::string::npos);
}

TEST_CASE("long-context tasks: one seed fixes every sample, depths spread over [0, 1]", "[tasks]") {
  const Tokenizer& tok = task_tokenizer();
  TaskOptions o = short_tasks({"passkey", "niah_single_2", "niah_multikey_2"}, 5, 9);
  const auto a = make_task_samples(tok, o), b = make_task_samples(tok, o);
  o.seed = 10;
  const auto c = make_task_samples(tok, o);
  REQUIRE(a.size() == 15);
  std::set<std::string> keys;
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].prompt == b[i].prompt);  // byte-identical for every policy that asks
    CHECK(a[i].expected != c[i].expected);
    keys.insert(a[i].expected[0]);
  }
  CHECK(keys.size() == a.size());
  for (int i = 0; i < 5; ++i) CHECK(a[i].depth == Approx(i / 4.0));
  // the passkey's depth is where the info sits in the haystack
  const auto& p0 = a[0];
  const auto& p4 = a[4];
  CHECK(p0.prompt.find("The pass key is") < p0.prompt.size() / 4);
  CHECK(p4.prompt.find("The pass key is") > p4.prompt.size() * 3 / 4);
}

TEST_CASE("long-context tasks: scoring and bad input", "[tasks]") {
  TaskSample p;
  p.task = "passkey";
  p.expected = {"4711"};
  CHECK(score_task(p, " 4711. Remember") == 1.0);
  CHECK(score_task(p, "The key is 47110") == 0.0);  // the first run of digits must be the key
  CHECK(score_task(p, "no digits") == 0.0);
  TaskSample m;
  m.task = "niah_multivalue";
  m.expected = {"1234567", "ab-CD", "7654321", "x"};
  CHECK(score_task(m, "1234567, AB-cd and nothing else") == 0.5);  // case-insensitive, mean over values
  const Tokenizer& tok = task_tokenizer();
  TaskOptions o;
  o.tasks = {"passkey"};
  o.lengths = {512};
  o.samples = 0;
  require_error([&] { make_task_samples(tok, o); }, {"samples", "at least 1"});
  o.samples = 1;
  o.tasks = {"niah_double"};
  require_error([&] { make_task_samples(tok, o); }, {"unknown task 'niah_double'", "niah_single_1"});
  o.tasks = {"niah_single_2"};
  require_error([&] { make_task_samples(tok, o); }, {"niah_single_2", "essay text"});
  o.tasks = {"passkey"};
  o.lengths = {80};
  require_error([&] { make_task_samples(tok, o); }, {"passkey", "80 tokens cannot hold"});
}

TEST_CASE("dmc eval tasks: every policy and ratio on the same samples, JSON with every output, bad input refused",
          "[tasks][cli]") {
  const Tokenizer& tok = task_tokenizer();
  const auto w = tmp_dir("evaltasks");
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.vocab_size = tok.vocab_size();
  c.num_hidden_layers = 2;
  c.max_position_embeddings = 512;
  Llama::random(c, 5, at::kFloat, at::kCPU).save(w + "/m", at::kFloat);
  write_text(w + "/hay.txt", sample_text(30, 7) + "\n\n" + sample_text(30, 8));
  write_text(w + "/short.txt", "One. Two. Three. Four. Five. Six. Seven. Eight. Nine. Ten.");
  const std::string bin = std::string(DMC_BINARY) + " eval tasks --model " + w + "/m --tokenizer " + tok.path() +
                          " --device cpu --samples 2 --lengths 400 ";
  auto r = run(bin + "--tasks passkey,niah_single_2,vt --haystack " + w + "/hay.txt --cache vanilla,window,tova " +
               "--cr 2,4 --json " + w + "/r.json --heatmaps " + w + "/hm");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const auto j = nlohmann::json::parse(read_file(w + "/r.json"));
  std::vector<std::string> names;
  for (const auto& run : j["runs"]) names.push_back(run["name"]);
  CHECK(names == std::vector<std::string>{"vanilla", "window@2", "window@4", "tova@2", "tova@4"});
  CHECK(j["runs"][1]["budget_by_length"]["400"] == 200);
  CHECK(j["runs"][2]["budget_by_length"]["400"] == 100);
  CHECK(j["runs"][0]["achieved_cr"].get<double>() == Approx(1.0));  // vanilla keeps every token
  CHECK(j["runs"][2]["achieved_cr"].get<double>() > 3.0);           // window at CR 4 of 400: about 100 slots a head
  REQUIRE(j["samples"].size() == 6);
  for (const auto& s : j["samples"]) {
    CHECK(s["outputs"].size() == 5);  // every run scored the same sample
    for (const auto& [name, out] : s["outputs"].items()) {
      CHECK(out["score"].get<double>() >= 0.0);
      CHECK(out["score"].get<double>() <= 1.0);
    }
    CHECK(s.contains("depth"));
    CHECK(s.contains("seed"));
  }
  for (const auto& run : j["runs"]) CHECK(run["accuracy"].size() == 3);
  CHECK(r.output.find("| passkey |") != std::string::npos);
  // a depth x length heatmap per (task, run)
  for (const char* task : {"passkey", "niah_single_2", "vt"})
    for (const auto& name : names) {
      const std::string f = w + "/hm/" + task + "." + name + ".svg";
      INFO(f);
      REQUIRE(fs::exists(f));
      const std::string svg = read_file(f);
      CHECK(svg.rfind("<svg", 0) == 0);
      CHECK(svg.find("depth 0%, length 400") != std::string::npos);
      CHECK(svg.find("depth 100%, length 400") != std::string::npos);
    }
  // essays from a prepared dataset's held-out split
  auto d = run(std::string(DMC_BINARY) + " data prepare --input " + w + "/hay.txt --tokenizer " + tok.path() +
               " --out " + w + "/data --valid-fraction 0.5");
  REQUIRE(d.status == 0);
  auto r2 = run(bin + "--tasks niah_single_2 --data " + w + "/data --cache vanilla --json " + w + "/r2.json");
  INFO(r2.output);
  CHECK(r2.status == 0);
  // reports of separate jobs (here another length) merged by `dmc report tasks`: cells joined, heatmaps over both
  auto r3 = run(std::string(DMC_BINARY) + " eval tasks --model " + w + "/m --tokenizer " + tok.path() +
                " --device cpu --samples 2 --lengths 300 --tasks passkey --cache vanilla,window --cr 2 --json " + w +
                "/r3.json");
  INFO(r3.output);
  REQUIRE(r3.status == 0);
  auto mr = run(std::string(DMC_BINARY) + " report tasks " + w + "/r.json " + w + "/r3.json --json " + w +
                "/m.json --heatmaps " + w + "/hm2");
  INFO(mr.output);
  REQUIRE(mr.status == 0);
  const auto mj = nlohmann::json::parse(read_file(w + "/m.json"));
  CHECK(mj["samples"].size() == 8);
  CHECK(mj["runs"].size() == 5);
  CHECK(mj["runs"][0]["accuracy"]["passkey"].size() == 2);  // vanilla: 300 and 400
  CHECK(mj["runs"][0]["accuracy"]["vt"].size() == 1);
  CHECK(mj["runs"][1]["budget_by_length"]["300"] == 150);
  CHECK(mj["runs"][1]["generated_tokens"].get<int64_t>() ==
        j["runs"][1]["generated_tokens"].get<int64_t>() +
            nlohmann::json::parse(read_file(w + "/r3.json"))["runs"][1]["generated_tokens"].get<int64_t>());
  // jobs split by policy on the same samples: one sample list, each sample scored by every job's runs
  auto r4 = run(std::string(DMC_BINARY) + " eval tasks --model " + w + "/m --tokenizer " + tok.path() +
                " --device cpu --samples 2 --lengths 300 --tasks passkey --cache tova --cr 2 --json " + w + "/r4.json");
  REQUIRE(r4.status == 0);
  auto mr2 = run(std::string(DMC_BINARY) + " report tasks " + w + "/r3.json " + w + "/r4.json --json " + w + "/m2.json");
  INFO(mr2.output);
  REQUIRE(mr2.status == 0);
  const auto mj2 = nlohmann::json::parse(read_file(w + "/m2.json"));
  REQUIRE(mj2["samples"].size() == 2);
  for (const auto& s : mj2["samples"]) CHECK(s["outputs"].size() == 3);  // vanilla, window@2, tova@2
  {
    auto other = nlohmann::json::parse(read_file(w + "/r4.json"));
    other["samples"][0]["prompt_fnv"] = "0";
    write_text(w + "/r4x.json", other.dump());
    auto b = run(std::string(DMC_BINARY) + " report tasks " + w + "/r3.json " + w + "/r4x.json");
    INFO(b.output);
    CHECK(b.status == 1);
    CHECK(b.output.find("another prompt") != std::string::npos);
  }
  const std::string svg = read_file(w + "/hm2/passkey.vanilla.svg");
  CHECK(svg.find("length 300") != std::string::npos);
  CHECK(svg.find("length 400") != std::string::npos);
  write_text(w + "/bad.json", "{\"runs\": 3");
  for (const auto& [args, want] : std::vector<std::pair<std::string, std::string>>{
           {w + "/r.json " + w + "/r.json", "in two reports"},
           {w + "/r.json " + w + "/bad.json", "bad.json: not valid JSON"},
           {w + "/hay.txt", "hay.txt"},
           {"", "needs at least one"}}) {
    auto b = run(std::string(DMC_BINARY) + " report tasks " + args);
    INFO(args << "\n" << b.output);
    CHECK(b.status == 1);
    CHECK(b.output.find(want) != std::string::npos);
  }
  // bad input: a length past the model's positions, samples <= 0, an unknown task, an essay task without text
  for (const auto& [args, want] : std::vector<std::pair<std::string, std::string>>{
           {"--tasks passkey --lengths 1024", "max_position_embeddings"},
           {"--tasks passkey --samples 0", "samples"},
           {"--tasks needle", "needle"},
           {"--tasks niah_single_2", "essay text"},
           {"--tasks niah_single_2 --haystack " + w + "/short.txt", "too short"},
           {"--tasks passkey --cr 1", "--cr"}}) {
    auto b = run(std::string(DMC_BINARY) + " eval tasks --model " + w + "/m --tokenizer " + tok.path() +
                 " --device cpu --samples 1 --lengths 400 " + args);
    INFO(args << "\n" << b.output);
    CHECK(b.status == 1);
    CHECK(b.output.find(want) != std::string::npos);
  }
}

TEST_CASE("needle statistics: token spans of the expected values, a DMC model's decisions at them", "[tasks][dmc]") {
  const Tokenizer& tok = task_tokenizer();
  const auto samples = make_task_samples(tok, short_tasks({"passkey", "niah_single_1", "niah_single_2"}, 3, 0));
  // every expected value is found in its prompt, and its span is the shortest that decodes to a text holding it
  int64_t spans = 0;
  for (const auto& s : samples) {
    const auto ids = tok.encode(s.prompt, true);
    const std::string text = tok.decode(ids);
    auto dec = [&](int64_t b, int64_t e) { return tok.decode(std::vector<int64_t>(ids.begin() + b, ids.begin() + e)); };
    for (const auto& v : s.expected) {
      const size_t at = text.find(v);
      REQUIRE(at != std::string::npos);
      const auto [b, e] = token_span(tok, ids, at, at + v.size());
      INFO(s.task << " '" << v << "' tokens " << b << ".." << e);
      REQUIRE(b >= 0);
      CHECK(dec(b, e).find(v) != std::string::npos);
      CHECK(dec(b + 1, e).find(v) == std::string::npos);
      CHECK(dec(b, e - 1).find(v) == std::string::npos);
      ++spans;
    }
    CHECK(token_span(tok, ids, text.size(), text.size() + 3) == std::pair<int64_t, int64_t>{-1, -1});
  }
  CHECK(spans == (int64_t)samples.size());
  // decisions at the extremes: c = -1000 merges every token (but t = 0) into the slot before, c = +1000 none
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = tok.vocab_size();
  Llama m = Llama::random(c, 5, at::kFloat, at::kCPU, 0.05);
  require_error([&] { needle_stats(m, tok, samples, false); }, {"not a DMC model"});
  m.config.dmc.enabled = true;
  m.config.dmc.window = 4;
  for (double init : {-1000.0, 1000.0}) {
    m.config.dmc.init_val = init;
    const NeedleStats st = needle_stats(m, tok, samples, false);
    INFO("init_val " << init);
    CHECK(st.prompts == (int64_t)samples.size());
    CHECK(st.occurrences >= (int64_t)samples.size());  // the passkey is written twice
    REQUIRE(st.isolated.size() == 2);
    for (int64_t l = 0; l < 2; ++l)
      for (int64_t h = 0; h < 2; ++h) {
        CHECK(st.isolated[l][h] == (init < 0 ? 0.0 : 1.0));
        if (init < 0)
          CHECK(st.merge_rate[l][h] > 0.99);
        else
          CHECK(st.merge_rate[l][h] == 0.0);
      }
  }
  // mixed decisions (c = 0 on random weights): the values located on 1 or 3 threads give the same statistics, and
  // some head keeps some needles and merges others (so the equality is not that of two extremes)
  m.config.dmc.init_val = 0.0;
  const NeedleStats one = needle_stats(m, tok, samples, false, 1), three = needle_stats(m, tok, samples, false, 3);
  CHECK(one.occurrences == three.occurrences);
  CHECK(one.isolated == three.isolated);
  CHECK(one.merge_rate == three.merge_rate);
  bool mixed = false;
  for (const auto& row : one.isolated)
    for (double x : row) mixed = mixed || (x > 0.0 && x < 1.0);
  CHECK(mixed);
}
