// dmc data prepare / dmc train.
#include <iostream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/log.h"
#include "config/options.h"
#include "data/prepare.h"
#include "train/trainer.h"

namespace dmc::cli {

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
  t.add("tokenizer", &o.tokenizer, "SentencePiece model", true);
  t.add("out", &o.out, "output directory", true);
  t.add("doc_split", &o.doc_split, "text documents: file (one per file), blank (blank-line paragraphs), chunk");
  t.add("chunk_chars", &o.chunk_chars, "chunk: paragraphs gathered into documents of at least this many characters");
  t.add("jsonl_field", &o.jsonl_field, "JSONL: the string field holding the text");
  t.add("valid_fraction", &o.valid_fraction, "fraction of documents held out for validation");
  t.add("seed", &o.seed, "seed of the document split");
  t.add("threads", &o.threads, "encoding threads (0 = all cores)");
  t.add("shard_tokens", &o.shard_tokens, "tokens per shard file");
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
  auto r = train::train(o, nullptr, t.to_yaml());
  (void)r;  // an interrupted run saved its checkpoint: a clean exit
  return 0;
}

}  // namespace dmc::cli
