// The replication chain (scripts/replicate.sh + scripts/replication_report.py) end to end at toy size on the CPU:
// data, base, vanilla control, DMC at two ratios (three stages each), every evaluation (parallel, incremental,
// baselines), the equal-memory decode benchmark, the pack, and the report built from the pack. It checks that
// every table row is there and that parallel and incremental evaluation agree; the GPU run is docs/results.md.
#include <fstream>
#include <sstream>

#include "common/util.h"
#include "helpers.h"
#include "train_fixture.h"

using namespace dmc;
using namespace dmc::test;

TEST_CASE("replication script: the whole chain at toy size, and its report", "[replicate][cli]") {
  const auto w = tmp_dir("replicate");
  const std::string src = DMC_SOURCE_DIR;
  const std::string bin_dir = std::string(DMC_BINARY).substr(0, std::string(DMC_BINARY).rfind('/'));
  const std::string env =
      "DMC_BUILD=" + bin_dir + " RUN=" + w + "/run CORPORA_GLOB='" + fx().dir + "/a.txt' TOKENIZER=" + fx().tok +
      " BASE_STEPS=12 CONT_STEPS=34 RATIOS='2 4' EVAL_SUBSET=600 BENCH_GIB=0.01 EVAL_SEQ=96 PROMPT=80 NEW=8 STEPS=4"
      " SHAPE='--vocab-size 0 --hidden-size 64 --intermediate-size 96 --num-hidden-layers 2 --num-attention-heads 4"
      " --num-key-value-heads 4' BATCH='--micro-batch 4 --global-batch 4 --seq-len 64 --device cpu'";
  auto r = run(env + " " + src + "/scripts/replicate.sh");
  INFO(r.output);
  REQUIRE(r.status == 0);
  // stages of the budget: 3% / 73% / 24% of 34 steps
  CHECK(r.output.find("zero_out 1 -> retrofit 25 -> finetune 8") != std::string::npos);
  r = run(python() + " " + src + "/scripts/replication_report.py " + w + "/run/replication.tar.gz --out " + w +
          "/results.md --pictures " + w + "/pics");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const std::string md = read_file(w + "/results.md");
  for (const char* row : {"| base (no continued training) |", "| vanilla control |", "| DMC 2x |", "| DMC 4x |",
                          "| vanilla (base) |", "| DMC (dmc4x-3-finetune) |"})
    CHECK(md.find(row) != std::string::npos);
  CHECK(md.find("| 4 | ") != std::string::npos);  // the baselines row at CR 4
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
