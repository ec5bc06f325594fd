#include <tuple>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "assoc_write/assoc_write_host.h"

#define CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), "assoc_write_fwd: " #x " must be a CUDA tensor")
#define CHECK_SAME_DEVICE(x)                                                                                  \
    TORCH_CHECK((x).device() == mem.device(), "assoc_write_fwd: " #x " must be on the same device as mem (", \
                mem.device(), "), got ", (x).device())

std::tuple<torch::Tensor, torch::Tensor> assoc_write_fwd(torch::Tensor mem, torch::Tensor w_k, torch::Tensor w_v,
                                                         torch::Tensor w_b, torch::Tensor b_b, torch::Tensor A,
                                                         torch::Tensor z, int64_t nu, double eps, bool correction,
                                                         bool first_segment) {
    CHECK_CUDA(mem);
    CHECK_SAME_DEVICE(w_k);
    CHECK_SAME_DEVICE(w_v);
    CHECK_SAME_DEVICE(w_b);
    CHECK_SAME_DEVICE(b_b);
    CHECK_SAME_DEVICE(A);
    CHECK_SAME_DEVICE(z);
    c10::cuda::CUDAGuard device_guard(mem.device());
    // Same stream as at::cuda::getCurrentCUDAStream().
    return assoc_write_run(mem, w_k, w_v, w_b, b_b, A, z, nu, eps, correction, first_segment,
                           c10::cuda::getCurrentCUDAStream());
}
