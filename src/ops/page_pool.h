// The page pool's device view: the raw pointers and sizes of a PagedKVCache's tables, lengths and free-page stack,
// as a CUDA kernel receives them (one field of its params struct). The stack's operations live in two places
// only, both in this layer:
//   - here, for kernels: PagePool::pop (one page for one row, an atomic on the stack top, exhaustion counted);
//   - PagedKVCache::take_pages / give_pages (paged_cache.cpp), the same operations batched in ATen for the host,
//     the reference ops and the engine (eviction).
// Both keep the same invariants: free_list[0, alloc[0]) holds the free pages, a pop takes the top, a failed pop
// leaves the stack as it was and adds one to alloc[1] (the exhaustion count), a row's page j is table[row][j].
//
// Layouts (R rows = n_layers * max_seqs * n_kv_heads): table [R, max_pages] int32, lengths [R] int32,
// free_list [n_pages + 1] int32 (the last entry is scratch), alloc [2] int32 = {free pages (the stack top), exhaustion count}.
#pragma once
#include <cstdint>

#include "ops/host_device.h"

namespace dmc {

struct PagePool {
  int* table = nullptr;
  int* lengths = nullptr;
  int* free_list = nullptr;
  int* alloc = nullptr;
  int max_pages = 0;  // page-table entries a row
  int page_size = 16;
  int max_seqs = 1, n_kv_heads = 1;

  DMC_HOST_DEVICE int64_t row(int layer, int64_t seq, int head) const {
    return ((int64_t)layer * max_seqs + seq) * n_kv_heads + head;
  }
  // The flat slot index (page * page_size + offset) of slot s of `row`, whose page must exist.
  DMC_HOST_DEVICE int64_t slot(int64_t row, int s) const {
    return (int64_t)table[row * max_pages + s / page_size] * page_size + s % page_size;
  }
#if defined(__CUDACC__)
  // Takes a page off the stack for page index `j` of `row` and records it in the table; returns the page, or -1
  // when the pool is empty or the row's table is full (the stack unchanged, the exhaustion counted).
  __device__ int pop(int64_t row, int j) const {
    const int top = atomicSub(&alloc[0], 1) - 1;
    if (top < 0 || j >= max_pages) {
      atomicAdd(&alloc[0], 1);
      atomicAdd(&alloc[1], 1);
      return -1;
    }
    const int page = free_list[top];
    table[row * max_pages + j] = page;
    return page;
  }
#endif
};

}  // namespace dmc
