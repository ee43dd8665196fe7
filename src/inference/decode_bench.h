// The decode benchmark behind `dmc bench decode`: decode throughput of the engine, vanilla against DMC (and the
// eviction baselines), at equal memory: every policy gets the same device memory budget for its cache (pages +
// per-row state), and either a given batch or the largest batch whose sequences all fit at the final context
// (prompt + new tokens).
//
// Each policy runs in phases (DecodeBench::run):
//   verify   the engine with the CUDA kernels against the engine with the reference ops on this model (logits and
//            slot counts over a prefill + steps); a difference stops the run before any speed is printed
//   size     the batch at equal memory: slots a sequence needs (forced ratio, eviction budget, or a calibration of
//            trained DMC decisions on full-context prompts) -> pages + state bytes a sequence -> batch and pages
//   fill     every sequence's prompt: "synthetic" (random contents, the slot counts the policy would leave) or real
//            prefills
//   time     timed greedy decode steps; then the paged attention and the weight GEMMs of a step alone
//   prefill  one prompt: parallel prefill against token by token
//   report   one JSON object (printed and appended to --json)
//
// With random weights DMC has no trained decisions: force_cr R stands in for them (ops/forced_decisions.h) and
// every output line says so. A trained DMC checkpoint decides for itself: its sequences are always prefilled for
// real, and "the largest batch" is sized by calibration (`calibrate` full-context prompts; the most pages any of
// them held, plus 10% and one page per (layer, head) of slack).
//
// Floor: a decode step must read every weight once plus the KV slots in use; bytes over the measured device copy
// bandwidth give the HBM floor printed beside each measurement.
//
//   DecodeBenchOptions o; o.prompt_len = 3840; o.force_cr = 4;
//   DecodeBench b(model, o, text_ids);
//   for (CachePolicy p : {CachePolicy::Vanilla, CachePolicy::Dmc}) std::cout << b.run(p).dump() << "\n";
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "inference/decoder.h"

namespace dmc {

struct DecodeBenchOptions {
  std::string batch = "max";                               // sequences decoding together, or "max" at the memory budget
  int64_t prompt_len = 3840, new_tokens = 256, steps = 0;  // steps: timed decode steps (0 = new_tokens)
  int64_t page_size = 16;
  int64_t force_cr = 0;                    // dmc with random weights: the forced decision pattern's ratio
  int64_t budget_slots = 0;                // tova/h2o/window: slots per head (0 = context / force_cr)
  double memory_gib = 0, reserve_gib = 6;  // memory_gib 0: free memory - reserve
  std::string fill = "synthetic";          // synthetic | prefill
  bool prefill_check = true;
  int64_t prefill_repeats = 3, tbt_tokens = 256;
  bool profile_prefill = false;
  int64_t profile_steps = 0;
  int64_t graph_max_batch = DecoderOptions{}.graph_max_batch, graph_batch_step = DecoderOptions{}.graph_batch_step;
  bool gemm_row_tuning = true;
  int64_t calibrate = 8;
  int64_t seed = 0;
  // for the report
  std::string weights;     // "random (llama2-7b)" or the model directory
  std::string prompt_src;  // the text or data the prompts come from ("" = random tokens)
};

class DecodeBench {
 public:
  // text_ids: prompts are consecutive windows of it (wrapping); empty: random tokens.
  DecodeBench(const Llama& model, DecodeBenchOptions o, std::vector<int64_t> text_ids);
  // All phases for one policy; returns the report. Throws dmc::Error when verification fails.
  nlohmann::json run(CachePolicy policy);

 private:
  struct Sizing {
    int64_t batch = 0, pages_seq = 0, n_pages = 0;
    double calibrated_cr = 0;
  };
  struct Timing {
    double fill_s = 0, step_ms = 0, floor_ms = 0, attn_ms = 0, gemm_ms = 0, kv_read = 0, achieved_cr = 0;
    double kv_bytes = 0, state_bytes = 0;
    int64_t timed = 0;
    bool synthetic = false, kernels = false;
  };
  DecoderOptions decoder_options(CachePolicy policy) const;
  void verify(const DecoderOptions& o, bool trained_dmc);
  Sizing size(const DecoderOptions& o, bool trained_dmc);
  double fill(Decoder& dec, const std::vector<int64_t>& seqs, bool synthetic);
  Timing time(const DecoderOptions& o, bool trained_dmc);
  void prefill_check(const DecoderOptions& o, nlohmann::json& j);
  std::vector<int64_t> prompt(int64_t i, int64_t len) const;

  const Llama& m_;
  DecodeBenchOptions o_;
  std::vector<int64_t> text_;
  at::Device dev_;
  at::ScalarType dt_;
  int64_t ctx_ = 0, budget_bytes_ = 0;
  double bw_ = 0;
};

}  // namespace dmc
