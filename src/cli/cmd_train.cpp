// dmc data prepare / dmc train.
#include <iostream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/log.h"
#include "config/options.h"
#include "data/prepare.h"
#include "inference/task_eval.h"
#include "common/util.h"
#include "common/files.h"
#include <nlohmann/json.hpp>
#include "train/stages.h"
#include "report/report.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace dmc::cli {

namespace {
// A run stopped by SIGTERM / SIGINT has saved its checkpoint, but it is not finished: it exits 128 + the signal
// (143, 130), as a shell reports a process the signal ended, so a scheduler can tell it from a completed run (0).
// exit_after_steps is a requested stop and exits 0.
int exit_status(const train::TrainResult& r) { return r.signal ? 128 + r.signal : 0; }
}  // namespace

int cmd_data(const Args& a) {
  if (a.empty() || a[0] != "prepare") {
    if (!a.empty() && (a[0] == "-h" || a[0] == "--help")) {
      std::cout << "usage: dmc data prepare --input GLOB[,GLOB] --tokenizer FILE --out DIR [options]\n";
      return 0;
    }
    fail("command line: expected 'dmc data prepare ...'");
  }
  data::PrepareOptions o;
  OptionTable t("data prepare", "dmc data prepare --input GLOB[,GLOB...] --tokenizer FILE --out DIR [options]");
  t.add("input", &o.inputs, "text (.txt, optionally .xz/.gz) or JSONL (.jsonl) files or globs", true);
  t.add("tokenizer", &o.tokenizer, "tokenizer.model, tokenizer.json, .gguf or a model directory", true);
  t.add("out", &o.out, "output directory", true);
  t.add("doc_split", &o.doc_split, "text documents: file (one per file), blank (blank-line paragraphs), chunk")
      .one_of({"file", "blank", "chunk"});
  t.add("chunk_chars", &o.chunk_chars, "chunk: paragraphs gathered into documents of at least this many characters")
      .min(1);
  t.add("jsonl_field", &o.jsonl_field, "JSONL: the string field holding the text");
  t.add("valid_fraction", &o.valid_fraction, "fraction of documents held out for validation").min(0).below(1);
  t.add("seed", &o.seed, "seed of the document split");
  t.add("threads", &o.threads, "encoding threads (0 = all cores)").min(0);
  t.add("shard_tokens", &o.shard_tokens, "tokens per shard file").min(1);
  t.add("overwrite", &o.overwrite, "replace --out if it exists");
  t.parse(Args(a.begin() + 1, a.end()));
  log::info(t.to_yaml());
  data::prepare(o);
  return 0;
}

int cmd_train(const Args& a) {
  train::TrainOptions o;
  OptionTable t("train", "dmc train --config FILE [key=value ...]");
  o.add_to(t);
  t.parse(a);
  return exit_status(train::train(o, nullptr, t.to_yaml()));
}

int cmd_retrofit(const Args& a) {
  train::TrainOptions o;
  RetrofitOptions r;
  OptionTable t("retrofit", "dmc retrofit --stage zero_out|retrofit|finetune --config FILE [key=value ...]");
  r.add_to(t);
  o.add_to(t);
  t.parse(a);
  const bool resumable = o.resume != "none" && (o.resume != "auto" || train::latest_checkpoint(o.out));
  if (o.init_from.empty() && !resumable)
    fail(
        "command line: 'dmc retrofit' needs --init-from (the base model for zero_out, the previous stage's final "
        "model otherwise)");
  DmcStage stage(r);
  return exit_status(train::train(o, &stage, t.to_yaml()));
}

namespace {
// dmc report tasks A.json [B.json ...]: `eval tasks` reports (e.g. one per length, run as separate jobs) as one:
// the tables, optionally the merged JSON and the depth x length heatmaps.
int cmd_report_tasks(const Args& a) {
  std::vector<std::string> files;
  std::string json_out, heatmaps;
  OptionTable t("report tasks", "dmc report tasks REPORT.json [REPORT.json ...] [--json OUT] [--heatmaps DIR]");
  t.add("json", &json_out, "write the merged report here");
  t.add("heatmaps", &heatmaps, "write a depth x length accuracy heatmap (SVG) per (task, run) into this directory");
  Args rest;
  for (size_t i = 1; i < a.size(); ++i) {
    const std::string& x = a[i];
    if (x.rfind("-", 0) != 0 && x.find('=') == std::string::npos &&
        (rest.empty() || (rest.back() != "--json" && rest.back() != "--heatmaps")))
      files.push_back(x);
    else
      rest.push_back(x);
  }
  t.parse(rest);
  if (files.empty()) fail("command line: 'dmc report tasks' needs at least one `eval tasks` JSON report");
  std::vector<nlohmann::json> reps;
  for (const auto& f : files) {
    const std::string text = read_file(f, "eval tasks report");
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) fail(f, ": not valid JSON (expected an `eval tasks` report)");
    reps.push_back(std::move(j));
  }
  const nlohmann::json merged = merge_task_reports(reps, files);
  std::cout << task_eval_table(merged) << std::flush;
  save_task_report(merged, json_out, heatmaps);
  return 0;
}
}  // namespace

int cmd_report(const Args& a) {
  if (!a.empty() && a[0] == "tasks") return cmd_report_tasks(a);
  report::ReportOptions o;
  std::vector<std::string> runs;
  OptionTable t("report", "dmc report RUN_DIR [RUN_DIR ...] [--out DIR]");
  t.add("runs", &o.runs, "run directories, in stage order (also given as bare arguments)");
  t.add("out", &o.out, "output directory (default: RUN_DIR/report of the last run)");
  Args rest;
  for (const auto& x : a) {
    if (x.rfind("-", 0) != 0 && x.find('=') == std::string::npos && (rest.empty() || rest.back() != "--out"))
      runs.push_back(x);
    else
      rest.push_back(x);
  }
  t.parse(rest);
  o.runs.insert(o.runs.end(), runs.begin(), runs.end());
  if (o.runs.empty()) fail("command line: 'dmc report' needs at least one run directory");
  if (o.out.empty()) o.out = o.runs.back() + "/report";
  std::cout << report::make_report(o);
  log::info(cat("report written to ", o.out));
  return 0;
}

}  // namespace dmc::cli
