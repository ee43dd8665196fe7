#include "ops/paged_cache.h"

#include "common/error.h"

namespace dmc {

int64_t PagedKVCache::page_bytes(int64_t page_size, int64_t head_dim, at::ScalarType dtype) {
  return 2 * page_size * head_dim * (int64_t)c10::elementSize(dtype);
}

PagedKVCache::PagedKVCache(const PagedCacheOptions& o) : o_(o) {
  DMC_CHECK(o.page_size >= 1 && o.page_size <= 256 && (o.page_size & (o.page_size - 1)) == 0,
            "page_size: expected a power of two from 1 to 256, got ", o.page_size);
  DMC_CHECK(o.n_layers >= 1 && o.max_seqs >= 1 && o.n_kv_heads >= 1 && o.head_dim >= 1,
            "kv cache: layers, sequences, heads and head_dim must be positive");
  DMC_CHECK(o.max_slots_per_row >= 1, "kv cache: max_slots_per_row must be positive, got ", o.max_slots_per_row);
  const int64_t pb = page_bytes(o.page_size, o.head_dim, o.dtype);
  if (o_.n_pages <= 0) {
    DMC_CHECK(o.memory_budget_bytes >= pb, "kv cache: memory budget of ", o.memory_budget_bytes,
              " bytes holds no page of ", pb, " bytes");
    o_.n_pages = o.memory_budget_bytes / pb;
  }
  DMC_CHECK(o_.n_pages < (int64_t(1) << 31), "kv cache: ", o_.n_pages, " pages exceed int32 page ids");
  max_pages_ = pages_for(o.max_slots_per_row);
  auto opt = at::TensorOptions().dtype(o.dtype).device(o.device);
  auto i32 = at::TensorOptions().dtype(at::kInt).device(o.device);
  // one more page than the pool: page n_pages is a never-allocated trash page that masked bulk writes aim at
  k_pages = at::zeros({o_.n_pages + 1, o.page_size, o.head_dim}, opt);
  v_pages = at::zeros({o_.n_pages + 1, o.page_size, o.head_dim}, opt);
  const int64_t rows = o.n_layers * o.max_seqs * o.n_kv_heads;
  table = at::zeros({rows, max_pages_}, i32);
  lengths = at::zeros({rows}, i32);
  // stack: the top (last valid entry) is page 0, so pages are handed out in ascending order at first
  // the stack, then one scratch entry (index n_pages) that give_pages sends the pages it does not keep to
  free_list = at::cat({at::arange(o_.n_pages - 1, -1, -1, i32), at::full({1}, -1, i32)});
  alloc = at::tensor({(int32_t)o_.n_pages, 0}, at::kInt).to(o.device);
}

int64_t PagedKVCache::length(int64_t row) const { return lengths[row].item<int64_t>(); }
int64_t PagedKVCache::free_pages() const { return alloc[0].item<int64_t>(); }
int64_t PagedKVCache::exhaustion_count() const { return alloc[1].item<int64_t>(); }

bool PagedKVCache::try_append(int64_t row, const at::Tensor& k, const at::Tensor& v) {
  const int64_t n = length(row);
  DMC_CHECK(n < o_.max_slots_per_row, "kv cache: row ", row, " is full (", n, " slots)");
  if (n % o_.page_size == 0) {
    if (free_pages() == 0) return false;
    table[row][n / o_.page_size].copy_(
        take_pages(at::ones({1}, at::TensorOptions().dtype(at::kLong).device(o_.device)), 1)[0][0]);
  }
  const int64_t page = table[row][n / o_.page_size].item<int64_t>(), off = n % o_.page_size;
  k_pages[page][off].copy_(k);
  v_pages[page][off].copy_(v);
  lengths[row].add_(1);
  return true;
}

void PagedKVCache::overwrite_last(int64_t row, const at::Tensor& k, const at::Tensor& v) {
  const int64_t n = length(row);
  DMC_CHECK(n > 0, "kv cache: overwrite of an empty row ", row);
  const int64_t page = table[row][(n - 1) / o_.page_size].item<int64_t>(), off = (n - 1) % o_.page_size;
  k_pages[page][off].copy_(k);
  v_pages[page][off].copy_(v);
}

void PagedKVCache::free_seq(int64_t seq) {
  DMC_CHECK(seq >= 0 && seq < o_.max_seqs, "kv cache: sequence ", seq, " out of range");
  std::vector<int64_t> rows;
  for (int64_t l = 0; l < o_.n_layers; ++l)
    for (int64_t h = 0; h < o_.n_kv_heads; ++h) rows.push_back(row(l, seq, h));
  free_rows(at::tensor(rows, at::kLong).to(o_.device));
}

void PagedKVCache::free_rows(const at::Tensor& rows) {
  // pages in use per row, pushed onto the stack in row order
  at::Tensor len = lengths.index_select(0, rows).to(at::kLong);                              // [m]
  at::Tensor npg = pages_for(len, o_.page_size);                                             // [m]
  at::Tensor used = at::arange(max_pages_, rows.options()).unsqueeze(0) < npg.unsqueeze(1);  // [m, maxp]
  give_pages(table.index_select(0, rows).flatten(), used.flatten());
  lengths.index_fill_(0, rows, 0);
}

at::Tensor PagedKVCache::take_pages(const at::Tensor& counts, int64_t max_count) {
  auto lopt = counts.options().dtype(at::kLong);
  at::Tensor cnt = counts.to(at::kLong);
  at::Tensor top = alloc.narrow(0, 0, 1).to(at::kLong);     // [1]
  at::Tensor start = at::cumsum(cnt, 0) - cnt;              // [m] stack entries taken before i
  at::Tensor j = at::arange(max_count, lopt).unsqueeze(0);  // [1, max_count]
  at::Tensor want = j < cnt.unsqueeze(1);                   // [m, max_count]
  at::Tensor pos = top - 1 - (start.unsqueeze(1) + j);      // stack position of each page
  at::Tensor got = want & (pos >= 0);
  at::Tensor pages = free_list.index_select(0, pos.clamp_min(0).flatten()).view({-1, max_count});
  at::Tensor total = cnt.sum();
  alloc.narrow(0, 1, 1).add_((want & ~got).sum().to(at::kInt));
  alloc.narrow(0, 0, 1).copy_(at::clamp_min(top - total, 0).to(at::kInt));
  return at::where(got, pages, at::full({}, -1, pages.options()));
}

void PagedKVCache::give_pages(const at::Tensor& pages, const at::Tensor& keep) {
  at::Tensor k = keep.to(at::kBool);
  at::Tensor kl = k.to(at::kLong);
  at::Tensor dst = alloc.narrow(0, 0, 1).to(at::kLong) + at::cumsum(kl, 0) - 1;  // stack slots of the kept pages
  // the others go to the scratch entry: no data-dependent size, so no host synchronisation (eviction calls this
  // every layer of every step)
  dst = at::where(k, dst, at::full({}, o_.n_pages, dst.options()));
  free_list.index_put_({dst}, pages.to(at::kInt));
  alloc.narrow(0, 0, 1).add_(kl.sum().to(at::kInt));
}

PagePool PagedKVCache::pool() const {
  PagePool p;
  p.table = table.data_ptr<int>();
  p.lengths = lengths.data_ptr<int>();
  p.free_list = free_list.data_ptr<int>();
  p.alloc = alloc.data_ptr<int>();
  p.max_pages = (int)max_pages_;
  p.page_size = (int)o_.page_size;
  p.max_seqs = (int)o_.max_seqs;
  p.n_kv_heads = (int)o_.n_kv_heads;
  return p;
}

PagedKVCache::RowsPlan PagedKVCache::plan_rows(const int64_t* counts, int64_t m, int64_t free_top) const {
  RowsPlan p;
  p.free_top = free_top;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t n = pages_for(counts[i]);
    p.total_pages += n;
    p.max_pages = std::max(p.max_pages, n);
  }
  return p;
}

void PagedKVCache::write_rows(const at::Tensor& rows, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& counts) {
  at::Tensor npg = pages_for(counts.to(rows.options()), o_.page_size);
  at::Tensor stats = at::stack({npg.sum(), npg.max(), alloc[0].to(at::kLong)}).to(at::kCPU);  // one read-back
  RowsPlan pl;
  pl.total_pages = stats[0].item<int64_t>();
  pl.max_pages = stats[1].item<int64_t>();
  pl.free_top = stats[2].item<int64_t>();
  allocate_rows(rows, counts, pl);
  // a compressed prompt's k/v [m, T, D] hold far fewer slots than T: only the first most-pages x P are looked at
  write_slots(rows, k, v, counts, std::min<int64_t>(k.size(1), pl.max_pages * o_.page_size));
}

void PagedKVCache::allocate_rows(const at::Tensor& rows, const at::Tensor& counts, const RowsPlan& pl) {
  const int64_t P = o_.page_size;
  auto lopt = rows.options();
  at::Tensor cnt = counts.to(lopt);
  at::Tensor npg = pages_for(cnt, P);  // [m]
  const int64_t total = pl.total_pages, top = pl.free_top;
  if (total > top) fail("kv cache exhausted: ", total, " pages needed, ", top, " free");
  DMC_CHECK(pl.max_pages <= max_pages_, "kv cache: a row of more than ", o_.max_slots_per_row,
            " slots (max_slots_per_row)");
  // the rows' pages come off the stack top in order (the plan has made sure there are enough)
  at::Tensor pages = take_pages(npg, max_pages_);  // [m, maxp], -1 past a row's pages
  at::Tensor old = table.index_select(0, rows);
  table.index_copy_(0, rows, at::where(pages >= 0, pages, old));
  lengths.index_copy_(0, rows, cnt.to(at::kInt));
}

void PagedKVCache::write_slots(const at::Tensor& rows, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& counts, int64_t max_count) {
  const int64_t m = rows.numel(), D = o_.head_dim, P = o_.page_size;
  const int64_t Tw = std::min<int64_t>(k.size(1), max_count);
  if (Tw <= 0) return;
  auto lopt = rows.options();
  at::Tensor s = at::arange(Tw, lopt).unsqueeze(0);     // [1, Tw]
  at::Tensor valid = s < counts.to(lopt).unsqueeze(1);  // [m, Tw]
  // slots past a row's count (fewer than Tw - count of them) go to the trash page
  at::Tensor flat = at::where(valid, slot_index(rows, Tw), at::full({1, 1}, o_.n_pages * P, lopt)).flatten();
  k_pages.view({-1, D}).index_put_({flat}, k.narrow(1, 0, Tw).reshape({m * Tw, D}).to(o_.dtype));
  v_pages.view({-1, D}).index_put_({flat}, v.narrow(1, 0, Tw).reshape({m * Tw, D}).to(o_.dtype));
}

at::Tensor PagedKVCache::slot_index(const at::Tensor& rows, int64_t n_slots) const {
  const int64_t P = o_.page_size;
  at::Tensor s = at::arange(n_slots, rows.options());  // [S]
  at::Tensor pidx = s.div(P, "floor").clamp_max(max_pages_ - 1);
  at::Tensor pages = table.index_select(0, rows).index_select(1, pidx).to(at::kLong);  // [m, S]
  return pages * P + (s % P).unsqueeze(0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> PagedKVCache::gather(const std::vector<int64_t>& rows) const {
  at::Tensor r = at::tensor(rows, at::kLong).to(o_.device);
  at::Tensor len = lengths.index_select(0, r).to(at::kCPU, at::kLong);
  const int64_t maxlen = std::max<int64_t>(1, len.max().item<int64_t>());
  const int64_t m = (int64_t)rows.size(), D = o_.head_dim;
  at::Tensor flat = slot_index(r, maxlen).flatten();
  at::Tensor k = k_pages.view({-1, D}).index_select(0, flat).view({m, maxlen, D});
  at::Tensor v = v_pages.view({-1, D}).index_select(0, flat).view({m, maxlen, D});
  // zero the padding so that callers comparing whole tensors see only real slots
  at::Tensor valid = (at::arange(maxlen).unsqueeze(0) < len.unsqueeze(1)).to(o_.device).unsqueeze(-1);
  return {k * valid, v * valid, len};
}

}  // namespace dmc
