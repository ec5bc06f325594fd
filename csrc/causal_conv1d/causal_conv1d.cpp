#include <optional>
#include <tuple>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "causal_conv1d/causal_conv1d.h"
#include "causal_conv1d/causal_conv1d_params.h"

std::tuple<torch::Tensor, std::optional<torch::Tensor>> causal_conv1d_fwd(torch::Tensor x, torch::Tensor weight,
                                                                           std::optional<torch::Tensor> bias,
                                                                           std::optional<torch::Tensor> initial_state,
                                                                           bool silu, bool return_final_state) {
    TORCH_CHECK(x.is_cuda(), "causal_conv1d_fwd: x must be a CUDA tensor");
    for (const auto *t : {&bias, &initial_state}) {
        TORCH_CHECK(!*t || (*t)->device() == x.device(), "causal_conv1d_fwd: every tensor must be on x's device (",
                    x.device(), "), got one on ", (*t)->device());
    }
    TORCH_CHECK(weight.device() == x.device(), "causal_conv1d_fwd: weight must be on x's device (", x.device(),
                "), got ", weight.device());
    c10::cuda::CUDAGuard device_guard(x.device());
    return bfast::causal_conv1d_run(x, weight, bias, initial_state, silu, return_final_state,
                                    c10::cuda::getCurrentCUDAStream());
}
