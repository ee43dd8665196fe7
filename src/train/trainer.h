// The training loop shared by pretraining, continued training and every retrofit stage:
// micro-batches with gradient accumulation to a global batch, fp32 master weights with bf16 autocast on CUDA,
// AdamW + LR schedule + global-norm clipping, periodic validation, logging (text + JSONL metrics),
// atomic checkpoints (every N steps, at the end, and on SIGTERM/SIGINT) and exact resume.
//
// Parallel runs (WORLD_SIZE > 1, see dist/dist.h): tensor parallel inside groups of tensor_parallel ranks (with
// sequence parallelism unless sequence_parallel is off), data parallel across them. Each data-parallel rank takes
// its own contiguous block of every global batch (so a step sees the same samples for any layout), gradients are
// averaged over data-parallel ranks in buckets overlapped with backward (.grad views of the buckets), clipping uses
// the norm over all shards, and checkpoints hold whole HF tensors (model and optimizer state), written by rank 0,
// so a run resumes under any layout. Rank 0 alone writes logs, metrics and checkpoints.
//
// What differs between stages is a Stage object (the DMC retrofit implements them); a null stage is plain
// language-model training. Run directory:
//   RUN/config.yaml      the fully resolved config        RUN/metrics.jsonl   one JSON object per logged step
//   RUN/log.txt          the log                          RUN/checkpoints/    see train/checkpoint.h
//   RUN/final/           the final model (HF format) when the run completes
//   RUN/.lock            flock held by the running trainer: a second trainer in the same directory is refused
#pragma once
#include <nlohmann/json.hpp>
#include <functional>
#include <string>
#include <vector>

#include "train/model_shape.h"
#include "config/options.h"
#include "data/dataset.h"
#include "model/llama.h"

namespace dmc::train {

class Stage {
 public:
  virtual ~Stage() = default;
  virtual std::string name() const = 0;
  // Before the micro-batches of optimizer step `step` (0-based) of `total`.
  virtual void begin_step(int64_t step, int64_t total, Llama& model) {
    (void)step;
    (void)total;
    (void)model;
  }
  // Final hidden states [batch, seq, hidden] for a micro-batch; may record what extra_loss needs.
  virtual at::Tensor forward_hidden(Llama& model, const data::Batch& b) { return model.forward_hidden(b.input); }
  // The training loss of a micro-batch from the stage's hidden states, or undefined for the LM loss (cross-entropy
  // against b.target). Validation always takes the LM loss.
  virtual at::Tensor loss(Llama& model, const at::Tensor& hidden, const data::Batch& b) {
    (void)model, (void)hidden, (void)b;
    return {};
  }
  // Extra loss for the micro-batch just forwarded (undefined = none).
  virtual at::Tensor extra_loss(Llama& model) {
    (void)model;
    return {};
  }
  // Once, on a fresh start (not on resume), with the whole model (before tensor-parallel sharding), before the
  // optimizer sees it: a stage may change the weights' layout. calib_loss(attn) is the mean LM loss of the model
  // under `attn` over the first eval_batches micro-batches of the training stream (no gradient; rank 0's value on
  // every rank), for choices measured on the model.
  virtual void prepare(Llama& model, const std::function<double(Attention& attn)>& calib_loss) {
    (void)model, (void)calib_loss;
  }
  // Values for the log line and metrics of the current step.
  virtual nlohmann::json metrics() { return nlohmann::json::object(); }
  // After the last step, before the final save.
  virtual void finish(Llama& model) { (void)model; }
  virtual nlohmann::json state() const { return nlohmann::json::object(); }
  virtual void load_state(const nlohmann::json& s) { (void)s; }
  // Parameter rows that learn at a multiple of the learning rate (AdamW::set_row_lr), asked once the model (this
  // rank's shard of it) and the optimizer exist and a resumed run's state() is loaded.
  struct RowLr {
    std::string param;
    at::Tensor rows;
    double mult;
  };
  virtual std::vector<RowLr> row_lrs(const Llama& model) {
    (void)model;
    return {};
  }
};

struct TrainOptions {
  std::string out = "runs/train";
  std::string init_from;  // HF model directory; empty = random init from the shape
  ModelShapeOptions shape;
  double init_std = 0.02;
  std::string tokenizer;
  std::vector<std::string> data;
  std::vector<std::string> data_weights;
  int64_t seq_len = 256, micro_batch = 4, global_batch = 8, train_steps = 100;
  double lr = 3e-4, min_lr = 3e-5;
  int64_t warmup_steps = 0;
  std::string lr_schedule = "cosine";
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8, weight_decay = 0.1, grad_clip = 1.0;
  bool decay_norms_and_embeddings = false;
  std::string device = "auto", dtype = "auto";
  bool activation_checkpointing = false;
  // Tensor-parallel size; the data-parallel size is WORLD_SIZE / tensor_parallel (processes launched like torchrun)
  int64_t tensor_parallel = 1;
  // Under tensor parallelism: split the residual stream, norms and embedding output by token (Llama::sequence_parallel)
  bool sequence_parallel = true;
  // Data parallel: gradient bucket size (MB of fp32 gradients per all-reduce)
  double grad_bucket_mb = 32;
  int64_t seed = 1234, log_every = 10, eval_every = 0, eval_batches = 8, save_every = 0, keep_last = 3;
  std::string resume = "auto";  // auto | none | a checkpoint directory
  // Start afresh in a run directory that holds an earlier run (checkpoints, final model, metrics): its contents are
  // removed first, wholly. Without it such a start is refused, as is `resume: auto` when no checkpoint is valid.
  bool overwrite = false;
  int64_t exit_after_steps = 0;  // stop (with a checkpoint) after this many steps in this invocation; 0 = off
  int64_t max_nonfinite = 5;
  std::vector<std::string> inject_nonfinite_steps;  // test hook: make these steps' loss NaN
  double peak_tflops = 989.0;
  std::string log_level = "info";

  void add_to(OptionTable& t);
};

struct TrainResult {
  int64_t steps_done = 0;
  double last_loss = 0, last_eval_loss = 0;
  bool interrupted = false;
  int signal = 0;  // the signal that interrupted the run (SIGTERM, SIGINT), 0 if none
  std::string final_dir;
};

TrainResult train(const TrainOptions& o, Stage* stage, const std::string& resolved_yaml);

// Mean cross-entropy over `batches` validation micro-batches (fixed order), no grad.
double evaluate(Llama& model, Stage* stage, data::Loader& valid, int64_t batches, int64_t micro_batch, bool autocast);

}  // namespace dmc::train
