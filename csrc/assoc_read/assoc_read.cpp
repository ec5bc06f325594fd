#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "assoc_read/assoc_read_host.h"

torch::Tensor assoc_read_fwd(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z, int64_t nu,
                             double eps) {
    check_assoc_read_devices("assoc_read_fwd", h, w_q, A, z);
    c10::cuda::CUDAGuard device_guard(h.device());
    int device = 0;
    int num_sms = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
    // Same stream as at::cuda::getCurrentCUDAStream(); c10 header avoids the cuBLAS/cuSPARSE include chain.
    return assoc_read_run(h, w_q, A, z, nu, eps, num_sms, c10::cuda::getCurrentCUDAStream());
}
