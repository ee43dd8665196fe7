// Reference implementations of the decode-step operations (see decode_ops.h) in plain ATen, vectorised over the
// step's (sequence, KV head) pairs; they run on any device and are the oracle the CUDA kernels are tested against.
#include "ops/decode_ops.h"

#include <limits>

#include "common/error.h"
#include "ops/dmc.h"
#include "ops/fused_ops.h"

namespace dmc {

DmcState DmcState::create(int64_t rows, int64_t head_dim, int64_t window, at::ScalarType dtype, at::Device device) {
  auto f = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t X = 2 * head_dim + 1, W = std::max<int64_t>(1, window);
  return {at::zeros({rows, X}, f), at::zeros({rows, W, 2 * head_dim}, f.dtype(dtype)), at::zeros({rows, W}, f),
          at::zeros({rows}, at::TensorOptions().dtype(at::kInt).device(device))};
}

bool decode_kernels_available(const at::Device& device, int64_t head_dim) {
#ifdef DMC_WITH_CUDA
  // the paged attention kernel is compiled for head dims 64, 128 and 256 (others take the reference ops)
  return device.is_cuda() && (head_dim == 0 || head_dim == 64 || head_dim == 128 || head_dim == 256);
#else
  (void)device;
  (void)head_dim;
  return false;
#endif
}

at::Tensor cache_rows(const PagedKVCache& cache, int64_t layer, const at::Tensor& seq) {
  const auto& o = cache.options();
  at::Tensor heads = at::arange(o.n_kv_heads, seq.options().dtype(at::kLong));
  return (layer * o.max_seqs + seq.to(at::kLong)).unsqueeze(1) * o.n_kv_heads + heads.unsqueeze(0);
}

namespace {
void check_step(const at::Tensor& qkv, const at::Tensor& seq, const at::Tensor& pos, const at::Tensor& forced,
                const DecodeUpdateParams& p, const PagedKVCache& cache) {
  const int64_t n = qkv.size(0);
  DMC_CHECK(qkv.dim() == 2 && qkv.size(1) == (p.n_heads + 2 * p.n_kv_heads) * p.head_dim,
            "decode_update: qkv must be [n, (nh + 2 nkv) D]");
  DMC_CHECK(seq.numel() == n && pos.numel() == n && forced.numel() == n, "decode_update: seq/pos/forced need ", n,
            " entries");
  DMC_CHECK(cache.options().head_dim == p.head_dim && cache.options().n_kv_heads == p.n_kv_heads,
            "decode_update: cache shape differs from the model's");
  DMC_CHECK(p.n_heads % p.n_kv_heads == 0, "decode_update: n_heads must be a multiple of n_kv_heads");
}
}  // namespace

at::Tensor decode_update_ref(const at::Tensor& qkv, const at::Tensor& seq, const at::Tensor& pos,
                             const at::Tensor& forced, const at::Tensor& cos, const at::Tensor& sin,
                             const DecodeUpdateParams& p, DmcState& st, PagedKVCache& cache) {
  check_step(qkv, seq, pos, forced, p, cache);
  // padding rows (sequence -1, a CUDA-graph bucket's spare rows) update nothing and get zero queries, as the kernel
  // does; the reference is never captured, so it drops them on the host and runs the real rows alone
  at::Tensor real = seq.to(at::kLong) >= 0;
  if (!real.all().item<bool>()) {
    at::Tensor idx = real.nonzero().flatten();
    at::Tensor out = at::zeros({qkv.size(0), p.n_heads, p.head_dim}, qkv.options());
    if (idx.numel() == 0) return out;
    at::Tensor q = decode_update_ref(qkv.index_select(0, idx), seq.index_select(0, idx), pos.index_select(0, idx),
                                     forced.index_select(0, idx), cos, sin, p, st, cache);
    return out.index_copy_(0, idx, q);
  }
  const int64_t n = qkv.size(0), nh = p.n_heads, nkv = p.n_kv_heads, D = p.head_dim, X = 2 * D + 1,
                P = cache.options().page_size, maxp = cache.max_pages_per_row();
  const auto T = qkv.scalar_type();
  const auto lopt = seq.options().dtype(at::kLong);
  at::Tensor posl = pos.to(at::kLong);
  at::Tensor q = qkv.narrow(1, 0, nh * D).view({n, nh, D});
  at::Tensor k = qkv.narrow(1, nh * D, nkv * D).view({n, nkv, D});
  at::Tensor v = qkv.narrow(1, (nh + nkv) * D, nkv * D).view({n, nkv, D});
  at::Tensor cc = cos.index_select(0, posl).view({n, 1, 1, D}), ss = sin.index_select(0, posl).view({n, 1, 1, D});
  at::Tensor rows = cache_rows(cache, p.layer, seq);  // [n, nkv]
  at::Tensor rf = rows.flatten();
  at::Tensor q_out, kout, vout, merge;
  if (p.dmc) {
    const int64_t W = std::max<int64_t>(1, p.window);
    q_out = rope_drop_last(q.unsqueeze(2), cc, ss).squeeze(2);
    at::Tensor alpha;
    if (p.force_cr > 0)
      alpha = dmc_forced_merges(posl, nkv, p.force_cr);
    else
      alpha = at::sigmoid(dmc_decision_logits(k, p.init_val)) > 0.5;  // [n, nkv]
    alpha = alpha & ~forced.to(at::kBool).unsqueeze(1);
    at::Tensor w = dmc_importance(q.unsqueeze(1), nkv, p.init_val).squeeze(1).to(at::kFloat);  // [n, nkv]
    at::Tensor kv = at::cat({k, v}, -1);                                                       // [n, nkv, 2D]
    at::Tensor entry = at::cat({w.unsqueeze(-1) * kv.to(at::kFloat), w.unsqueeze(-1)}, -1);
    at::Tensor g_old = st.group.index_select(0, rf).view({n, nkv});
    at::Tensor g = at::where(alpha, g_old + 1, at::ones_like(g_old));
    at::Tensor over = (g > W).to(at::kFloat).unsqueeze(-1);
    st.group.index_copy_(0, rf, g.flatten().to(at::kInt));
    at::Tensor ring_idx = rf * W + (posl % W).unsqueeze(1).expand({n, nkv}).flatten();
    at::Tensor ring_kv = st.ring_kv.view({-1, 2 * D}), ring_w = st.ring_w.view({-1});
    at::Tensor ow = ring_w.index_select(0, ring_idx).view({n, nkv, 1});
    at::Tensor old = at::cat({ow * ring_kv.index_select(0, ring_idx).view({n, nkv, 2 * D}).to(at::kFloat), ow}, -1);
    at::Tensor accv = st.acc.index_select(0, rf).view({n, nkv, X});
    at::Tensor acc = alpha.to(at::kFloat).unsqueeze(-1) * accv - over * old + entry;
    st.acc.index_copy_(0, rf, acc.view({-1, X}));
    ring_kv.index_copy_(0, ring_idx, kv.reshape({-1, 2 * D}).to(st.ring_kv.scalar_type()));
    ring_w.index_copy_(0, ring_idx, w.flatten());
    at::Tensor wsum = acc.narrow(-1, 2 * D, 1);
    at::Tensor kraw = (acc.narrow(-1, 0, D) / wsum).to(T);
    vout = (acc.narrow(-1, D, D) / wsum).to(T);
    kout = rope_drop_last(kraw.unsqueeze(2), cc, ss).squeeze(2);
    merge = alpha;
  } else {
    q_out = apply_rope(q.unsqueeze(2), cc, ss).squeeze(2);
    kout = apply_rope(k.unsqueeze(2), cc, ss).squeeze(2);
    vout = v;
    merge = at::zeros({n, nkv}, lopt.dtype(at::kBool));
  }
  // cache write: merge overwrites the last slot, an append opens one (a page from the stack at a page boundary; when
  // the pool is out of pages the row is left as it was and the exhaustion counted, as the kernel does)
  at::Tensor len = cache.lengths.index_select(0, rf).to(at::kLong).view({n, nkv});
  merge = (merge & (len > 0)).flatten();
  len = len.flatten();
  at::Tensor need = ~merge & (len % P == 0);
  at::Tensor room = len < maxp * P;  // a row whose page table is full gets no page either
  at::Tensor slot = at::where(merge, len - 1, len);
  at::Tensor newpage = cache.take_pages((need & room).to(at::kLong), 1).squeeze(1);  // [n nkv], -1: none
  cache.alloc.narrow(0, 1, 1).add_((need & ~room).sum().to(at::kInt));
  at::Tensor table = cache.table.view({-1});
  at::Tensor tidx = rf * maxp + slot.div(P, "floor").clamp_max(maxp - 1);
  at::Tensor ok = ~need | (newpage >= 0);
  at::Tensor wr = need & ok;
  table.index_copy_(0, tidx, at::where(wr, newpage, table.index_select(0, tidx)));
  cache.lengths.index_copy_(0, rf, at::where(ok, slot + 1, len).to(at::kInt));
  // rows that could not get a page write to the trash page (index n_pages) instead
  const int64_t trash = cache.n_pages() * P;
  at::Tensor flat = at::where(ok, table.index_select(0, tidx).to(at::kLong) * P + slot % P, at::full({}, trash, lopt));
  cache.k_pages.view({-1, D}).index_put_({flat}, kout.reshape({-1, D}).to(cache.k_pages.scalar_type()));
  cache.v_pages.view({-1, D}).index_put_({flat}, vout.reshape({-1, D}).to(cache.v_pages.scalar_type()));
  return q_out.contiguous();
}

at::Tensor decode_update(const at::Tensor& qkv, const at::Tensor& seq, const at::Tensor& pos, const at::Tensor& forced,
                         const at::Tensor& cos, const at::Tensor& sin, const DecodeUpdateParams& p, DmcState& st,
                         PagedKVCache& cache, bool use_kernel) {
#ifdef DMC_WITH_CUDA
  if (use_kernel && decode_kernels_available(qkv.device(), p.head_dim)) {
    check_step(qkv, seq, pos, forced, p, cache);
    at::Tensor q_out = at::empty({qkv.size(0), p.n_heads, p.head_dim}, qkv.options());
    decode_update_cuda(qkv, seq, pos, forced, cos, sin, p, st, cache, q_out);
    return q_out;
  }
#endif
  (void)use_kernel;
  return decode_update_ref(qkv, seq, pos, forced, cos, sin, p, st, cache);
}

namespace {
// low: the products on tensor cores in q's dtype (bf16 / fp16 on CUDA) with fp32 scores, the weights meeting the
// values in q's dtype; else fp32 (fp64) math throughout
at::Tensor paged_attention_impl(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq,
                                int64_t max_len, double scale, at::Tensor* probs, bool low) {
  const auto& o = cache.options();
  const int64_t n = q.size(0), nh = q.size(1), D = q.size(2), nkv = o.n_kv_heads, G = nh / nkv,
                S = std::max<int64_t>(1, max_len);
  // padding rows (sequence -1) read row 0's first slot: finite outputs that the caller drops (no host sync: this
  // runs inside the eviction baselines' CUDA graphs)
  at::Tensor pad = (seq.to(at::kLong) < 0).unsqueeze(1).expand({n, nkv}).reshape({-1});  // [n nkv]
  at::Tensor rows = cache_rows(cache, layer, seq).flatten().masked_fill(pad, 0);         // [n nkv]
  at::Tensor flat = cache.slot_index(rows, S).flatten();
  at::Tensor kc = cache.k_pages.view({-1, D}).index_select(0, flat).view({n * nkv, S, D});
  at::Tensor vc = cache.v_pages.view({-1, D}).index_select(0, flat).view({n * nkv, S, D});
  at::Tensor len = cache.lengths.index_select(0, rows).to(at::kLong).masked_fill(pad, 1);
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor qg = q.reshape({n * nkv, G, D});
  at::Tensor sc = (low ? at::bmm(qg, kc.transpose(1, 2), at::kFloat) : at::matmul(qg.to(acc), kc.to(acc).transpose(1, 2))) *
                  scale;  // [n nkv, G, S]
  at::Tensor valid = at::arange(S, rows.options()).unsqueeze(0) < len.unsqueeze(1);                    // [n nkv, S]
  sc = sc.masked_fill(~valid.unsqueeze(1), -std::numeric_limits<double>::infinity());
  at::Tensor pr = at::softmax(sc, -1);
  if (probs) *probs = pr.view({n, nkv, G, S});
  if (low) return at::bmm(pr.to(vc.scalar_type()), vc).view({n, nh, D});
  return at::matmul(pr, vc.to(acc)).to(q.scalar_type()).view({n, nh, D});
}
}  // namespace

at::Tensor paged_attention_ref(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq,
                               int64_t max_len, double scale, at::Tensor* probs) {
  return paged_attention_impl(q, cache, layer, seq, max_len, scale, probs, false);
}

at::Tensor paged_attention_weights(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq,
                                   int64_t max_len, double scale, at::Tensor& probs) {
  const bool low = q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf) &&
                   cache.k_pages.scalar_type() == q.scalar_type();
  return paged_attention_impl(q, cache, layer, seq, max_len, scale, &probs, low);
}

at::Tensor paged_attention(const at::Tensor& q, const PagedKVCache& cache, int64_t layer, const at::Tensor& seq,
                           int64_t max_len, double scale, bool use_kernel) {
#ifdef DMC_WITH_CUDA
  if (use_kernel && decode_kernels_available(q.device(), q.size(-1))) {
    at::Tensor out = at::empty_like(q);
    paged_attention_cuda(q, cache, layer, seq, max_len, scale, out);
    return out;
  }
#endif
  (void)use_kernel;
  return paged_attention_ref(q, cache, layer, seq, max_len, scale);
}

}  // namespace dmc
