// The replication chain (scripts/replicate.sh + scripts/replication_report.py) end to end at toy size on the CPU:
// data, base, vanilla control, DMC at two ratios (three stages each), every evaluation (parallel, incremental,
// baselines), the equal-memory decode benchmark, the pack, and the report built from the pack. It checks that
// every table row is there and that parallel and incremental evaluation agree; the GPU run is docs/results.md.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "common/util.h"
#include "helpers.h"
#include "train_fixture.h"

using namespace dmc;
using namespace dmc::test;

namespace {
// scripts/NAME run with `env` (and DMC_BUILD = this build) -> its result, output shown on failure; `status` is the
// exit status it must have
RunResult run_script(const std::string& name, const std::string& env, int status = 0) {
  const std::string bin_dir = std::string(DMC_BINARY).substr(0, std::string(DMC_BINARY).rfind('/'));
  auto r = run("DMC_BUILD=" + bin_dir + " " + env + " " + std::string(DMC_SOURCE_DIR) + "/scripts/" + name);
  INFO(r.output);
  REQUIRE(r.status == status);
  return r;
}
}  // namespace

TEST_CASE("replication script: the whole chain at toy size, and its report", "[replicate][cli]") {
  const auto w = tmp_dir("replicate");
  const std::string src = DMC_SOURCE_DIR;
  const std::string env =
      "RUN=" + w + "/run CORPORA_GLOB='" + fx().dir + "/a.txt' TOKENIZER=" + fx().tok +
      " BASE_STEPS=12 CONT_STEPS=34 RATIOS='2 4' EVAL_SUBSET=600 BENCH_GIB=0.01 EVAL_SEQ=96 PROMPT=80 NEW=8 STEPS=4"
      " SHAPE='--vocab-size 0 --hidden-size 64 --intermediate-size 96 --num-hidden-layers 2 --num-attention-heads 4"
      " --num-key-value-heads 4' BATCH='--micro-batch 4 --global-batch 4 --seq-len 64 --device cpu'";
  auto r = run_script("replicate.sh", env);
  // stages of the budget: 3% / 73% / 24% of 34 steps
  CHECK(r.output.find("zero_out 1 -> retrofit 25 -> finetune 8") != std::string::npos);
  CHECK(r.output.find("\"policy\":\"vanilla\"") != std::string::npos);  // the decode benchmark's summary lines
  r = run(python() + " " + src + "/scripts/replication_report.py " + w + "/run/replication.tar.gz --out " + w +
          "/results.md --pictures " + w + "/pics");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const std::string md = read_file(w + "/results.md");
  for (const char* row : {"| base (no continued training) |", "| vanilla control |", "| DMC 2x |", "| DMC 4x |",
                          "| vanilla (base) |", "| DMC (dmc4x) |"})
    CHECK(md.find(row) != std::string::npos);
  // the baselines at CR 4 on the vanilla control and on the base model: both tables, every cell measured
  for (const char* table : {"On the vanilla control:", "On the base model:"}) {
    INFO(table);
    const auto at = md.find(table);
    REQUIRE(at != std::string::npos);
    const auto row = md.find("| 4 | ", at);
    REQUIRE(row != std::string::npos);
    CHECK(md.substr(row, md.find('\n', row) - row).find(" - ") == std::string::npos);
  }
  for (const char* pol : {"tova", "h2o", "window"})
    CHECK(fs::exists(w + "/run/eval/vanilla-" + std::string(pol) + "-4x.json"));
  std::ifstream pic(w + "/pics/heatmap-dmc2x.svg");
  CHECK(pic.good());
  // parallel and incremental evaluation agree on every model (fp32 on the CPU)
  for (const char* m : {"base", "vanilla", "dmc2x", "dmc4x"}) {
    auto p = nlohmann::json::parse(read_file(w + "/run/eval/" + m + "-subset-parallel.json"));
    auto i = nlohmann::json::parse(read_file(w + "/run/eval/" + m + "-subset-incremental.json"));
    INFO(m);
    CHECK(p["tokens_scored"] == i["tokens_scored"]);
    CHECK(std::abs(p["ppl"].get<double>() - i["ppl"].get<double>()) / p["ppl"].get<double>() < 1e-4);
  }
}

// scripts/smollm2_retrofit.sh at toy size on the CPU (a tiny random model standing in for SmolLM2, GQA 4/2): one
// control stopped at each DMC budget, DMC at two ratios and a distilled run, every evaluation and the pack; a
// second invocation finds everything done. The GPU run is docs/results.md.
TEST_CASE("SmolLM2 retrofit script: control checkpoints per budget, DMC and distilled runs, evals, resume",
          "[replicate][cli]") {
  const auto w = tmp_dir("smolretro");
  auto init = run(dmc_bin() + " init --out " + w + "/orig --tokenizer " + fx().tok +
                  " --hidden-size 64 --intermediate-size 96 --num-hidden-layers 2 --num-attention-heads 4"
                  " --num-key-value-heads 2");
  INFO(init.output);
  REQUIRE(init.status == 0);
  const std::string env =
      "ZERO_OUT_MIN=0 RUN=" + w + "/run ORIGINAL=" + w + "/orig TOKENIZER=" + fx().tok + " CORPORA_GLOB='" +
      fx().dir + "/a.txt' UNIT=6 RATIOS='2 4' DISTILL_CR=2 EVAL_SEQ=96 EVAL_SUBSET=400 TASK_LENGTHS=800 TASK_SAMPLES=2"
      " TASK_ARGS='--tasks passkey,niah_single_1 --device cpu' BENCH_GIB=0.01 PROMPT=80 NEW=8 STEPS=4 BASELINE_AT_ACHIEVED=0"
      " BATCH='--micro-batch 2 --global-batch 2 --seq-len 64 --device cpu'";
  auto r = run_script("smollm2_retrofit.sh", env);
  // stage steps: ceil(6 x 250 / 6000) = 1, 6 x (CR - 1), ceil(6 x 2000 / 6000) = 2
  CHECK(r.output.find("dmc2x: zero_out 1 -> retrofit 6 -> finetune 2") != std::string::npos);
  CHECK(r.output.find("dmc4x: zero_out 1 -> retrofit 18 -> finetune 2") != std::string::npos);
  CHECK(r.output.find("distill2x: zero_out 1 -> retrofit 6 -> finetune 2") != std::string::npos);
  // the control, stopped at 9 and run on to 21 steps: each export is that step's checkpoint
  const std::string run_dir = w + "/run";
  CHECK(fs::exists(run_dir + "/control-9/config.json"));
  CHECK(fs::exists(run_dir + "/control-21/config.json"));
  CHECK(same_weights(run_dir + "/control-21", run_dir + "/control/final"));
  CHECK(!same_weights(run_dir + "/control-9", run_dir + "/control-21"));
  for (const auto& row : read_jsonl(run_dir + "/distill2x-2-retrofit/metrics.jsonl"))
    if (row.contains("loss")) CHECK(row.contains("kl"));
  // parallel and incremental perplexity agree on every model; tasks for the controls under every policy
  for (const char* m : {"original", "control2x", "dmc2x", "control4x", "dmc4x", "distill2x"}) {
    INFO(m);
    auto p = nlohmann::json::parse(read_file(run_dir + "/eval/" + std::string(m) + "-subset-parallel.json"));
    auto i = nlohmann::json::parse(read_file(run_dir + "/eval/" + std::string(m) + "-subset-incremental.json"));
    CHECK(std::abs(p["ppl"].get<double>() - i["ppl"].get<double>()) / p["ppl"].get<double>() < 1e-4);
    REQUIRE(fs::exists(run_dir + "/tasks/" + std::string(m) + ".json"));
  }
  auto ct = nlohmann::json::parse(read_file(run_dir + "/tasks/control4x.json"));
  std::vector<std::string> names;
  for (const auto& x : ct["runs"]) names.push_back(x["name"]);
  CHECK(names == std::vector<std::string>{"vanilla", "tova@4", "h2o@4", "window@4"});
  auto dt = nlohmann::json::parse(read_file(run_dir + "/tasks/dmc4x.json"));
  CHECK(dt["runs"][0]["name"] == "dmc");
  // the decisions at the needles, per layer and KV head (2 x 2 here), with their heatmaps
  CHECK(dt["needles"]["occurrences"].get<int64_t>() >= 4);
  CHECK(dt["needles"]["isolated"].size() == 2);
  CHECK(fs::exists(run_dir + "/tasks/heatmaps-dmc4x/needles.isolated.svg"));
  CHECK(fs::exists(run_dir + "/smollm2.tar.gz"));
  // the report from the pack: every model's perplexity row against its control, the tasks, the targets, heatmaps
  auto rep = run(python() + " " + std::string(DMC_SOURCE_DIR) + "/scripts/smollm2_report.py " + run_dir +
                 "/smollm2.tar.gz --out " + w + "/report.md --pictures " + w + "/pics --target-lengths 800");
  INFO(rep.output);
  REQUIRE(rep.status == 0);
  const std::string md = read_file(w + "/report.md");
  for (const char* row : {"| control2x | 1 |", "| dmc2x | 2 |", "| dmc4x | 4 |", "| distill2x | 2 |",
                          "| control4x + tova@4 |", "| control4x + window@4 |", "| dmc4x | 800 |", "| dmc4x-2-retrofit |"})
    CHECK(md.find(row) != std::string::npos);
  CHECK(fs::exists(w + "/pics/heatmap-dmc4x.svg"));
  // the recipe's dmc_decision_pair auto: stage 1's choice, from its metrics, with the calibration losses
  CHECK(md.find("dmc4x-1-zero_out: dim D-1 repurposed from rotary pair ") != std::string::npos);
  CHECK(md.find("dmc_decision_pair auto); calibration loss with each pair's partner zeroed") != std::string::npos);
  {  // the per-head summary: its overall ratio (the harmonic mean of the heads') is dmc's own over the split
    const auto at = md.find("Achieved ratio per KV head, summarised");
    REQUIRE(at != std::string::npos);
    const auto e = nlohmann::json::parse(read_file(run_dir + "/eval/dmc4x.json"));
    char overall[32];
    std::snprintf(overall, sizeof overall, "| %.2f |", e["dmc_cr"].get<double>());
    const auto row = md.find("| dmc4x | ", at);
    REQUIRE(row != std::string::npos);
    const std::string line = md.substr(row, md.find('\n', row) - row);
    INFO(line);
    CHECK(line.find(" of 4 | ") != std::string::npos);  // 2 layers x 2 KV heads
    CHECK(line.size() >= std::strlen(overall));
    CHECK(line.substr(line.size() - std::strlen(overall)) == overall);
  }
  {  // the decisions at the needles: a row per DMC model
    const auto at = md.find("Decisions at the needles");
    REQUIRE(at != std::string::npos);
    for (const char* m : {"| dmc2x | ", "| dmc4x | ", "| distill2x | "}) CHECK(md.find(m, at) != std::string::npos);
  }
  // decode at equal memory: one result file a model, each DMC model against the control of its ratio
  for (const char* row : {"| control2x | vanilla |", "| control4x | vanilla |", "| dmc2x | dmc |", "| dmc4x | dmc |"}) {
    INFO(row);
    const auto at = md.find(row);
    REQUIRE(at != std::string::npos);
    if (std::string(row).find("dmc") != std::string::npos)
      CHECK(md.substr(at, md.find('\n', at) - at).find("x (control" + std::string(row).substr(5, 2) + ")") !=
            std::string::npos);
  }
  // the baselines again at more ratios, added to the control's merged report: BASELINE_CRS, and the ratio DMC 4x
  // reached on the tasks (unless it did not compress)
  const std::string dmc_md = read_file(run_dir + "/tasks/dmc4x.md");
  std::smatch ach;
  REQUIRE(std::regex_search(dmc_md, ach, std::regex("achieved CR ([0-9.]+),")));
  auto more = run_script("smollm2_retrofit.sh", env + " PHASES=tasks ONLY='^(control4x|dmc4x)$' BASELINE_AT_ACHIEVED=1"
                                                      " BASELINES=window BASELINE_CRS=3");
  ct = nlohmann::json::parse(read_file(run_dir + "/tasks/control4x.json"));
  names.clear();
  for (const auto& x : ct["runs"]) names.push_back(x["name"]);
  std::vector<std::string> want = {"vanilla", "tova@4", "h2o@4", "window@4", "window@3"};
  if (std::stod(ach[1].str()) >= 1.05) want.push_back("window@" + cat(std::stod(ach[1].str())));
  INFO(more.output << "\nachieved " << ach[1].str());
  CHECK(more.output.find("dmc4x reached CR " + ach[1].str() + " on the tasks") != std::string::npos);
  CHECK(names.size() == want.size());
  for (const auto& n : want) CHECK(std::find(names.begin(), names.end(), n) != names.end());
  if (std::stod(ach[1].str()) >= 1.05) {  // the report's same-memory comparison
    rep = run(python() + " " + std::string(DMC_SOURCE_DIR) + "/scripts/smollm2_report.py " + run_dir + " --out " + w +
              "/report2.md --target-lengths 800");
    REQUIRE(rep.status == 0);
    const std::string md2 = read_file(w + "/report2.md");
    const auto at = md2.find("| dmc4x | 800 |");
    REQUIRE(at != std::string::npos);
    CHECK(md2.substr(at, md2.find('\n', at) - at).find("(window@" + cat(std::stod(ach[1].str())) + ")") !=
          std::string::npos);
  }
  // STAGE1_EVAL: the DMC run right after stage 1, evaluated as a model of its own (full cache; nothing merges yet)
  auto st1 = run_script("smollm2_retrofit.sh", env + " PHASES='eval tasks' STAGE1_EVAL=1 ONLY='^zeroout4x$'");
  {
    INFO(st1.output);
    auto p = nlohmann::json::parse(read_file(run_dir + "/eval/zeroout4x-subset-parallel.json"));
    auto i = nlohmann::json::parse(read_file(run_dir + "/eval/zeroout4x-subset-incremental.json"));
    CHECK(std::abs(p["ppl"].get<double>() - i["ppl"].get<double>()) / p["ppl"].get<double>() < 1e-4);
    auto zt = nlohmann::json::parse(read_file(run_dir + "/tasks/zeroout4x.json"));
    CHECK(zt["runs"][0]["name"] == "vanilla");
    // in the report: a perplexity row against the control of its budget, no target judged, a task row
    auto r3 = run(python() + " " + std::string(DMC_SOURCE_DIR) + "/scripts/smollm2_report.py " + run_dir + " --out " + w +
                  "/report3.md --target-lengths 800");
    REQUIRE(r3.status == 0);
    const std::string md3 = read_file(w + "/report3.md");
    const auto row = md3.find("| zeroout4x | 1 | 1.00 |");
    REQUIRE(row != std::string::npos);
    CHECK(md3.substr(row, md3.find('\n', row) - row).find("| - |") != std::string::npos);  // no target
    CHECK(md3.find("| zeroout4x | 800 |") == std::string::npos);
  }
  // run again: nothing left to do
  auto again = run_script("smollm2_retrofit.sh", env);
  CHECK(again.output.find("== control") == std::string::npos);
  CHECK(again.output.find("ppl") == std::string::npos);
  // a recipe variant beside the first: its own DMC runs with the extra argument in every stage's config, the same
  // controls; another stage length in the same RUN is refused; an evaluation job is not started past the DEADLINE
  // (exit 75) and the next invocation resumes it
  const std::string v = env + " RATIOS=2 DISTILL_CR= CONTROL_RATIOS='2 4' TAG=-v DMC_ARGS='--dmc-decision-lr-mult 3'";
  auto variant = run_script("smollm2_retrofit.sh", v + " PHASES='control dmc'");
  CHECK(variant.output.find("dmc2x-v: zero_out 1 -> retrofit 6 -> finetune 2") != std::string::npos);
  CHECK(variant.output.find("== control") == std::string::npos);
  CHECK(read_file(run_dir + "/dmc2x-v-2-retrofit/config.yaml").find("dmc_decision_lr_mult: 3") != std::string::npos);
  auto longer = run_script("smollm2_retrofit.sh", v + " ZERO_OUT_MIN=3 PHASES=dmc", 1);
  CHECK(longer.output.find("CR 2 was run with stages 1 6 2 (zero_out retrofit finetune), now 3 6 2") != std::string::npos);
  run_script("smollm2_retrofit.sh", v + " PHASES='eval tasks' ONLY='^(original|control2x)$'");  // not the variant
  CHECK(!fs::exists(run_dir + "/eval/dmc2x-v.json"));
  CHECK(!fs::exists(run_dir + "/tasks/dmc2x-v.json"));
  auto late = run_script("smollm2_retrofit.sh", v + " PHASES=eval DEADLINE=1", 75);
  CHECK(late.output.find("deadline:") != std::string::npos);
  CHECK(!fs::exists(run_dir + "/eval/dmc2x-v.json"));
  run_script("smollm2_retrofit.sh", v + " PHASES=eval");
  CHECK(fs::exists(run_dir + "/eval/dmc2x-v-subset-incremental.json"));
  // the variant's decode benchmark beside the first invocation's: theirs are left as they were
  const std::string bench4 = read_file(run_dir + "/bench_dmc4x.jsonl");
  run_script("smollm2_retrofit.sh", v + " PHASES=bench ONLY='^dmc2x-v$'");
  CHECK(read_jsonl(run_dir + "/bench_dmc2x-v.jsonl").size() == 1);
  CHECK(read_file(run_dir + "/bench_dmc4x.jsonl") == bench4);
  CHECK(!fs::exists(run_dir + "/bench_control2x.jsonl.tmp"));
}

TEST_CASE("task_depths.py: accuracy by needle depth, fifths of the haystack, per run of a report", "[replicate]") {
  const auto w = tmp_dir("depths");
  // 10 samples of one task and length: depths 0.05, 0.15, ... 0.95; run "a" right in the last two fifths only
  nlohmann::json rep = {{"runs", nlohmann::json::array({{{"name", "a"}}, {{"name", "b"}}})},
                        {"samples", nlohmann::json::array()}};
  for (int i = 0; i < 10; ++i) {
    const double depth = 0.05 + 0.1 * i;
    rep["samples"].push_back({{"task", "passkey"}, {"length", 1024}, {"depth", depth},
                              {"outputs", {{"a", {{"score", depth > 0.6 ? 1.0 : 0.0}}}, {"b", {{"score", 0.5}}}}}});
  }
  std::ofstream(w + "/r.json") << rep.dump();
  auto r = run(python() + " " + std::string(DMC_SOURCE_DIR) + "/scripts/task_depths.py A=" + w + "/r.json:a B=" + w +
               "/r.json:b --tasks passkey --lengths 1024");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("| passkey | 1024 | A | 0 | 0 | 0 | 100 | 100 |") != std::string::npos);
  CHECK(r.output.find("| passkey | 1024 | B | 50 | 50 | 50 | 50 | 50 |") != std::string::npos);
  auto bad = run(python() + " " + std::string(DMC_SOURCE_DIR) + "/scripts/task_depths.py A=" + w + "/r.json:c");
  CHECK(bad.status != 0);
  CHECK(bad.output.find("no run named 'c' (runs: a, b)") != std::string::npos);
}
