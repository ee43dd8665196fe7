#include "train/stages.h"

#include <ATen/autocast_mode.h>

#include <cmath>
#include <iomanip>
#include <sstream>

#include "common/error.h"
#include "common/log.h"
#include "dist/dist.h"
#include "model/attention.h"

namespace dmc {
using json = nlohmann::json;

const std::vector<std::pair<std::string, RetrofitStage>>& retrofit_stage_names() {
  static const std::vector<std::pair<std::string, RetrofitStage>> names = {{"zero_out", RetrofitStage::ZeroOut},
                                                                           {"retrofit", RetrofitStage::Retrofit},
                                                                           {"finetune", RetrofitStage::Finetune}};
  return names;
}

std::string retrofit_stage_name(RetrofitStage s) {
  for (const auto& n : retrofit_stage_names())
    if (n.second == s) return n.first;
  return "?";
}

void RetrofitOptions::add_to(OptionTable& t) {
  t.add("stage", &stage, "zero_out | retrofit | finetune", retrofit_stage_names(), true);
  t.add("target_cr", &target_cr, "target KV-cache compression ratio (retrofit ramps to it, finetune holds it)").min(1);
  t.add("dmc_init_val", &dmc.init_val, "c: decision logit offset and importance-weight offset");
  t.add("dmc_window", &dmc.window, "merging window W (tokens)").min(1);
  t.add("dmc_temperature", &dmc.temperature, "Gumbel-sigmoid temperature").above(0);
  t.add("dmc_doc_boundaries", &dmc.doc_boundaries, "force an append at document starts; no merge or bias across them");
  t.add("dmc_attn_block", &dmc.attn_block, "query block of the blockwise DMC attention").min(1);
  t.add("dmc_attn_impl", &dmc.attn_impl,
        "flash (fused kernel; fp32 on CUDA falls back to blocks) | blocks (plain query-block twin)",
        dmc_attn_impl_names());
  t.add("dmc_decision_pair", &decision_pair,
        "zero_out: the rotary pair whose partner dim (moved to D-1) becomes the decision neuron: last (the "
        "reference) | auto (the one whose zeroing costs the least loss on the first batches) | a pair index");
  t.check([this] {
    const std::string& v = decision_pair;
    if (v == "last" || v == "auto") return;
    bool ok = !v.empty() && v.size() < 10;
    for (char ch : v) ok = ok && ch >= '0' && ch <= '9';
    if (!ok) fail("dmc_decision_pair: expected last, auto or a pair index >= 0, got '", v, "'");
  });
  t.add("head_stats_every", &head_stats_every, "steps between per-layer/per-head ratio logs").min(0);
  t.add("dmc_loss_scope", &dmc_loss_scope,
        "shard (the hinge on this tensor-parallel rank's mean, as the reference code) | global (on all ranks' mean) | "
        "head (a hinge per layer and KV head: none pushed past the target)",
        {{"shard", DmcLossScope::Shard}, {"global", DmcLossScope::Global}, {"head", DmcLossScope::Head}});
  t.add("dmc_loss_weight", &dmc_loss_weight, "weight of the compression hinge beside the LM loss (1 = the reference)")
      .min(0);
  t.add("distill_from", &distill_from,
        "distillation: the original model (directory or .gguf); the loss is the KL from its next-token distribution");
  t.add("distill_temperature", &distill_temperature, "distillation: softmax temperature tau (loss x tau^2)").above(0);
  t.add("distill_lm_weight", &distill_lm_weight, "distillation: weight of the LM loss added to the KL").min(0);
  t.add("dmc_decision_lr_mult", &decision_lr_mult,
        "retrofit / finetune: learning-rate multiple for the q/k rows of the decision and importance neurons "
        "(1 = the reference)")
      .above(0);
  t.add("dmc_decision_lr_balance", &decision_lr_balance,
        "retrofit / finetune: scale dmc_decision_lr_mult per layer by mean |g|_1 / |g_l|_1 of the attention norms "
        "(the decision logits of all layers then move at about one rate)");
}

DmcStage::DmcStage(const RetrofitOptions& o) : o_(o) {
  DMC_CHECK(o.target_cr >= 1.0, "target_cr: must be >= 1, got ", o.target_cr);
}

at::Tensor decision_rows(const Llama& model) {
  const int64_t D = model.config.head_dim, nh = model.local_heads(), nkv = model.local_kv_heads();
  std::vector<int64_t> rows;
  for (int64_t h = 0; h < nh; ++h) rows.push_back(h * D + D - 1);
  for (int64_t g = 0; g < nkv; ++g) rows.push_back(nh * D + g * D + D - 1);
  return at::tensor(rows, at::kLong);
}

std::vector<train::Stage::RowLr> DmcStage::row_lrs(const Llama& model) {
  std::vector<RowLr> out;
  if (o_.stage == RetrofitStage::ZeroOut || (o_.decision_lr_mult == 1.0 && !o_.decision_lr_balance)) return out;
  const size_t n = model.layers.size();
  if (decision_lr_by_layer_.empty()) {  // a fresh stage (a resumed one has them from its state)
    std::vector<double> norm1(n), mult(n, o_.decision_lr_mult);
    double mean = 0;
    for (size_t l = 0; l < n; ++l) {
      norm1[l] = model.layers[l].attn_norm.abs().sum().item<double>();  // replicated under tensor parallel
      mean += norm1[l] / (double)n;
    }
    if (o_.decision_lr_balance)
      for (size_t l = 0; l < n; ++l) {
        DMC_CHECK(norm1[l] > 0, "dmc_decision_lr_balance: layer ", l, "'s attention norm weight is all zero");
        mult[l] *= mean / norm1[l];
      }
    decision_lr_by_layer_ = mult;
    if (o_.decision_lr_balance) {
      std::string list;
      for (size_t l = 0; l < n; ++l) list += cat(l ? " " : "", std::round(mult[l] * 10) / 10);
      log::info(cat("decision rows' learning-rate multiples by layer: ", list));
    }
  }
  DMC_CHECK(decision_lr_by_layer_.size() == n, "resume: the checkpoint's decision_lr_by_layer has ",
            decision_lr_by_layer_.size(), " layers, the model ", n);
  const at::Tensor rows = decision_rows(model);
  for (size_t l = 0; l < n; ++l) out.push_back({Llama::layer_param_name((int64_t)l, "wqkv"), rows, decision_lr_by_layer_[l]});
  return out;
}

void zero_decision_rows(Llama& model) {
  const at::Tensor rows = decision_rows(model);
  at::NoGradGuard ng;
  for (auto& L : model.layers) L.wqkv.index_fill_(0, rows.to(L.wqkv.device()), 0.0);  // this rank's rows
}

void DmcStage::begin_step(int64_t step, int64_t total, Llama& model) {
  step_ = step;
  total_ = total;
  if (o_.stage == RetrofitStage::Retrofit)
    target_ = 1.0 + (o_.target_cr - 1.0) * std::min(1.0, (double)step / (double)total);
  else if (o_.stage == RetrofitStage::Finetune)
    target_ = o_.target_cr;
  zero_out_mult_ = std::max(0.0, 1.0 - (double)step / (0.8 * (double)total));
  step_dsum_ = step_dn_ = step_loss_sum_ = step_loss_n_ = 0;
  step_kl_sum_ = step_lm_sum_ = step_kl_n_ = 0;
  if (!o_.distill_from.empty() && !teacher_) {
    DMC_CHECK(model.tp.size == 1, "distill_from: distillation runs without tensor parallelism (tp = ", model.tp.size,
              "); use data parallelism");
    const at::ScalarType dt = model.device().is_cuda() ? at::kBFloat16 : model.dtype();
    teacher_ = std::make_unique<Llama>(Llama::load(o_.distill_from, dt, model.device()));
    for (auto& p : teacher_->parameters()) p.second->set_requires_grad(false);
    DMC_CHECK(teacher_->config.vocab_size == model.config.vocab_size, "distill_from: ", o_.distill_from,
              " has a vocabulary of ", teacher_->config.vocab_size, " tokens, the model being trained ",
              model.config.vocab_size);
    log::info(cat("distillation: teacher ", o_.distill_from, " (frozen, ", c10::toString(dt), "), temperature ",
                  o_.distill_temperature, ", LM loss weight ", o_.distill_lm_weight));
  }
  const auto& c = model.config;
  tp_ = &model.tp;
  if (merges_.empty()) {
    merges_.assign(c.num_hidden_layers, std::vector<double>(c.num_key_value_heads, 0.0));
    tokens_ = merges_;
  }
  step_counts_ = at::zeros({2, c.num_hidden_layers, c.num_key_value_heads}, at::kDouble);
}

at::Tensor DmcStage::forward_hidden(Llama& model, const data::Batch& b) {
  const bool training = at::GradMode::is_enabled();
  if (o_.stage == RetrofitStage::ZeroOut) {
    attn_ = std::make_unique<ZeroOutAttention>(zero_out_mult_);
    return model.forward_hidden(b.input, *attn_);
  }
  // training: relaxed decisions with noise drawn here, one tensor per layer, so that a recompute (activation
  // checkpointing) sees the same draw; validation: hard decisions
  std::vector<at::Tensor> noise;
  if (training) {
    const auto& c = model.config;
    const int64_t B = b.input.size(0), T = b.input.size(1);
    const bool ac = model.device().is_cuda() && at::autocast::is_autocast_enabled(at::kCUDA);
    const auto dt = ac ? at::autocast::get_autocast_dtype(at::kCUDA) : model.dtype();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      noise.push_back(dmc_logistic_noise(B, T, model.local_kv_heads(), dt, model.device()));
  }
  DmcOptions dmc = o_.dmc;
  dmc.decision_mean_per_head = o_.dmc_loss_scope == DmcLossScope::Head;
  auto owned = std::make_unique<DmcLayerAttention>(training ? DmcMode::Train : DmcMode::Eval, dmc,
                                                   o_.dmc.doc_boundaries ? b.doc_start : at::Tensor(), std::move(noise));
  DmcLayerAttention& attn = *owned;
  attn_ = std::move(owned);
  at::Tensor h = model.forward_hidden(b.input, attn);
  {
    decisions_ = at::stack(attn.aux).to(at::kFloat);  // [L, B] over this rank's KV heads ([L, B, nkv] per head)
    if (o_.dmc_loss_scope == DmcLossScope::Global && model.tp.size > 1)
      decisions_ = reduce_from_group(decisions_, model.tp) / (double)model.tp.size;
    if (training) {
      step_dsum_ += decisions_.detach().mean().item<double>();
      step_dn_ += 1;
      const int64_t nkvl = model.local_kv_heads(), off = model.tp.rank * nkvl;
      for (size_t l = 0; l < attn.boundaries.size(); ++l) {
        at::Tensor bnd = attn.boundaries[l].to(at::kFloat);  // [B, T, nkv local]
        at::Tensor per_head = bnd.sum(at::IntArrayRef{0, 1}).to(at::kCPU, at::kDouble);
        step_counts_[0][(int64_t)l].narrow(0, off, nkvl).add_(per_head);
        step_counts_[1][(int64_t)l].narrow(0, off, nkvl).add_((double)(bnd.size(0) * bnd.size(1)));
      }
    }
  }
  return h;
}

at::Tensor DmcStage::extra_loss(Llama& model) {
  (void)model;
  if (o_.stage == RetrofitStage::ZeroOut || !decisions_.defined() || !at::GradMode::is_enabled()) return {};
  at::Tensor l = o_.dmc_loss_scope == DmcLossScope::Head ? dmc_loss_per_head(decisions_, target_)
                                                          : dmc_loss(decisions_, target_);
  step_loss_sum_ += l.detach().item<double>();  // logged unweighted
  step_loss_n_ += 1;
  return o_.dmc_loss_weight == 1.0 ? l : l * o_.dmc_loss_weight;
}

at::Tensor DmcStage::loss(Llama& model, const at::Tensor& hidden, const data::Batch& b) {
  if (!teacher_ || !at::GradMode::is_enabled()) return {};
  at::Tensor s = model.lm_logits(hidden).to(at::kFloat);  // [B, T, V]
  at::Tensor t;
  {
    at::NoGradGuard ng;
    VanillaAttention va;
    t = teacher_->forward(b.input, va).to(at::kFloat);
  }
  const double tau = o_.distill_temperature;
  const int64_t V = s.size(-1);
  // KL(teacher || student) per token, mean over tokens
  at::Tensor lpt = at::log_softmax(t / tau, -1);
  at::Tensor kl = (lpt.exp() * (lpt - at::log_softmax(s / tau, -1))).sum(-1).mean() * (tau * tau);
  at::Tensor lm;
  if (o_.distill_lm_weight > 0) {
    lm = vocab_parallel_cross_entropy(s.view({-1, V}), b.target.reshape({-1}), model.tp);
  } else {
    at::NoGradGuard ng;  // for the log only
    lm = vocab_parallel_cross_entropy(s.detach().view({-1, V}), b.target.reshape({-1}), model.tp);
  }
  step_kl_sum_ += kl.detach().item<double>();
  step_lm_sum_ += lm.detach().item<double>();
  step_kl_n_ += 1;
  return o_.distill_lm_weight > 0 ? kl + o_.distill_lm_weight * lm : kl;
}

std::vector<std::vector<double>> DmcStage::head_ratios() const {
  std::vector<std::vector<double>> r = merges_;
  for (size_t l = 0; l < r.size(); ++l)
    for (size_t g = 0; g < r[l].size(); ++g) {
      const double slots = tokens_[l][g] - merges_[l][g];
      r[l][g] = slots > 0 ? tokens_[l][g] / slots : 0.0;
    }
  return r;
}

json DmcStage::metrics() {
  json m;
  if (step_kl_n_ > 0) {  // distillation: the KL and the LM loss beside it
    m["kl"] = step_kl_sum_ / step_kl_n_;
    m["lm_loss"] = step_lm_sum_ / step_kl_n_;
  }
  if (o_.stage == RetrofitStage::ZeroOut) {
    m["qk_last_dim_mult"] = zero_out_mult_;
    if (!decision_pair_.is_null()) m["decision_pair"] = decision_pair_;  // (metrics lines are every log_every steps)
    return m;
  }
  double d = step_dn_ > 0 ? step_dsum_ / step_dn_ : 0.0;
  if (tp_ && tp_->size > 1 && step_counts_.defined()) {
    // every rank calls metrics() each step: sum the heads' counts and average the decision rate over the group
    at::Tensor dd = at::full({1}, d, at::kDouble);
    all_reduce_sum(dd, *tp_);
    if (o_.dmc_loss_scope != DmcLossScope::Global) d = dd.item<double>() / (double)tp_->size;
    all_reduce_sum(step_counts_, *tp_);
  }
  if (step_counts_.defined()) {
    for (size_t l = 0; l < merges_.size(); ++l)
      for (size_t g = 0; g < merges_[l].size(); ++g) {
        merges_[l][g] += step_counts_[0][(int64_t)l][(int64_t)g].item<double>();
        tokens_[l][g] += step_counts_[1][(int64_t)l][(int64_t)g].item<double>();
      }
    step_counts_.zero_();
  }
  m["target_cr"] = target_;
  m["cr"] = 1.0 / std::max(1e-9, 1.0 - d);
  m["dmc_loss"] = step_loss_n_ > 0 ? step_loss_sum_ / step_loss_n_ : 0.0;
  const bool last = step_ + 1 == total_;
  if (o_.head_stats_every > 0 && ((step_ + 1) % o_.head_stats_every == 0 || last) && !merges_.empty()) {
    const auto hr = head_ratios();
    last_head_ratios_ = hr;
    m["cr_per_head"] = hr;
    std::ostringstream os;
    os << "achieved CR per layer (mean over KV heads):";
    for (size_t l = 0; l < merges_.size(); ++l) {
      double s = 0;
      for (double x : hr[l]) s += x;
      os << " L" << l << "=" << std::setprecision(3) << s / merges_[l].size();
    }
    log::info(os.str());
    for (auto& row : merges_) std::fill(row.begin(), row.end(), 0.0);
    for (auto& row : tokens_) std::fill(row.begin(), row.end(), 0.0);
  }
  return m;
}

std::vector<double> decision_pair_losses(Llama& model, const std::function<double(Attention& attn)>& calib_loss) {
  const int64_t half = model.config.head_dim / 2;
  const std::vector<int64_t> order = model.config.dmc.rope_pairs;
  std::vector<double> losses;
  for (int64_t p = 0; p < half; ++p) {
    model.swap_rope_pairs(p, half - 1);
    ZeroOutAttention zero(0.0);
    losses.push_back(calib_loss(zero));
    model.swap_rope_pairs(p, half - 1);  // a swap is its own inverse
  }
  model.config.dmc.rope_pairs = order;  // (the swaps spell out the natural order of a model that had none)
  return losses;
}

void DmcStage::prepare(Llama& model, const std::function<double(Attention& attn)>& calib_loss) {
  if (o_.stage != RetrofitStage::ZeroOut) {
    if (o_.decision_pair != "last")
      log::info(cat("dmc_decision_pair: ", o_.decision_pair, " applies to stage zero_out; this stage keeps the init "
                    "model's pair order"));
    return;
  }
  const int64_t half = model.config.head_dim / 2;
  int64_t pair = half - 1;
  json info = {{"option", o_.decision_pair}};
  if (o_.decision_pair == "auto") {
    const std::vector<double> losses = decision_pair_losses(model, calib_loss);
    pair = std::min_element(losses.begin(), losses.end()) - losses.begin();
    VanillaAttention va;
    const double base = calib_loss(va);
    std::ostringstream os;
    os << "dmc_decision_pair auto: LM loss with each pair's partner zeroed (untouched: " << std::setprecision(5)
       << base << "):";
    for (int64_t p = 0; p < half; ++p) os << " " << p << "=" << std::setprecision(5) << losses[(size_t)p];
    log::info(os.str());
    info["losses"] = losses;
    info["loss_untouched"] = base;
  } else if (o_.decision_pair != "last") {
    pair = std::stoll(o_.decision_pair);
    DMC_CHECK(pair < half, "dmc_decision_pair: pair ", pair, " out of range: head_dim ", model.config.head_dim,
              " has pairs 0..", half - 1);
  }
  const std::vector<int64_t> before = model.config.dmc.rope_pairs;
  const int64_t freq = before.empty() ? pair : before[(size_t)pair];
  model.swap_rope_pairs(pair, half - 1);
  info["pair"] = pair;
  info["frequency_index"] = freq;
  log::info(cat("dmc_decision_pair: pair ", pair, " (frequency index ", freq, " of ", half,
                pair == half - 1 ? ", the reference's)" : ") moved to the last position: dim D-1 is its partner"));
  decision_pair_ = info;
}

void DmcStage::finish(Llama& model) {
  auto& d = model.config.dmc;
  if (o_.stage == RetrofitStage::ZeroOut) {
    zero_decision_rows(model);
    d.enabled = true;
  }
  d.stage = retrofit_stage_name(o_.stage);
  d.init_val = o_.dmc.init_val;
  d.window = o_.dmc.window;
  d.target_cr = o_.stage == RetrofitStage::ZeroOut ? 1.0 : o_.target_cr;
}

json DmcStage::state() const {
  return {{"stage", retrofit_stage_name(o_.stage)},
          {"target_cr", o_.target_cr},
          {"current_target_cr", target_},
          {"merges", merges_},
          {"tokens", tokens_},
          {"cr_per_head", last_head_ratios_},
          {"init_val", o_.dmc.init_val},
          {"window", o_.dmc.window},
          {"decision_lr_by_layer", decision_lr_by_layer_},
          {"decision_lr_mult", o_.decision_lr_mult},
          {"decision_lr_balance", o_.decision_lr_balance},
          {"decision_pair", decision_pair_}};
}

void DmcStage::load_state(const json& s) {
  if (s.contains("stage") && s["stage"].get<std::string>() != retrofit_stage_name(o_.stage))
    fail("resume: the checkpoint belongs to stage '", s["stage"].get<std::string>(), "', not '",
         retrofit_stage_name(o_.stage), "'");
  if (s.contains("merges")) merges_ = s["merges"].get<std::vector<std::vector<double>>>();
  if (s.contains("tokens")) tokens_ = s["tokens"].get<std::vector<std::vector<double>>>();
  if (s.contains("cr_per_head")) last_head_ratios_ = s["cr_per_head"];
  // the multiples were computed from these options (and the stage's first weights): other options would not apply
  if (s.contains("decision_lr_mult") &&
      (s["decision_lr_mult"].get<double>() != o_.decision_lr_mult ||
       s.value("decision_lr_balance", false) != o_.decision_lr_balance))
    fail("resume: the checkpoint's stage ran with dmc_decision_lr_mult ", s["decision_lr_mult"].get<double>(),
         ", dmc_decision_lr_balance ", s.value("decision_lr_balance", false) ? "true" : "false",
         "; this run asks for ", o_.decision_lr_mult, ", ", o_.decision_lr_balance ? "true" : "false",
         " (use the same, or another --out)");
  if (s.contains("decision_pair")) decision_pair_ = s["decision_pair"];
  if (s.contains("decision_lr_by_layer")) decision_lr_by_layer_ = s["decision_lr_by_layer"].get<std::vector<double>>();
}

}  // namespace dmc
