// csrc's CUDA kernels run on the CPU under thread emulation, with the same parameter setup as their CUDA
// bindings: a CPU torch extension for the tests. Outputs are NaN-filled first, so an element a kernel leaves
// unwritten fails the comparisons.
#include <cmath>
#include <optional>
#include <tuple>

#include <torch/extension.h>

#include "thread_emulation.h"

#include "causal_conv1d/causal_conv1d_kernel.cuh"
#include "causal_conv1d/causal_conv1d_params.h"
#include "selective_scan/selective_scan_kernel.cuh"
#include "selective_scan/selective_scan_params.h"

namespace {

void poison(torch::Tensor &out, std::optional<torch::Tensor> &state) {
    out.fill_(NAN);
    if (state) state->fill_(NAN);
}

}  // namespace

std::tuple<torch::Tensor, std::optional<torch::Tensor>> selective_scan_fwd_emulated(
    torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B, torch::Tensor C,
    std::optional<torch::Tensor> D, std::optional<torch::Tensor> z, std::optional<torch::Tensor> delta_bias,
    std::optional<torch::Tensor> initial_state, bool delta_softplus, bool return_last_state) {
    TORCH_CHECK(u.device().is_cpu(), "the emulated kernel takes CPU tensors");
    auto out = torch::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
    std::optional<torch::Tensor> hT;
    if (return_last_state) hT = torch::empty({u.size(0), u.size(1), A.size(1)}, u.options().dtype(at::kFloat));
    const auto p = bfast::make_scan_params(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, out, hT);
    poison(out, hT);
    if (p.batch > 0 && p.dim > 0) {
        bf_emu::launch(dim3(static_cast<unsigned>(p.dim), static_cast<unsigned>(p.batch)), bfast::kScanThreads,
                       bfast::selective_scan_fwd_kernel<bfast::kScanThreads, bfast::kScanStepsPerThread>, p);
    }
    return {out, hT};
}

std::tuple<torch::Tensor, std::optional<torch::Tensor>> causal_conv1d_fwd_emulated(
    torch::Tensor x, torch::Tensor weight, std::optional<torch::Tensor> bias, std::optional<torch::Tensor> initial_state,
    bool silu, bool return_final_state) {
    TORCH_CHECK(x.device().is_cpu(), "the emulated kernel takes CPU tensors");
    auto out = torch::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    std::optional<torch::Tensor> hT;
    if (return_final_state) hT = torch::empty({x.size(0), x.size(1), weight.size(1) - 1}, x.options());
    const auto p = bfast::make_conv_params(x, weight, bias, initial_state, silu, out, hT);
    poison(out, hT);
    if (p.batch > 0 && p.dim > 0) {
        constexpr int64_t tile = int64_t(bfast::kConvThreads) * bfast::kConvStepsPerThread;
        const int64_t tiles = p.L > 0 ? (p.L + tile - 1) / tile : 1;
        bf_emu::launch(dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(p.dim), static_cast<unsigned>(p.batch)),
                       bfast::kConvThreads,
                       bfast::causal_conv1d_fwd_kernel<bfast::kConvThreads, bfast::kConvStepsPerThread>, p);
    }
    return {out, hT};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("selective_scan_fwd", &selective_scan_fwd_emulated, "csrc's selective scan kernel, emulated on the CPU",
          pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"), pybind11::arg("C"),
          pybind11::arg("D") = pybind11::none(), pybind11::arg("z") = pybind11::none(),
          pybind11::arg("delta_bias") = pybind11::none(), pybind11::arg("initial_state") = pybind11::none(),
          pybind11::arg("delta_softplus") = false, pybind11::arg("return_last_state") = false);
    m.def("causal_conv1d_fwd", &causal_conv1d_fwd_emulated, "csrc's causal conv1d kernel, emulated on the CPU",
          pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias") = pybind11::none(),
          pybind11::arg("initial_state") = pybind11::none(), pybind11::arg("silu") = false,
          pybind11::arg("return_final_state") = false);
}
