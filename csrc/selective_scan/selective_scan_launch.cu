#include "common/launch.cuh"
#include "selective_scan/selective_scan_kernel.cuh"

namespace bfast {

void selective_scan_launch(const SelectiveScanParams &p, cudaStream_t stream) {
    if (p.batch == 0 || p.dim == 0) return;
    const dim3 grid(static_cast<unsigned>(p.dim), static_cast<unsigned>(p.batch));
    auto *kernel = &selective_scan_fwd_kernel<kScanThreads, kScanStepsPerThread>;
    BFAST_LAUNCH(kernel, grid, kScanThreads, 0, stream, p);
    BFAST_LAUNCH_CHECK();
}

}  // namespace bfast
