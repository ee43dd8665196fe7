#include "dist/dist.h"

#include <cstdlib>

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DMC_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef DMC_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "common/error.h"

namespace dmc {

namespace {
struct PgHolder {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  c10::intrusive_ptr<c10d::Backend> backend;
};

int64_t env_int(const char* name, int64_t dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  DMC_CHECK(end && *end == 0, "environment: ", name, "='", v, "' is not an integer");
  return x;
}
std::string env_str(const char* name, const std::string& dflt) {
  const char* v = std::getenv(name);
  return v && *v ? v : dflt;
}

Group make_group(const c10::intrusive_ptr<c10d::Store>& store, const std::string& prefix, int64_t rank, int64_t size,
                 const std::string& backend) {
  Group g;
  g.rank = rank;
  g.size = size;
  if (size == 1) return g;
  auto ps = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
  auto holder = std::make_shared<PgHolder>();
  c10::intrusive_ptr<c10d::Backend> be;
  c10d::ProcessGroup::BackendType bt;
  at::DeviceType dt;
  if (backend == "gloo") {
#ifdef DMC_WITH_GLOO
    auto opts = c10d::ProcessGroupGloo::Options::create();
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    be = c10::make_intrusive<c10d::ProcessGroupGloo>(ps, (int)rank, (int)size, opts);
    bt = c10d::ProcessGroup::BackendType::GLOO;
    dt = at::kCPU;
#else
    fail("distributed: this build has no Gloo (CPU) backend; install libgloo-dev and rebuild");
#endif
  } else {
#ifdef DMC_WITH_NCCL
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    be = c10::make_intrusive<c10d::ProcessGroupNCCL>(ps, (int)rank, (int)size, opts);
    bt = c10d::ProcessGroup::BackendType::NCCL;
    dt = at::kCUDA;
#else
    fail("distributed: this build has no NCCL backend");
#endif
  }
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(ps, (int)rank, (int)size);
  pg->setDefaultBackend(bt);
  pg->setBackend(dt, bt, be);
  holder->pg = pg;
  holder->backend = be;
  g.impl = holder;
  g.nccl = backend == "nccl";
  return g;
}
}  // namespace

c10d::ProcessGroup* Group::pg() const { return impl ? static_cast<PgHolder*>(impl.get())->pg.get() : nullptr; }

Dist Dist::from_env(int64_t tp_size, const at::Device& device) {
  Dist d;
  d.world = env_int("WORLD_SIZE", 1);
  d.rank = env_int("RANK", 0);
  d.local_rank = env_int("LOCAL_RANK", d.rank);
  DMC_CHECK(d.world >= 1 && d.rank >= 0 && d.rank < d.world, "environment: RANK=", d.rank,
            " outside WORLD_SIZE=", d.world);
  DMC_CHECK(tp_size >= 1 && d.world % tp_size == 0, "tensor_parallel: ", tp_size,
            " does not divide WORLD_SIZE=", d.world);
  const int64_t tp = tp_size, dp = d.world / tp;
  const int64_t tp_rank = d.rank % tp, dp_rank = d.rank / tp;
  if (d.world == 1) {
    d.tp.rank = d.dp.rank = d.world_group.rank = 0;
    return d;
  }
  d.backend = device.is_cuda() ? "nccl" : "gloo";
  const std::string addr = env_str("MASTER_ADDR", "127.0.0.1");
  const int64_t port = env_int("MASTER_PORT", 29500);
  c10d::TCPStoreOptions so;
  so.port = (uint16_t)port;
  so.isServer = d.rank == 0;
  so.numWorkers = (int)d.world;
  so.timeout = std::chrono::seconds(env_int("DMC_DIST_TIMEOUT_S", 300));
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(addr, so);
  } catch (const std::exception& e) {
    fail("distributed: rendezvous at MASTER_ADDR=", addr, " MASTER_PORT=", port, " failed: ", e.what());
  }
  d.world_group = make_group(store, "world/", d.rank, d.world, d.backend);
  d.tp = make_group(store, cat("tp", dp_rank, "/"), tp_rank, tp, d.backend);
  d.dp = make_group(store, cat("dp", tp_rank, "/"), dp_rank, dp, d.backend);
  return d;
}

namespace {
void all_reduce(at::Tensor& t, const Group& g, c10d::ReduceOp op) {
  if (g.size == 1) return;
  c10d::AllreduceOptions o;
  o.reduceOp = op;
  if (g.nccl && !t.is_cuda()) {  // small host-side statistics under NCCL
    std::vector<at::Tensor> v{t.to(at::kCUDA)};
    g.pg()->allreduce(v, o)->wait();
    t.copy_(v[0]);
    return;
  }
  std::vector<at::Tensor> v{t};
  g.pg()->allreduce(v, o)->wait();
}
}  // namespace

void Dist::shutdown() {
  if (world == 1) return;
  barrier(world_group);
  for (Group* g : {&tp, &dp, &world_group})
    if (g->size > 1 && g->pg()) g->pg()->shutdown();
}

void all_reduce_sum(at::Tensor& t, const Group& g) { all_reduce(t, g, c10d::ReduceOp::SUM); }
void all_reduce_max(at::Tensor& t, const Group& g) { all_reduce(t, g, c10d::ReduceOp::MAX); }

at::Tensor all_gather_cat(const at::Tensor& t, const Group& g) {
  at::Tensor out;
  all_gather_rows_async(t, out, g).wait();
  return out;
}

namespace {
struct WorkHolder {
  c10::intrusive_ptr<c10d::Work> w;
  std::vector<at::Tensor> keep;  // inputs the collective reads until it ends
};
}  // namespace

void PendingWork::wait() {
  if (work) static_cast<WorkHolder*>(work.get())->w->wait();
  work.reset();
}

PendingWork all_reduce_sum_async(at::Tensor& t, const Group& g) {
  PendingWork p;
  if (g.size == 1) return p;
  std::vector<at::Tensor> v{t};
  auto h = std::make_shared<WorkHolder>();
  h->w = g.pg()->allreduce(v);
  p.work = h;
  return p;
}

namespace {
// The frame of the row collectives: on one rank out = t (rows unused); else t made contiguous, out allocated with
// `rows` rows (the rest of t's shape), the collective started by start(out, t), and both kept alive until it ends.
template <typename Start>
PendingWork rows_collective(const at::Tensor& t_in, at::Tensor& out, const Group& g, int64_t rows, Start start) {
  PendingWork p;
  if (g.size == 1) {
    out = t_in;
    return p;
  }
  at::Tensor t = t_in.contiguous();
  std::vector<int64_t> shape = t.sizes().vec();
  shape[0] = rows;
  out = at::empty(shape, t.options());
  auto h = std::make_shared<WorkHolder>();
  h->w = start(out, t);
  h->keep = {t, out};
  p.work = h;
  return p;
}
}  // namespace

PendingWork all_gather_rows_async(const at::Tensor& t, at::Tensor& out, const Group& g) {
  return rows_collective(t, out, g, g.size == 1 ? 0 : t.size(0) * g.size,
                         [&](at::Tensor& o, at::Tensor& in) { return g.pg()->_allgather_base(o, in); });
}

PendingWork reduce_scatter_rows_async(const at::Tensor& t, at::Tensor& out, const Group& g) {
  DMC_CHECK(g.size == 1 || (t.dim() >= 1 && t.size(0) % g.size == 0), "reduce_scatter_rows: ", t.size(0),
            " rows do not split over ", g.size, " ranks");
  return rows_collective(t, out, g, g.size == 1 ? 0 : t.size(0) / g.size, [&](at::Tensor& o, at::Tensor& in) {
    c10d::ReduceScatterOptions opt;
    opt.reduceOp = c10d::ReduceOp::SUM;
    return g.pg()->_reduce_scatter_base(o, in, opt);
  });
}

at::Tensor reduce_scatter_rows(const at::Tensor& t, const Group& g) {
  at::Tensor out;
  reduce_scatter_rows_async(t, out, g).wait();
  return out;
}

void broadcast(at::Tensor& t, const Group& g, int64_t root) {
  if (g.size == 1) return;
  std::vector<at::Tensor> v{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  g.pg()->broadcast(v, o)->wait();
}

void barrier(const Group& g) {
  if (g.size == 1) return;
  g.pg()->barrier()->wait();
}

namespace {
struct CopyToGroup : public torch::autograd::Function<CopyToGroup> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                int64_t gptr) {
    ctx->saved_data["g"] = gptr;
    return {x.view_as(x)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    const Group* grp = reinterpret_cast<const Group*>(ctx->saved_data["g"].toInt());
    at::Tensor gx = g[0].contiguous().clone();
    all_reduce_sum(gx, *grp);
    return {gx, at::Tensor()};
  }
};
struct ReduceFromGroup : public torch::autograd::Function<ReduceFromGroup> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext*, const at::Tensor& x, int64_t gptr) {
    const Group* grp = reinterpret_cast<const Group*>(gptr);
    at::Tensor y = x.contiguous().clone();
    all_reduce_sum(y, *grp);
    return {y};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list g) {
    return {g[0], at::Tensor()};
  }
};
struct GatherTokens : public torch::autograd::Function<GatherTokens> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                int64_t gptr) {
    ctx->saved_data["g"] = gptr;
    return {all_gather_cat(x, *reinterpret_cast<const Group*>(gptr))};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    return {reduce_scatter_rows(g[0], *reinterpret_cast<const Group*>(ctx->saved_data["g"].toInt())), at::Tensor()};
  }
};
struct ReduceScatterTokens : public torch::autograd::Function<ReduceScatterTokens> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                int64_t gptr) {
    ctx->saved_data["g"] = gptr;
    return {reduce_scatter_rows(x, *reinterpret_cast<const Group*>(gptr))};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    return {all_gather_cat(g[0], *reinterpret_cast<const Group*>(ctx->saved_data["g"].toInt())), at::Tensor()};
  }
};

// the dtype a linear layer computes in: autocast's when it is on for x's device, else x's own
at::ScalarType compute_dtype(const at::Tensor& x) {
  const auto dt = x.device().type();
  return at::autocast::is_autocast_enabled(dt) ? at::autocast::get_autocast_dtype(dt) : x.scalar_type();
}

// the weight in the compute dtype, through autocast's cache (one cast per weight per autocast region, shared with
// the recompute of activation checkpointing)
at::Tensor compute_weight(const at::Tensor& w, at::ScalarType cd, c10::DeviceType devt) {
  return at::autocast::is_autocast_enabled(devt) ? at::autocast::cached_cast(cd, w, devt) : w.to(cd);
}

// all_gather_cat(x_local) @ b with the all-gather overlapped with the GEMM of this rank's own rows (the other
// ranks' rows are multiplied once they arrive).   x_local [n, K], b [K, M] -> [size n, M]; *gathered = [size n, K]
at::Tensor gather_rows_mm(const at::Tensor& x_local, const at::Tensor& b, const Group& g, at::Tensor* gathered) {
  const int64_t n = x_local.size(0), s = g.size, r = g.rank;
  at::Tensor X;
  PendingWork ag = all_gather_rows_async(x_local, X, g);
  at::Tensor Y = at::empty({s * n, b.size(1)}, x_local.options());
  auto rows_mm = [&](const at::Tensor& a, int64_t start, int64_t len) {
    at::Tensor y = Y.narrow(0, start, len);  // contiguous block of rows: the GEMM writes in place
    at::mm_out(y, a, b);
  };
  rows_mm(x_local, r * n, n);  // while the other ranks' rows travel
  ag.wait();
  if (r > 0) rows_mm(X.narrow(0, 0, r * n), 0, r * n);
  if (r < s - 1) rows_mm(X.narrow(0, (r + 1) * n, (s - r - 1) * n), (r + 1) * n, (s - r - 1) * n);
  if (gathered) *gathered = X;
  return Y;
}

struct ColumnParallelLinear : public torch::autograd::Function<ColumnParallelLinear> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& w, int64_t gptr, bool sp) {
    const Group& g = *reinterpret_cast<const Group*>(gptr);
    const at::ScalarType cd = compute_dtype(x);
    at::Tensor wc = compute_weight(w, cd, x.device().type());
    at::Tensor X, y;
    if (sp)
      y = gather_rows_mm(x.to(cd).contiguous(), wc.t(), g, &X);  // [N, out_local]
    else {
      X = x.to(cd);
      y = at::matmul(X, wc.t());
    }
    ctx->save_for_backward({X, wc});
    ctx->saved_data["g"] = gptr;
    ctx->saved_data["sp"] = sp;
    ctx->saved_data["x_dtype"] = (int64_t)x.scalar_type();
    ctx->saved_data["w_dtype"] = (int64_t)w.scalar_type();
    return {y};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list go) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &X = s[0], &wc = s[1];
    const Group& g = *reinterpret_cast<const Group*>(ctx->saved_data["g"].toInt());
    const bool sp = ctx->saved_data["sp"].toBool();
    const int64_t H = X.size(-1), out = wc.size(0);
    at::Tensor gy = go[0].to(wc.scalar_type());
    at::Tensor gx;
    PendingWork comm;
    if (ctx->needs_input_grad(0)) {
      at::Tensor dX = at::matmul(gy, wc).contiguous();  // [..., H] over the whole input
      if (sp)
        comm = reduce_scatter_rows_async(dX.view({-1, H}), gx, g);
      else {
        comm = all_reduce_sum_async(dX, g);
        gx = dX;
      }
    }
    at::Tensor gw;
    if (ctx->needs_input_grad(1))  // while the input gradient's communication runs
      gw = gy.reshape({-1, out}).t().mm(X.reshape({-1, H})).to((at::ScalarType)ctx->saved_data["w_dtype"].toInt());
    comm.wait();
    if (gx.defined()) gx = gx.to((at::ScalarType)ctx->saved_data["x_dtype"].toInt());
    return {gx, gw, at::Tensor(), at::Tensor()};
  }
};

// Row-parallel linear under sequence parallelism: y = reduce_scatter_rows(x w^T). Backward all-gathers dy by token,
// overlapped with the input-gradient GEMM of this rank's own rows.   x [N, in_local], w [H, in_local] -> [N/size, H]
struct RowParallelLinearSP : public torch::autograd::Function<RowParallelLinearSP> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& w, int64_t gptr) {
    const Group& g = *reinterpret_cast<const Group*>(gptr);
    const at::ScalarType cd = compute_dtype(x);
    at::Tensor wc = compute_weight(w, cd, x.device().type());
    at::Tensor xc = x.to(cd).reshape({-1, x.size(-1)});
    at::Tensor y = reduce_scatter_rows(xc.mm(wc.t()), g);
    ctx->save_for_backward({xc, wc});
    ctx->saved_data["g"] = gptr;
    ctx->saved_data["x_dtype"] = (int64_t)x.scalar_type();
    ctx->saved_data["w_dtype"] = (int64_t)w.scalar_type();
    return {y};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list go) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &xc = s[0], &wc = s[1];
    const Group& g = *reinterpret_cast<const Group*>(ctx->saved_data["g"].toInt());
    at::Tensor G;                                                                        // [N, H] whole output gradient
    at::Tensor gx = gather_rows_mm(go[0].to(wc.scalar_type()).contiguous(), wc, g, &G);  // [N, in_local]
    at::Tensor gw;
    if (ctx->needs_input_grad(1)) gw = G.t().mm(xc).to((at::ScalarType)ctx->saved_data["w_dtype"].toInt());
    return {gx.to((at::ScalarType)ctx->saved_data["x_dtype"].toInt()), gw, at::Tensor()};
  }
};

struct VocabParallelCE : public torch::autograd::Function<VocabParallelCE> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                                                const at::Tensor& target, int64_t gptr) {
    const Group& g = *reinterpret_cast<const Group*>(gptr);
    const int64_t N = logits.size(0), Vl = logits.size(1), start = g.rank * Vl;
    at::Tensor lf = logits.to(at::kFloat);
    at::Tensor m = std::get<0>(lf.max(1));  // [N]
    all_reduce_max(m, g);
    at::Tensor e = at::exp(lf - m.unsqueeze(1));
    at::Tensor s = e.sum(1);
    all_reduce_sum(s, g);
    at::Tensor local = target - start;
    at::Tensor mine = (local >= 0) & (local < Vl);
    at::Tensor lc = local.clamp(0, Vl - 1);
    at::Tensor tl = lf.gather(1, lc.unsqueeze(1)).squeeze(1) * mine.to(at::kFloat);
    all_reduce_sum(tl, g);
    at::Tensor loss = (at::log(s) + m - tl).mean();
    ctx->save_for_backward({e / s.unsqueeze(1), lc, mine});
    ctx->saved_data["N"] = N;
    ctx->saved_data["dtype"] = (int64_t)logits.scalar_type();
    return {loss};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list go) {
    auto s = ctx->get_saved_variables();
    at::Tensor grad = s[0].clone();
    grad.scatter_add_(1, s[1].unsqueeze(1), -s[2].to(at::kFloat).unsqueeze(1));
    grad = grad * (go[0] / (double)ctx->saved_data["N"].toInt());
    return {grad.to((at::ScalarType)ctx->saved_data["dtype"].toInt()), at::Tensor(), at::Tensor()};
  }
};
}  // namespace

at::Tensor gather_vocab(const at::Tensor& logits, const Group& g) {
  if (g.size == 1) return logits;
  return all_gather_cat(logits.t().contiguous(), g).t().contiguous();
}

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& target, const Group& g) {
  if (g.size == 1) return at::cross_entropy_loss(logits, target);
  return VocabParallelCE::apply(logits, target, reinterpret_cast<int64_t>(&g))[0];
}

// The group must outlive the autograd graph (it lives in the model's Dist).
at::Tensor copy_to_group(const at::Tensor& x, const Group& g) {
  if (g.size == 1) return x;
  return CopyToGroup::apply(x, reinterpret_cast<int64_t>(&g))[0];
}

at::Tensor reduce_from_group(const at::Tensor& x, const Group& g) {
  if (g.size == 1) return x;
  return ReduceFromGroup::apply(x, reinterpret_cast<int64_t>(&g))[0];
}

at::Tensor gather_tokens(const at::Tensor& x_local, const Group& g) {
  if (g.size == 1) return x_local;
  return GatherTokens::apply(x_local, reinterpret_cast<int64_t>(&g))[0];
}

at::Tensor reduce_scatter_tokens(const at::Tensor& x, const Group& g) {
  if (g.size == 1) return x;
  return ReduceScatterTokens::apply(x, reinterpret_cast<int64_t>(&g))[0];
}

at::Tensor column_parallel_linear(const at::Tensor& x, const at::Tensor& w, const Group& g, bool sequence_parallel) {
  if (g.size == 1) return at::linear(x, w);
  return ColumnParallelLinear::apply(x, w, reinterpret_cast<int64_t>(&g), sequence_parallel)[0];
}

at::Tensor row_parallel_linear(const at::Tensor& x, const at::Tensor& w, const Group& g, bool sequence_parallel) {
  if (g.size == 1) return at::linear(x, w);
  if (sequence_parallel)
    return RowParallelLinearSP::apply(x.reshape({-1, x.size(-1)}), w, reinterpret_cast<int64_t>(&g))[0];
  return reduce_from_group(at::linear(x, w), g);
}

}  // namespace dmc
