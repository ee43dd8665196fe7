// Paged KV cache with its own length per (layer, sequence, KV head), the layout DMC needs: a merge overwrites a
// head's last slot, an append opens a new one, so heads of one sequence hold different numbers of slots.
// Everything lives on the cache's device (tables, lengths and the free-page stack too), so a decode step runs
// without the host: the step's kernels pop pages from the stack themselves through the pool's device view
// (page_pool.h); everything else takes and gives pages through take_pages / give_pages, nothing else writes the stack.
//
// Layouts (R = n_layers * max_seqs * n_kv_heads rows, row = (layer * max_seqs + seq) * n_kv_heads + head):
//   k_pages, v_pages: [n_pages, page_size, head_dim]   cache dtype; one KV head's slots per page
//   table:            [R, max_pages_per_row] int32      page ids of a row; entries past its length are stale
//   lengths:          [R] int32                         slots in use
//   free_list:        [n_pages + 1] int32               stack of free page ids, valid in [0, alloc[0]); the last
//                                                       entry is scratch (give_pages' discarded writes)
//   alloc:            [2] int32                         {stack top = free pages, exhaustion count}
// Slot s of row r lives at k_pages[table[r][s / page_size]][s % page_size].
//
// Pages come from one pool sized from a memory budget; they are taken on append and returned when a sequence is
// freed. Exhaustion is reported (try_append returns false, `pages_needed` answers ahead of a step), never
// asserted. The per-slot host calls (try_append, overwrite_last, gather) are for tests and tools; decoding uses
// the batched ops.
//
//   PagedKVCache cache(opts);
//   int64_t r = cache.row(layer, seq, head);
//   cache.try_append(r, k, v); cache.overwrite_last(r, k, v); auto [k, v, len] = cache.gather({r});
//   cache.free_seq(seq);
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "ops/page_pool.h"

namespace dmc {

struct PagedCacheOptions {
  int64_t n_layers = 1, max_seqs = 1, n_kv_heads = 1, head_dim = 64;
  int64_t page_size = 16;  // tokens per page: a power of two in [1, 256]
  int64_t n_pages = 0;     // 0 = from memory_budget_bytes
  int64_t memory_budget_bytes = 0;
  int64_t max_slots_per_row = 4096;  // sizes the page table (the model's max_position_embeddings, say)
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
};

class PagedKVCache {
 public:
  explicit PagedKVCache(const PagedCacheOptions& o);
  int64_t row(int64_t layer, int64_t seq, int64_t head) const {
    return (layer * o_.max_seqs + seq) * o_.n_kv_heads + head;
  }
  // Bytes of K and V one page holds.
  static int64_t page_bytes(int64_t page_size, int64_t head_dim, at::ScalarType dtype);
  int64_t max_pages_per_row() const { return max_pages_; }
  const PagedCacheOptions& options() const { return o_; }
  int64_t n_pages() const { return o_.n_pages; }
  // Pages that hold `slots` slots of one row: the one page-count formula (a tensor of counts too).
  static int64_t pages_for(int64_t slots, int64_t page_size) { return (slots + page_size - 1) / page_size; }
  static at::Tensor pages_for(const at::Tensor& slots, int64_t page_size) {
    return (slots + (page_size - 1)).div(page_size, "floor");
  }
  int64_t pages_for(int64_t slots_per_head) const { return pages_for(slots_per_head, o_.page_size); }

  // Host reads (each syncs with the device).
  int64_t length(int64_t row) const;
  int64_t free_pages() const;
  int64_t exhaustion_count() const;

  // Appends one slot (k, v: [head_dim]); false when the pool is exhausted (nothing changed then).
  bool try_append(int64_t row, const at::Tensor& k, const at::Tensor& v);
  // Replaces the last slot of `row` (which must have one).
  void overwrite_last(int64_t row, const at::Tensor& k, const at::Tensor& v);
  // Returns every page of sequence `seq` (all layers and heads) to the pool.
  void free_seq(int64_t seq);
  // Returns the pages of the given rows to the pool and empties them.   rows [m] int64 on the cache's device
  void free_rows(const at::Tensor& rows);
  // Appends counts[i] slots to empty rows: k, v [m, T, head_dim], counts [m] int64, rows [m] int64 (device).
  // Throws dmc::Error when the pool is too small (nothing changed then). Reads the page totals back from the device
  // (one synchronisation).
  void write_rows(const at::Tensor& rows, const at::Tensor& k, const at::Tensor& v, const at::Tensor& counts);
  // write_rows in two parts, for callers that allocate many rows at once and fill them in pieces, and that know the
  // page totals on the host (plan_rows over host counts and the free pages: no synchronisation):
  struct RowsPlan {
    int64_t total_pages = 0, max_pages = 0, free_top = 0;  // pages the rows take in all, the most of one row, free now
  };
  RowsPlan plan_rows(const int64_t* counts, int64_t m, int64_t free_top) const;
  //   allocate_rows: pages and lengths for counts[i] slots of each empty row (no contents);
  //   write_slots:   the contents of slots [0, counts[i]) of allocated rows from k, v [m, >= max_count, D];
  //                  max_count (host) bounds the counts: only that many slots a row are looked at.
  void allocate_rows(const at::Tensor& rows, const at::Tensor& counts, const RowsPlan& plan);
  void write_slots(const at::Tensor& rows, const at::Tensor& k, const at::Tensor& v, const at::Tensor& counts,
                   int64_t max_count);
  // The free-page stack, batched (ATen, on the cache's device, no synchronisation). take_pages: taker i wants
  // counts[i] (<= max_count) pages, the takers served in order off the stack top; returns [m, max_count] int32
  // page ids, -1 where the pool ran out (or j >= counts[i]); every page that could not be had adds one to the
  // exhaustion count. give_pages: pushes pages[i] (any int tensor [m]) where keep[i] (bool [m]).
  at::Tensor take_pages(const at::Tensor& counts, int64_t max_count);
  void give_pages(const at::Tensor& pages, const at::Tensor& keep);
  // The device view the kernels take (page_pool.h).
  PagePool pool() const;

  // Slots of the given rows, padded: k, v [rows, max_len, head_dim] and lengths [rows] (int64, CPU).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> gather(const std::vector<int64_t>& rows) const;
  // Flat slot index (page * page_size + offset) of slots [0, n_slots) of each row, for reading
  // k_pages.view({-1, head_dim}): rows [m] int64 -> [m, n_slots] int64. Slots past a row's length point at a valid
  // but meaningless slot (mask them with lengths).
  at::Tensor slot_index(const at::Tensor& rows, int64_t n_slots) const;

  at::Tensor k_pages, v_pages;  // [n_pages, page_size, head_dim]
  at::Tensor table;             // [R, max_pages_per_row] int32
  at::Tensor lengths;           // [R] int32
  at::Tensor free_list;         // [n_pages + 1] int32 (the last entry: scratch)
  at::Tensor alloc;             // [2] int32: free pages, exhaustion count

 private:
  PagedCacheOptions o_;
  int64_t max_pages_ = 0;
};

}  // namespace dmc
