// DMC_HOST_DEVICE marks the small inline functions that host code, the ATen references and the CUDA kernels share
// (page_pool.h, forced_decisions.h): __host__ __device__ under nvcc, nothing elsewhere.
#pragma once

#if defined(__CUDACC__)
#define DMC_HOST_DEVICE __host__ __device__
#else
#define DMC_HOST_DEVICE
#endif
