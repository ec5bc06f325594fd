#pragma once

// Host side of causal_conv1d_fwd past the device checks: the parameters from the tensors (with their checks), the
// outputs and the launch. Shared by the CUDA binding and the tests' CPU emulation of the kernel.
#include <optional>
#include <tuple>

#include <torch/types.h>

#include "causal_conv1d/causal_conv1d.h"
#include "common/dtype_code.h"
#include "common/grid_limit.h"
#include "common/new_buffer.h"

namespace bfast {

inline CausalConvParams make_conv_params(const torch::Tensor &x, const torch::Tensor &weight,
                                         const std::optional<torch::Tensor> &bias,
                                         const std::optional<torch::Tensor> &h0, bool silu, torch::Tensor &out,
                                         std::optional<torch::Tensor> &hT) {
    constexpr const char *fn = "causal_conv1d_fwd";
    TORCH_CHECK(x.dim() == 3, fn, ": x must be (batch, dim, L)");
    TORCH_CHECK(x.size(2) <= 1 || x.stride(2) == 1, fn, ": x needs stride 1 along L");
    TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(1) && weight.is_contiguous(), fn,
                ": weight must be (dim, width) contiguous");
    const int64_t W = weight.size(1);
    TORCH_CHECK(W >= 1 && W <= kConvMaxWidth, fn, ": width = weight.size(1) must be in [1, ", kConvMaxWidth,
                "], got ", W);
    TORCH_CHECK_VALUE(x.size(0) <= 65535, fn, ": batch ", x.size(0), " is above 65535, ", bfast::kGridLimitHint);
    TORCH_CHECK_VALUE(x.size(1) <= 65535, fn, ": dim ", x.size(1), " is above 65535, CUDA's grid limit (use "
                      "backend='torch')");
    CausalConvParams p{};
    p.batch = x.size(0);
    p.dim = x.size(1);
    p.L = x.size(2);
    p.W = W;
    p.x = x.data_ptr();
    p.x_type = dtype_code(x, fn, "x");
    p.x_sb = x.stride(0);
    p.x_sd = x.stride(1);
    p.w = weight.data_ptr();
    p.w_type = dtype_code(weight, fn, "weight");
    if (bias) {
        TORCH_CHECK(bias->dim() == 1 && bias->size(0) == p.dim && bias->is_contiguous(), fn,
                    ": bias must be (dim,) contiguous");
        p.bias = bias->data_ptr();
        p.bias_type = dtype_code(*bias, fn, "bias");
    }
    if (h0 && W > 1) {
        TORCH_CHECK(h0->sizes() == torch::IntArrayRef({p.batch, p.dim, W - 1}) && h0->is_contiguous() &&
                        h0->scalar_type() == x.scalar_type(),
                    fn, ": initial_state must be (batch, dim, width - 1) contiguous in x's dtype");
        p.h0 = h0->data_ptr();
    }
    p.silu = silu;
    p.out = out.data_ptr();
    p.hT = hT && W > 1 ? hT->data_ptr() : nullptr;
    return p;
}

// out (contiguous, x's dtype) and, when asked for, the final state (batch, dim, width - 1) in x's dtype.
inline std::tuple<torch::Tensor, std::optional<torch::Tensor>> causal_conv1d_run(
    const torch::Tensor &x, const torch::Tensor &weight, const std::optional<torch::Tensor> &bias,
    const std::optional<torch::Tensor> &initial_state, bool silu, bool return_final_state, cudaStream_t stream) {
    TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && weight.size(1) >= 1,
                "causal_conv1d_fwd: x must be (batch, dim, L) and weight (dim, width >= 1)");
    auto out = torch::empty(x.sizes(), x.options());
    std::optional<torch::Tensor> hT;
    if (return_final_state) hT = torch::empty({x.size(0), x.size(1), weight.size(1) - 1}, x.options());
    const auto p = make_conv_params(x, weight, bias, initial_state, silu, out, hT);
    poison(out);  // after the checks: x's dtype may not be a float one
    if (hT) poison(*hT);
    causal_conv1d_launch(p, stream);
    return {out, hT};
}

}  // namespace bfast
