// CUDA decode kernels against the ATen reference ops (skipped without a GPU): on fresh random inputs, the fused
// DMC update + cache write and the split-K paged attention, over many steps of several sequences that join at
// different times, vanilla and DMC, MHA and GQA, bf16 and fp32, pages of 1 and 16 slots; then the whole engine
// (prefill + steps of a small model) with kernels against the same engine with the reference ops.
//
// Tolerances: the kernel reproduces the reference's roundings of the DMC decision and weight (so decisions and
// lengths must agree exactly); sums and softmax are fp32 in both but in another order, so values agree to a few
// fp32 ulps, plus one ulp of the cache dtype where a value is rounded to it (bf16: 2^-8 relative).
#include <torch/torch.h>

#include <set>

#include "helpers.h"
#include "ops/dmc.h"
#include "ops/decode_ops.h"
#include "inference/decoder.h"
#include "inference/perplexity.h"
#include "model/llama.h"

using namespace dmc;
using namespace dmc::test;

namespace {
// A 2-layer GQA model (8 heads, 2 KV heads, head_dim 64) in bf16 on the GPU; DMC when dmc_init > 0 (window 4).
Llama gpu_model(uint64_t seed, double init_std, double dmc_init) {
  LlamaConfig c = LlamaConfig::preset("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = 211;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  c.hidden_size = 512;
  auto m = Llama::random(c, seed, at::kBFloat16, at::kCUDA, init_std);
  if (dmc_init > 0) {
    m.config.dmc.enabled = true;
    m.config.dmc.init_val = dmc_init;
    m.config.dmc.window = 4;
  }
  return m;
}
}  // namespace

TEST_CASE("CUDA: decode_update and paged_attention kernels equal the reference ops over many steps",
          "[gpu][inference]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  struct Case {
    int64_t nh, nkv, D, P;
    bool dmc;
    at::ScalarType dt;
  };
  std::vector<Case> cases = {{8, 2, 128, 16, true, at::kBFloat16},
                             {8, 2, 128, 16, false, at::kBFloat16},
                             {4, 4, 64, 1, true, at::kFloat},
                             {32, 32, 128, 16, true, at::kBFloat16},
                             {8, 1, 128, 4, true, at::kHalf},
                             {9, 3, 64, 16, true, at::kBFloat16},  // SmolLM2's head_dim 64 in groups of 3
                             {9, 3, 64, 16, false, at::kBFloat16}};
  for (const auto& cs : cases) {
    DYNAMIC_SECTION("nh " << cs.nh << " nkv " << cs.nkv << " D " << cs.D << " P " << cs.P
                          << (cs.dmc ? " dmc " : " vanilla ") << c10::toString(cs.dt)) {
      const int64_t L = 2, S = 6, steps = 70, W = 5, D = cs.D, nkv = cs.nkv, nh = cs.nh, maxpos = 256;
      const double c = 5.0;
      PagedCacheOptions po;
      po.n_layers = L;
      po.max_seqs = S;
      po.n_kv_heads = nkv;
      po.head_dim = D;
      po.page_size = cs.P;
      po.n_pages = L * S * nkv * (maxpos / cs.P);
      po.max_slots_per_row = maxpos;
      po.dtype = cs.dt;
      po.device = at::kCUDA;
      PagedKVCache ca(po), cb(po);
      DmcState sa = DmcState::create(L * S * nkv, D, W, cs.dt, at::kCUDA),
               sb = DmcState::create(L * S * nkv, D, W, cs.dt, at::kCUDA);
      auto fopt = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
      at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, D, 2, fopt) / (double)D);
      auto [cos, sin] = rope_cos_sin(inv, at::arange(maxpos, fopt.dtype(at::kLong)));
      cos = cos.contiguous();
      sin = sin.contiguous();
      DecodeUpdateParams p;
      p.n_heads = nh;
      p.n_kv_heads = nkv;
      p.head_dim = D;
      p.dmc = cs.dmc;
      p.init_val = c;
      p.window = W;
      torch::manual_seed(11);
      std::vector<int64_t> pos(S, 0);
      double worst_q = 0, worst_o = 0;
      for (int64_t step = 0; step < steps; ++step) {
        // sequence s joins at step 3 s; a random subset of the joined ones decodes this step
        std::vector<int64_t> seqs;
        for (int64_t s = 0; s < S; ++s)
          if (step >= 3 * s && (torch::randint(0, 4, {1}).item<int64_t>() > 0 || pos[s] == 0)) seqs.push_back(s);
        const int64_t n = (int64_t)seqs.size();
        std::vector<int64_t> ps;
        std::vector<int64_t> forced;
        for (int64_t s : seqs) {
          ps.push_back(pos[s]);
          forced.push_back(pos[s] == 0 || torch::randint(0, 25, {1}).item<int64_t>() == 0);  // some document starts
        }
        at::Tensor seq_t = at::tensor(seqs, at::kLong).to(at::kCUDA), pos_t = at::tensor(ps, at::kLong).to(at::kCUDA);
        at::Tensor forced_t = at::tensor(forced, at::kLong).to(at::kCUDA).to(at::kBool);
        at::Tensor qkv = at::randn({n, (nh + 2 * nkv) * D}, fopt);
        if (cs.dmc) {
          // k[D-1] away from the threshold c (decisions must not hinge on a rounding), q[D-1] of any size
          at::Tensor kv = qkv.narrow(1, nh * D, nkv * D).view({n, nkv, D});
          at::Tensor sign = at::randint(0, 2, {n, nkv}, fopt) * 2 - 1;
          kv.select(-1, D - 1).copy_(c + sign * (0.5 + at::rand({n, nkv}, fopt)));
        }
        qkv = qkv.to(cs.dt);
        for (int64_t l = 0; l < L; ++l) {
          p.layer = l;
          at::Tensor qa = decode_update_ref(qkv, seq_t, pos_t, forced_t, cos, sin, p, sa, ca);
          at::Tensor qb = decode_update(qkv, seq_t, pos_t, forced_t, cos, sin, p, sb, cb, true);
          worst_q = std::max(worst_q, rel_err(qb, qa));
          REQUIRE(at::equal(ca.lengths, cb.lengths));
          int64_t maxlen = 1;
          for (int64_t s : seqs) maxlen = std::max(maxlen, pos[s] + 1);
          at::Tensor oa = paged_attention_ref(qa, ca, l, seq_t, maxlen, 1.0 / std::sqrt((double)D));
          at::Tensor ob = paged_attention(qb, cb, l, seq_t, maxlen, 1.0 / std::sqrt((double)D), true);
          worst_o = std::max(worst_o, rel_err(ob, oa));
        }
        for (int64_t s : seqs) ++pos[s];
        // a finished sequence: free it in both and start it over
        if (step == 40) {
          ca.free_seq(1);
          cb.free_seq(1);
          pos[1] = 0;
        }
      }
      const double ulp = cs.dt == at::kFloat ? 1e-5 : cs.dt == at::kHalf ? 2e-3 : 8e-3;
      INFO("worst q rel " << worst_q << " worst attention rel " << worst_o);
      CHECK(worst_q <= ulp);
      CHECK(worst_o <= 2 * ulp);
      CHECK(ca.free_pages() == cb.free_pages());
      CHECK(cb.exhaustion_count() == 0);
      if (cs.dmc) {
        CHECK(at::equal(sa.group, sb.group));
        CHECK(rel_err(sb.acc, sa.acc) < 1e-5);
        CHECK(at::equal(sb.ring_kv, sa.ring_kv));
        CHECK(at::equal(sb.ring_w, sa.ring_w));
        // both merged and appended
        const double slots = ca.lengths.sum().item<double>();
        int64_t fed = 0;
        for (int64_t s = 0; s < S; ++s) fed += pos[s];
        CHECK(slots < 0.9 * fed * L * nkv);
      }
      // the cache contents, row by row (pages differ: the kernel pops them in another order)
      std::vector<int64_t> rows;
      for (int64_t r = 0; r < L * S * nkv; ++r) rows.push_back(r);
      auto [ka, va, na] = ca.gather(rows);
      auto [kb, vb, nb] = cb.gather(rows);
      CHECK(at::equal(na, nb));
      CHECK(rel_err(kb, ka) <= ulp);
      CHECK(rel_err(vb, va) <= ulp);
      std::cout << "[gpu-decode-kernels] " << nh << "/" << nkv << " D" << D << " P" << cs.P
                << (cs.dmc ? " dmc " : " vanilla ") << c10::toString(cs.dt) << ": q rel " << worst_q
                << ", attention rel " << worst_o << std::endl;
    }
  }
}

TEST_CASE("CUDA: the engine with kernels equals the engine with reference ops, prefill and steps", "[gpu][inference]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  for (bool use_dmc : {false, true}) {
    DYNAMIC_SECTION((use_dmc ? "dmc" : "vanilla")) {
      auto m = gpu_model(21, 0.2, use_dmc ? 0.2 : 0.0);
      DecoderOptions o;
      o.max_seqs = 3;
      o.page_size = 8;
      DecoderOptions oref = o;
      oref.use_kernels = false;
      Decoder a(m, oref), b(m, o);
      REQUIRE(b.using_kernels());
      torch::manual_seed(2);
      std::vector<std::vector<int64_t>> prompts;
      for (int s = 0; s < 3; ++s) {
        std::vector<int64_t> p;
        for (int i = 0; i < 20 + 17 * s; ++i) p.push_back(torch::randint(0, 211, {1}).item<int64_t>());
        prompts.push_back(p);
      }
      std::vector<int64_t> next;
      for (int s = 0; s < 3; ++s) {
        at::Tensor la = a.prefill(s, prompts[s]), lb = b.prefill(s, prompts[s]);
        CHECK(rel_err(lb, la) < 1e-6);  // the prefill is the same code in both
        next.push_back(la.argmax().item<int64_t>());
      }
      double worst = 0;
      int64_t agree = 0, total = 0;
      for (int step = 0; step < 30; ++step) {
        at::Tensor la = a.step({0, 1, 2}, next), lb = b.step({0, 1, 2}, next);
        worst = std::max(worst, rel_err(lb.to(at::kFloat), la.to(at::kFloat)));
        at::Tensor ia = la.argmax(-1).cpu(), ib = lb.argmax(-1).cpu();
        agree += (ia == ib).sum().item<int64_t>();
        total += 3;
        for (int s = 0; s < 3; ++s) next[s] = ia[s].item<int64_t>();  // both continue with the reference's tokens
      }
      for (int s = 0; s < 3; ++s) CHECK(at::equal(a.slot_counts(s), b.slot_counts(s)));
      INFO("worst logits rel " << worst << ", argmax agreement " << agree << "/" << total);
      CHECK(worst < 0.02);  // bf16 activations through two layers
      CHECK(agree >= total - 2);
      std::cout << "[gpu-engine] " << (use_dmc ? "dmc" : "vanilla") << ": logits rel " << worst << ", argmax " << agree
                << "/" << total << std::endl;
    }
  }
}

TEST_CASE("CUDA: fused DMC pooling kernels equal the ATen pooling, values and gradients", "[gpu][dmc]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  // windows in each kernel instance (up to 16, 32, 64), rows read as float4 (X % 4 == 0: 40, and SmolLM2's 2 x 64)
  // and one float at a time (42)
  for (auto [W, X] : {std::pair<int64_t, int64_t>{1, 40}, {4, 40}, {12, 40}, {12, 128}, {12, 42}, {20, 40}, {40, 40}}) {
    DYNAMIC_SECTION("window " << W << " row " << X) {
      const int64_t B = 2, T = 333, H = 3;
      torch::manual_seed(5 + W);
      auto f = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
      at::Tensor x = at::randn({B, T, H, X}, f), w = at::rand({B, T, H}, f) + 0.05;
      at::Tensor b = at::rand({B, T, H}, f);
      b.narrow(1, 0, 1).zero_();
      b.narrow(1, 100, 1).zero_();                                  // a document start
      b = at::where(at::rand_like(b) < 0.2, at::zeros_like(b), b);  // hard zeros (the product must not divide)
      at::Tensor R = at::randn({B, T, H, X}, f);
      // 0: the ATen form; 1: the tiled kernels (shared-memory rows); 2: the row-per-warp kernels (DMC_POOL_TILED=0)
      std::vector<at::Tensor> outs, gx, gw, gb;
      const char* outer = std::getenv("DMC_POOL_TILED");  // kept: a run may have set it for the whole process
      const std::string saved = outer ? outer : "";
      for (int k = 0; k < 3; ++k) {
        if (k == 2) setenv("DMC_POOL_TILED", "0", 1);
        at::Tensor xx = x.clone().requires_grad_(true), ww = w.clone().requires_grad_(true),
                   bb = b.clone().requires_grad_(true);
        at::Tensor o = k == 0 ? dmc_pool_ref(xx, ww, bb, W) : dmc_pool(xx, ww, bb, W);
        (o * R).sum().backward();
        outs.push_back(o.detach());
        gx.push_back(xx.grad());
        gw.push_back(ww.grad());
        gb.push_back(bb.grad().defined() ? bb.grad() : at::zeros_like(bb));  // W = 1: b takes no part
        if (outer)
          setenv("DMC_POOL_TILED", saved.c_str(), 1);
        else
          unsetenv("DMC_POOL_TILED");
      }
      for (int k = 1; k < 3; ++k) {
        const char* form = k == 1 ? "tiled" : "per-warp";
        INFO(form << ": out " << rel_err(outs[k], outs[0]) << " dx " << rel_err(gx[k], gx[0]) << " dw "
                  << rel_err(gw[k], gw[0]) << " db " << rel_err(gb[k], gb[0]));
        CHECK(rel_err(outs[k], outs[0]) < 1e-5);
        CHECK(rel_err(gx[k], gx[0]) < 1e-5);
        if (W > 1)
          CHECK(rel_err(gw[k], gw[0]) < 1e-4);
        else {
          // W = 1: out = x and dw = (x.g - g.x) / w is 0 up to the rounding of the two cancelling terms
          const double scale = ((x * R).sum(-1).abs() / w).max().item<double>();
          CHECK(gw[k].abs().max().item<double>() < 1e-5 * scale);
        }
        if (W > 1) CHECK(rel_err(gb[k], gb[0]) < 1e-4);
        std::cout << "[gpu-dmc-pool] " << form << " W " << W << " X " << X << ": out " << rel_err(outs[k], outs[0])
                  << " dx " << rel_err(gx[k], gx[0]) << " dw " << rel_err(gw[k], gw[0]) << " db "
                  << rel_err(gb[k], gb[0]) << std::endl;
      }
    }
  }
}

// bf16 on the GPU: the parallel eval-mode forward and the incremental engine round at different places (batched
// against one-row GEMMs, bf16 pooled keys against fp32 running sums, flash against split-K attention), each
// rounding worth 2^-8 relative. Logits then differ by about 1% of their scale and a decision whose logit sits within
// a rounding of the threshold can flip; averaged over hundreds of scored tokens the perplexities stay within 2%
// and the achieved ratios within 3%. (Exact agreement, 1e-4, is tested in fp32 on the CPU.)
TEST_CASE("CUDA bf16: eval ppl parallel and incremental agree within bf16 tolerance, DMC and vanilla",
          "[gpu][inference]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  for (bool use_dmc : {false, true}) {
    DYNAMIC_SECTION((use_dmc ? "dmc" : "vanilla")) {
      auto m = gpu_model(23, 0.05, use_dmc ? 0.05 : 0.0);
      torch::manual_seed(3);
      at::Tensor t = at::randint(0, 211, {400}, at::TensorOptions().dtype(at::kLong)).contiguous();
      std::vector<int64_t> ids(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + 400);
      PplOptions po;
      po.seq_len = 200;
      po.progress = false;
      auto par = perplexity(m, ids, po);
      po.mode = "incremental";
      auto inc = perplexity(m, ids, po);
      const double dp = std::abs(inc.ppl() - par.ppl()) / par.ppl();
      INFO("ppl parallel " << par.ppl() << " incremental " << inc.ppl() << " cr " << par.cr() << " / " << inc.cr());
      CHECK(dp < 0.02);
      if (use_dmc) {
        CHECK(par.cr() > 1.2);
        CHECK(std::abs(inc.cr() - par.cr()) / par.cr() < 0.03);
      }
      std::cout << "[gpu-ppl-bf16] " << (use_dmc ? "dmc" : "vanilla") << ": parallel " << par.ppl() << " incremental "
                << inc.ppl() << " rel " << dp << " cr " << par.cr() << " / " << inc.cr() << std::endl;
    }
  }
}

TEST_CASE("CUDA graphs of the decode step replay the eager step, batch sizes changing", "[gpu][inference]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  auto m = gpu_model(29, 0.2, 0.2);
  DecoderOptions o;
  o.max_seqs = 6;
  o.page_size = 8;
  DecoderOptions og = o, oe = o;  // graphs per bucket (1, 2, 4, 8, 16, ...) and per exact size
  oe.graph_batch_step = 1;
  o.cuda_graphs = false;
  // the eager engine and the exact-size graphs run the same GEMM shapes (no row padding): equal up to the attention
  // split order. The bucketed graphs run their GEMMs at the bucket's rows, where cuBLAS may take another kernel and
  // round the bf16 outputs differently: equal up to about one bf16 rounding (2^-8 = 3.9e-3).
  o.gemm_row_tuning = oe.gemm_row_tuning = false;
  Decoder a(m, o), b(m, og), e(m, oe);
  torch::manual_seed(9);
  std::vector<int64_t> next;
  for (int s = 0; s < 5; ++s) {
    std::vector<int64_t> p;
    for (int i = 0; i < 10 + 9 * s; ++i) p.push_back(torch::randint(0, 211, {1}).item<int64_t>());
    next.push_back(a.prefill(s, p).argmax().item<int64_t>());
    b.prefill(s, p);
    e.prefill(s, p);
  }
  // 3 sequences, 4, 5, then 2: buckets 4 (shared by 3 and 4, with a padding row for 3), 8 (three padding rows)
  // and 2; each warmed, captured and replayed
  const std::vector<std::vector<int64_t>> phases = {{0, 1, 2}, {0, 1, 2, 3}, {0, 1, 2, 3, 4}, {0, 2}};
  double worst = 0, worst_exact = 0;
  for (int step = 0; step < 32; ++step) {
    const auto& seqs = phases[step / 8];
    std::vector<int64_t> ids;
    for (int64_t s : seqs) ids.push_back(next[s]);
    at::Tensor la = a.step(seqs, ids), lb = b.step(seqs, ids), le = e.step(seqs, ids);
    REQUIRE(lb.size(0) == (int64_t)seqs.size());
    worst = std::max(worst, rel_err(lb.to(at::kFloat), la.to(at::kFloat)));
    worst_exact = std::max(worst_exact, rel_err(le.to(at::kFloat), la.to(at::kFloat)));
    at::Tensor am = la.argmax(-1).cpu();
    CHECK(at::equal(am, lb.argmax(-1).cpu()));
    CHECK(at::equal(am, le.argmax(-1).cpu()));
    for (size_t i = 0; i < seqs.size(); ++i) next[seqs[i]] = am[(int64_t)i].item<int64_t>();
  }
  // the padding rows left the cache and the DMC state alone
  for (int s = 0; s < 5; ++s) {
    CHECK(at::equal(a.slot_counts(s), b.slot_counts(s)));
    CHECK(at::equal(a.slot_counts(s), e.slot_counts(s)));
  }
  CHECK(b.slot_counts(5).sum().item<int64_t>() == 0);
  CHECK(b.graphs_captured() == 3);
  CHECK(e.graphs_captured() == 4);
  CHECK(worst_exact <
        1e-3);  // the graphed step bounds attention by max_position (other split sizes): fp32 sums reorder
  CHECK(worst < 1e-2);
  std::cout << "[gpu-graphs] logits rel " << worst << " (buckets), " << worst_exact << " (exact sizes); graphs "
            << b.graphs_captured() << " / " << e.graphs_captured() << std::endl;
}

// The eviction baselines' step (ATen attention with its weights, then the eviction) captured per batch bucket at a
// bound of budget + 1 slots: the same logits and slots as the eager step. scripts/gpu_retrofit.sh runs this case
// before any task sweep and sets DMC_EVICT_GRAPHS=0 on a machine where it fails.
TEST_CASE("CUDA graphs of the eviction baselines' decode step replay the eager step", "[gpu][inference][evict-graphs]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  auto m = gpu_model(31, 0.2, 0.0);
  for (const char* pol : {"window", "tova", "h2o"}) {
    DYNAMIC_SECTION(pol) {
      DecoderOptions o;
      o.policy = parse_cache_policy(pol);
      o.budget = 24;
      o.sinks = 2;
      o.max_seqs = 6;
      o.page_size = 8;
      o.gemm_row_tuning = false;
      o.evict_graphs = true;
      DecoderOptions og = o;
      o.cuda_graphs = false;
      Decoder a(m, o), b(m, og);
      torch::manual_seed(13);
      std::vector<int64_t> next;
      for (int s = 0; s < 5; ++s) {
        std::vector<int64_t> p;
        for (int i = 0; i < 10 + 7 * s; ++i) p.push_back(torch::randint(0, 211, {1}).item<int64_t>());
        next.push_back(a.prefill(s, p).argmax().item<int64_t>());
        b.prefill(s, p);
      }
      // buckets 4 (3 sequences: one padding row), 8 (5: three), 2; every row passes the budget on the way
      const std::vector<std::vector<int64_t>> phases = {{0, 1, 2}, {0, 1, 2, 3, 4}, {1, 3}};
      double worst = 0;
      int64_t same = 0, total = 0;
      for (int step = 0; step < 30; ++step) {
        const auto& seqs = phases[step / 10];
        std::vector<int64_t> ids;
        for (int64_t s : seqs) ids.push_back(next[s]);
        at::Tensor la = a.step(seqs, ids), lb = b.step(seqs, ids);
        REQUIRE(lb.size(0) == (int64_t)seqs.size());
        worst = std::max(worst, rel_err(lb.to(at::kFloat), la.to(at::kFloat)));
        at::Tensor am = la.argmax(-1).cpu();
        same += at::eq(am, lb.argmax(-1).cpu()).sum().item<int64_t>();
        total += (int64_t)seqs.size();
        for (size_t i = 0; i < seqs.size(); ++i) next[seqs[i]] = am[(int64_t)i].item<int64_t>();  // the same ids
      }
      for (int s = 0; s < 6; ++s) CHECK(at::equal(a.slot_counts(s), b.slot_counts(s)));
      CHECK(b.slot_counts(5).sum().item<int64_t>() == 0);
      CHECK(a.cache().free_pages() == b.cache().free_pages());
      CHECK(b.graphs_captured() == 3);
      // bf16 GEMMs at the bucket's rows round differently (as the vanilla graphs' test): the window evicts by
      // position, so its slots are equal; TOVA and H2O score by the weights, where a near tie may go either way
      if (std::string(pol) == "window") {
        for (int s = 0; s < 5; ++s) CHECK(a.slot_positions(1, s, 1) == b.slot_positions(1, s, 1));
        CHECK(worst < 1e-2);
        CHECK(same == total);
      } else {
        CHECK(worst < 5e-2);
        CHECK(same >= total * 9 / 10);
      }
      std::cout << "[gpu-evict-graphs] " << pol << ": logits rel " << worst << ", argmax equal " << same << " / "
                << total << std::endl;
    }
  }
}

// window + sinks prefills in chunks of budget - sinks and, past the budget, as three FlashAttention-2 calls merged by
// their log-sum-exp; TOVA past the budget as two (its held slots dense, the chunk causal; inference/evict_prefill.h).
// At chunk 1 for TOVA (the original algorithm) both equal decoding the prompts token by token with eviction.
TEST_CASE("CUDA: the dense flash prefill of window and TOVA equals token-by-token eviction", "[gpu][inference][evict-dense]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  auto m = gpu_model(37, 0.2, 0.0);
  for (const char* pol : {"window", "tova"}) {
    DYNAMIC_SECTION(pol) {
      DecoderOptions o;
      o.policy = parse_cache_policy(pol);
      o.budget = 40;
      o.sinks = 4;
      o.prefill_chunk = 1;  // TOVA: token by token (window: budget - sinks whatever this says)
      o.max_seqs = 3;
      o.page_size = 8;
      o.cuda_graphs = false;
      torch::manual_seed(19);
      std::vector<std::vector<int64_t>> prompts;
      for (int64_t len : {150, 97, 31}) {
        std::vector<int64_t> p;
        for (int64_t i = 0; i < len; ++i) p.push_back(torch::randint(0, 211, {1}).item<int64_t>());
        prompts.push_back(p);
      }
      Decoder filled(m, o), stepped(m, o);
      at::Tensor lf = filled.prefill({0, 1, 2}, prompts).to(at::kFloat);
      double worst = 0;
      int64_t same = 0, total = 0;
      for (int64_t s = 0; s < 3; ++s) {
        at::Tensor ls;
        for (int64_t id : prompts[s]) ls = stepped.step({s}, {id})[0];
        worst = std::max(worst, rel_err(lf[s], ls.to(at::kFloat)));
        for (int64_t l = 0; l < 2; ++l)
          for (int64_t h = 0; h < 2; ++h) {
            auto a = filled.slot_positions(l, s, h), b = stepped.slot_positions(l, s, h);  // slot order differs
            std::set<int64_t> sa(a.begin(), a.end()), sb(b.begin(), b.end());
            for (int64_t x : sa) same += sb.count(x);
            total += (int64_t)sa.size();
          }
      }
      // bf16 activations on two paths (flash against the fp32 reference attention): the window evicts by position,
      // so its slots are equal; TOVA scores by the weights, where a near tie may go either way
      CHECK(worst < (std::string(pol) == "window" ? 2e-2 : 5e-2));
      CHECK(same >= (std::string(pol) == "window" ? total : total * 9 / 10));
      std::cout << "[gpu-evict-dense] " << pol << ": prefill logits rel " << worst << " against token by token, "
                << same << " / " << total << " slots the same" << std::endl;
    }
  }
}

TEST_CASE("CUDA: the decode GEMM row padding gives at::linear's rows and keeps its timed choice", "[gpu][inference]") {
  if (!torch::cuda::is_available()) SKIP("no CUDA device");
  torch::manual_seed(17);
  auto f = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t N = 1000, K = 512;
  at::Tensor w = at::randn({N, K}, f);
  for (int64_t M : {1, 28, 100, 216}) {
    DYNAMIC_SECTION("rows " << M) {
      at::Tensor x = at::randn({M, K}, f);
      const at::Tensor ref = at::linear(x.to(at::kFloat), w.to(at::kFloat));
      GemmRows g;
      at::Tensor y = g.linear(x, w);
      const int64_t Mp = g.chosen(M, N, K, at::kBFloat16);
      INFO("chosen rows " << Mp);
      CHECK((Mp == M || Mp == (M + 31) / 32 * 32 || Mp == (M + 63) / 64 * 64 || Mp == (M + 127) / 128 * 128));
      REQUIRE(y.sizes() == at::IntArrayRef({M, N}));
      CHECK(rel_err(y, ref) < 1e-2);
      CHECK(at::equal(g.linear(x, w), y));  // the same choice, the same kernel
      // the padded path itself, whatever the timing picked
      GemmRows p;
      p.set_choice(M, N, K, at::kBFloat16, (M + 127) / 128 * 128 + 128);
      at::Tensor yp = p.linear(x, w);
      REQUIRE(yp.sizes() == at::IntArrayRef({M, N}));
      CHECK(yp.is_contiguous());
      CHECK(rel_err(yp, ref) < 1e-2);
      // off: at::linear as is
      GemmRows off(false);
      CHECK(at::equal(off.linear(x, w), at::linear(x, w)));
      CHECK(off.chosen(M, N, K, at::kBFloat16) == 0);
    }
  }
}
