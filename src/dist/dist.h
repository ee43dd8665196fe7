// Process groups for tensor + data parallelism through LibTorch's c10d, rendezvous like torchrun:
// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from the environment (torchrun, srun/mpirun wrappers and
// scripts/launch.sh all set them). NCCL on CUDA, Gloo on CPU. Without WORLD_SIZE (or WORLD_SIZE=1) everything
// runs in one process and every collective is the identity.
//
// Layout of ranks (Megatron's): tensor-parallel groups are runs of tp consecutive ranks, data-parallel groups take
// one rank of each:  rank = dp_rank * tp + tp_rank.
//
//   Dist d = Dist::from_env(/*tp=*/2, device);   // world 4 -> tp 2 x dp 2
//   all_reduce_sum(t, d.tp);                      // in place
#pragma once
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

namespace c10d {
class ProcessGroup;
class Store;
}  // namespace c10d

namespace dmc {

// One communicator: a group of `size` processes, this one being `rank`. size 1 = no communication.
struct Group {
  int64_t rank = 0, size = 1;
  bool nccl = false;           // CUDA tensors only: CPU tensors are staged through the current GPU
  std::shared_ptr<void> impl;  // c10d::ProcessGroup behind an opaque handle (keeps c10d out of most headers)
  c10d::ProcessGroup* pg() const;
};

struct Dist {
  int64_t rank = 0, world = 1, local_rank = 0;
  Group world_group, tp, dp;
  std::string backend = "none";  // none | gloo | nccl
  // Reads the torchrun variables; tp must divide WORLD_SIZE. `device`: CUDA selects NCCL (and LOCAL_RANK's GPU is
  // the caller's business), CPU selects Gloo.
  static Dist from_env(int64_t tp_size, const at::Device& device);
  bool is_main() const { return rank == 0; }
  // End of a run: a barrier, then the backends stop (NCCL's watchdog no longer polls the store of rank 0).
  void shutdown();
};

// Collectives (no-ops on groups of size 1). Tensors must live on the group's device kind.
void all_reduce_sum(at::Tensor& t, const Group& g);
void all_reduce_max(at::Tensor& t, const Group& g);
// Concatenation of every rank's `t` (equal shapes) along dim 0 -> [size * t.size(0), ...].
at::Tensor all_gather_cat(const at::Tensor& t, const Group& g);
void broadcast(at::Tensor& t, const Group& g, int64_t root = 0);
// An all-reduce (sum) started now and finished by wait(); a no-op on groups of size 1.
struct PendingWork {
  std::shared_ptr<void> work;
  void wait();
};
PendingWork all_reduce_sum_async(at::Tensor& t, const Group& g);
// reduce_scatter_rows  t [size * n, ...] -> the sum over ranks of rows [rank n, (rank+1) n)  -> [n, ...].
at::Tensor reduce_scatter_rows(const at::Tensor& t, const Group& g);
// Started now, `out` valid after wait(): all_gather_cat's and reduce_scatter_rows' results.
PendingWork all_gather_rows_async(const at::Tensor& t, at::Tensor& out, const Group& g);
PendingWork reduce_scatter_rows_async(const at::Tensor& t, at::Tensor& out, const Group& g);
void barrier(const Group& g);

// Megatron's f and g: copy_to_group is the identity forward and sums the gradient over the group backward;
// reduce_from_group sums over the group forward and passes the gradient through backward.
at::Tensor copy_to_group(const at::Tensor& x, const Group& g);
at::Tensor reduce_from_group(const at::Tensor& x, const Group& g);

// ---- sequence parallelism (Megatron-LM's) --------------------------------------------------------------------
// Outside the tensor-parallel regions (norms, residual adds, the DMC-free parts of a layer) activations are split by
// token: a [batch, seq, H] tensor is flattened to [N = batch * seq, H] and rank r holds rows [r N/size, (r+1) N/size).
// These are autograd functions; the group must outlive the graph.
//   gather_tokens          x_local [N/size, ...] -> [N, ...]            forward all-gather, backward reduce-scatter
//   (sum) reduce_scatter_tokens  x [N, ...] (partial sums) -> [N/size, ...]   forward reduce-scatter (sum), backward
//   all-gather
at::Tensor gather_tokens(const at::Tensor& x_local, const Group& g);
at::Tensor reduce_scatter_tokens(const at::Tensor& x, const Group& g);

// Column-parallel linear (Megatron's f + GEMM):  y = X w^T, X the whole input: x itself when !sequence_parallel
// (replicated over the group), else the all-gather of x's token rows.
//   x [..., H] (sequence parallel: [N/size, H]);  w [out_local, H];  y [..., out_local] (sequence parallel: [N,
//   out_local])
// In the autocast dtype when autocast is on (w cast through autocast's weight cache), else x's dtype. Backward
// computes dX = dy w, starts its all-reduce (sequence parallel: reduce-scatter) and computes dw = dy^T X while the
// communication runs (Megatron's asynchronous gradient communication), then waits.
at::Tensor column_parallel_linear(const at::Tensor& x, const at::Tensor& w, const Group& g, bool sequence_parallel);
// Row-parallel linear (GEMM + Megatron's g): y = x w^T summed over the group; under sequence parallelism the sum is
// reduce-scattered by token.  x [..., in_local] (sequence parallel: [N, in_local]);  y [..., H] (sp: [N/size, H]).
// Under sequence parallelism the forward's all-gather (column) and the backward's all-gather of dy (row) run while
// the GEMM of this rank's own token rows does.
at::Tensor row_parallel_linear(const at::Tensor& x, const at::Tensor& w, const Group& g, bool sequence_parallel);

// Logits split by vocabulary [n, V / size] -> whole [n, V] on every rank (inference).
at::Tensor gather_vocab(const at::Tensor& logits, const Group& g);

// Mean cross entropy of logits split over the group by vocabulary: logits [N, V / size] (this rank's columns
// [rank V/size, (rank+1) V/size)), target [N] global ids. fp32 softmax statistics: max and sum of exponentials
// and the target's logit are reduced over the group; the gradient is (softmax - onehot) / N on the local columns.
// Size 1: at::cross_entropy_loss.
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& target, const Group& g);

}  // namespace dmc
