// What a careless or hostile user can do to dmc, each a case that failed before the hardening and passes after:
// shell injection through input names, --overwrite destroying inputs or the working directory, runs mixed in one
// directory, a full disk ending in exit 0, invalid settings that "succeed", crashes on bad shapes and configs, and
// raw library messages. docs/reliability.md lists the promises these cases hold.
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <thread>

#include "train/stages.h"
#include "common/files.h"
#include "common/process.h"
#include "common/util.h"
#include "config/options.h"
#include "data/dataset.h"
#include "data/decompress.h"
#include "helpers.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train_fixture.h"

using namespace dmc;
using namespace dmc::test;

namespace {
// `cmd` run from `dir` (cd with the path quoted for the shell: test-made paths only)
RunResult run_in(const std::string& dir, const std::string& cmd) { return run("cd '" + dir + "' && " + cmd); }

// a shell prefix under which no file may grow (ulimit -f 0): every write fails as on a full disk; SIGXFSZ ignored
// so that the write returns an error instead of killing the process
std::string full_disk() { return "trap '' XFSZ; ulimit -f 0; "; }

std::string tiny_model(const std::string& dir, int64_t layers = 1) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = layers;
  c.vocab_size = Tokenizer::load(fx().tok).vocab_size();
  c.max_position_embeddings = 64;
  Llama::random(c, 1, at::kFloat, at::kCPU).save(dir, at::kFloat);
  return dir;
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}
}  // namespace

// ---- 1. shell injection ------------------------------------------------------------------------------------

TEST_CASE("data prepare decodes .xz and .gz in process: hostile and quoted file names run nothing", "[hardening]") {
  const auto w = tmp_dir("inject");
  const std::string text = sample_text(60, 3);
  write_text(w + "/plain.txt", text);
  REQUIRE(
      run("xz -c '" + w + "/plain.txt' > '" + w + "/p.xz.tmp' && gzip -c '" + w + "/plain.txt' > '" + w + "/p.gz.tmp'")
          .status == 0);
  fs::create_directories(w + "/in");
  const std::string hostile = w + "/in/x';touch PWNED;'.txt.xz";
  const std::string quoted = w + "/in/Alice's notes.txt.gz";
  fs::rename(w + "/p.xz.tmp", hostile);
  fs::rename(w + "/p.gz.tmp", quoted);
  // from the inputs' directory, so that an injected `touch PWNED` would land there
  auto r = run_in(w + "/in", dmc_bin() + " data prepare --input '*.xz,*.gz' --tokenizer " + fx().tok + " --out " + w +
                                 "/data --doc-split file --valid-fraction 0");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK_FALSE(fs::exists(w + "/in/PWNED"));
  CHECK_FALSE(fs::exists(w + "/PWNED"));
  // both decoded to the same text: twice the plain file's tokens
  auto tok = Tokenizer::load(fx().tok);
  const int64_t once = (int64_t)tok.encode(text, true, true).size();
  auto meta = nlohmann::json::parse(read_file(w + "/data/meta.json"));
  CHECK(meta["splits"]["train"]["tokens"].get<int64_t>() == 2 * once);
  CHECK(meta["splits"]["train"]["documents"].get<int64_t>() == 2);

  // concatenated streams decode as one (as xz -dc / gzip -dc do); corrupt data is a clear error
  const std::string xz = read_file(hostile), gz = read_file(quoted);
  CHECK(data::decompress_xz(xz + xz, "two.xz") == text + text);
  CHECK(data::decompress_gz(gz + gz, "two.gz") == text + text);
  require_error([&] { data::decompress_xz(xz.substr(0, xz.size() / 2), "half.xz"); },
                {"half.xz", "xz decompression failed"});
  require_error([&] { data::decompress_gz(gz.substr(0, gz.size() / 2), "half.gz"); },
                {"half.gz", "gzip decompression failed"});
  require_error([&] { data::decompress_xz("not xz at all, just some text here", "bad.xz"); }, {"bad.xz", "xz"});
}

TEST_CASE("no shell, popen, system or bare std::ofstream in src/ outside common/files.cpp", "[hardening]") {
  // the grep-able rule of docs/reliability.md: every output goes through the atomic writers, no shell sees input
  // std::ofstream, popen(, system( (not part of a longer name), fopen(... "w" / "a" ...)
  auto banned = [](const std::string& code) {
    if (code.find("std::ofstream") != std::string::npos || code.find("popen(") != std::string::npos) return true;
    for (size_t at = code.find("system("); at != std::string::npos; at = code.find("system(", at + 1))
      if (at == 0 || !(std::isalnum((unsigned char)code[at - 1]) || code[at - 1] == '_')) return true;
    const size_t f = code.find("fopen(");
    if (f != std::string::npos) {
      const std::string args = code.substr(f, code.find(')', f) - f);
      if (args.find("\"w") != std::string::npos || args.find("\"a") != std::string::npos) return true;
    }
    return false;
  };
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(std::string(DMC_SOURCE_DIR) + "/src")) {
    if (!e.is_regular_file()) continue;
    const auto p = e.path().string();
    if (p.find("common/files.cpp") != std::string::npos) continue;
    ++files;
    std::ifstream in(p);
    int line_no = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_no;
      const auto code = line.substr(0, line.find("//"));
      INFO(p << ":" << line_no << ": " << line);
      CHECK_FALSE(banned(code));
    }
  }
  CHECK(files > 30);
}

// ---- 2. --overwrite never destroys inputs or the working directory ------------------------------------------

TEST_CASE("overwrite: refused for an output that is, contains or lies inside an input, or the working directory",
          "[hardening]") {
  const auto w = tmp_dir("ovw");
  const std::string m = tiny_model(w + "/m");
  const std::string before = read_file(m + "/model.safetensors");
  for (const char* out : {"m", "m/", "./m//", "m/sub", "."}) {
    INFO("--out " << out);
    auto r = run_in(w, dmc_bin() + " convert --model m --out " + out + " --overwrite --dtype fp32");
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("input") != std::string::npos);
  }
  CHECK(read_file(m + "/model.safetensors") == before);  // the source is intact
  // init into the working directory or one above it, or home: refused, nothing removed
  write_text(w + "/keep.txt", "precious");
  for (const std::string& out : std::vector<std::string>{".", "./", "..", w}) {
    auto r = run_in(w, dmc_bin() + " init --out " + out + " --overwrite --preset tiny");
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("refusing to replace") != std::string::npos);
  }
  auto r = run_in(w, "HOME=" + w + "/m " + dmc_bin() + " init --out " + w + "/m --overwrite --preset tiny");
  CHECK(r.status == 1);
  CHECK(r.output.find("home directory") != std::string::npos);
  CHECK(read_file(w + "/keep.txt") == "precious");
  CHECK(read_file(m + "/model.safetensors") == before);
  // an existing output without --overwrite
  r = run_in(w, dmc_bin() + " convert --model m --out keep.txt");
  CHECK(r.status == 1);
  CHECK(r.output.find("already exists") != std::string::npos);
}

TEST_CASE("overwrite: the new output is built beside the old one and swapped in, trailing slashes and failures too",
          "[hardening]") {
  const auto w = tmp_dir("swap");
  tiny_model(w + "/m");
  auto r = run_in(w, dmc_bin() + " convert --model m --out out/ --dtype fp32");
  REQUIRE(r.status == 0);
  r = run_in(w, dmc_bin() + " convert --model m --out out/ --dtype bf16 --overwrite");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(nlohmann::json::parse(read_file(w + "/out/config.json"))["torch_dtype"] == "bfloat16");
  // nothing left beside or inside: no staging directory, no old copy
  CHECK(names_in(w) == std::vector<std::string>{"m", "out"});
  CHECK(names_in(w + "/out") == std::vector<std::string>{"config.json", "model.safetensors"});
  // data prepare with a trailing slash, twice
  write_text(w + "/t.txt", sample_text(40, 9));
  for (int i = 0; i < 2; ++i) {
    r = run_in(w, dmc_bin() + " data prepare --input t.txt --tokenizer " + fx().tok + " --out d/ --overwrite");
    INFO(r.output);
    REQUIRE(r.status == 0);
  }
  CHECK(names_in(w) == std::vector<std::string>{"d", "m", "out", "t.txt"});
  // a write that fails (full disk) leaves the previous output whole and no staging behind
  const std::string old = read_file(w + "/out/model.safetensors");
  r = run_in(w, full_disk() + dmc_bin() + " convert --model m --out out --dtype fp32 --overwrite");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(read_file(w + "/out/model.safetensors") == old);
  CHECK(names_in(w) == std::vector<std::string>{"d", "m", "out", "t.txt"});
  // the library form: an OutputDir dropped without commit leaves the target as it was
  {
    OutputDir o(w + "/out", true, {}, "test output");
    write_text(o.staging() + "/x", "new");
  }
  CHECK(read_file(w + "/out/model.safetensors") == old);
  CHECK(names_in(w) == std::vector<std::string>{"d", "m", "out", "t.txt"});
}

// ---- 3. one run per directory ------------------------------------------------------------------------------

TEST_CASE("a fresh start over an earlier run is refused without overwrite, and two trainers cannot share a run",
          "[hardening][train]") {
  const auto w = tmp_dir("rundir");
  const std::string run_dir = w + "/run";
  auto r = run(train_cmd(run_dir, "--train-steps 2 --save-every 1 --log-level warn"));
  INFO(r.output);
  REQUIRE(r.status == 0);
  REQUIRE(train::checkpoint_dirs(run_dir).size() == 2);
  // resume none: refused, the earlier run untouched
  r = run(train_cmd(run_dir, "--train-steps 2 --resume none"));
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("holds an earlier run") != std::string::npos);
  CHECK(train::checkpoint_dirs(run_dir).size() == 2);
  // every checkpoint invalid: resume auto does not silently restart over them
  // (dmc::remove_tree, not std::filesystem::remove_all: see common/util.h)
  for (const auto& d : train::checkpoint_dirs(run_dir)) ::unlink((d + "/COMPLETE").c_str());
  remove_tree(run_dir + "/final");
  r = run(train_cmd(run_dir, "--train-steps 2"));
  CHECK(r.status == 1);
  CHECK(r.output.find("none of the 2 checkpoint(s)") != std::string::npos);
  // --overwrite: the earlier run goes wholly, the new one alone is there
  const auto old_metrics = read_jsonl(run_dir + "/metrics.jsonl").size();
  REQUIRE(old_metrics >= 2);
  r = run(train_cmd(run_dir, "--train-steps 1 --resume none --overwrite --log-level warn"));
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(read_jsonl(run_dir + "/metrics.jsonl").size() < old_metrics + 1);
  CHECK(read_jsonl(run_dir + "/metrics.jsonl").back()["step"] == 1);
  CHECK(train::checkpoint_dirs(run_dir).size() == 1);
  // a second trainer in a directory whose lock is held is refused with the holder's pid
  const auto lock_dir = w + "/locked";
  r = run("(" + train_cmd(lock_dir, "--train-steps 100000 --log-level warn") +
          " > /dev/null 2>&1 & p=$!; "
          "while [ ! -s " +
          lock_dir + "/metrics.jsonl ]; do sleep 0.05; done; " + train_cmd(lock_dir, "--train-steps 2") +
          "; echo rc=$?; kill -TERM $p; wait $p)");
  INFO(r.output);
  CHECK(r.output.find("is in use by another dmc process") != std::string::npos);
  CHECK(r.output.find("rc=1") != std::string::npos);
}

TEST_CASE("resume with a changed model shape is refused, naming the field", "[hardening][train]") {
  const auto run_dir = tmp_dir("shape") + "/run";
  auto r = run(train_cmd(run_dir, "--train-steps 2 --exit-after-steps 1 --save-every 1 --log-level warn"));
  REQUIRE(r.status == 0);
  r = run(train_cmd(run_dir, "--train-steps 2 --hidden-size 128"));
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("hidden_size = 128") != std::string::npos);
  CHECK(r.output.find("has 64") != std::string::npos);
}

// ---- 4. a full disk is an error ------------------------------------------------------------------------------

TEST_CASE("a full disk is a non-zero exit with no partial file: eval ppl --json, data prepare", "[hardening]") {
  const auto w = tmp_dir("full");
  tiny_model(w + "/m");
  write_text(w + "/t.txt", sample_text(20, 4));
  auto r = run_in(w, full_disk() + dmc_bin() + " eval ppl --model m --tokenizer " + fx().tok +
                         " --text t.txt --seq-len 32 --json out.json");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("out.json") != std::string::npos);
  CHECK_FALSE(fs::exists(w + "/out.json"));
  r = run_in(w, full_disk() + dmc_bin() + " data prepare --input t.txt --tokenizer " + fx().tok + " --out d");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(names_in(w) == std::vector<std::string>{"m", "t.txt"});
  // the writer itself: an error names the file; the target keeps its old content
  write_text(w + "/f", "old");
  const pid_t pid = ::fork();
  if (pid == 0) {  // a child whose files cannot grow
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim {
      0, 0
    };
    ::setrlimit(RLIMIT_FSIZE, &lim);
    try {
      write_file_atomic(w + "/f", "new content");
    } catch (const Error& e) {
      const std::string msg = e.what();
      ::_exit(msg.find(w + "/f") != std::string::npos && msg.find("write failed") != std::string::npos ? 42 : 2);
    }
    ::_exit(3);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  CHECK(WEXITSTATUS(st) == 42);
  CHECK(read_file(w + "/f") == "old");
  CHECK(names_in(w) == std::vector<std::string>{"f", "m", "t.txt"});
}

// ---- 5. invalid settings ------------------------------------------------------------------------------------

TEST_CASE("invalid settings are refused before anything runs, naming option, value and range", "[hardening][bad]") {
  const auto w = tmp_dir("ranges");
  struct Case {
    std::string args, key, expect;
  };
  const std::vector<Case> train_cases = {{"global_batch=-4", "global_batch", ">= 1"},
                                         {"lr=-0.001", "lr", "> 0"},
                                         {"eval_batches=0", "eval_batches", ">= 1"},
                                         {"adam_eps=0", "adam_eps", "> 0"},
                                         {"beta1=1", "beta1", "[0, 1)"},
                                         {"beta2=-0.1", "beta2", "[0, 1)"},
                                         {"weight_decay=-1", "weight_decay", ">= 0"},
                                         {"save_every=-1", "save_every", ">= 0"},
                                         {"keep_last=-2", "keep_last", ">= 0"},
                                         {"eval_every=-1", "eval_every", ">= 0"},
                                         {"log_every=-1", "log_every", ">= 1"},
                                         {"log_level=loud", "log_level", "one of trace"},
                                         {"lr_schedule=cosin", "lr_schedule", "one of constant"},
                                         {"seq_len=0", "seq_len", ">= 1"},
                                         {"micro_batch=0", "micro_batch", ">= 1"},
                                         {"grad_clip=-1", "grad_clip", ">= 0"}};
  for (const auto& c : train_cases) {
    INFO(c.args);
    auto r = run(train_cmd(w + "/run", c.args));
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("key '" + c.key + "'") != std::string::npos);
    CHECK(r.output.find(c.expect) != std::string::npos);
  }
  auto r = run(train_cmd(w + "/run", "lr=1e-4 min_lr=1e-3"));
  CHECK(r.status == 1);
  CHECK(r.output.find("min_lr (0.001) must not exceed lr (0.0001)") != std::string::npos);
  r = run(train_cmd(w + "/run", "global_batch=6 micro_batch=4"));
  CHECK(r.status == 1);
  CHECK(r.output.find("multiple of micro_batch") != std::string::npos);
  CHECK_FALSE(fs::exists(w + "/run"));  // nothing was written by any of them
  // other commands
  tiny_model(w + "/m");
  write_text(w + "/t.txt", sample_text(5, 1));
  const std::string ev =
      dmc_bin() + " eval ppl --model " + w + "/m --tokenizer " + fx().tok + " --text " + w + "/t.txt ";
  const std::string gen = dmc_bin() + " generate --model " + w + "/m --tokenizer " + fx().tok + " --prompt hi ";
  for (const auto& c : std::vector<Case>{{ev + "--stride -1", "stride", ">= 0"},
                                         {ev + "--seq-len 0", "seq_len", ">= 2"},
                                         {ev + "--mode fast", "mode", "one of parallel"},
                                         {gen + "--max-new-tokens -1", "max_new_tokens", ">= 0"},
                                         {gen + "--top-p 0", "top_p", "(0, 1]"},
                                         {gen + "--temperature -1", "temperature", ">= 0"},
                                         {dmc_bin() + " bench decode --preset tiny --page-size 0", "page_size", ">= 1"},
                                         {dmc_bin() + " bench decode --preset tiny --batch 0", "batch", "positive"}}) {
    INFO(c.args);
    r = run(c.args);
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find(c.key) != std::string::npos);
    CHECK(r.output.find(c.expect) != std::string::npos);
  }
  // the option table itself: ranges on YAML values and the help text
  int64_t n = 1;
  double x = 0.5;
  std::string s = "a";
  OptionTable t("t", "usage");
  t.add("n", &n, "count").min(1);
  t.add("x", &x, "fraction").min(0).below(1);
  t.add("s", &s, "choice").one_of({"a", "b"});
  t.add("a_rather_long_option_name_here", &n, "its help");
  write_text(w + "/c.yaml", "x: 1.5\n");
  require_error([&] { t.parse({"--config", w + "/c.yaml"}); }, {"c.yaml", "key 'x'", "1.5 is out of range", "[0, 1)"});
  require_error([&] { t.parse({"s=c"}); }, {"command line", "key 's'", "'c' is not valid", "one of a or b"});
  require_error([&] { t.parse({"x=nan"}); }, {"key 'x'", "out of range"});
  t.parse({"n=3", "x=0", "s=b"});
  CHECK((n == 3 && x == 0 && s == "b"));
  // an enum setting: parsed once where it is set, the same message as one_of, the field untouched by a bad value
  RetrofitStage stage = RetrofitStage::Finetune;
  DmcAttnImpl impl = DmcAttnImpl::Flash;
  t.add("stage", &stage, "stage", retrofit_stage_names());
  t.add("impl", &impl, "impl", dmc_attn_impl_names());
  require_error([&] { t.parse({"stage=zero"}); },
                {"command line", "key 'stage'", "'zero' is not valid", "one of zero_out, retrofit or finetune"});
  CHECK(stage == RetrofitStage::Finetune);
  t.parse({"stage=zero_out", "--impl", "blocks"});
  CHECK((stage == RetrofitStage::ZeroOut && impl == DmcAttnImpl::Blocks));
  CHECK(t.to_yaml().find("stage: zero_out") != std::string::npos);
  CHECK(t.to_yaml().find("impl: blocks") != std::string::npos);
  // YAML whose keys or list items are not plain values (found by the fuzzer: yaml-cpp's own exception escaped)
  std::vector<std::string> items;
  t.add("items", &items, "a list");
  write_text(w + "/l.yaml", "n: 2\nitems: [a, : c]\n");
  require_error([&] { t.parse({"--config", w + "/l.yaml"}); }, {"l.yaml:2", "key 'items'", "a list item", "mapping"});
  write_text(w + "/k.yaml", "[a, b]: 1\n");
  require_error([&] { t.parse({"--config", w + "/k.yaml"}); }, {"k.yaml:1", "a key", "a list"});
  // every option line of every help starts with the flag and a space before its text (none run together)
  for (const std::string cmd : {"train", "retrofit", "bench decode", "eval ppl", "generate", "data prepare"}) {
    r = run(dmc_bin() + " " + cmd + " --help");
    REQUIRE(r.status == 0);
    std::istringstream in(r.output);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("  --", 0) != 0) continue;
      INFO(cmd << ": " << line);
      const auto sp = line.find(' ', 2);
      CHECK((sp == std::string::npos || line.substr(sp, 2) == "  " ||
             line.find_first_not_of(' ', sp) == std::string::npos));
    }
  }
}

// ---- 6. crashes and silent wrong models ---------------------------------------------------------------------

TEST_CASE("bad shapes and configs are clear errors: rope factor, layer count, unused tensors, overflowing headers",
          "[hardening][bad]") {
  const auto w = tmp_dir("shapes");
  tiny_model(w + "/m", 2);
  auto cfg = nlohmann::json::parse(read_file(w + "/m/config.json"));
  auto with = [&](const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
    fs::create_directories(w + "/" + name);
    fs::copy_file(w + "/m/model.safetensors", w + "/" + name + "/model.safetensors");
    auto j = cfg;
    edit(j);
    write_text(w + "/" + name + "/config.json", j.dump());
    return w + "/" + name;
  };
  for (double f : {0.0, -2.0}) {
    const auto d = with("rope" + std::to_string((int)f), [&](nlohmann::json& j) {
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", f}};
    });
    require_error([&] { Llama::load(d, at::kFloat, at::kCPU); },
                  {d + "/config.json", "rope_scaling.factor", "positive"});
  }
  const auto fewer = with("fewer", [](nlohmann::json& j) { j["num_hidden_layers"] = 1; });
  require_error([&] { Llama::load(fewer, at::kFloat, at::kCPU); },
                {fewer + "/config.json", "num_hidden_layers' is 1", "hold 2 layers"});
  // an extra tensor is named in a warning, the model still loads
  {
    auto st = io::TensorStore::open_dir(w + "/m");
    io::NamedTensors ts;
    for (const auto& n : st.names()) ts.emplace_back(n, st.get(n).clone());
    ts.emplace_back("model.extra_projection.weight", at::zeros({4, 4}));
    fs::create_directories(w + "/extra");
    io::save_file(w + "/extra/model.safetensors", ts);
    fs::copy_file(w + "/m/config.json", w + "/extra/config.json");
    auto r = run(dmc_bin() + " generate --model " + w + "/extra --tokenizer " + fx().tok +
                 " --prompt hi --max-new-tokens 1 --device cpu");
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("not used by the model: model.extra_projection.weight") != std::string::npos);
  }
  // a crafted header whose shape product wraps around 64 bits
  {
    const std::string header = R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}})";
    std::string bytes(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(bytes.data(), &n, 8);
    write_text(w + "/evil.safetensors", bytes + header);
    require_error([&] { io::SafetensorsFile::open(w + "/evil.safetensors"); },
                  {"evil.safetensors", "'t'", "overflows"});
  }
}

// ---- 7, 8. tokenizer train, signals, library messages, streaming output, bench limits ------------------------

TEST_CASE("tokenizer train refuses to replace a tokenizer without --overwrite and wraps SentencePiece errors",
          "[hardening][tokenizer]") {
  const auto w = tmp_dir("toktrain");
  write_text(w + "/a.txt", sample_text(200, 2));
  const std::string cmd = dmc_bin() + " tokenizer train --input " + w + "/a.txt --out " + w + "/tok --vocab-size 400";
  auto r = run(cmd);
  INFO(r.output);
  REQUIRE(r.status == 0);
  const std::string first = read_file(w + "/tok.model");
  r = run(cmd + " --vocab-size 420");
  CHECK(r.status == 1);
  CHECK(r.output.find("already exists") != std::string::npos);
  CHECK(read_file(w + "/tok.model") == first);
  r = run(cmd + " --vocab-size 420 --overwrite");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(Tokenizer::load(w + "/tok.model").vocab_size() == 420);
  r = run(dmc_bin() + " tokenizer train --input " + w + "/a.txt --out " + w + "/tok2 --vocab-size 100000");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("Vocabulary size too high") != std::string::npos);
  CHECK(r.output.find(".cc(") == std::string::npos);  // no SentencePiece source location
  CHECK_FALSE(fs::exists(w + "/tok2.model"));
}

TEST_CASE("SIGTERM and SIGINT save a checkpoint and exit 128 + signal", "[hardening][train][signals]") {
  for (const auto& [name, code] : std::vector<std::pair<std::string, int>>{{"TERM", 143}, {"INT", 130}}) {
    const auto run_dir = tmp_dir("sig" + name) + "/run";
    auto r = run("(" + train_cmd(run_dir, "--train-steps 100000 --log-level warn") +
                 " > /dev/null 2>&1 & p=$!; "
                 "while [ ! -s " +
                 run_dir + "/metrics.jsonl ]; do sleep 0.05; done; kill -" + name + " $p; wait $p; echo rc=$?)");
    INFO(name << ": " << r.output);
    CHECK(r.output.find("rc=" + std::to_string(code)) != std::string::npos);
    CHECK(train::latest_checkpoint(run_dir).has_value());
  }
}

TEST_CASE("token ids beyond the vocabulary name the shard", "[hardening][bad]") {
  const auto w = tmp_dir("badids");
  fs::copy(fx().data, w + "/data", fs::copy_options::recursive);
  // a shard whose first token is 65535: beyond the 400-id vocabulary
  const std::string bin = w + "/data/train-00000.bin";
  std::string bytes = read_file(bin);
  bytes[0] = bytes[1] = (char)0xff;
  write_text(bin, bytes);
  data::LoaderOptions lo;
  lo.datasets = {w + "/data"};
  lo.seq_len = 16;
  lo.vocab_size = 400;
  lo.shuffle = false;
  data::Loader l(lo);
  l.set_position(0);
  require_error([&] { l.next(2); }, {"train-00000.bin", "token 0 has id 65535", "vocabulary (400 ids)"});
}

TEST_CASE("streaming detokenization keeps the space of the first generated piece and never repeats text",
          "[hardening][tokenizer]") {
  auto tok = Tokenizer::load(fx().tok);
  const auto prompt = tok.encode("The model", true);
  const auto cont = tok.encode("cache of the layer is a token", false);  // "▁cache ...": a leading-space piece
  REQUIRE(!cont.empty());
  StreamDecoder s(tok, prompt);
  std::string shown = tok.decode(prompt);
  for (auto id : cont) shown += s.push(id);
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), cont.begin(), cont.end());
  CHECK(shown == tok.decode(all));
  CHECK(shown.find("model cache") != std::string::npos);  // the space after the prompt is there
  // the CLI prints prompt + continuation with the space, and ends its line before the closing log line
  const auto w = tmp_dir("genspace");
  tiny_model(w + "/m");
  auto r = run("(" + dmc_bin() + " generate --model " + w + "/m --tokenizer " + fx().tok +
               " --prompt 'The model' --max-new-tokens 5 --temperature 0 2>/dev/null)");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.rfind("The model", 0) == 0);
  CHECK(r.output.back() == '\n');
  // the prompt from a file (the seed's inference.sh form): the same output; neither or both: refused
  write_text(w + "/prompt.txt", "The model");
  auto f = run("(" + dmc_bin() + " generate --model " + w + "/m --tokenizer " + fx().tok +
               " --prompt-file " + w + "/prompt.txt --max-new-tokens 5 --temperature 0 2>/dev/null)");
  CHECK(f.status == 0);
  CHECK(f.output == r.output);
  auto both = run(dmc_bin() + " generate --model " + w + "/m --tokenizer " + fx().tok + " --prompt-file " + w +
                  "/prompt.txt --prompt x");
  CHECK(both.status == 1);
  CHECK(both.output.find("give one of --prompt TEXT or --prompt-file F") != std::string::npos);
}

TEST_CASE("run_program: arguments reach the program verbatim (no shell), output and status captured",
          "[hardening]") {
  const auto w = tmp_dir("spawn");
  const std::string hostile = "a b; touch " + w + "/INJECTED $(touch " + w + "/SUBST) `id` * \"q\"";
  const ProcessResult r = run_program({"python3", "-c", "import sys; print(sys.argv[1]); sys.exit(3)", hostile});
  CHECK(r.status == 3);
  CHECK(r.out == hostile + "\n");
  CHECK(!fs::exists(w + "/INJECTED"));
  CHECK(!fs::exists(w + "/SUBST"));
  const ProcessResult e = run_program({"python3", "-c", "import sys; sys.stderr.write('to stderr')"});
  CHECK(e.status == 0);
  CHECK(e.err == "to stderr");
  require_error([&] { run_program({w + "/no-such-program"}); }, {"cannot start", "no-such-program"});
}

TEST_CASE("streaming detokenization: a flush returns what was held back, the text equals one decode at any length",
          "[hardening][tokenizer]") {
  auto tok = Tokenizer::load(fx().tok);
  const auto prompt = tok.encode("Once", true);
  std::vector<int64_t> cont;
  for (int i = 0; i < 300; ++i) {  // a long output: every push decodes a few ids, not all of them
    const auto piece = tok.encode(i % 3 == 0 ? " the layer" : i % 3 == 1 ? " cache," : " token.", false);
    cont.insert(cont.end(), piece.begin(), piece.end());
  }
  StreamDecoder s(tok, prompt);
  std::string shown;
  for (auto id : cont) shown += s.push(id);
  shown += s.flush();
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), cont.begin(), cont.end());
  CHECK(tok.decode(prompt) + shown == tok.decode(all));
  CHECK(s.text() == shown);
}

TEST_CASE("chat: multi-turn conversations in the ChatML and Llama 2 forms, bad turn orders refused",
          "[hardening][tokenizer]") {
  auto tok = Tokenizer::load(fx().tok);  // SentencePiece: <s> / </s>
  const std::vector<ChatMessage> conv = {
      {"system", "Be brief."}, {"user", " Hi there "}, {"assistant", "Hello!"}, {"user", "Name a colour."}};
  const ChatPrompt l2 = apply_chat(tok, ChatFormat::Llama2, conv);
  // (Meta's template strips the first turn's content after the system block is put in front: the user's leading
  // space stays, the trailing one goes)
  CHECK(l2.text == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi there [/INST] Hello! </s><s>[INST] Name a colour. [/INST]");
  // ids: BOS, the first exchange's text, EOS, BOS, the second turn's text (BOS / EOS as ids, not as text)
  std::vector<int64_t> want = {tok.bos_id()};
  for (auto id : tok.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi there [/INST] Hello! ", false)) want.push_back(id);
  want.push_back(tok.eos_id());
  want.push_back(tok.bos_id());
  for (auto id : tok.encode("[INST] Name a colour. [/INST]", false)) want.push_back(id);
  CHECK(l2.ids(tok) == want);
  // one exchange: the single-turn form, BOS first
  const ChatPrompt one = apply_chat(tok, ChatFormat::Llama2, "", "Hi");
  CHECK(one.text == "[INST] Hi [/INST]");
  CHECK(one.ids(tok).front() == tok.bos_id());
  const ChatPrompt ml = apply_chat(tok, ChatFormat::ChatML, conv);
  CHECK(ml.text ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi there <|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n");
  for (const auto& [bad, want_msg] : std::vector<std::pair<std::vector<ChatMessage>, std::string>>{
           {{{"user", "a"}, {"user", "b"}}, "message 1 has role 'user', expected 'assistant'"},
           {{{"user", "a"}, {"assistant", "b"}}, "the last message must be the user's"},
           {{{"assistant", "a"}}, "message 0 has role 'assistant'"},
           {{{"user", "a"}, {"system", "b"}, {"user", "c"}}, "message 1 has role 'system'"},
           {{}, "no messages"}})
    for (ChatFormat f : {ChatFormat::ChatML, ChatFormat::Llama2}) require_error([&] { apply_chat(tok, f, bad); }, {want_msg});
}

TEST_CASE("bench decode: a context of exactly max_position_embeddings is accepted, one more refused",
          "[hardening][bad]") {
  const auto w = tmp_dir("benchpos");
  tiny_model(w + "/m");  // 64 positions
  const std::string cmd = dmc_bin() + " bench decode --model " + w +
                          "/m --policy vanilla --batch 1 --device cpu "
                          "--prefill-check 0 --memory-gib 0.05 --steps 2 --new-tokens 8 ";
  auto r = run(cmd + "--prompt-len 56");
  INFO(r.output);
  CHECK(r.status == 0);
  r = run(cmd + "--prompt-len 57");
  CHECK(r.status == 1);
  CHECK(r.output.find("exceeds max_position_embeddings (64)") != std::string::npos);
}

// Catch2 v2's catch_discover_tests (Debian's) splits a test name at ';' or reads a leading "--" as an option, and
// CTest then runs half-names that match nothing and fail: every case name must avoid both.
TEST_CASE("test case names hold no semicolon and start with no double dash (CTest discovery would split them)",
          "[hardening]") {
  int names = 0;
  for (const auto& e : fs::directory_iterator(std::string(DMC_SOURCE_DIR) + "/tests")) {
    if (e.path().extension() != ".cpp") continue;
    std::ifstream in(e.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string key = std::string("TEST_") + "CASE(\"";
    for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
      // the name: adjacent string literals up to the first ", \"[" (the tags)
      const size_t end = text.find("\"[", at);
      if (end == std::string::npos) continue;
      const std::string name = text.substr(at + key.size(), end - at - key.size());
      ++names;
      INFO(e.path().filename().string() << ": " << name.substr(0, 100));
      CHECK(name.find(';') == std::string::npos);
      CHECK(name.rfind("--", 0) != 0);
    }
  }
  CHECK(names > 100);
}
