// The decode benchmark's phases (see decode_bench.h).
#include "inference/decode_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"

#ifdef DMC_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace dmc {

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int64_t free_device_bytes(at::Device dev) {
#ifdef DMC_WITH_CUDA
  if (dev.is_cuda()) {
    size_t free = 0, total = 0;
    c10::cuda::CUDACachingAllocator::emptyCache();
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) return (int64_t)free;
  }
#endif
  (void)dev;
  return int64_t(4) << 30;
}
void release_cached(at::Device dev) {  // the caching allocator's free blocks back to the driver
#ifdef DMC_WITH_CUDA
  if (dev.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  (void)dev;
}
std::vector<int64_t> random_ids(int64_t n, int64_t vocab) {
  at::Tensor t = at::randint(3, vocab, {n}, at::TensorOptions().dtype(at::kLong)).contiguous();
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}
double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kFloat) - b.to(at::kFloat)).norm() / b.to(at::kFloat).norm()).item<double>();
}
}  // namespace

DecodeBench::DecodeBench(const Llama& model, DecodeBenchOptions o, std::vector<int64_t> text_ids)
    : m_(model), o_(std::move(o)), text_(std::move(text_ids)), dev_(model.device()), dt_(model.dtype()) {
  const auto& c = m_.config;
  ctx_ = o_.prompt_len + o_.new_tokens;
  if (o_.steps <= 0) o_.steps = o_.new_tokens;
  DMC_CHECK(o_.steps <= o_.new_tokens, "steps (", o_.steps, ") must not exceed new_tokens (", o_.new_tokens, ")");
  // the positions fed are 0 .. ctx - 2 (the last new token is sampled, never fed): ctx tokens fit when ctx <= max
  DMC_CHECK(ctx_ <= c.max_position_embeddings, "prompt_len + new_tokens (", ctx_, ") exceeds max_position_embeddings (",
            c.max_position_embeddings, ")");
  DMC_CHECK(o_.fill == "synthetic" || o_.fill == "prefill", "fill: expected synthetic or prefill, got '", o_.fill, "'");
  DMC_CHECK(o_.calibrate >= 1, "calibrate: must be at least 1, got ", o_.calibrate);
  DMC_CHECK(o_.page_size >= 1, "page_size: must be at least 1, got ", o_.page_size);
  if (o_.batch != "max")
    DMC_CHECK(parse_int(o_.batch, "batch") >= 1, "batch: expected a positive integer or 'max', got '", o_.batch, "'");
  if (!text_.empty())
    DMC_CHECK((int64_t)text_.size() > ctx_, o_.prompt_src, ": ", text_.size(),
              " tokens, need more than the context (prompt_len + new_tokens = ", ctx_, ")");
  bw_ = dev_.is_cuda() ? copy_bandwidth(dev_) : 0;
  budget_bytes_ = o_.memory_gib > 0 ? (int64_t)(o_.memory_gib * (1LL << 30))
                                    : free_device_bytes(dev_) - (int64_t)(o_.reserve_gib * (1LL << 30));
  DMC_CHECK(budget_bytes_ > 0, "memory budget: nothing left after the model and the reserve (", o_.reserve_gib,
            " GiB)");
}

std::vector<int64_t> DecodeBench::prompt(int64_t i, int64_t len) const {
  if (text_.empty()) return random_ids(len, m_.config.vocab_size);
  const int64_t n_win = std::max<int64_t>(1, ((int64_t)text_.size() - len) / len);
  const int64_t b = (i % n_win) * len;
  return std::vector<int64_t>(text_.begin() + b, text_.begin() + b + len);
}

DecoderOptions DecodeBench::decoder_options(CachePolicy pol) const {
  DecoderOptions o;
  o.policy = pol;
  o.page_size = o_.page_size;
  o.graph_max_batch = o_.graph_max_batch;
  o.graph_batch_step = o_.graph_batch_step;
  o.gemm_row_tuning = o_.gemm_row_tuning;
  const bool random_weights = !m_.config.dmc.enabled;
  if (pol == CachePolicy::Dmc) {
    DMC_CHECK(!random_weights || o_.force_cr > 0,
              "policy dmc on a model without trained DMC decisions (random weights) needs --force-cr R");
    o.force_cr = o_.force_cr;
  }
  if (evicts(pol)) {
    DMC_CHECK(o_.budget_slots > 0 || o_.force_cr > 0, "policy ", cache_policy_name(pol),
              " needs --budget or --force-cr (budget = context / R)");
    o.budget = o_.budget_slots > 0 ? o_.budget_slots : (ctx_ + o_.force_cr - 1) / o_.force_cr;
  }
  return o;
}

// ---- verify: kernels against the reference ops on this model ------------------------------------------------
void DecodeBench::verify(const DecoderOptions& o, bool trained_dmc) {
  const auto& c = m_.config;
  if (!decode_kernels_available(dev_, c.head_dim) || evicts(o.policy)) return;
  const std::string name = cache_policy_name(o.policy);
  DecoderOptions vo = o;
  vo.max_seqs = 2;
  vo.n_pages = c.num_hidden_layers * 2 * c.num_key_value_heads * PagedKVCache::pages_for(161, o.page_size);
  DecoderOptions vr = vo;
  vr.use_kernels = false;
  Decoder kd(m_, vo), rd(m_, vr);
  torch::manual_seed(o_.seed + 1);
  std::vector<int64_t> next;
  for (int64_t s = 0; s < 2; ++s) {
    auto p = random_ids(64 + 31 * s, c.vocab_size);
    kd.prefill(s, p);
    next.push_back(rd.prefill(s, p).argmax().item<int64_t>());
  }
  double worst = 0;
  for (int i = 0; i < 12; ++i) {
    at::Tensor lk = kd.step({0, 1}, next), lr = rd.step({0, 1}, next);
    worst = std::max(worst, rel(lk, lr));
    at::Tensor am = lr.argmax(-1).cpu();
    next = {am[0].item<int64_t>(), am[1].item<int64_t>()};
  }
  // Slot counts must be equal, except that trained decisions in bf16/fp16 sit close to the threshold for a few
  // tokens, where the two paths' roundings may decide differently: there up to 2% of the slots may differ.
  const at::Tensor ka = at::cat({kd.slot_counts(0), kd.slot_counts(1)}).to(at::kDouble);
  const at::Tensor ra = at::cat({rd.slot_counts(0), rd.slot_counts(1)}).to(at::kDouble);
  const double slot_diff = ((ka - ra).abs().sum() / ra.sum()).item<double>();
  const bool close_call = trained_dmc && dt_ != at::kFloat;
  const bool same_slots = slot_diff == 0 || (close_call && slot_diff <= 0.02);
  const double tol = dt_ == at::kFloat ? 1e-4 : 5e-2;
  log::info(cat("verify (", name, "): kernels vs reference ops, 2 sequences x 12 steps: logits relative error ", worst,
                " (tolerance ", tol, "), slot counts ",
                slot_diff == 0 ? "equal" : cat("differ by ", slot_diff * 100, "%"),
                close_call ? " (trained decisions in low precision: up to 2% allowed)" : ""));
  if (!(worst <= tol) || !same_slots)
    fail("verification failed (", name, "): the CUDA kernels differ from the reference ops");
}

// ---- size the batch at equal memory ---------------------------------------------------------------------------
DecodeBench::Sizing DecodeBench::size(const DecoderOptions& o, bool trained_dmc) {
  const auto& c = m_.config;
  const int64_t L = c.num_hidden_layers, nkv = c.num_key_value_heads, P = o.page_size;
  int64_t slots_per_row = ctx_ + 1;
  // forced decisions: ceil(ctx / R) groups, one slot more for the position-0 append and one for a partial group
  if (o.policy == CachePolicy::Dmc && o.force_cr > 0) slots_per_row = 2 + (ctx_ + o.force_cr - 1) / o.force_cr;
  if (evicts(o.policy)) slots_per_row = o.budget + 1;
  const int64_t state_row = Decoder::state_bytes_per_row(c, o.policy, o.budget, P, dt_);
  Sizing s;
  s.pages_seq = L * nkv * PagedKVCache::pages_for(slots_per_row, P);
  if (trained_dmc) {
    DecoderOptions co = o;
    co.max_seqs = o_.calibrate;
    co.n_pages = o_.calibrate * L * nkv * PagedKVCache::pages_for(ctx_ + 2, P);
    Decoder cd(m_, co);
    int64_t most = 0;
    double slots = 0;
    for (int64_t i = 0; i < o_.calibrate; ++i) {
      cd.prefill(i, prompt(1000003 + i, ctx_));
      at::Tensor sc = cd.slot_counts(i).to(at::kCPU, at::kLong);  // [L, nkv]
      slots += (double)sc.sum().item<int64_t>();
      most = std::max(most, PagedKVCache::pages_for(sc, P).sum().item<int64_t>());
    }
    s.calibrated_cr = (double)o_.calibrate * ctx_ * L * nkv / slots;
    s.pages_seq = (int64_t)std::ceil(most * 1.1) + L * nkv;
    log::info(cat("calibration (dmc, trained decisions): ", o_.calibrate, " prompts of ", ctx_, " tokens, ratio ",
                  s.calibrated_cr, ", at most ", most, " pages a sequence; sized at ", s.pages_seq));
  }
  const int64_t page_bytes = PagedKVCache::page_bytes(P, c.head_dim, dt_);
  const int64_t bytes_seq = s.pages_seq * page_bytes + L * nkv * state_row;
  s.batch = o_.batch == "max" ? budget_bytes_ / bytes_seq : parse_int(o_.batch, "batch");
  DMC_CHECK(s.batch >= 1, "memory budget of ", budget_bytes_, " bytes holds no sequence of ", bytes_seq, " bytes");
  s.n_pages = o_.batch == "max" ? (budget_bytes_ - s.batch * L * nkv * state_row) / page_bytes : s.batch * s.pages_seq;
  return s;
}

// ---- fill every sequence's prompt -----------------------------------------------------------------------------
double DecodeBench::fill(Decoder& dec, const std::vector<int64_t>& seqs, bool synthetic) {
  torch::manual_seed(o_.seed + 2);
  const double t0 = now_s();
  if (synthetic)
    dec.bench_fill(seqs, o_.prompt_len);
  else
    for (int64_t s : seqs) dec.prefill(s, prompt(s, o_.prompt_len));
  sync_device(dev_);
  return now_s() - t0;
}

// ---- time the decode steps, then the step's attention and GEMMs alone -------------------------------------------
DecodeBench::Timing DecodeBench::time(const DecoderOptions& o, bool trained_dmc) {
  const auto& c = m_.config;
  const int64_t B = o.max_seqs, L = c.num_hidden_layers, nkv = c.num_key_value_heads, D = c.head_dim;
  Timing r;
  Decoder dec(m_, o);
  std::vector<int64_t> seqs(B);
  for (int64_t i = 0; i < B; ++i) seqs[i] = i;
  r.synthetic = o_.fill == "synthetic" && !evicts(o.policy) && !trained_dmc;
  r.fill_s = fill(dec, seqs, r.synthetic);
  std::vector<int64_t> ids = random_ids(B, c.vocab_size);
  auto step_greedy = [&] {  // one decode step of the batch, its greedy tokens fed to the next
    at::Tensor am = dec.step(seqs, ids).argmax(-1).cpu();
    ids.assign(am.data_ptr<int64_t>(), am.data_ptr<int64_t>() + B);
  };
  for (int w = 0; w < 2; ++w) step_greedy();  // warm-up: allocator, cuBLAS handles
  r.timed = std::min<int64_t>(o_.steps, o_.new_tokens - 2);
  at::Tensor lens0 = dec.cache().lengths.sum().cpu();
  sync_device(dev_);
  const double t0 = now_s();
  for (int64_t s = 0; s < r.timed; ++s) step_greedy();
  sync_device(dev_);
  const double dt_s = now_s() - t0;
  if (o_.profile_steps > 0 && dev_.is_cuda()) {  // after the timing, at the same batch (a few more steps of context)
    double total = 0;
    std::string prof = kernel_profile(
        [&] {
          for (int64_t s = 0; s < o_.profile_steps; ++s) step_greedy();
        },
        1, 25, &total);
    std::cout << "profile of " << o_.profile_steps << " decode steps (" << cache_policy_name(o.policy) << ", batch "
              << B << "): GPU kernel time per step " << total / o_.profile_steps << " ms\n"
              << prof;
  }
  const double slots_end = dec.cache().lengths.sum().cpu().item<double>();
  const double slots_mid = (lens0.item<double>() + slots_end) / 2;
  const double tokens_end = (double)B * L * nkv * (o_.prompt_len + 2 + r.timed);
  const double weight_bytes = (double)c.num_parameters() * c10::elementSize(dt_);
  r.kv_read = slots_mid * 2 * D * c10::elementSize(dt_);
  r.floor_ms = bw_ > 0 ? 1e3 * (weight_bytes + r.kv_read) / bw_ : 0;
  r.step_ms = 1e3 * dt_s / r.timed;
  r.achieved_cr = tokens_end / slots_end;
  r.kv_bytes =
      (double)(dec.cache().n_pages() - dec.cache().free_pages()) * PagedKVCache::page_bytes(o.page_size, D, dt_);
  r.state_bytes = (double)dec.state_bytes();
  r.kernels = dec.using_kernels();
  // where the step's time goes: the paged attention of all layers alone, on the final state
  {
    at::Tensor seq_t = at::tensor(seqs, at::kLong).to(dev_);
    at::Tensor q = at::randn({B, c.num_attention_heads, D}, at::TensorOptions().dtype(dt_).device(dev_));
    const int64_t maxlen = dec.cache().lengths.max().cpu().item<int64_t>() + 1;
    const double scale = 1.0 / std::sqrt((double)D);
    for (int64_t l = 0; l < L; ++l) paged_attention(q, dec.cache(), l, seq_t, maxlen, scale, true);
    sync_device(dev_);
    const double ta = now_s();
    const int reps = 3;
    for (int rep = 0; rep < reps; ++rep)
      for (int64_t l = 0; l < L; ++l) paged_attention(q, dec.cache(), l, seq_t, maxlen, scale, true);
    sync_device(dev_);
    r.attn_ms = 1e3 * (now_s() - ta) / reps;
  }
  // and the weight GEMMs of a step alone (the projections of every layer and the LM head, batch B), with the
  // engine's row padding choices
  {
    GemmRows& g = dec.gemm_rows();
    auto wopt = at::TensorOptions().dtype(dt_).device(dev_);
    at::Tensor x = at::randn({B, c.hidden_size}, wopt);
    at::Tensor mid = at::randn({B, c.intermediate_size}, wopt);
    at::Tensor att = at::randn({B, c.num_attention_heads * D}, wopt);
    auto run = [&] {
      for (int64_t l = 0; l < L; ++l) {
        const auto& Ly = m_.layers[l];
        g.linear(x, Ly.wqkv);
        g.linear(att, Ly.wo);
        g.linear(x, Ly.w_gate_up);
        g.linear(mid, Ly.w_down);
      }
      g.linear(x, m_.lm_head);
    };
    run();
    sync_device(dev_);
    const double tg = now_s();
    for (int rep = 0; rep < 3; ++rep) run();
    sync_device(dev_);
    r.gemm_ms = 1e3 * (now_s() - tg) / 3;
  }
  return r;
}

// ---- one prompt: parallel prefill against token by token --------------------------------------------------------
void DecodeBench::prefill_check(const DecoderOptions& o, nlohmann::json& j) {
  const auto& c = m_.config;
  DecoderOptions po = o;
  po.max_seqs = 2;
  po.n_pages = 2 * c.num_hidden_layers * c.num_key_value_heads * PagedKVCache::pages_for(ctx_ + 2, o.page_size);
  Decoder pd(m_, po);
  auto p = prompt(7, o_.prompt_len);
  pd.prefill(1, p);  // warm-up at the same shape (GEMM heuristics, attention workspace)
  pd.free(1);
  // the median of prefill_repeats timed prefills (one alone varies by ~10% on a GPU)
  std::vector<double> times;
  double t1 = 0;
  for (int64_t rep = 0; rep < std::max<int64_t>(1, o_.prefill_repeats); ++rep) {
    if (rep > 0) pd.free(0);
    sync_device(dev_);
    t1 = now_s();
    pd.prefill(0, p);
    sync_device(dev_);
    times.push_back(1e3 * (now_s() - t1));
  }
  std::sort(times.begin(), times.end());
  const double prefill_ms = times[times.size() / 2];
  j["prefill_ms_min"] = times.front();
  j["prefill_ms_max"] = times.back();
  j["prefill_repeats"] = (int64_t)times.size();
  if (o_.profile_prefill && dev_.is_cuda()) {
    pd.free(0);
    std::cout << "profile of one prefill (" << cache_policy_name(o.policy) << "): "
              << kernel_profile(
                     [&] {
                       pd.prefill(0, p);
                       sync_device(dev_);
                     },
                     1, 20);
  }
  pd.free(1);
  const int64_t n_tbt = std::min(o_.tbt_tokens, o_.prompt_len);
  t1 = now_s();
  for (int64_t i = 0; i < n_tbt; ++i) pd.step({1}, {p[i]});
  sync_device(dev_);
  const double tbt_ms = 1e3 * (now_s() - t1) * o_.prompt_len / n_tbt;
  j["prefill_ms"] = prefill_ms;
  j["token_by_token_ms"] = tbt_ms;
  j["token_by_token_measured_tokens"] = n_tbt;
  j["prefill_speedup"] = tbt_ms / prefill_ms;
}

// ---- all phases and the report ------------------------------------------------------------------------------------
nlohmann::json DecodeBench::run(CachePolicy pol) {
  at::NoGradGuard ng;
  const auto& c = m_.config;
  DecoderOptions o = decoder_options(pol);
  const bool trained_dmc = pol == CachePolicy::Dmc && o.force_cr == 0;  // its own decisions: real prefills
  verify(o, trained_dmc);
  const Sizing s = size(o, trained_dmc);
  o.max_seqs = s.batch;
  o.n_pages = s.n_pages;
  release_cached(dev_);  // the verification's and calibration's blocks back to the driver
  const Timing t = time(o, trained_dmc);
  release_cached(dev_);
  const std::string decisions = pol != CachePolicy::Dmc ? "-"
                                : o.force_cr > 0        ? cat("FORCED cr ", o.force_cr, " (benchmark policy)")
                                                        : "trained";
  nlohmann::json j = {{"policy", cache_policy_name(pol)},
                      {"weights", o_.weights},
                      {"decisions", decisions},
                      {"batch", s.batch},
                      {"prompt_len", o_.prompt_len},
                      {"new_tokens", o_.new_tokens},
                      {"timed_steps", t.timed},
                      {"fill", t.synthetic ? "synthetic" : "prefill"},
                      {"prompts", text_.empty() ? "random tokens" : o_.prompt_src},
                      {"fill_s", t.fill_s},
                      {"ms_per_step", t.step_ms},
                      {"tokens_per_s", s.batch / (t.step_ms * 1e-3)},
                      {"hbm_floor_ms", t.floor_ms},
                      {"step_over_floor", t.floor_ms > 0 ? t.step_ms / t.floor_ms : 0},
                      {"kv_bytes", t.kv_bytes},
                      {"state_bytes", t.state_bytes},
                      {"memory_budget_bytes", budget_bytes_},
                      {"achieved_cr", t.achieved_cr},
                      {"page_size", o.page_size},
                      {"kernels", t.kernels},
                      {"gemm_row_tuning", o.gemm_row_tuning},
                      {"dtype", dtype_name(dt_)},
                      {"copy_bandwidth_GBps", bw_ / 1e9},
                      {"device", dev_.str()}};
  j["attention_ms_per_step"] = t.attn_ms;
  j["gemm_ms_per_step"] = t.gemm_ms;
  j["gemm_tflops"] = t.gemm_ms > 0 ? 2.0 * s.batch * (double)c.num_parameters() / (t.gemm_ms * 1e-3) / 1e12 : 0;
  j["attention_floor_ms"] = bw_ > 0 ? 1e3 * t.kv_read / bw_ : 0;
  if (evicts(pol)) j["budget_slots"] = o.budget;
  if (trained_dmc) j["calibrated_cr"] = s.calibrated_cr;
  if (o_.prefill_check) prefill_check(o, j);
  return j;
}

}  // namespace dmc
