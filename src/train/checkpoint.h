// Training checkpoints: RUN/checkpoints/step-00000100/ holding
//   config.json, model.safetensors (or shards + index)   the model in HF format (fp32 master weights); loads in
//                                                          transformers as LlamaForCausalLM
//   optimizer.safetensors                                 AdamW state (exp_avg., exp_avg_sq., step. + name)
//   rng.safetensors                                       CPU (and CUDA) generator states
//   trainer_state.json                                    step, loader position, counters, stage state, config
//   COMPLETE                                              written last, before the rename
// A checkpoint is written into step-XXXXXXXX.tmp-PID, every file fsynced, the COMPLETE marker written last, and the
// directory renamed into place (exchanged with an older one of the same step, never deleted first); an interrupted
// write (crash, SIGKILL, full disk) never touches the previous checkpoint. `--resume auto` takes the newest complete
// checkpoint that opens cleanly.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "io/safetensors.h"
#include "model/llama.h"

namespace dmc::train {

struct CheckpointData {
  const Llama* model = nullptr;
  io::NamedTensors optimizer;
  io::NamedTensors rng;
  nlohmann::json trainer_state;
};

// Writes RUN/checkpoints/step-XXXXXXXX atomically and deletes all but the newest keep_last complete ones.
// Returns the directory. dmc::Error (with the cause, e.g. no space left) leaves no partial directory behind.
std::string save_checkpoint(const std::string& run_dir, int64_t step, const CheckpointData& d, int64_t keep_last);

// Checks that `dir` is a complete, readable checkpoint; dmc::Error naming what is wrong otherwise.
void validate_checkpoint(const std::string& dir);

// Newest complete, valid checkpoint under RUN/checkpoints (incomplete or corrupt ones are skipped with a
// warning), or nullopt.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

nlohmann::json read_trainer_state(const std::string& dir);

// Checkpoint directories under RUN/checkpoints (complete or not, interrupted .tmp writes excluded), oldest first.
std::vector<std::string> checkpoint_dirs(const std::string& run_dir);

}  // namespace dmc::train
