// The benchmark's forced DMC decisions: with random weights a model has no trained decisions, so `bench decode
// --force-cr R` stands in a fixed pattern for them: KV head h merges token t into its last slot unless
// (t + h) % R == 0, which gives every head a compression ratio of R (staggered across heads, so that the heads of a
// sequence hold different numbers of slots, as trained DMC heads do). A document start or t = 0 still appends.
// One definition for the host, the ATen ops (dmc_forced_merges in dmc.h builds the tensor form from it: the pattern is
// periodic in t with period R, which it relies on) and the decode kernel.
#pragma once
#include <cstdint>

#include "ops/host_device.h"

namespace dmc {

DMC_HOST_DEVICE inline bool dmc_forced_merge(int64_t t, int64_t head, int64_t cr) { return (t + head) % cr != 0; }

}  // namespace dmc
