#include <optional>
#include <tuple>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "selective_scan.h"
#include "selective_scan_params.h"

std::tuple<torch::Tensor, std::optional<torch::Tensor>> selective_scan_fwd(
    torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B, torch::Tensor C,
    std::optional<torch::Tensor> D, std::optional<torch::Tensor> z, std::optional<torch::Tensor> delta_bias,
    std::optional<torch::Tensor> initial_state, bool delta_softplus, bool return_last_state) {
    TORCH_CHECK(u.is_cuda(), "selective_scan_fwd: u must be a CUDA tensor");
    for (const auto &t : {delta, A, B, C}) {
        TORCH_CHECK(t.device() == u.device(), "selective_scan_fwd: every tensor must be on u's device (",
                    u.device(), "), got one on ", t.device());
    }
    for (const auto *t : {&D, &z, &delta_bias, &initial_state}) {
        TORCH_CHECK(!*t || (*t)->device() == u.device(), "selective_scan_fwd: every tensor must be on u's device (",
                    u.device(), "), got one on ", (*t)->device());
    }
    c10::cuda::CUDAGuard device_guard(u.device());
    return bfast::selective_scan_run(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                     return_last_state, c10::cuda::getCurrentCUDAStream());
}
