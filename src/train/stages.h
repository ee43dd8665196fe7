// The three DMC retrofit stages as trainer Stages (see train/trainer.h), the spec's section 3:
//   zero_out  the last q/k dimension is scaled by max(0, 1 - step / (0.8 N)) before and after RoPE; at the end the
//             projection rows that produce it (every query head's and key head's dim D-1) are zeroed
//   retrofit  DMC attention with Gumbel-sigmoid decisions; target CR ramps 1 -> target over the stage;
//             loss = LM loss + mean_b max(0, P - mean_layers d_b), P = 1 - 1/CR(step)
//   finetune  the same at a fixed target CR (the LR schedule decays)
// Distillation (retrofit / finetune, distill_from = the original model): the LM loss is replaced by the KL
// divergence from the frozen original model's next-token distribution to the student's, per token, at temperature
// tau (times tau^2), plus distill_lm_weight x the LM loss, plus the DMC hinge (the recipe of NVIDIA's later DMS work).
// The teacher runs with vanilla attention on the same micro-batch; tensor parallelism is refused (the KL is not
// vocabulary-parallel).
// Validation inside a stage runs the eval-mode forward (hard decisions). Every log line carries the target and the
// achieved compression ratio; per-layer/per-head achieved ratios are logged every head_stats_every steps and kept
// in the stage state of each checkpoint.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config/options.h"
#include "train/trainer.h"

namespace dmc {

enum class RetrofitStage { ZeroOut, Retrofit, Finetune };
const std::vector<std::pair<std::string, RetrofitStage>>& retrofit_stage_names();  // zero_out, retrofit, finetune
std::string retrofit_stage_name(RetrofitStage s);
// Under tensor parallelism: Shard = each rank's hinge on the decision mean of its own heads (the reference Megatron
// code's per-shard semantics), Global = the hinge on the mean over all heads of all ranks. Head = a hinge per layer
// and KV head (dmc_loss_per_head; not the reference's: every head is pushed to the target, none past it).
enum class DmcLossScope { Shard, Global, Head };

struct RetrofitOptions {
  RetrofitStage stage = RetrofitStage::Retrofit;  // required in a run's config
  double target_cr = 4.0;
  DmcOptions dmc;
  int64_t head_stats_every = 50;
  DmcLossScope dmc_loss_scope = DmcLossScope::Shard;
  // the compression hinge's weight beside the LM loss (the reference: 1). Under Adam it sets the balance of the two
  // gradients on the decision rows, not their step size: where the LM gradient holds the ratio below the target (a
  // finetune stage whose training CR stays flat under the hinge), a larger weight trades quality for ratio.
  double dmc_loss_weight = 1.0;
  std::string distill_from;        // teacher model directory / .gguf ("" = LM loss)
  double distill_temperature = 1.0;
  double distill_lm_weight = 0.0;  // weight of the LM loss beside the KL
  // retrofit / finetune: the rows of the fused q/k projection that produce the decision logit (each key head's
  // dimension D-1) and the importance (each query head's D-1) learn at this multiple of the learning rate. 1 = the
  // reference. The reference's stage 2 runs 6000 (CR - 1) steps; a retrofit 100x shorter at the same rate cannot
  // move the decision logit from -c to 0 (measured: SmolLM2, 180 steps at 2e-5, achieved CR stayed at the noise
  // floor 1.05), while the rest of the model should keep its gentle rate.
  double decision_lr_mult = 1.0;
  // ... and per layer l, times mean_j |g_j|_1 / |g_l|_1 (g = the layer's attention RMSNorm weight, taken from the
  // stage's first weights): Adam moves a layer's decision logit by about lr x S_l a step, S_l = sum_i |E x_i| of the
  // k projection's inputs, and S_l tracks |g_l|_1 (SmolLM2: S from 3.7 in layer 0 to 62 in layer 29, S / |g|_1
  // within 0.13-0.26), so that every layer's decisions move at about the same rate instead of the last layers' 16x
  // faster than the first's.
  bool decision_lr_balance = false;
  // zero_out: which rotary pair's partner dim becomes the decision neuron. The reference takes dim D-1, the partner
  // of the lowest-frequency pair; with rotate-half RoPE that pair carries much of a model's long-range attention
  // (SmolLM2-135M: zeroing it untrained costs +72% perplexity, a middle pair's +1.5%). "last" = the reference;
  // "auto" = the pair whose zeroing costs the least LM loss on the first training batches (each pair measured
  // through the zero-out forward at factor 0); or a pair index 0 .. D/2-1. The chosen pair is moved into the last
  // position (Llama::swap_rope_pairs: the same function), so every DMC path keeps using dim D-1. Other stages
  // inherit the order from their init checkpoint and ignore the option.
  std::string decision_pair = "last";
  void add_to(OptionTable& t);
};

class DmcStage : public train::Stage {
 public:
  explicit DmcStage(const RetrofitOptions& o);
  std::string name() const override { return retrofit_stage_name(o_.stage); }
  void begin_step(int64_t step, int64_t total, Llama& model) override;
  at::Tensor forward_hidden(Llama& model, const data::Batch& b) override;
  at::Tensor extra_loss(Llama& model) override;
  at::Tensor loss(Llama& model, const at::Tensor& hidden, const data::Batch& b) override;
  nlohmann::json metrics() override;
  void finish(Llama& model) override;
  void prepare(Llama& model, const std::function<double(Attention& attn)>& calib_loss) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& s) override;

  double target_cr() const { return target_; }
  // Achieved ratio per layer and KV head over the current statistics window: [layers][kv_heads].
  std::vector<std::vector<double>> head_ratios() const;
  // The decision rows' rate multiples, per layer (with decision_lr_balance computed from the model on the stage's
  // first call, then kept in state() so that a resumed run uses the same ones).
  std::vector<RowLr> row_lrs(const Llama& model) override;
  const std::vector<double>& decision_lr_by_layer() const { return decision_lr_by_layer_; }

 private:
  RetrofitOptions o_;
  std::vector<double> decision_lr_by_layer_;  // empty until row_lrs (or a resumed state)
  nlohmann::json decision_pair_;              // zero_out: the pair chosen by prepare (and auto's losses)
  double zero_out_mult_ = 1.0;  // zero_out: the factor on q/k[D-1] at the current step
  // the attention of the micro-batch just forwarded: it lives until the next forward, past its backward (activation
  // checkpointing runs it again there)
  std::unique_ptr<Attention> attn_;
  int64_t step_ = 0, total_ = 1;
  double target_ = 1.0;
  at::Tensor decisions_;  // [layers, batch] of the micro-batch just forwarded
  // statistics over the current step (for the log line) and the head-stats window
  double step_dsum_ = 0, step_dn_ = 0, step_loss_sum_ = 0, step_loss_n_ = 0;
  std::vector<std::vector<double>> merges_, tokens_;  // [layers][kv_heads] (all heads; TP ranks' counts summed)
  at::Tensor step_counts_;                            // [2, layers, kv_heads] this step's local merges, tokens
  const Group* tp_ = nullptr;
  nlohmann::json last_head_ratios_;
  std::unique_ptr<Llama> teacher_;                  // distillation: the frozen original model
  double step_kl_sum_ = 0, step_lm_sum_ = 0, step_kl_n_ = 0;
};

// The mean LM loss after zeroing the partner dim of each rotary pair p = 0 .. D/2-1 (p moved to the last position,
// the zero-out forward at factor 0, moved back): [D/2]. The model is left as it was.
std::vector<double> decision_pair_losses(Llama& model, const std::function<double(Attention& attn)>& calib_loss);

// Zeroes the rows of the fused q/k projection that produce every query head's and key head's last dimension.
void zero_decision_rows(Llama& model);
// The rows zero_decision_rows zeroes, as indices into one layer's local wqkv (query heads' first, then key heads').
at::Tensor decision_rows(const Llama& model);

}  // namespace dmc
