// dmc: command-line entry point. `dmc <command> --help` prints each command's options.
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/log.h"
#include "config/options.h"

namespace {
const char* kUsage = R"(dmc: Dynamic Memory Compression for Llama-family models

usage: dmc <command> [options]          (dmc <command> --help for its options)

commands:
  info DIR              config, parameter count, dtypes and bytes of a model directory
  init                  write a randomly initialised Llama (preset shape, HF format)
  convert               change dtype and/or re-shard a model directory; --from-gguf FILE: import a llama.cpp GGUF
  generate              generate text from a prompt
  eval ppl              perplexity of a text file (sliding window)
  eval tasks            long-context tasks (passkey, RULER NIAH, vt) through the engine under each cache policy
  tokenize              token ids (and pieces) of a text with a model's tokenizer, like llama.cpp's llama-tokenize
  tokenizer train       train a small SentencePiece BPE tokenizer on text files
  data prepare          tokenize text/JSONL into token shards with a document index and a validation split
  train                 pretrain or continue training a Llama (AdamW, schedules, checkpoints, resume)
  retrofit              one DMC retrofit stage: --stage zero_out | retrofit | finetune
  report RUN_DIR...     loss and compression-ratio curves, per-layer/head ratio heatmap, summary
  bench decode          decode throughput at equal memory: vanilla vs DMC (and TOVA/H2O/window), HBM floor
  serve                 OpenAI-compatible HTTP server (completions, chat, streaming) on the continuous-batching engine

environment: DMC_LOG_LEVEL=trace|debug|info|warn|error|off (default info)
)";
}

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  // Several ranks (torchrun-style WORLD_SIZE > 1): one hardware work queue per GPU, as Megatron-LM sets it, so a
  // collective issued before a GEMM gets its SMs first and runs beside it (measured on 2 x H100: TP=2 training
  // 2.3% faster, docs/benchmarks.md). CUDA reads it when its context starts; a setting of the caller's wins.
  if (const char* ws = std::getenv("WORLD_SIZE"); ws && std::atoi(ws) > 1)
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1", 0);
  const std::string cmd = args[0];
  args.erase(args.begin());
  try {
    // DMC_LOG_LEVEL=debug shows, among others, the decode GEMM row choices (a training config's log_level wins)
    if (const char* lv = std::getenv("DMC_LOG_LEVEL")) {
      const std::string level = lv;
      DMC_CHECK(level == "trace" || level == "debug" || level == "info" || level == "warn" || level == "error" ||
                    level == "off",
                "environment DMC_LOG_LEVEL: expected trace, debug, info, warn, error or off, got '", level, "'");
      dmc::log::set_level(level);
    }
    if (cmd == "info") return dmc::cli::cmd_info(args);
    if (cmd == "init") return dmc::cli::cmd_init(args);
    if (cmd == "convert") return dmc::cli::cmd_convert(args);
    if (cmd == "generate") return dmc::cli::cmd_generate(args);
    if (cmd == "eval") return dmc::cli::cmd_eval(args);
    if (cmd == "tokenizer") return dmc::cli::cmd_tokenizer(args);
    if (cmd == "tokenize") return dmc::cli::cmd_tokenize(args);
    if (cmd == "data") return dmc::cli::cmd_data(args);
    if (cmd == "train") return dmc::cli::cmd_train(args);
    if (cmd == "retrofit") return dmc::cli::cmd_retrofit(args);
    if (cmd == "report") return dmc::cli::cmd_report(args);
    if (cmd == "bench") return dmc::cli::cmd_bench(args);
    if (cmd == "serve") return dmc::cli::cmd_serve(args);
    std::cerr << "dmc: unknown command '" << cmd << "'\n\n" << kUsage;
    return 2;
  } catch (const dmc::HelpRequested& h) {
    std::cout << h.text;
    return 0;
  } catch (const dmc::Error& e) {
    dmc::log::error(e.what());
    return 1;
  } catch (const c10::Error& e) {
    dmc::log::error(std::string("torch: ") + e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    dmc::log::error(std::string("error: ") + e.what());
    return 1;
  }
}
