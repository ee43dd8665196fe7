#include "train/optimizer.h"

#include <cmath>

#include "common/error.h"

namespace dmc::train {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor*>> params, AdamWOptions o) : o_(o) {
  for (auto& [name, p] : params) {
    Slot s;
    s.name = name;
    s.p = p;
    s.m = at::zeros_like(*p, at::MemoryFormat::Contiguous);
    s.v = at::zeros_like(*p, at::MemoryFormat::Contiguous);
    s.step = at::zeros({}, p->options().dtype(at::kFloat));
    s.decay = o.decay_norms_and_embeddings || (p->dim() >= 2 && name != "embed");
    slots_.push_back(std::move(s));
  }
}

void AdamW::set_tensor_parallel(const Group* tp, std::function<bool(const std::string&)> is_sharded) {
  tp_ = tp;
  sharded_ = std::move(is_sharded);
}

double AdamW::clip_grad_norm(double max_norm) {
  std::vector<at::Tensor> grads, shard_grads;
  for (auto& s : slots_)
    if (s.p->grad().defined()) {
      grads.push_back(s.p->grad());
      if (tp_ && tp_->size > 1 && sharded_(s.name)) shard_grads.push_back(s.p->grad());
    }
  if (grads.empty()) return 0;
  double n;
  if (shard_grads.empty()) {
    auto norms = at::_foreach_norm(grads, 2);
    n = at::stack(norms).to(at::kFloat).pow(2).sum().sqrt().item<double>();
  } else {
    // sum of squares: replicated parameters once, sharded ones summed over the group
    std::vector<at::Tensor> rep;
    for (auto& g : grads) {
      bool is_shard = false;
      for (auto& s : shard_grads) is_shard = is_shard || s.is_same(g);
      if (!is_shard) rep.push_back(g);
    }
    auto sq = [](const std::vector<at::Tensor>& v, const at::Tensor& like) {
      if (v.empty()) return at::zeros({1}, like.options().dtype(at::kDouble));
      return at::stack(at::_foreach_norm(v, 2)).to(at::kDouble).pow(2).sum().reshape({1});
    };
    at::Tensor s_sq = sq(shard_grads, grads[0]);
    all_reduce_sum(s_sq, *tp_);
    n = std::sqrt((s_sq + sq(rep, grads[0])).item<double>());
  }
  if (max_norm > 0 && std::isfinite(n) && n > max_norm) at::_foreach_mul_(grads, max_norm / (n + 1e-6));
  return n;
}

void AdamW::step(double lr) {
  ++steps_;
  for (int group = 0; group < 2; ++group) {
    std::vector<at::Tensor> p, g, m, v, st;
    for (auto& s : slots_) {
      if (s.decay != (group == 0) || !s.p->grad().defined()) continue;
      p.push_back(*s.p);
      g.push_back(s.p->grad());
      m.push_back(s.m);
      v.push_back(s.v);
      st.push_back(s.step);
    }
    if (p.empty()) continue;
    at::NoGradGuard ng;
    at::_foreach_add_(st, 1.0);  // the fused kernel reads the step count; incrementing it is the caller's job
    at::_fused_adamw_(p, g, m, v, {}, st, lr, o_.beta1, o_.beta2, group == 0 ? o_.weight_decay : 0.0, o_.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  }
  // rows with their own rate: the fused kernel's step (m, v and the step count already updated) taken mult - 1
  // more times, p -= (mult - 1) lr (m / bc1) / (sqrt(v / bc2) + eps), bc_i = 1 - beta_i^step, on the device
  for (auto& s : slots_) {
    if (s.lr_mult == 1.0 || !s.lr_rows.defined() || s.lr_rows.numel() == 0 || !s.p->grad().defined()) continue;
    at::NoGradGuard ng;
    const at::Tensor t = s.step.to(at::kDouble);  // (a 0-dim tensor: the result keeps the parameter dtype)
    const at::Tensor bc1 = 1.0 - at::pow(o_.beta1, t), bc2 = 1.0 - at::pow(o_.beta2, t);
    const at::Tensor m = s.m.index_select(0, s.lr_rows), v = s.v.index_select(0, s.lr_rows);
    s.p->index_add_(0, s.lr_rows, (m / bc1) / ((v / bc2).sqrt() + o_.eps), -(s.lr_mult - 1.0) * lr);
  }
}

void AdamW::set_row_lr(const std::string& name, const at::Tensor& rows, double mult) {
  DMC_CHECK(mult > 0 && std::isfinite(mult), "optimizer: row learning-rate multiplier must be > 0, got ", mult);
  for (auto& s : slots_) {
    if (s.name != name) continue;
    const at::Tensor r = rows.to(at::kCPU, at::kLong);
    DMC_CHECK(r.dim() == 1 && (r.numel() == 0 || (r.min().item<int64_t>() >= 0 &&
                                                   r.max().item<int64_t>() < s.p->size(0))),
              "optimizer: rows for '", name, "' must be a 1-D list within [0, ", s.p->size(0), ")");
    s.lr_rows = r.to(s.p->device());
    s.lr_mult = mult;
    return;
  }
  fail("optimizer: no parameter named '", name, "' for a row learning rate");
}

void AdamW::zero_grad() {
  for (auto& s : slots_)
    if (s.p->grad().defined()) s.p->mutable_grad() = at::Tensor();
}

io::NamedTensors AdamW::state(const std::function<at::Tensor(const std::string&, const at::Tensor&)>& whole) const {
  io::NamedTensors out;
  for (const auto& s : slots_) {
    out.emplace_back("exp_avg." + s.name, whole ? whole(s.name, s.m) : s.m);
    out.emplace_back("exp_avg_sq." + s.name, whole ? whole(s.name, s.v) : s.v);
    out.emplace_back("step." + s.name, s.step);
  }
  out.emplace_back("optimizer_steps", at::scalar_tensor(steps_, at::kLong));
  return out;
}

void AdamW::load_state(const io::SafetensorsFile& f,
                       const std::function<at::Tensor(const std::string&, const at::Tensor&)>& shard) {
  for (auto& s : slots_) {
    for (auto [prefix, dst] :
         {std::pair<const char*, at::Tensor*>{"exp_avg.", &s.m}, {"exp_avg_sq.", &s.v}, {"step.", &s.step}}) {
      const std::string key = prefix + s.name;
      if (!f.has(key)) fail(f.path(), ": missing optimizer tensor '", key, "'");
      at::Tensor t = f.get(key);
      if (shard && dst != &s.step) t = shard(s.name, t);
      if (t.sizes() != dst->sizes())
        fail(f.path(), ": optimizer tensor '", key, "' has shape ", t.sizes(), ", the model needs ", dst->sizes());
      dst->copy_(t);
    }
  }
  if (!f.has("optimizer_steps")) fail(f.path(), ": missing 'optimizer_steps'");
  steps_ = f.get("optimizer_steps").item<int64_t>();
}

double LrSchedule::at(int64_t step) const {
  if (warmup > 0 && step < warmup) return lr * (double)(step + 1) / (double)warmup;
  if (shape == "constant") return lr;
  const int64_t span = std::max<int64_t>(1, total - warmup);
  const double t = std::min(1.0, (double)(step - warmup) / (double)span);
  if (shape == "cosine") return min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(M_PI * t));
  if (shape == "linear") return lr + (min_lr - lr) * t;
  fail("lr_schedule: expected constant, cosine or linear, got '", shape, "'");
}

}  // namespace dmc::train
