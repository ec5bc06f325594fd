#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "assoc_read_tc/assoc_read_tc_host.h"

torch::Tensor assoc_read_fwd_tc(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z, int64_t nu,
                                double eps) {
    check_assoc_read_devices("assoc_read_fwd_tc", h, w_q, A, z);
    c10::cuda::CUDAGuard device_guard(h.device());
    int device = 0;
    int num_sms = 0;
    int smem_optin = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return assoc_read_tc_run(h, w_q, A, z, nu, eps, num_sms, smem_optin, c10::cuda::getCurrentCUDAStream());
}
