// Data pipeline and trainer: exact resume, gradient accumulation, LR schedule, loader determinism and
// blends, checkpoints that survive SIGKILL mid-write and a full disk, SIGTERM, and bad input.
#include <signal.h>
#include <sys/mount.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/util.h"
#include "data/dataset.h"
#include "data/prepare.h"
#include "train/stages.h"
#include "helpers.h"
#include "model/llama.h"
#include "train_fixture.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/trainer.h"

using namespace dmc;
using namespace dmc::test;
using json = nlohmann::json;

namespace {
train::TrainOptions tiny_opts(const std::string& out) {
  train::TrainOptions o;
  o.out = out;
  o.tokenizer = fx().tok;
  o.data = {fx().data};
  o.shape.num_hidden_layers = 2;
  o.shape.hidden_size = 64;
  o.shape.num_attention_heads = 4;
  o.shape.num_key_value_heads = 2;
  o.shape.intermediate_size = 96;
  o.seq_len = 32;
  o.micro_batch = 2;
  o.global_batch = 4;
  o.train_steps = 6;
  o.lr = 3e-3;
  o.warmup_steps = 2;
  o.device = "cpu";
  o.log_every = 1;
  o.eval_batches = 2;
  o.log_level = "warn";
  return o;
}
std::vector<double> losses(const std::string& run) {
  std::vector<double> v;
  for (const auto& j : read_jsonl(run + "/metrics.jsonl"))
    if (j.contains("loss")) v.push_back(j["loss"].get<double>());
  return v;
}
}  // namespace

TEST_CASE("exact resume: N steps, stop, resume N equals 2N straight, bit for bit", "[train]") {
  const auto root = tmp_dir("resume");
  auto a = tiny_opts(root + "/straight");
  a.train_steps = 8;
  train::train(a, nullptr, "x");
  auto b = tiny_opts(root + "/split");
  b.train_steps = 8;
  b.exit_after_steps = 4;
  auto r1 = train::train(b, nullptr, "x");
  CHECK(r1.interrupted);
  CHECK(r1.steps_done == 4);
  CHECK_FALSE(fs::exists(root + "/split/final"));
  b.exit_after_steps = 0;
  auto r2 = train::train(b, nullptr, "x");  // resume auto
  CHECK(r2.steps_done == 8);
  const auto la = losses(root + "/straight"), lb = losses(root + "/split");
  REQUIRE(la.size() == 8);
  REQUIRE(lb.size() == 8);
  for (size_t i = 0; i < 8; ++i) CHECK(la[i] == lb[i]);  // identical, not merely close
  CHECK(same_weights(root + "/straight/final", root + "/split/final"));
  // and the optimizer state too
  auto oa = io::SafetensorsFile::open(root + "/straight/checkpoints/step-00000008/optimizer.safetensors");
  auto ob = io::SafetensorsFile::open(root + "/split/checkpoints/step-00000008/optimizer.safetensors");
  for (const auto& n : oa->names()) CHECK(torch::equal(oa->get(n), ob->get(n)));
}

TEST_CASE("gradient accumulation: 1 x B equals 4 x B/4", "[train]") {
  const auto root = tmp_dir("accum");
  auto a = tiny_opts(root + "/one");
  a.micro_batch = 8;
  a.global_batch = 8;
  a.train_steps = 2;
  auto b = a;
  b.out = root + "/four";
  b.micro_batch = 2;
  train::train(a, nullptr, "x");
  train::train(b, nullptr, "x");
  auto la = losses(a.out), lb = losses(b.out);
  REQUIRE(la.size() == 2);
  CHECK(la[0] == Approx(lb[0]).epsilon(1e-6));
  CHECK(la[1] == Approx(lb[1]).epsilon(1e-5));
  auto sa = io::TensorStore::open_dir(a.out + "/final"), sb = io::TensorStore::open_dir(b.out + "/final");
  double maxd = 0;
  for (const auto& n : sa.names()) maxd = std::max(maxd, (sa.get(n) - sb.get(n)).abs().max().item<double>());
  INFO("max weight diff " << maxd);
  CHECK(maxd < 1e-5);
  CHECK(maxd >= 0);
}

TEST_CASE("AdamW row learning rate: the chosen rows take mult x the Adam step, the rest the base one", "[train]") {
  // two optimizers on the same parameter and gradients over three steps; B has rows 1 and 3 at 5x the rate
  at::manual_seed(7);
  at::Tensor a = at::randn({4, 3}, at::kDouble), b = a.clone();
  const at::Tensor a0 = a.clone();
  train::AdamWOptions o;
  o.weight_decay = 0.0;
  train::AdamW oa({{"w", &a}}, o), ob({{"w", &b}}, o);
  ob.set_row_lr("w", at::tensor(std::vector<int64_t>{1, 3}), 5.0);
  // the reference: Adam's update by hand, in float64
  at::Tensor m = at::zeros_like(a), v = at::zeros_like(a), ref = a0.clone();
  const double lr = 0.01;
  for (int step = 1; step <= 3; ++step) {
    const at::Tensor g = at::randn({4, 3}, at::kDouble);
    a.mutable_grad() = g.clone();
    b.mutable_grad() = g.clone();
    oa.step(lr);
    ob.step(lr);
    m = 0.9 * m + 0.1 * g;
    v = 0.95 * v + 0.05 * g * g;
    const at::Tensor u = (m / (1 - std::pow(0.9, step))) / ((v / (1 - std::pow(0.95, step))).sqrt() + o.eps);
    at::Tensor scale = at::ones({4, 1}, at::kDouble);
    scale[1] = 5.0;
    scale[3] = 5.0;
    ref = ref - lr * scale * u;
  }
  CHECK((b - ref).abs().max().item<double>() < 1e-12);
  for (int64_t r : {0, 2}) CHECK(at::equal(b[r], a[r]));  // the other rows: the fused step alone
  for (int64_t r : {1, 3})
    CHECK(((b[r] - a0[r]) - 5.0 * (a[r] - a0[r])).abs().max().item<double>() < 1e-12);
  // bad requests name what is wrong
  require_error([&] { ob.set_row_lr("nope", at::tensor(std::vector<int64_t>{0}), 2.0); },
                {"no parameter named 'nope'"});
  require_error([&] { ob.set_row_lr("w", at::tensor(std::vector<int64_t>{4}), 2.0); }, {"'w'", "within [0, 4)"});
  require_error([&] { ob.set_row_lr("w", at::tensor(std::vector<int64_t>{0}), 0.0); }, {"must be > 0"});
}

TEST_CASE("LR schedule values", "[train]") {
  train::LrSchedule s{1.0, 0.1, 10, 110, "cosine"};
  CHECK(s.at(0) == Approx(0.1));
  CHECK(s.at(9) == Approx(1.0));
  CHECK(s.at(10) == Approx(1.0));
  CHECK(s.at(60) == Approx(0.55));
  CHECK(s.at(110) == Approx(0.1));
  CHECK(s.at(500) == Approx(0.1));
  s.shape = "linear";
  CHECK(s.at(35) == Approx(0.775));
  s.shape = "constant";
  CHECK(s.at(100) == Approx(1.0));
  s.shape = "exp";
  require_error([&] { s.at(20); }, {"lr_schedule", "exp"});
}

TEST_CASE("loader: deterministic order, epochs, document starts, blend proportions", "[data]") {
  data::LoaderOptions lo;
  lo.datasets = {fx().data};
  lo.seq_len = 16;
  lo.seed = 5;
  data::Loader a(lo), b(lo);
  auto x = a.next(6), y = b.next(6);
  CHECK(torch::equal(x.input, y.input));
  CHECK(torch::equal(x.input.narrow(1, 1, 15), x.target.narrow(1, 0, 15)));
  // position restores the stream
  data::Loader c(lo);
  c.set_position(3);
  CHECK(torch::equal(c.next(3).input, x.input.narrow(0, 3, 3)));
  // another seed, another order
  lo.seed = 6;
  data::Loader d(lo);
  CHECK_FALSE(torch::equal(d.next(6).input, x.input));
  // a full epoch visits every sample exactly once
  lo.seed = 5;
  data::Loader e(lo);
  const int64_t n = e.samples_per_epoch(0);
  std::set<std::vector<int64_t>> seen;
  std::vector<int64_t> tok(17);
  std::vector<char> ds(16);
  for (int64_t k = 0; k < n; ++k) {
    e.sample(k, tok.data(), reinterpret_cast<bool*>(ds.data()));
    seen.insert(tok);
  }
  CHECK((int64_t)seen.size() == n);
  // doc_start marks exactly the BOS positions (BOS only occurs at document starts)
  e.set_position(0);
  auto bt = e.next(n);
  CHECK(torch::equal(bt.doc_start, bt.input == 1));
  CHECK(bt.doc_start.any().item<bool>());
  // blend 3:1
  lo.datasets = {fx().data, fx().data2};
  lo.weights = {3, 1};
  data::Loader f(lo);
  int64_t first = 0;
  for (int64_t k = 0; k < 400; ++k) first += f.dataset_of(k) == 0;
  CHECK(first == 300);
}

TEST_CASE("SIGKILL during a checkpoint write leaves the previous checkpoint usable", "[train][signals]") {
  const auto run_dir = tmp_dir("kill") + "/run";
  const std::string cmd = "DMC_CKPT_WRITE_DELAY_MS=400 " +
                          train_cmd(run_dir, "--train-steps 6 --save-every 2 --log-level warn") +
                          " > /dev/null 2>&1 & echo $!";
  auto r = run(cmd);
  const int pid = std::stoi(r.output);
  // wait until the second checkpoint's write is under way, then kill -9
  bool killed = false;
  for (int i = 0; i < 600 && !killed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!fs::exists(run_dir + "/checkpoints")) continue;
    for (const auto& e : fs::directory_iterator(run_dir + "/checkpoints"))
      if (e.path().filename().string().rfind("step-00000004.tmp-", 0) == 0) {
        ::kill(pid, SIGKILL);
        killed = true;
      }
  }
  REQUIRE(killed);
  run("while kill -0 " + std::to_string(pid) + " 2>/dev/null; do sleep 0.05; done");
  auto latest = train::latest_checkpoint(run_dir);
  REQUIRE(latest);
  CHECK(fs::path(*latest).filename() == "step-00000002");
  train::validate_checkpoint(*latest);
  // an explicit resume from the broken one is refused, auto resumes from step 2 and finishes
  for (const auto& e : fs::directory_iterator(run_dir + "/checkpoints"))
    if (e.path().filename().string().find(".tmp-") != std::string::npos)
      require_error([&] { train::validate_checkpoint(e.path().string()); }, {"incomplete checkpoint"});
  r = run(train_cmd(run_dir, "--train-steps 6 --save-every 2 --resume auto"));
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("resumed at step 2") != std::string::npos);
  CHECK(fs::exists(run_dir + "/final/model.safetensors"));
}

TEST_CASE("SIGTERM saves a checkpoint and exits cleanly", "[train][signals]") {
  const auto run_dir = tmp_dir("term") + "/run";
  auto r = run(train_cmd(run_dir, "--train-steps 100000 --log-level warn") + " > " + run_dir + ".log 2>&1 & echo $!");
  const int pid = std::stoi(r.output);
  for (int i = 0; i < 400 && losses(run_dir).size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE(losses(run_dir).size() >= 3);
  ::kill(pid, SIGTERM);
  auto w = run("while kill -0 " + std::to_string(pid) + " 2>/dev/null; do sleep 0.05; done; wait " +
               std::to_string(pid) + " 2>/dev/null; echo done");
  (void)w;
  auto latest = train::latest_checkpoint(run_dir);
  REQUIRE(latest);
  auto st = train::read_trainer_state(*latest);
  CHECK(st["step"].get<int64_t>() >= 3);
  CHECK(read_file(run_dir + ".log").find("signal 15 received") != std::string::npos);
}

TEST_CASE("non-finite losses: skipped and counted, then a clear stop", "[train][bad]") {
  const auto root = tmp_dir("nan");
  auto o = tiny_opts(root + "/a");
  o.inject_nonfinite_steps = {"2"};
  auto r = train::train(o, nullptr, "x");
  CHECK(r.steps_done == 6);
  auto lines = read_file(root + "/a/metrics.jsonl");
  CHECK(lines.find("\"skipped_steps\":1") != std::string::npos);
  auto o2 = tiny_opts(root + "/b");
  o2.inject_nonfinite_steps = {"1", "2", "3"};
  o2.max_nonfinite = 3;
  require_error([&] { train::train(o2, nullptr, "x"); }, {"3 non-finite losses in a row", "max_nonfinite"});
}

TEST_CASE("no space left while saving: an error, the previous checkpoint intact", "[train][bad]") {
  const auto mnt = tmp_dir("full");
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=2m") != 0) SKIP("cannot mount a small tmpfs here (needs root)");
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount(p.c_str()); }
  } un{mnt};
  // the tiny model's checkpoint is ~0.6 MB: the first fits, a later one does not
  auto o = tiny_opts(mnt + "/run");
  o.train_steps = 8;
  o.save_every = 2;
  o.keep_last = 10;
  bool failed = false;
  try {
    train::train(o, nullptr, "x");
  } catch (const Error& e) {
    failed = true;
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("not saved") != std::string::npos);
    CHECK(msg.find("is intact") != std::string::npos);
  }
  REQUIRE(failed);
  auto latest = train::latest_checkpoint(mnt + "/run");
  REQUIRE(latest);
  train::validate_checkpoint(*latest);
  for (const auto& e : fs::directory_iterator(mnt + "/run/checkpoints"))
    CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
}

TEST_CASE("bad data: empty corpus, too-short data, wrong tokenizer, corrupt shard and index", "[data][bad]") {
  const auto w = tmp_dir("baddata");
  write_text(w + "/empty.txt", "\n\n  \n");
  data::PrepareOptions p;
  p.inputs = {w + "/empty.txt"};
  p.tokenizer = fx().tok;
  p.out = w + "/d0";
  require_error([&] { data::prepare(p); }, {"hold no text"});
  p.inputs = {w + "/nothing-*.txt"};
  require_error([&] { data::prepare(p); }, {"nothing-*.txt", "no file matches"});

  data::LoaderOptions lo;
  lo.datasets = {fx().data2};
  lo.seq_len = 1000000;
  require_error([&] { data::Loader l(lo); }, {fx().data2, "too few for one sample", "seq_len"});

  write_text(w + "/t.txt", sample_text(100, 4));
  Tokenizer::train({{w + "/t.txt"}, w + "/other", 400, 100000});
  lo.seq_len = 16;
  lo.tokenizer_fingerprint = Tokenizer::load(w + "/other.model").fingerprint();
  require_error([&] { data::Loader l(lo); }, {"meta.json", "tokenizer_fingerprint", "another tokenizer"});

  fs::copy(fx().data, w + "/corrupt", fs::copy_options::recursive);
  fs::resize_file(w + "/corrupt/train-00000.bin", fs::file_size(w + "/corrupt/train-00000.bin") - 6);
  lo.datasets = {w + "/corrupt"};
  lo.tokenizer_fingerprint.clear();
  require_error([&] { data::Loader l(lo); }, {"train-00000.idx", "corrupt index"});
  fs::resize_file(w + "/corrupt/train-00000.bin", fs::file_size(w + "/corrupt/train-00000.bin") - 1);
  require_error([&] { data::Loader l(lo); }, {"train-00000.bin", "corrupt shard"});
  fs::copy(fx().data, w + "/corrupt2", fs::copy_options::recursive);
  write_text(w + "/corrupt2/train-00000.idx", "abc");
  lo.datasets = {w + "/corrupt2"};
  require_error([&] { data::Loader l(lo); }, {"train-00000.idx", "corrupt index"});
  write_text(w + "/corrupt2/meta.json", "{\"format\": 3");
  require_error([&] { data::Loader l(lo); }, {"meta.json", "not valid JSON"});
}

TEST_CASE("dmc train: unknown and mistyped config keys", "[train][bad]") {
  const auto w = tmp_dir("traincfg");
  write_text(w + "/c.yaml", "train_step: 5\n");
  auto r = run(train_cmd(w + "/run", "--config " + w + "/c.yaml"));
  CHECK(r.status == 1);
  CHECK(r.output.find("c.yaml: unknown key 'train_step'") != std::string::npos);
  CHECK(r.output.find("did you mean 'train_steps'") != std::string::npos);
  write_text(w + "/d.yaml", "lr: fast\n");
  r = run(train_cmd(w + "/run", "--config " + w + "/d.yaml"));
  CHECK(r.status == 1);
  CHECK(r.output.find("d.yaml: key 'lr': expected a number, got 'fast'") != std::string::npos);
  r = run(train_cmd(w + "/run", "--global-batch 3"));
  CHECK(r.status == 1);
  CHECK(r.output.find("multiple of micro_batch") != std::string::npos);
}

TEST_CASE("data prepare: JSONL, splits by document, uint16 shards, several threads", "[data]") {
  const auto w = tmp_dir("jsonl");
  std::string jl;
  for (int i = 0; i < 200; ++i) jl += json{{"text", sample_text(2, 100 + i)}, {"id", i}}.dump() + "\n";
  write_text(w + "/a.jsonl", jl);
  data::PrepareOptions p;
  p.inputs = {w + "/*.jsonl"};
  p.tokenizer = fx().tok;
  p.out = w + "/d";
  p.valid_fraction = 0.1;
  p.threads = 3;
  p.shard_tokens = 5000;
  auto st = data::prepare(p);
  CHECK(st.documents[0] + st.documents[1] == 200);
  CHECK(st.documents[1] > 5);
  CHECK(st.documents[1] < 40);
  auto meta = json::parse(read_file(w + "/d/meta.json"));
  CHECK(meta["dtype"] == "uint16");
  CHECK(meta["splits"]["train"]["shards"].size() > 1);
  auto tr = data::TokenSplit::open(w + "/d", "train");
  CHECK(tr->num_tokens() == st.tokens[0]);
  CHECK(tr->num_documents() == st.documents[0]);
  // every document is [BOS] ... [EOS] and identical to encoding its text directly
  auto tok = Tokenizer::load(fx().tok);
  std::vector<int64_t> first(5);
  tr->read(0, 5, first.data());
  CHECK(first[0] == tok.bos_id());
  write_text(w + "/bad.jsonl", "{\"text\": 1}\n");
  p.inputs = {w + "/bad.jsonl"};
  p.out = w + "/e";
  require_error([&] { data::prepare(p); }, {"bad.jsonl:1", "'text'"});
}

// The attention object of a forward lives until its backward: a DMC retrofit step with activation checkpointing
// recomputes the same DMC layer (same noise) in backward, so it trains exactly like the step without it. (Before
// the one-forward redesign the recompute ran with no attention mode set, i.e. vanilla attention.)
TEST_CASE("a DMC retrofit stage with activation checkpointing trains like one without", "[train][dmc]") {
  const auto root = tmp_dir("ckptdmc");
  auto base = tiny_opts(root + "/base");
  base.train_steps = 2;
  train::train(base, nullptr, "x");
  std::vector<std::vector<double>> runs;
  for (bool ckpt : {false, true}) {
    auto o = tiny_opts(root + (ckpt ? "/ckpt" : "/plain"));
    o.init_from = root + "/base/final";
    o.train_steps = 3;
    o.activation_checkpointing = ckpt;
    RetrofitOptions r;
    r.stage = RetrofitStage::Retrofit;
    r.target_cr = 3;
    r.dmc.init_val = 0.5;  // decisions on both sides from the start: the DMC path matters
    DmcStage stage(r);
    train::train(o, &stage, "x");
    runs.push_back(losses(o.out));
  }
  REQUIRE(runs[0].size() == 3);
  for (size_t i = 0; i < runs[0].size(); ++i) CHECK(runs[1][i] == Approx(runs[0][i]).epsilon(1e-5));
  auto a = Llama::load(root + "/plain/final", at::kFloat, at::kCPU),
       b = Llama::load(root + "/ckpt/final", at::kFloat, at::kCPU);
  double worst = 0;
  auto pa = a.parameters(), pb = b.parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    worst = std::max(worst, (*pa[i].second - *pb[i].second).abs().max().item<double>());
  INFO("max |weights (checkpointing) - weights (plain)| " << worst);
  CHECK(worst < 1e-5);
}
