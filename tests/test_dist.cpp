// Tensor parallelism on the CPU over Gloo, several real processes with torchrun-style variables: the TP=2 forward
// and backward (vanilla and DMC layers, with and without activation recompute) give the TP=1 logits, loss and
// gradients (reassembled from the shards) within fp32 tolerance.
#include <torch/torch.h>

#include <random>

#include "helpers.h"
#include "io/safetensors.h"

using namespace dmc;
using namespace dmc::test;

namespace {
// Runs `n` worker processes of one group (n = 1: no distributed environment at all).
RunResult run_workers(int n, const std::string& args) {
  if (n == 1) return run(std::string(DMC_DIST_WORKER) + " " + args);
  std::random_device rd;
  const int port = 20000 + (int)(rd() % 20000);
  std::string cmd = "(";
  for (int r = 0; r < n; ++r)
    cmd += cat("RANK=", r, " LOCAL_RANK=", r, " WORLD_SIZE=", n, " MASTER_ADDR=127.0.0.1 MASTER_PORT=", port, " ",
               DMC_DIST_WORKER, " ", args, " & ");
  cmd += "wait)";
  return run(cmd);
}
double rel(const at::Tensor& a, const at::Tensor& b) {
  const double s = b.norm().item<double>();
  return (a - b).norm().item<double>() / (s > 0 ? s : 1.0);
}
}  // namespace

TEST_CASE("tensor parallel over Gloo: TP=2 logits, loss and gradients equal TP=1, vanilla and DMC layers", "[dist]") {
#ifndef DMC_HAVE_GLOO
  SKIP("built without Gloo headers (libgloo-dev)");
#endif
  const auto work = tmp_dir("dist");
  for (std::string mode : {"vanilla", "dmc"}) {
    for (std::string rc : {"0", "1"}) {
      DYNAMIC_SECTION(mode << (rc == "1" ? " with recompute" : "")) {
        auto r1 = run_workers(1, work + "/tp1.safetensors " + mode + " " + rc);
        INFO(r1.output);
        REQUIRE(r1.status == 0);
        auto r2 = run_workers(2, work + "/tp2.safetensors " + mode + " " + rc);
        INFO(r2.output);
        REQUIRE(r2.status == 0);
        auto a = io::SafetensorsFile::open(work + "/tp1.safetensors");
        auto b = io::SafetensorsFile::open(work + "/tp2.safetensors");
        int64_t n = 0;
        for (const auto& name : a->names()) {
          at::Tensor x = a->get(name), y = b->get(name);
          INFO(name);
          REQUIRE(x.sizes() == y.sizes());
          CHECK(rel(y, x) < 1e-5);
          ++n;
        }
        CHECK(n >= 16);  // logits, loss and every parameter's gradient
        // the gradients are not trivially zero
        CHECK(a->get("grad.layers.0.wqkv").abs().max().item<double>() > 0);
      }
    }
  }
}
