// dmc bench decode: decode throughput of the engine, vanilla against DMC (and the eviction baselines), at equal
// memory: every policy gets the same device memory budget for its cache (pages + per-row state), and either a
// given batch or the largest batch whose sequences all fit at the final context (prompt + new tokens).
//
// Before timing it verifies, on the benchmarked model, that the engine with the CUDA kernels reproduces the engine
// with the reference ops (logits and slot counts over a prefill + steps) and refuses to print speeds otherwise.
//
// With random weights (a --preset shape) DMC has no trained decisions: `--force-cr R` stands in for them (head h
// merges at position t unless (t + h) % R == 0) and every output line says so. The prompt state is then written
// directly into the cache ("synthetic fill": random contents, the slot counts the policy would leave) instead of
// prefilling hundreds of 4k prompts; --fill prefill runs the real prefill instead.
//
// A trained DMC checkpoint (--model, no --force-cr) decides for itself, so its slot counts are only known after a
// prefill: its sequences are always prefilled for real, prompts taken from --text (tokenized with --tokenizer;
// random tokens otherwise, which make an untypical ratio), and "the largest batch" is sized by calibration:
// `calibrate` prompts of the full context (prompt + new tokens) are prefilled, and the most pages any of them
// held, plus 10% and one page per (layer, head) of slack, is what each sequence of the run is given.
//
// Floor: a decode step must read every weight once plus the KV slots in use; bytes over the measured device copy
// bandwidth (read + write bytes per second of a large copy) give the HBM floor printed beside each measurement.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "data/dataset.h"
#include "tokenizer/tokenizer.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/util.h"
#include "config/options.h"
#include "inference/decoder.h"

#ifdef DMC_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace dmc::cli {

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
std::vector<int64_t> random_ids(int64_t n, int64_t vocab) {
  at::Tensor t = at::randint(3, vocab, {n}, at::TensorOptions().dtype(at::kLong)).contiguous();
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}
double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kFloat) - b.to(at::kFloat)).norm() / b.to(at::kFloat).norm()).item<double>();
}
}  // namespace

int cmd_bench(const Args& a) {
  if (a.empty() || a[0] != "decode") {
    if (!a.empty() && (a[0] == "-h" || a[0] == "--help")) {
      std::cout << "usage: dmc bench decode [--model DIR | --preset llama2-7b] [options]\n";
      return 0;
    }
    fail("command line: expected 'dmc bench decode ...'");
  }
  std::string model_dir, preset = "llama2-7b", device = "auto", dtype = "auto", json_path, fill = "synthetic";
  std::string text_path, tok_path, data_dir;
  int64_t calibrate = 8;
  std::vector<std::string> policies = {"vanilla", "dmc"};
  std::string batch = "max";
  int64_t layers = 0, prompt_len = 3840, new_tokens = 256, steps = 0, page_size = 16, force_cr = 0, seed = 0,
          budget_slots = 0;
  double memory_gib = 0, reserve_gib = 6, prefill_check = 1;
  int64_t tbt_tokens = 256, prefill_repeats = 3, profile_prefill = 0, profile_steps = 0,
          graph_max_batch = DecoderOptions{}.graph_max_batch, gemm_row_tuning = 1,
          graph_batch_step = DecoderOptions{}.graph_batch_step;
  OptionTable t("bench decode",
                "dmc bench decode [--model DIR | --preset NAME] [--policy vanilla,dmc] [--force-cr R] ...");
  t.add("model", &model_dir, "model directory (else --preset with random weights)");
  t.add("preset", &preset, "model shape with random weights when no --model is given");
  t.add("num_hidden_layers", &layers, "override the layer count (0 = as the model/preset has it)").min(0);
  t.add("policy", &policies, "comma-separated cache policies: vanilla, dmc, tova, h2o, window")
      .one_of({"vanilla", "dmc", "tova", "h2o", "window"});
  t.add("force_cr", &force_cr, "dmc with random weights: forced decisions at this compression ratio (benchmark only)")
      .min(0);
  t.add("budget", &budget_slots, "tova/h2o/window: slots per head (0 = context / force_cr)").min(0);
  t.add("batch", &batch, "sequences decoding together, or 'max' = the largest batch the memory budget holds");
  t.add("prompt_len", &prompt_len, "prompt tokens per sequence").min(1);
  t.add("new_tokens", &new_tokens, "tokens generated per sequence (the context is prompt_len + new_tokens)").min(1);
  t.add("steps", &steps, "timed decode steps (0 = new_tokens)").min(0);
  t.add("page_size", &page_size, "tokens per cache page").min(1);
  t.add("memory_gib", &memory_gib, "cache memory budget in GiB, equal for every policy (0 = free memory - reserve)")
      .min(0);
  t.add("reserve_gib", &reserve_gib, "device memory left for activations and logits when memory_gib is 0").min(0);
  t.add("fill", &fill, "synthetic (random prompt state with the policy's slot counts) or prefill (real prefills)")
      .one_of({"synthetic", "prefill"});
  t.add("prefill_check", &prefill_check,
        "1: also time the parallel prefill of one prompt_len prompt against token-by-token decoding")
      .min(0)
      .max(1);
  t.add("prefill_repeats", &prefill_repeats, "timed prefills of the prefill check (the median is reported)").min(1);
  t.add("profile_prefill", &profile_prefill, "1: print the GPU kernels of one prefill by total time (kineto)");
  t.add("graph_max_batch", &graph_max_batch, "decode steps of up to this many sequences run as CUDA graphs").min(0);
  t.add("graph_batch_step", &graph_batch_step,
        "graphs per batch bucket: 1, 2, 4, ... then multiples of this (1: exact sizes)")
      .min(1);
  t.add("gemm_row_tuning", &gemm_row_tuning, "1: pad the decode GEMMs' rows to the fastest timed size (0: as is)");
  t.add("profile_steps", &profile_steps,
        "N > 0: print the GPU kernels of N timed-batch decode steps by total time (kineto)")
      .min(0);
  t.add("tbt_tokens", &tbt_tokens,
        "token-by-token tokens timed for the prefill comparison (extrapolated to prompt_len)")
      .min(1);
  t.add("text", &text_path, "prompts are windows of this UTF-8 text (with --tokenizer); else random tokens");
  t.add("data", &data_dir, "prompts are windows of this `dmc data prepare` directory's valid split (with --tokenizer)");
  t.add("tokenizer", &tok_path, "SentencePiece tokenizer.model for --text / --data");
  t.add("calibrate", &calibrate, "trained DMC, --batch max: full-context prompts prefilled to size the batch").min(1);
  t.add("device", &device, "cuda, cpu or auto");
  t.add("dtype", &dtype, "bf16, fp16, fp32 or auto");
  t.add("seed", &seed, "weight and token seed");
  t.add("json", &json_path, "append one JSON line per policy to this file");
  t.parse(Args(a.begin() + 1, a.end()));
  log::info(t.to_yaml());
  if (batch != "max")
    DMC_CHECK(parse_int(batch, "batch") >= 1, "batch: expected a positive integer or 'max', got '", batch, "'");
  auto [dev, dt] = resolve_runtime(device, dtype);
  const int64_t ctx = prompt_len + new_tokens;
  if (steps <= 0) steps = new_tokens;
  DMC_CHECK(steps <= new_tokens, "steps (", steps, ") must not exceed new_tokens (", new_tokens, ")");
  Llama model = [&] {
    if (!model_dir.empty()) return Llama::load(model_dir, dt, dev);
    LlamaConfig c = LlamaConfig::preset(preset);
    if (layers) c.num_hidden_layers = layers;
    c.max_position_embeddings = std::max<int64_t>(c.max_position_embeddings, ctx + 1);
    return Llama::random(c, (uint64_t)seed, dt, dev);
  }();
  const auto& c = model.config;
  // the positions fed are 0 .. ctx - 2 (the last new token is sampled, never fed): ctx tokens fit when ctx <= max
  DMC_CHECK(ctx <= c.max_position_embeddings, "prompt_len + new_tokens (", ctx, ") exceeds max_position_embeddings (",
            c.max_position_embeddings, ")");
  const bool random_weights = model_dir.empty();
  DMC_CHECK(text_path.empty() || data_dir.empty(), "give --text or --data, not both");
  const std::string prompt_src = !text_path.empty() ? text_path : data_dir;
  DMC_CHECK(prompt_src.empty() == tok_path.empty(),
            "--text / --data and --tokenizer go together (prompts from a text)");
  DMC_CHECK(fill == "synthetic" || fill == "prefill", "fill: expected synthetic or prefill, got '", fill, "'");
  DMC_CHECK(calibrate >= 1, "calibrate: must be at least 1, got ", calibrate);
  std::vector<int64_t> text_ids;
  if (!prompt_src.empty()) {
    auto tok = Tokenizer::load(tok_path);
    tok.check_model_vocab(c.vocab_size, model_dir.empty() ? "--preset " + preset : model_dir + "/config.json");
    text_ids = !text_path.empty() ? tok.encode(read_file(text_path, "text"), false)
                                  : data::read_split_tokens(data_dir, "valid", tok.fingerprint(), c.vocab_size);
    DMC_CHECK((int64_t)text_ids.size() > ctx, prompt_src, ": ", text_ids.size(),
              " tokens, need more than the context (prompt_len + new_tokens = ", ctx, ")");
  }
  // prompt i: a window of the text (consecutive windows, wrapping), or random tokens
  auto prompt = [&](int64_t i, int64_t len) {
    if (text_ids.empty()) return random_ids(len, c.vocab_size);
    const int64_t n_win = std::max<int64_t>(1, ((int64_t)text_ids.size() - len) / len);
    const int64_t b = (i % n_win) * len;
    return std::vector<int64_t>(text_ids.begin() + b, text_ids.begin() + b + len);
  };
  at::NoGradGuard ng;
  const double bw = dev.is_cuda() ? copy_bandwidth(dev) : 0;
  const int64_t budget_bytes = memory_gib > 0 ? (int64_t)(memory_gib * (1LL << 30))
                                              : free_device_bytes(dev) - (int64_t)(reserve_gib * (1LL << 30));
  DMC_CHECK(budget_bytes > 0, "memory budget: nothing left after the model and the reserve (", reserve_gib, " GiB)");
  const int64_t L = c.num_hidden_layers, nkv = c.num_key_value_heads, D = c.head_dim;
  const int64_t page_bytes = PagedKVCache::page_bytes(page_size, D, dt);
  const double weight_bytes = (double)c.num_parameters() * c10::elementSize(dt);
  AppendFile jout;
  if (!json_path.empty()) jout.open(json_path);

  for (const std::string& pol_name : policies) {
    const CachePolicy pol = parse_cache_policy(pol_name, "policy");  // the one parse of each name
    DecoderOptions o;
    o.policy = pol;
    o.page_size = page_size;
    o.graph_max_batch = graph_max_batch;
    o.graph_batch_step = graph_batch_step;
    o.gemm_row_tuning = gemm_row_tuning != 0;
    if (pol == CachePolicy::Dmc && random_weights) {
      DMC_CHECK(force_cr > 0, "policy dmc with random weights needs --force-cr R (no trained decisions exist)");
      o.force_cr = force_cr;
    } else if (pol == CachePolicy::Dmc && force_cr > 0) {
      o.force_cr = force_cr;
    }
    const bool evicting = evicts(pol);
    const bool trained_dmc =
        pol == CachePolicy::Dmc && o.force_cr == 0;  // its own decisions: real prefills, calibrated batch
    if (evicting) {
      DMC_CHECK(budget_slots > 0 || force_cr > 0, "policy ", pol_name,
                " needs --budget or --force-cr (budget = context / R)");
      o.budget = budget_slots > 0 ? budget_slots : (ctx + force_cr - 1) / force_cr;
    }
    // ---- verify: kernels against the reference ops on this model ----------------------------------------------
    if (decode_kernels_available(dev, c.head_dim) && !evicting) {
      DecoderOptions vo = o;
      vo.max_seqs = 2;
      vo.n_pages = L * 2 * nkv * PagedKVCache::pages_for(161, page_size);
      DecoderOptions vr = vo;
      vr.use_kernels = false;
      Decoder kd(model, vo), rd(model, vr);
      torch::manual_seed(seed + 1);
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
      const bool close_call = trained_dmc && dt != at::kFloat;
      const bool same_slots = slot_diff == 0 || (close_call && slot_diff <= 0.02);
      const double tol = dt == at::kFloat ? 1e-4 : 5e-2;
      log::info(cat("verify (", pol_name, "): kernels vs reference ops, 2 sequences x 12 steps: logits relative error ",
                    worst, " (tolerance ", tol, "), slot counts ",
                    slot_diff == 0 ? "equal" : cat("differ by ", slot_diff * 100, "%"),
                    close_call ? " (trained decisions in low precision: up to 2% allowed)" : ""));
      if (!(worst <= tol) || !same_slots)
        fail("verification failed (", pol_name, "): the CUDA kernels differ from the reference ops");
    }
    // ---- size the batch at equal memory -----------------------------------------------------------------------
    int64_t slots_per_row = ctx + 1;
    if (pol == CachePolicy::Dmc && o.force_cr > 0) slots_per_row = 2 + (ctx + o.force_cr - 1) / o.force_cr;
    if (evicting) slots_per_row = o.budget + 1;
    const int64_t state_row = Decoder::state_bytes_per_row(c, pol, o.budget, page_size, dt);
    int64_t pages_seq = L * nkv * PagedKVCache::pages_for(slots_per_row, page_size);
    double calibrated_cr = 0;
    if (trained_dmc) {
      DecoderOptions co = o;
      co.max_seqs = calibrate;
      co.n_pages = calibrate * L * nkv * PagedKVCache::pages_for(ctx + 2, page_size);
      Decoder cd(model, co);
      int64_t most = 0;
      double slots = 0;
      for (int64_t s = 0; s < calibrate; ++s) {
        cd.prefill(s, prompt(1000003 + s, ctx));
        at::Tensor sc = cd.slot_counts(s).to(at::kCPU, at::kLong);  // [L, nkv]
        slots += (double)sc.sum().item<int64_t>();
        most = std::max(most, PagedKVCache::pages_for(sc, page_size).sum().item<int64_t>());
      }
      calibrated_cr = (double)calibrate * ctx * L * nkv / slots;
      pages_seq = (int64_t)std::ceil(most * 1.1) + L * nkv;
      log::info(cat("calibration (", pol_name, ", trained decisions): ", calibrate, " prompts of ", ctx,
                    " tokens, ratio ", calibrated_cr, ", at most ", most, " pages a sequence; sized at ", pages_seq));
    }
    const int64_t bytes_seq = pages_seq * page_bytes + L * nkv * state_row;
    int64_t B = batch == "max" ? budget_bytes / bytes_seq : parse_int(batch, "batch");
    DMC_CHECK(B >= 1, "memory budget of ", budget_bytes, " bytes holds no sequence of ", bytes_seq, " bytes");
    o.max_seqs = B;
#ifdef DMC_WITH_CUDA
    if (dev.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();  // the verification's blocks back to the driver
#endif
    o.n_pages = batch == "max" ? (budget_bytes - B * L * nkv * state_row) / page_bytes : B * pages_seq;
    nlohmann::json j;
    {
      Decoder dec(model, o);
      std::vector<int64_t> seqs(B);
      for (int64_t i = 0; i < B; ++i) seqs[i] = i;
      torch::manual_seed(seed + 2);
      const double tf0 = now_s();
      const bool synthetic = fill == "synthetic" && !evicting && !trained_dmc;
      if (synthetic) {
        dec.bench_fill(seqs, prompt_len);
      } else {
        for (int64_t s : seqs) dec.prefill(s, prompt(s, prompt_len));
      }
      sync_device(dev);
      const double fill_s = now_s() - tf0;
      std::vector<int64_t> ids = random_ids(B, c.vocab_size);
      auto step_greedy = [&] {  // one decode step of the batch, its greedy tokens fed to the next
        at::Tensor am = dec.step(seqs, ids).argmax(-1).cpu();
        ids.assign(am.data_ptr<int64_t>(), am.data_ptr<int64_t>() + B);
      };
      for (int w = 0; w < 2; ++w) step_greedy();  // warm-up: allocator, cuBLAS handles
      const int64_t timed = std::min<int64_t>(steps, new_tokens - 2);
      at::Tensor lens0 = dec.cache().lengths.sum().cpu();
      sync_device(dev);
      const double t0 = now_s();
      for (int64_t s = 0; s < timed; ++s) step_greedy();
      sync_device(dev);
      const double dt_s = now_s() - t0;
      if (profile_steps > 0 && dev.is_cuda()) {  // after the timing, at the same batch (a few more steps of context)
        double total = 0;
        std::string prof = kernel_profile(
            [&] {
              for (int64_t s = 0; s < profile_steps; ++s) step_greedy();
            },
            1, 25, &total);
        std::cout << "profile of " << profile_steps << " decode steps (" << pol_name << ", batch " << B
                  << "): GPU kernel time per step " << total / profile_steps << " ms\n"
                  << prof;
      }
      const double slots_end = dec.cache().lengths.sum().cpu().item<double>();
      const double slots_mid = (lens0.item<double>() + slots_end) / 2;
      const double tokens_end = (double)B * L * nkv * (prompt_len + 2 + timed);
      const double kv_read = slots_mid * 2 * D * c10::elementSize(dt);
      const double floor_ms = bw > 0 ? 1e3 * (weight_bytes + kv_read) / bw : 0;
      const double step_ms = 1e3 * dt_s / timed;
      const int64_t pages_used = dec.cache().n_pages() - dec.cache().free_pages();
      // where the step's time goes: the paged attention of all layers alone, on the final state
      double attn_ms = 0;
      {
        at::Tensor seq_t = at::tensor(seqs, at::kLong).to(dev);
        at::Tensor q = at::randn({B, c.num_attention_heads, D}, at::TensorOptions().dtype(dt).device(dev));
        int64_t maxlen = 1;
        {
          at::Tensor lm = dec.cache().lengths.max().cpu();
          maxlen = lm.item<int64_t>() + 1;
        }
        const double scale = 1.0 / std::sqrt((double)D);
        for (int64_t l = 0; l < L; ++l) paged_attention(q, dec.cache(), l, seq_t, maxlen, scale, true);
        sync_device(dev);
        const double ta = now_s();
        const int reps = 3;
        for (int rep = 0; rep < reps; ++rep)
          for (int64_t l = 0; l < L; ++l) paged_attention(q, dec.cache(), l, seq_t, maxlen, scale, true);
        sync_device(dev);
        attn_ms = 1e3 * (now_s() - ta) / reps;
      }
      // and the weight GEMMs of a step alone (the projections of every layer and the LM head, batch B), with the
      // engine's row padding choices
      double gemm_ms = 0;
      {
        GemmRows& g = dec.gemm_rows();
        auto wopt = at::TensorOptions().dtype(dt).device(dev);
        at::Tensor x = at::randn({B, c.hidden_size}, wopt);
        at::Tensor mid = at::randn({B, c.intermediate_size}, wopt);
        at::Tensor att = at::randn({B, c.num_attention_heads * D}, wopt);
        auto run = [&] {
          for (int64_t l = 0; l < L; ++l) {
            const auto& Ly = model.layers[l];
            g.linear(x, Ly.wqkv);
            g.linear(att, Ly.wo);
            g.linear(x, Ly.w_gate_up);
            g.linear(mid, Ly.w_down);
          }
          g.linear(x, model.lm_head);
        };
        run();
        sync_device(dev);
        const double tg = now_s();
        for (int rep = 0; rep < 3; ++rep) run();
        sync_device(dev);
        gemm_ms = 1e3 * (now_s() - tg) / 3;
      }
      j = {{"policy", pol_name},
           {"weights", random_weights ? "random (" + preset + ")" : model_dir},
           {"decisions", pol == CachePolicy::Dmc
                             ? (o.force_cr > 0 ? cat("FORCED cr ", o.force_cr, " (benchmark policy)") : "trained")
                             : "-"},
           {"batch", B},
           {"prompt_len", prompt_len},
           {"new_tokens", new_tokens},
           {"timed_steps", timed},
           {"fill", synthetic ? "synthetic" : "prefill"},
           {"prompts", text_ids.empty() ? "random tokens" : prompt_src},
           {"fill_s", fill_s},
           {"ms_per_step", step_ms},
           {"tokens_per_s", B / (dt_s / timed)},
           {"hbm_floor_ms", floor_ms},
           {"step_over_floor", floor_ms > 0 ? step_ms / floor_ms : 0},
           {"kv_bytes", (double)pages_used * page_bytes},
           {"state_bytes", dec.state_bytes()},
           {"memory_budget_bytes", budget_bytes},
           {"achieved_cr", tokens_end / slots_end},
           {"page_size", page_size},
           {"kernels", dec.using_kernels()},
           {"gemm_row_tuning", o.gemm_row_tuning},
           {"dtype", dtype_name(dt)},
           {"copy_bandwidth_GBps", bw / 1e9},
           {"device", dev.str()}};
      j["attention_ms_per_step"] = attn_ms;
      j["gemm_ms_per_step"] = gemm_ms;
      j["gemm_tflops"] = gemm_ms > 0 ? 2.0 * B * (double)c.num_parameters() / (gemm_ms * 1e-3) / 1e12 : 0;
      j["attention_floor_ms"] = bw > 0 ? 1e3 * kv_read / bw : 0;
    }
#ifdef DMC_WITH_CUDA
    if (dev.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
    if (evicting) j["budget_slots"] = o.budget;
    if (trained_dmc) j["calibrated_cr"] = calibrated_cr;
    // ---- one prompt: parallel prefill against token by token ------------------------------------------------
    if (prefill_check > 0) {
      DecoderOptions po = o;
      po.max_seqs = 2;
      po.n_pages = 2 * L * nkv * PagedKVCache::pages_for(ctx + 2, page_size);
      Decoder pd(model, po);
      auto p = prompt(7, prompt_len);
      pd.prefill(1, p);  // warm-up at the same shape (GEMM heuristics, attention workspace)
      pd.free(1);
      // the median of prefill_repeats timed prefills (one alone varies by ~10% on a GPU)
      std::vector<double> times;
      double t1 = 0;
      for (int64_t rep = 0; rep < std::max<int64_t>(1, prefill_repeats); ++rep) {
        if (rep > 0) pd.free(0);
        sync_device(dev);
        t1 = now_s();
        pd.prefill(0, p);
        sync_device(dev);
        times.push_back(1e3 * (now_s() - t1));
      }
      std::sort(times.begin(), times.end());
      const double prefill_ms = times[times.size() / 2];
      j["prefill_ms_min"] = times.front();
      j["prefill_ms_max"] = times.back();
      j["prefill_repeats"] = (int64_t)times.size();
      if (profile_prefill > 0 && dev.is_cuda()) {
        pd.free(0);
        std::cout << "profile of one prefill (" << pol_name << "): "
                  << kernel_profile(
                         [&] {
                           pd.prefill(0, p);
                           sync_device(dev);
                         },
                         1, 20);
      }
      pd.free(1);
      const int64_t n_tbt = std::min(tbt_tokens, prompt_len);
      t1 = now_s();
      for (int64_t i = 0; i < n_tbt; ++i) pd.step({1}, {p[i]});
      sync_device(dev);
      const double tbt_ms = 1e3 * (now_s() - t1) * prompt_len / n_tbt;
      j["prefill_ms"] = prefill_ms;
      j["token_by_token_ms"] = tbt_ms;
      j["token_by_token_measured_tokens"] = n_tbt;
      j["prefill_speedup"] = tbt_ms / prefill_ms;
    }
    std::cout << j.dump() << std::endl;
    jout.append(j.dump() + "\n");
  }
  return 0;
}

}  // namespace dmc::cli
