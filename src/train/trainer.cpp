#include "train/trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/util.h"
#include "tokenizer/tokenizer.h"
#include "train/autocast.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"

#ifdef DMC_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace dmc::train {
namespace fs = std::filesystem;
using json = nlohmann::json;

void TrainOptions::add_to(OptionTable& t) {
  t.add("out", &out, "run directory (config, log, metrics, checkpoints, final model)");
  t.add("init_from", &init_from, "HF model directory to continue training from (empty = random init)");
  shape.add_to(t);
  t.add("init_std", &init_std, "normal init std of matrices for a random init").above(0);
  t.add("tokenizer", &tokenizer,
        "the tokenizer the data was prepared with (tokenizer.model, tokenizer.json, .gguf or a model directory)", true);
  t.add("data", &data, "prepared dataset directories (dmc data prepare)", true);
  t.add("data_weights", &data_weights, "blend weights, one per dataset (empty = equal)");
  t.add("seq_len", &seq_len, "tokens per sample").min(1);
  t.add("micro_batch", &micro_batch, "samples per forward/backward").min(1);
  t.add("global_batch", &global_batch, "samples per optimizer step (a multiple of micro_batch)").min(1);
  t.add("train_steps", &train_steps, "optimizer steps").min(1);
  t.add("lr", &lr, "peak learning rate").above(0);
  t.add("min_lr", &min_lr, "final learning rate of the decay").min(0);
  t.add("warmup_steps", &warmup_steps, "linear warmup steps").min(0);
  t.add("lr_schedule", &lr_schedule, "constant | cosine | linear (after warmup)")
      .one_of({"constant", "cosine", "linear"});
  t.add("beta1", &beta1, "AdamW beta1").min(0).below(1);
  t.add("beta2", &beta2, "AdamW beta2").min(0).below(1);
  t.add("adam_eps", &adam_eps, "AdamW epsilon").above(0);
  t.add("weight_decay", &weight_decay, "decoupled weight decay").min(0);
  t.add("decay_norms_and_embeddings", &decay_norms_and_embeddings, "also decay norm weights and the embedding");
  t.add("grad_clip", &grad_clip, "global gradient-norm clip (0 = off)").min(0);
  t.add("device", &device, "cpu, cuda, cuda:N or auto");
  t.add("dtype", &dtype, "compute dtype: auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp32")
      .one_of({"auto", "bf16", "fp32"});
  t.add("activation_checkpointing", &activation_checkpointing, "recompute each layer in backward");
  t.add("tensor_parallel", &tensor_parallel, "tensor-parallel size (data parallel = WORLD_SIZE / tensor_parallel)")
      .min(1);
  t.add("sequence_parallel", &sequence_parallel,
        "under tensor parallelism, split norms and residuals by token (saves memory)");
  t.add("grad_bucket_mb", &grad_bucket_mb, "data parallel: MB of gradients per bucketed all-reduce").above(0);
  t.add("seed", &seed, "seed for init and data order");
  t.add("log_every", &log_every, "steps between log lines").min(1);
  t.add("eval_every", &eval_every, "steps between validation runs (0 = only at the end)").min(0);
  t.add("eval_batches", &eval_batches, "validation micro-batches per evaluation").min(1);
  t.add("save_every", &save_every, "steps between checkpoints (0 = only at the end)").min(0);
  t.add("keep_last", &keep_last, "checkpoints to keep").min(0);
  t.add("resume", &resume, "auto (newest complete checkpoint in out), none, or a checkpoint directory");
  t.add("overwrite", &overwrite,
        "start afresh in a run directory that holds an earlier run (its contents are removed)");
  t.add("exit_after_steps", &exit_after_steps,
        "stop with a checkpoint after this many steps of this invocation (0 = off)")
      .min(0);
  t.add("max_nonfinite", &max_nonfinite, "stop after this many non-finite losses in a row").min(1);
  t.add("inject_nonfinite_steps", &inject_nonfinite_steps, "test hook: steps whose loss is made NaN");
  t.add("peak_tflops", &peak_tflops, "device peak dense bf16 TFLOP/s for MFU (H100 SXM: 989)").above(0);
  t.check([this] {
    if (min_lr > lr) fail("min_lr (", min_lr, ") must not exceed lr (", lr, ")");
    if (global_batch % micro_batch != 0)
      fail("global_batch (", global_batch, ") must be a multiple of micro_batch (", micro_batch, ")");
  });
  t.add("log_level", &log_level, "trace, debug, info, warn, error")
      .one_of({"trace", "debug", "info", "warn", "error", "off"});
}

namespace {
std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal.store(sig); }

at::Tensor lm_loss(const Llama& m, const at::Tensor& hidden, const at::Tensor& target) {
  at::Tensor logits = m.lm_logits(hidden).to(at::kFloat);  // [.., V / tp]
  return vocab_parallel_cross_entropy(logits.view({-1, logits.size(-1)}), target.reshape({-1}), m.tp);
}

// Data-parallel gradient averaging overlapped with the backward of the last micro-batch (the design of PyTorch DDP's
// reducer with gradient_as_bucket_view): parameters are grouped into buckets of about bucket_mb in reverse order (the
// order backward produces their gradients); each bucket is one flat buffer and every parameter's .grad is a view
// into it, so autograd accumulates micro-batches straight into the buffer. A post-accumulate hook counts the
// parameters of a bucket in the last micro-batch and, when the bucket is complete, starts its all-reduce (sum) on the
// buffer in place while backward goes on. The loss is scaled by 1 / dp beforehand, so the sum is the average.
// finish() launches what backward did not reach and waits. zero() clears the buffers (the grads stay views).
//   flat_[b]  [sum of numel of bucket b's parameters]  fp32, parameter order within the bucket reversed
class GradSync {
 public:
  GradSync(std::vector<std::pair<std::string, at::Tensor*>>& params, const Group& dp, double bucket_mb)
      : params_(params), dp_(dp) {
    if (dp.size == 1) return;
    const int64_t cap = (int64_t)(bucket_mb * (1 << 20));
    int64_t bytes = 0;
    buckets_.emplace_back();
    bucket_of_.assign(params.size(), 0);
    for (int64_t i = (int64_t)params.size() - 1; i >= 0; --i) {
      const at::Tensor& p = *params[i].second;
      if (bytes > 0 && bytes + p.numel() * (int64_t)p.element_size() > cap) {
        buckets_.emplace_back();
        bytes = 0;
      }
      bucket_of_[i] = (int64_t)buckets_.size() - 1;
      buckets_.back().push_back(i);
      bytes += p.numel() * (int64_t)p.element_size();
    }
    seen_.assign(params.size(), 0);
    for (const auto& b : buckets_) {
      int64_t n = 0;
      for (int64_t i : b) n += params[i].second->numel();
      const at::Tensor& p0 = *params[b[0]].second;
      at::Tensor flat = at::zeros({n}, p0.options().requires_grad(false));
      int64_t off = 0;
      for (int64_t i : b) {
        at::Tensor& p = *params[i].second;
        DMC_CHECK(p.scalar_type() == p0.scalar_type(), "data parallel: parameters of one bucket differ in dtype");
        p.mutable_grad() = flat.narrow(0, off, p.numel()).view_as(p);
        off += p.numel();
      }
      flat_.push_back(flat);
    }
    struct Hook : torch::autograd::PostAccumulateGradHook {
      GradSync* s;
      int64_t i;
      Hook(GradSync* s_, int64_t i_) : s(s_), i(i_) {}
      void operator()(const torch::autograd::Variable&) override { s->ready(i); }
    };
    for (size_t i = 0; i < params.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(*params[i].second, std::make_unique<Hook>(this, (int64_t)i));
  }
  ~GradSync() {  // the hooks point at this object: none may outlive it
    if (dp_.size > 1)
      for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(*p.second, nullptr);
  }
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;
  bool enabled() const { return dp_.size > 1; }
  // Before the backward of the last micro-batch of a step.
  void arm() {
    if (dp_.size == 1) return;
    active_ = true;
    pending_.clear();
    for (auto& b : buckets_) pending_.push_back((int64_t)b.size());
    std::fill(seen_.begin(), seen_.end(), 0);
    work_.assign(buckets_.size(), PendingWork{});
  }
  // After that backward: buckets with parameters that got no gradient go now (in the same order on every rank).
  void finish() {
    if (dp_.size == 1 || !active_) return;
    for (size_t b = 0; b < buckets_.size(); ++b)
      if (!work_[b].work) launch((int64_t)b);
    for (auto& w : work_) w.wait();
    active_ = false;
  }
  void zero() {
    for (auto& f : flat_) f.zero_();
  }

 private:
  void ready(int64_t i) {
    if (!active_) return;
    DMC_CHECK(!seen_[i], "data parallel: parameter ", params_[i].first, " received two gradients in one backward");
    seen_[i] = 1;
    if (--pending_[bucket_of_[i]] == 0) launch(bucket_of_[i]);
  }
  void launch(int64_t b) {
    for (int64_t i : buckets_[b])  // a parameter's .grad must still be the view into the bucket
      DMC_CHECK(params_[i].second->grad().is_alias_of(flat_[b]), "data parallel: the gradient of ", params_[i].first,
                " was replaced (no longer a bucket view)");
    work_[b] = all_reduce_sum_async(flat_[b], dp_);
  }
  std::vector<std::pair<std::string, at::Tensor*>>& params_;
  const Group& dp_;
  std::vector<std::vector<int64_t>> buckets_;
  std::vector<int64_t> bucket_of_, pending_;
  std::vector<char> seen_;
  std::vector<at::Tensor> flat_;
  std::vector<PendingWork> work_;
  bool active_ = false;
};

double peak_memory_bytes(const at::Device& d) {
  (void)d;  // CPU builds: the process's peak resident memory
#ifdef DMC_WITH_CUDA
  if (d.is_cuda()) {
    auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(d.index());
    return (double)st.allocated_bytes[0].peak;
  }
#endif
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) * 1024;
  return 0;
}

io::NamedTensors rng_state(const at::Device& dev) {
  io::NamedTensors out{{"cpu", at::detail::getDefaultCPUGenerator().get_state()}};
  if (dev.is_cuda()) out.emplace_back("cuda", at::globalContext().defaultGenerator(dev).get_state());
  return out;
}
void set_rng_state(const std::string& dir, const at::Device& dev) {
  auto f = io::SafetensorsFile::open(dir + "/rng.safetensors");
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  cpu.set_state(f->get("cpu").clone());
  if (dev.is_cuda() && f->has("cuda")) {
    at::Generator g = at::globalContext().defaultGenerator(dev);
    g.set_state(f->get("cuda").clone());
  }
}

// The checkpoint to resume from, or none for a fresh start; refuses a fresh start that would mix with (or silently
// discard) an earlier run in the same directory.
std::optional<std::string> choose_resume(const TrainOptions& o) {
  if (o.resume != "auto" && o.resume != "none") {
    validate_checkpoint(o.resume);
    return o.resume;
  }
  const auto ckpts = checkpoint_dirs(o.out);
  const bool has_final = file_exists(o.out + "/final");
  if (o.resume == "auto") {
    if (auto latest = latest_checkpoint(o.out)) return latest;
    if (!ckpts.empty() && !o.overwrite)
      fail("resume: auto: none of the ", ckpts.size(), " checkpoint(s) in ", o.out,
           "/checkpoints is valid (see the warnings above); not starting afresh over them. Pass --overwrite to remove "
           "the earlier run and start afresh, or --resume DIR to name a checkpoint");
  }
  if ((!ckpts.empty() || has_final) && !o.overwrite)
    fail("run directory ", o.out, " holds an earlier run (", ckpts.size(), " checkpoint(s)",
         has_final ? ", a final model" : "", "); ", o.resume == "none" ? "resume: none would mix the two runs. " : "",
         "Pass --overwrite to remove it and start afresh, --resume auto to continue it, or use another --out");
  return std::nullopt;
}

// A fresh start: with overwrite, everything of an earlier run goes (wholly, before anything new is written); without
// it only a run that never saved a checkpoint can be there, and its metrics are kept aside, not appended to.
void clear_previous_run(const TrainOptions& o) {
  if (o.overwrite) {
    for (const char* n : {"checkpoints", "final", "metrics.jsonl", "log.txt", "config.yaml"}) {
      const std::string p = o.out + "/" + n;
      if (file_exists(p)) {
        log::warn(cat("overwrite: removing ", p, " of the earlier run"));
        remove_tree(p);
      }
    }
    return;
  }
  const std::string m = o.out + "/metrics.jsonl";
  if (file_exists(m)) {
    const std::string aside = cat(o.out, "/metrics.jsonl.before-", (int64_t)std::time(nullptr));
    rename_path(m, aside);
    log::warn(cat(o.out, ": an earlier run left metrics but no checkpoint; its metrics were moved to ", aside));
  }
}

// On resume the model comes from the checkpoint: a shape in the config that differs from it would be printed as
// the run's config while not being what runs, so it is refused, naming the field.
void check_resumed_shape(const TrainOptions& o, const LlamaConfig& got, const std::string& dir) {
  LlamaConfig want;
  std::string source;
  if (!o.init_from.empty()) {
    want = LlamaConfig::load(o.init_from + "/config.json");
    source = "init_from " + o.init_from;
  } else {
    want = o.shape.resolve(o.tokenizer);
    source = "the configured shape";
  }
  const std::pair<const char*, std::pair<int64_t, int64_t>> fields[] = {
      {"vocab_size", {want.vocab_size, got.vocab_size}},
      {"hidden_size", {want.hidden_size, got.hidden_size}},
      {"intermediate_size", {want.intermediate_size, got.intermediate_size}},
      {"num_hidden_layers", {want.num_hidden_layers, got.num_hidden_layers}},
      {"num_attention_heads", {want.num_attention_heads, got.num_attention_heads}},
      {"num_key_value_heads", {want.num_key_value_heads, got.num_key_value_heads}},
      {"head_dim", {want.head_dim, got.head_dim}},
      {"max_position_embeddings", {want.max_position_embeddings, got.max_position_embeddings}},
      {"tie_word_embeddings", {want.tie_word_embeddings, got.tie_word_embeddings}}};
  for (const auto& [name, v] : fields)
    if (v.first != v.second)
      fail("resume: ", source, " has ", name, " = ", v.first, " but the checkpoint ", dir, " has ", v.second,
           " (a changed model shape cannot resume; use another --out, or --overwrite to start afresh)");
}
}  // namespace

double evaluate(Llama& model, Stage* stage, data::Loader& valid, int64_t batches, int64_t micro_batch, bool autocast) {
  at::NoGradGuard ng;
  AutocastScope ac(autocast);
  valid.set_position(0);
  double sum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    data::Batch b = valid.next(micro_batch);
    b.input = b.input.to(model.device());
    b.target = b.target.to(model.device());
    b.doc_start = b.doc_start.to(model.device());
    at::Tensor h = stage ? stage->forward_hidden(model, b) : model.forward_hidden(b.input);
    sum += lm_loss(model, h, b.target).item<double>();
  }
  return sum / std::max<int64_t>(1, batches);
}

namespace {
// One training run. run() is the loop; it delegates to the pieces: setup() (runtime, parallel groups, run directory,
// model, optimizer, data), resume() (state of a checkpoint), step() (micro-batches, gradient sync, clipping, the
// optimizer), log_step() (log line and metrics), validate(), save() (a checkpoint) and finish() (the final model).
class Trainer {
 public:
  Trainer(const TrainOptions& o, Stage* stage, const std::string& resolved_yaml)
      : o_(o), stage_(stage), yaml_(resolved_yaml) {}

  TrainResult run() {
    setup();
    const bool already_done = step_ >= o_.train_steps;
    const int64_t first_step = step_;
    Progress eta("train", o_.train_steps, 0.0);
    t_last_ = std::chrono::steady_clock::now();
    while (step_ < o_.train_steps) {
      const StepResult r = step();
      res_.last_loss = r.loss;
      const json sm = stage_ ? stage_->metrics() : json::object();
      if (step_ % std::max<int64_t>(1, o_.log_every) == 0 || step_ == o_.train_steps) {
        log_step(r, sm);
        eta.update(step_);
      }
      if (valid_ && ((o_.eval_every > 0 && step_ % o_.eval_every == 0) || step_ == o_.train_steps)) validate();
      const bool stop_here =
          o_.exit_after_steps > 0 && step_ - first_step >= o_.exit_after_steps && step_ < o_.train_steps;
      const int sig = pending_signal();
      if (sig || stop_here) {
        if (stop_here)
          log::info(cat("exit_after_steps reached: saving a checkpoint at step ", step_, " and exiting"));
        else
          log::warn(cat("signal ", sig, " received: saving a checkpoint at step ", step_, " and exiting"));
        save(step_);
        res_.interrupted = true;
        res_.signal = stop_here ? 0 : sig;
        res_.steps_done = step_;
        dist_.shutdown();
        return res_;
      }
      if (o_.save_every > 0 && step_ % o_.save_every == 0 && step_ < o_.train_steps) save(step_);
    }
    if (stage_) stage_->finish(model_);
    if (!already_done) save(step_);
    finish();
    return res_;
  }

 private:
  struct StepResult {
    double loss = 0, gnorm = 0, lr = 0;
  };

  // ---- setup: runtime, parallel groups, the run directory, model, optimizer, data; then resume or seed ----
  void setup() {
    log::set_level(o_.log_level);
    DMC_CHECK(o_.micro_batch > 0 && o_.global_batch % o_.micro_batch == 0, "global_batch (", o_.global_batch,
              ") must be a positive multiple of micro_batch (", o_.micro_batch, ")");
    DMC_CHECK(o_.train_steps > 0, "train_steps: must be positive");
    DMC_CHECK(o_.grad_bucket_mb > 0, "grad_bucket_mb: must be positive, got ", o_.grad_bucket_mb);
    auto [dev, dt] = resolve_runtime(o_.device, o_.dtype);
    dev_ = dev;
    autocast_ = dev_.is_cuda() && dt == at::kBFloat16;
    DMC_CHECK(dt == at::kFloat || autocast_, "dtype: bf16 training needs CUDA (on CPU use fp32)");
    dist_ = Dist::from_env(o_.tensor_parallel, dev_);
    if (dev_.is_cuda() && dist_.world > 1) {
      dev_ = at::Device(at::kCUDA, (int8_t)dist_.local_rank);
#ifdef DMC_WITH_CUDA
      c10::cuda::set_device((c10::DeviceIndex)dist_.local_rank);
#endif
    }
    main_rank_ = dist_.is_main();
    dp_ = dist_.dp.size;
    DMC_CHECK(o_.global_batch % (dp_ * o_.micro_batch) == 0, "global_batch (", o_.global_batch,
              ") must be a multiple of micro_batch (", o_.micro_batch, ") x data-parallel size (", dp_, ")");
    accum_ = o_.global_batch / (o_.micro_batch * dp_);
    if (!main_rank_) log::set_level("error");

    // the run directory: one trainer at a time, never two runs mixed
    if (main_rank_) lock_ = std::make_unique<DirLock>(o_.out, "run directory");
    const std::optional<std::string> resume_dir = choose_resume(o_);
    if (main_rank_ && !resume_dir) clear_previous_run(o_);
    if (dist_.world > 1) barrier(dist_.world_group);
    if (main_rank_) {
      log::set_file(o_.out + "/log.txt");
      write_file_atomic(o_.out + "/config.yaml", yaml_);
    }
    log::info(cat("resolved config (saved to ", o_.out, "/config.yaml):\n", yaml_));
    if (dist_.world > 1)
      log::info(
          cat("parallel: world ", dist_.world, " = tensor ", dist_.tp.size, " x data ", dp_, " (", dist_.backend, ")"));

    tok_ = Tokenizer::load(o_.tokenizer);
    // model: resume > init_from > random
    if (resume_dir) {
      log::info(cat("resuming from ", *resume_dir));
      model_ = Llama::load(*resume_dir, at::kFloat, dev_);
      check_resumed_shape(o_, model_.config, *resume_dir);
    } else if (!o_.init_from.empty()) {
      model_ = Llama::load(o_.init_from, at::kFloat, dev_);
    } else {
      model_ = Llama::random(o_.shape.resolve(o_.tokenizer), (uint64_t)o_.seed, at::kFloat, dev_, o_.init_std);
    }
    tok_.check_model_vocab(model_.config.vocab_size,
                           o_.init_from.empty() ? "the model config" : o_.init_from + "/config.json");
    DMC_CHECK(o_.seq_len <= model_.config.max_position_embeddings, "seq_len: ", o_.seq_len,
              " exceeds the model's max_position_embeddings (", model_.config.max_position_embeddings, ")");
    model_.activation_checkpointing = o_.activation_checkpointing;
    data::LoaderOptions lo = loader_options();
    if (stage_ && !resume_dir) prepare_stage(lo);
    if (dist_.tp.size > 1) model_.shard_tensor_parallel(dist_.tp);
    params_ = model_.parameters();
    for (auto& p : params_) p.second->requires_grad_(true);

    AdamWOptions ao;
    ao.beta1 = o_.beta1;
    ao.beta2 = o_.beta2;
    ao.eps = o_.adam_eps;
    ao.weight_decay = o_.weight_decay;
    ao.decay_norms_and_embeddings = o_.decay_norms_and_embeddings;
    opt_ = std::make_unique<AdamW>(params_, ao);
    grad_sync_ = std::make_unique<GradSync>(params_, dist_.dp, o_.grad_bucket_mb);
    model_.sequence_parallel = o_.sequence_parallel && dist_.tp.size > 1;
    if (model_.sequence_parallel)
      DMC_CHECK((o_.micro_batch * o_.seq_len) % dist_.tp.size == 0,
                "sequence_parallel: micro_batch x seq_len = ", o_.micro_batch * o_.seq_len,
                " tokens do not split over tensor_parallel = ", dist_.tp.size, " (set sequence_parallel: false)");
    if (dist_.tp.size > 1)
      opt_->set_tensor_parallel(&model_.tp, [this](const std::string& n) { return model_.is_sharded(n); });
    sched_ = LrSchedule{o_.lr, o_.min_lr, o_.warmup_steps, o_.train_steps, o_.lr_schedule};
    sched_.at(0);  // validates the shape name

    loader_ = std::make_unique<data::Loader>(lo);
    lo.split = "valid";
    lo.shuffle = false;
    try {
      valid_ = std::make_unique<data::Loader>(lo);
    } catch (const Error& e) {
      log::warn(cat("no validation: ", e.what()));
    }

    if (resume_dir)
      resume(*resume_dir);
    else
      torch::manual_seed((uint64_t)o_.seed + 1 + 104729 * (uint64_t)dist_.dp.rank);
    // after the resume: a stage may keep its row rates in its state (they may depend on the stage's first weights)
    if (stage_)
      for (const auto& r : stage_->row_lrs(model_)) opt_->set_row_lr(r.param, r.rows, r.mult);
    for (const auto& s : o_.inject_nonfinite_steps) inject_.insert(parse_int(s, "inject_nonfinite_steps"));

    const auto& c = model_.config;
    const double n_params = (double)c.num_parameters() - (double)c.vocab_size * c.hidden_size;
    flops_per_token_ = 6.0 * n_params + 12.0 * c.num_hidden_layers * c.q_size() * o_.seq_len;
    if (main_rank_) metrics_.open(o_.out + "/metrics.jsonl");
    g_signal.store(0);
    prev_term_ = std::signal(SIGTERM, on_signal);
    prev_int_ = std::signal(SIGINT, on_signal);
    signals_set_ = true;
  }

  data::LoaderOptions loader_options() const {
    data::LoaderOptions lo;
    lo.datasets = o_.data;
    for (const auto& w : o_.data_weights) {
      try {
        lo.weights.push_back(std::stod(w));
      } catch (...) {
        fail("data_weights: expected numbers, got '", w, "'");
      }
    }
    lo.seq_len = o_.seq_len;
    lo.seed = o_.seed;
    lo.tokenizer_fingerprint = tok_.fingerprint();
    lo.vocab_size = model_.config.vocab_size;
    return lo;
  }

  // ---- a fresh start: the stage's prepare() on the whole model, with the first eval_batches micro-batches of the
  // training stream (its own loader: the run's stream is untouched) as calibration, read only if the stage asks ----
  void prepare_stage(const data::LoaderOptions& lo) {
    std::vector<data::Batch> batches;
    stage_->prepare(model_, [&](Attention& attn) {
      if (batches.empty()) {
        data::Loader calib(lo);
        for (int64_t i = 0; i < std::max<int64_t>(1, o_.eval_batches); ++i) {
          data::Batch b = calib.next(o_.micro_batch);
          b.input = b.input.to(dev_);
          b.target = b.target.to(dev_);
          b.doc_start = b.doc_start.to(dev_);
          batches.push_back(std::move(b));
        }
      }
      at::NoGradGuard ng;
      double sum = 0;
      {
        AutocastScope ac(autocast_);
        for (const auto& b : batches) sum += lm_loss(model_, model_.forward_hidden(b.input, attn), b.target).item<double>();
      }
      at::Tensor t = at::full({1}, sum / (double)batches.size(), at::TensorOptions().dtype(at::kDouble).device(dev_));
      if (dist_.world > 1) broadcast(t, dist_.world_group, 0);  // every rank takes rank 0's choice
      return t.item<double>();
    });
  }

  // ---- resume: counters, data position, optimizer, RNG and stage state of a checkpoint ----
  void resume(const std::string& dir) {
    json st = read_trainer_state(dir);
    if (st.contains("tokenizer_fingerprint") && st["tokenizer_fingerprint"] != tok_.fingerprint())
      fail(dir, "/trainer_state.json: field 'tokenizer_fingerprint' is ", st["tokenizer_fingerprint"].dump(),
           " but the configured tokenizer ", o_.tokenizer, " has ", tok_.fingerprint(),
           " (a stale run directory? use another --out or --resume none)");
    step_ = st["step"].get<int64_t>();
    loader_->set_position(st["loader_position"].get<int64_t>());
    skipped_ = st.value("skipped_steps", (int64_t)0);
    tokens_seen_ = st.value("tokens_seen", 0.0);
    opt_->load_state(*io::SafetensorsFile::open(dir + "/optimizer.safetensors"),
                     [this](const std::string& n, const at::Tensor& full) {
                       return dist_.tp.size > 1 ? model_.shard_of(n, full, dist_.tp.rank, dist_.tp.size) : full;
                     });
    if (dist_.world == 1)
      set_rng_state(dir, dev_);
    else
      torch::manual_seed((uint64_t)o_.seed + 1 + 7919 * (uint64_t)step_ + 104729 * (uint64_t)dist_.dp.rank);
    if (stage_ && st.contains("stage")) stage_->load_state(st["stage"]);
    log::info(cat("resumed at step ", step_, ", loader position ", loader_->position()));
  }

  // ---- step: this rank's micro-batches of the global batch, gradient sync, clipping, the optimizer ----
  StepResult step() {
    StepResult r;
    if (stage_) stage_->begin_step(step_, o_.train_steps, model_);
    r.lr = sched_.at(step_);
    double loss_sum = 0;
    const int64_t step_start = loader_->position();
    loader_->set_position(step_start + dist_.dp.rank * (o_.global_batch / dp_));  // this rank's block of the batch
    for (int64_t mb = 0; mb < accum_; ++mb) {
      data::Batch b = loader_->next(o_.micro_batch);
      b.input = b.input.to(dev_);
      b.target = b.target.to(dev_);
      b.doc_start = b.doc_start.to(dev_);
      at::Tensor loss;
      {
        AutocastScope ac(autocast_);
        at::Tensor h = stage_ ? stage_->forward_hidden(model_, b) : model_.forward_hidden(b.input);
        if (stage_) loss = stage_->loss(model_, h, b);
        if (!loss.defined()) loss = lm_loss(model_, h, b.target);
        if (stage_) {
          at::Tensor extra = stage_->extra_loss(model_);
          if (extra.defined()) loss = loss + extra;
        }
      }
      if (inject_.count(step_)) loss = loss * std::numeric_limits<double>::quiet_NaN();
      if (mb == accum_ - 1) grad_sync_->arm();
      (loss / (double)(accum_ * dp_)).backward();  // the data-parallel sum of these is the mean gradient
      if (mb == accum_ - 1) grad_sync_->finish();
      loss_sum += loss.detach().item<double>();
    }
    loader_->set_position(step_start + o_.global_batch);
    r.loss = loss_sum / accum_;
    if (dp_ > 1) {
      at::Tensor l = at::full({1}, r.loss, at::kDouble);
      all_reduce_sum(l, dist_.dp);
      r.loss = l.item<double>() / (double)dp_;
    }
    r.gnorm = std::isfinite(r.loss) ? opt_->clip_grad_norm(o_.grad_clip) : NAN;
    if (!std::isfinite(r.loss) || !std::isfinite(r.gnorm)) {
      zero_grads();
      ++skipped_;
      ++nonfinite_run_;
      log::warn(cat("step ", step_ + 1, ": non-finite loss/grad (loss ", r.loss, ", grad norm ", r.gnorm,
                    "); step skipped (", nonfinite_run_, " in a row, ", skipped_, " in total)"));
      if (nonfinite_run_ >= o_.max_nonfinite)
        fail("training stopped: ", nonfinite_run_, " non-finite losses in a row at step ", step_ + 1,
             " (max_nonfinite = ", o_.max_nonfinite, "); lower lr or check the data");
    } else {
      opt_->step(r.lr);
      zero_grads();
      nonfinite_run_ = 0;
      loss_acc_log_ += r.loss;
    }
    ++step_;
    ++steps_since_log_;
    tokens_seen_ += (double)o_.global_batch * o_.seq_len;
    return r;
  }

  void zero_grads() {  // data parallel: the grads are views of the bucket buffers and stay so
    if (grad_sync_->enabled())
      grad_sync_->zero();
    else
      opt_->zero_grad();
  }

  // ---- log: one line and one metrics record for the steps since the last one ----
  void log_step(const StepResult& r, const json& stage_metrics) {
    if (dev_.is_cuda()) torch::cuda::synchronize(dev_.index());
    const auto now = std::chrono::steady_clock::now();
    const double secs = std::chrono::duration<double>(now - t_last_).count();
    t_last_ = now;
    const double tps = steps_since_log_ * (double)o_.global_batch * o_.seq_len / secs;
    const double mfu = tps * flops_per_token_ / (o_.peak_tflops * 1e12 * (double)dist_.world);  // per GPU
    const double mem = peak_memory_bytes(dev_);
    const double mean_loss = loss_acc_log_ / std::max<int64_t>(1, steps_since_log_);
    json m = {{"step", step_},
              {"loss", mean_loss},
              {"lr", r.lr},
              {"grad_norm", r.gnorm},
              {"tokens_per_s", tps},
              {"mfu", mfu},
              {"peak_memory_bytes", mem},
              {"tokens_seen", tokens_seen_},
              {"skipped_steps", skipped_}};
    for (auto it = stage_metrics.begin(); it != stage_metrics.end(); ++it) m[it.key()] = it.value();
    std::ostringstream line;
    line << std::fixed << std::setprecision(4) << "step " << step_ << "/" << o_.train_steps << " | loss " << mean_loss
         << " | lr " << std::scientific << std::setprecision(2) << r.lr << std::fixed << " | gnorm "
         << std::setprecision(3) << r.gnorm << " | " << std::setprecision(0) << tps << " tok/s | MFU "
         << std::setprecision(1) << 100 * mfu << "% | mem " << human_bytes(mem);
    for (auto it = stage_metrics.begin(); it != stage_metrics.end(); ++it)
      line << " | " << it.key() << " " << it.value().dump();
    log::info(line.str());
    metrics_.append(m.dump() + "\n");
    steps_since_log_ = 0;
    loss_acc_log_ = 0;
  }

  // ---- validate: the held-out loss, logged and recorded ----
  void validate() {
    const double vl = evaluate(model_, stage_, *valid_, o_.eval_batches, o_.micro_batch, autocast_);
    res_.last_eval_loss = vl;
    log::info(cat("eval at step ", step_, ": loss ", vl, ", ppl ", std::exp(vl)));
    metrics_.append(json{{"step", step_}, {"eval_loss", vl}, {"eval_ppl", std::exp(vl)}}.dump() + "\n");
  }

  // a signal to any rank stops all of them at the same step
  int pending_signal() {
    int64_t sig = g_signal.load();
    if (dist_.world > 1) {
      at::Tensor s = at::full({1}, sig, at::kLong);
      all_reduce_max(s, dist_.world_group);
      sig = s.item<int64_t>();
      if (sig) g_signal.store((int)sig);
    }
    return (int)sig;
  }

  // whole tensors from the shards (collective over tp; every rank takes part, rank 0 writes)
  Llama full_model() {
    Llama full = model_;
    if (dist_.tp.size > 1) {
      for (auto& [name, t] : full.parameters()) *t = model_.unshard(name, t->detach());
      if (full.config.tie_word_embeddings) full.lm_head = full.embed;
      full.tp = Group{};
    }
    return full;
  }

  // ---- save: a checkpoint of model, optimizer, RNG, counters and stage state (rank 0 writes) ----
  void save(int64_t at_step) {
    Llama full = full_model();
    io::NamedTensors ost =
        opt_->state([this](const std::string& n, const at::Tensor& local) { return model_.unshard(n, local); });
    if (!main_rank_) {
      barrier(dist_.world_group);
      return;
    }
    CheckpointData d;
    d.model = &full;
    d.optimizer = ost;
    d.rng = rng_state(dev_);
    d.trainer_state = {{"step", at_step},
                       {"loader_position", loader_->position()},
                       {"skipped_steps", skipped_},
                       {"tokens_seen", tokens_seen_},
                       {"config", yaml_},
                       {"tokenizer_fingerprint", tok_.fingerprint()},
                       {"stage", stage_ ? stage_->state() : json::object()},
                       {"stage_name", stage_ ? stage_->name() : "train"}};
    auto dir = save_checkpoint(o_.out, at_step, d, o_.keep_last);
    log::info(cat("checkpoint saved: ", dir));
    barrier(dist_.world_group);
  }

  // ---- finish: the final model in HF format ----
  void finish() {
    res_.final_dir = o_.out + "/final";
    for (auto& p : params_) p.second->requires_grad_(false);
    {
      Llama full = full_model();
      if (main_rank_) full.save(res_.final_dir, at::kFloat, int64_t(5) << 30, /*overwrite=*/true);
      barrier(dist_.world_group);
    }
    log::info(cat("final model: ", res_.final_dir));
    res_.steps_done = step_;
    dist_.shutdown();
  }

 public:
  ~Trainer() {
    if (signals_set_) {
      std::signal(SIGTERM, prev_term_);
      std::signal(SIGINT, prev_int_);
    }
  }

 private:
  const TrainOptions& o_;
  Stage* stage_;
  const std::string& yaml_;
  at::Device dev_{at::kCPU};
  bool autocast_ = false, main_rank_ = true, signals_set_ = false;
  Dist dist_;
  int64_t dp_ = 1, accum_ = 1;
  std::unique_ptr<DirLock> lock_;
  Tokenizer tok_;
  Llama model_;
  std::vector<std::pair<std::string, at::Tensor*>> params_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<GradSync> grad_sync_;
  LrSchedule sched_;
  std::unique_ptr<data::Loader> loader_, valid_;
  int64_t step_ = 0, skipped_ = 0, nonfinite_run_ = 0, steps_since_log_ = 0;
  double tokens_seen_ = 0, flops_per_token_ = 0, loss_acc_log_ = 0;
  std::set<int64_t> inject_;
  AppendFile metrics_;
  std::chrono::steady_clock::time_point t_last_;
  void (*prev_term_)(int) = SIG_DFL;
  void (*prev_int_)(int) = SIG_DFL;
  TrainResult res_;
};
}  // namespace

TrainResult train(const TrainOptions& o, Stage* stage, const std::string& resolved_yaml) {
  Trainer t(o, stage, resolved_yaml);
  return t.run();
}

}  // namespace dmc::train
