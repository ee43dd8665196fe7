// Row padding for the decode step's GEMMs. cuBLAS picks its kernel from the problem shape, and for some row counts
// its pick is slow: the Llama 2 7B gate/up projection [M, 4096] x [4096, 22016] takes 96 us at M = 216 on an H100
// but 77 us at M = 224 or 256 (bench/gemm_shapes.py), i.e. 0.6 ms of a 27 ms decode step over 32 layers. Serving
// engines avoid such shapes by padding batches to a few captured sizes; here each (rows, weight shape) is timed
// once, eagerly (never inside a CUDA graph capture), at M and at M rounded up to 32, 64 and 128, and later calls
// pad the input rows to the fastest (zero rows, whose outputs are dropped: every output row depends on its own input
// row only). CPU tensors, and shapes first met during a capture, take at::linear as is.
//
//   GemmRows g;                       // one per engine: its choices are per (M, N, K, dtype)
//   at::Tensor y = g.linear(x, w);    // x [M, K], w [N, K] -> [M, N], as at::linear(x, w)
#pragma once
#include <torch/types.h>

#include <map>
#include <tuple>

namespace dmc {

class GemmRows {
 public:
  explicit GemmRows(bool enabled = true) : enabled_(enabled) {}
  at::Tensor linear(const at::Tensor& x, const at::Tensor& w);
  // The padded row count chosen for this shape (0: not tuned yet).
  int64_t chosen(int64_t M, int64_t N, int64_t K, at::ScalarType dtype) const;
  bool enabled() const { return enabled_; }
  // Sets the choice for a shape without timing (tests: the padded path whatever the timing would pick).
  void set_choice(int64_t M, int64_t N, int64_t K, at::ScalarType dtype, int64_t Mp) {
    best_[{M, N, K, (int)dtype}] = Mp;
  }

 private:
  int64_t tune(const at::Tensor& x, const at::Tensor& w);
  bool enabled_;
  std::map<std::tuple<int64_t, int64_t, int64_t, int>, int64_t> best_;
};

}  // namespace dmc
