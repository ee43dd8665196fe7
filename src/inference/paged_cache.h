// Paged KV cache with its own length per (layer, sequence, KV head), the layout DMC needs: a merge overwrites a
// head's last slot, an append opens a new one, so heads of one sequence hold different numbers of slots.
//
// Layouts:
//   k_pages, v_pages: [n_pages, page_size, head_dim]      one KV head's slots per page
//   table(row): page ids of one (layer, seq, kv head), row = (layer * max_seqs + seq) * n_kv_heads + head
//   length(row): slots in use
// Pages come from one pool sized from a memory budget; they are taken on append and returned when a sequence is
// freed. Exhaustion is reported (try_append returns false, `can_admit` answers ahead), never asserted.
//
//   PagedKVCache cache(opts);               // pool + tables
//   int64_t r = cache.row(layer, seq, head);
//   cache.try_append(r, k, v) / cache.overwrite_last(r, k, v); cache.gather(rows) -> padded k, v, lengths
//   cache.free_seq(seq);
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace dmc {

struct PagedCacheOptions {
  int64_t n_layers = 1, max_seqs = 1, n_kv_heads = 1, head_dim = 64;
  int64_t page_size = 16;              // tokens per page: a power of two in [1, 256]
  int64_t n_pages = 0;                 // 0 = from memory_budget_bytes
  int64_t memory_budget_bytes = 0;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
};

class PagedKVCache {
 public:
  explicit PagedKVCache(const PagedCacheOptions& o);
  int64_t row(int64_t layer, int64_t seq, int64_t head) const {
    return (layer * o_.max_seqs + seq) * o_.n_kv_heads + head;
  }
  int64_t length(int64_t row) const { return len_[row]; }
  int64_t free_pages() const { return (int64_t)free_.size(); }
  int64_t n_pages() const { return o_.n_pages; }
  const PagedCacheOptions& options() const { return o_; }
  // Appends one slot (k, v: [head_dim]); false when the pool is exhausted (nothing changed).
  bool try_append(int64_t row, const at::Tensor& k, const at::Tensor& v);
  // Replaces the last slot of `row` (which must have one).
  void overwrite_last(int64_t row, const at::Tensor& k, const at::Tensor& v);
  // Returns every page of sequence `seq` (all layers and heads) to the pool.
  void free_seq(int64_t seq);
  // Slots of the given rows, padded: k, v [rows, max_len, head_dim] and lengths [rows] (int64, CPU).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> gather(const std::vector<int64_t>& rows) const;
  // Pages a sequence needs when every head has n slots.
  int64_t pages_for(int64_t slots_per_head) const;

 private:
  PagedCacheOptions o_;
  at::Tensor k_pages_, v_pages_;           // [n_pages, page_size, head_dim]
  std::vector<std::vector<int32_t>> table_;
  std::vector<int64_t> len_;
  std::vector<int32_t> free_;
};

}  // namespace dmc
