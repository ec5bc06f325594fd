#pragma once

// Kernel launches written once for nvcc and for the tests' CPU thread emulation (which defines
// BFAST_EMULATION and bf_emu::launch before including the launchers; tests/ops/cuda_emulation).
//   BFAST_LAUNCH(kernel, grid, block, shared_bytes, stream, args...)  ==  kernel<<<grid, block, ...>>>(args...)
//   BFAST_LAUNCH_CHECK()                                               ==  C10_CUDA_KERNEL_LAUNCH_CHECK()
#ifdef BFAST_EMULATION
#define BFAST_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
    bf_emu::launch((grid), (block), (shared_bytes), kernel, __VA_ARGS__)
#define BFAST_LAUNCH_CHECK() ((void)0)
#else
#include <c10/cuda/CUDAException.h>
#define BFAST_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
    kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)
#define BFAST_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#endif
