#pragma once

// Kernel launches written once for nvcc and for the tests' CPU thread emulation (which defines
// BFAST_EMULATION and the bf_emu functions before including the launchers; tests/ops/cuda_emulation).
//   BFAST_LAUNCH(kernel, grid, block, shared_bytes, stream, args...)  ==  kernel<<<grid, block, ...>>>(args...)
//   BFAST_LAUNCH_CHECK()                                               ==  C10_CUDA_KERNEL_LAUNCH_CHECK()
//   BFAST_DYNAMIC_SMEM(float, smem);                                   ==  extern __shared__ float smem[];
//   bfast::device_smem_optin()          the current device's opt-in shared memory per block (bytes)
//   bfast::set_max_dynamic_smem(kernel, bytes, prefer_shared)   raises the kernel's dynamic shared memory limit
#include <cstddef>

#ifdef BFAST_EMULATION
#define BFAST_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
    bf_emu::launch((grid), (block), (shared_bytes), kernel, __VA_ARGS__)
#define BFAST_LAUNCH_CHECK() ((void)0)
#define BFAST_DYNAMIC_SMEM(type, name) type *name = static_cast<type *>(bf_emu::dynamic_shared())

namespace bfast {
inline int device_smem_optin() { return static_cast<int>(bf_emu::kSmemOptin); }
template <typename Kernel>
void set_max_dynamic_smem(Kernel kernel, size_t bytes, bool = false) {
    bf_emu::set_max_dynamic_smem(kernel, bytes);
}
}  // namespace bfast
#else
#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>
#define BFAST_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
    kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)
#define BFAST_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define BFAST_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]

namespace bfast {
inline int device_smem_optin() {
    int device = 0;
    int optin = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return optin;
}

// prefer_shared: also ask for the largest shared-memory carveout of the L1.
template <typename Kernel>
void set_max_dynamic_smem(Kernel kernel, size_t bytes, bool prefer_shared = false) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    if (prefer_shared) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                            static_cast<int>(cudaSharedmemCarveoutMaxShared)));
    }
}
}  // namespace bfast
#endif
