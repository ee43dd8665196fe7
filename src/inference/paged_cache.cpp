#include "inference/paged_cache.h"

#include "common/error.h"

namespace dmc {

PagedKVCache::PagedKVCache(const PagedCacheOptions& o) : o_(o) {
  DMC_CHECK(o.page_size >= 1 && o.page_size <= 256 && (o.page_size & (o.page_size - 1)) == 0,
            "page_size: expected a power of two from 1 to 256, got ", o.page_size);
  const int64_t page_bytes = 2 * o.page_size * o.head_dim * (int64_t)c10::elementSize(o.dtype);
  if (o_.n_pages <= 0) {
    DMC_CHECK(o.memory_budget_bytes >= page_bytes, "kv cache: memory budget of ", o.memory_budget_bytes,
              " bytes holds no page of ", page_bytes, " bytes");
    o_.n_pages = o.memory_budget_bytes / page_bytes;
  }
  auto opt = at::TensorOptions().dtype(o.dtype).device(o.device);
  k_pages_ = at::zeros({o_.n_pages, o.page_size, o.head_dim}, opt);
  v_pages_ = at::zeros({o_.n_pages, o.page_size, o.head_dim}, opt);
  const int64_t rows = o.n_layers * o.max_seqs * o.n_kv_heads;
  table_.assign(rows, {});
  len_.assign(rows, 0);
  for (int64_t p = o_.n_pages - 1; p >= 0; --p) free_.push_back((int32_t)p);
}

bool PagedKVCache::try_append(int64_t row, const at::Tensor& k, const at::Tensor& v) {
  const int64_t n = len_[row];
  if (n % o_.page_size == 0) {
    if (free_.empty()) return false;
    table_[row].push_back(free_.back());
    free_.pop_back();
  }
  const int64_t page = table_[row][n / o_.page_size], off = n % o_.page_size;
  k_pages_[page][off].copy_(k);
  v_pages_[page][off].copy_(v);
  len_[row] = n + 1;
  return true;
}

void PagedKVCache::overwrite_last(int64_t row, const at::Tensor& k, const at::Tensor& v) {
  const int64_t n = len_[row];
  DMC_CHECK(n > 0, "kv cache: overwrite of an empty row ", row);
  const int64_t page = table_[row][(n - 1) / o_.page_size], off = (n - 1) % o_.page_size;
  k_pages_[page][off].copy_(k);
  v_pages_[page][off].copy_(v);
}

void PagedKVCache::free_seq(int64_t seq) {
  for (int64_t l = 0; l < o_.n_layers; ++l)
    for (int64_t h = 0; h < o_.n_kv_heads; ++h) {
      const int64_t r = row(l, seq, h);
      for (int32_t p : table_[r]) free_.push_back(p);
      table_[r].clear();
      len_[r] = 0;
    }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> PagedKVCache::gather(const std::vector<int64_t>& rows) const {
  int64_t maxlen = 1;
  for (int64_t r : rows) maxlen = std::max(maxlen, len_[r]);
  const int64_t R = (int64_t)rows.size();
  // page-table lookup on the host, one index_select on the device
  std::vector<int64_t> flat(R * maxlen, 0);
  at::Tensor lengths = at::empty({R}, at::kLong);
  for (int64_t i = 0; i < R; ++i) {
    const int64_t r = rows[i];
    lengths[i] = len_[r];
    for (int64_t s = 0; s < len_[r]; ++s)
      flat[i * maxlen + s] = table_[r][s / o_.page_size] * o_.page_size + s % o_.page_size;
  }
  at::Tensor idx = at::tensor(flat, at::kLong).to(o_.device);
  at::Tensor k = k_pages_.view({-1, o_.head_dim}).index_select(0, idx).view({R, maxlen, o_.head_dim});
  at::Tensor v = v_pages_.view({-1, o_.head_dim}).index_select(0, idx).view({R, maxlen, o_.head_dim});
  return {k, v, lengths};
}

int64_t PagedKVCache::pages_for(int64_t slots) const { return (slots + o_.page_size - 1) / o_.page_size; }

}  // namespace dmc
