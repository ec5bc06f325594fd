#include "causal_conv1d/causal_conv1d_kernel.cuh"
#include "common/launch.cuh"

namespace bfast {

void causal_conv1d_launch(const CausalConvParams &p, cudaStream_t stream) {
    if (p.batch == 0 || p.dim == 0) return;
    constexpr int64_t tile = int64_t(kConvThreads) * kConvStepsPerThread;
    const int64_t tiles = p.L > 0 ? (p.L + tile - 1) / tile : 1;  // L = 0: one block writes the final state
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.dim), static_cast<unsigned>(p.batch));
    auto *kernel = &causal_conv1d_fwd_kernel<kConvThreads, kConvStepsPerThread>;
    BFAST_LAUNCH(kernel, grid, kConvThreads, 0, stream, p);
    BFAST_LAUNCH_CHECK();
}

}  // namespace bfast
