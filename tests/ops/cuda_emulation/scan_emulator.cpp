// The CUDA selective scan kernel (csrc/selective_scan) run on the CPU under thread emulation, with the same
// parameter setup as the CUDA binding: a CPU torch extension for the tests.
#include <optional>
#include <tuple>

#include <torch/extension.h>

#include "thread_emulation.h"

#include "selective_scan/selective_scan_kernel.cuh"
#include "selective_scan/selective_scan_params.h"

std::tuple<torch::Tensor, std::optional<torch::Tensor>> selective_scan_fwd_emulated(
    torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B, torch::Tensor C,
    std::optional<torch::Tensor> D, std::optional<torch::Tensor> z, std::optional<torch::Tensor> delta_bias,
    std::optional<torch::Tensor> initial_state, bool delta_softplus, bool return_last_state) {
    TORCH_CHECK(u.device().is_cpu(), "the emulated kernel takes CPU tensors");
    auto out = torch::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
    std::optional<torch::Tensor> hT;
    if (return_last_state) hT = torch::empty({u.size(0), u.size(1), A.size(1)}, u.options().dtype(at::kFloat));
    const auto p = bfast::make_scan_params(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, out, hT);
    out.fill_(NAN);  // an element the kernel leaves unwritten fails the tests
    if (hT) hT->fill_(NAN);
    if (p.batch > 0 && p.dim > 0) {
        bf_emu::launch(dim3(static_cast<unsigned>(p.dim), static_cast<unsigned>(p.batch)), bfast::kScanThreads,
                       bfast::selective_scan_fwd_kernel<bfast::kScanThreads, bfast::kScanStepsPerThread>, p);
    }
    return {out, hT};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("selective_scan_fwd", &selective_scan_fwd_emulated, "csrc's selective scan kernel, emulated on the CPU",
          pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"), pybind11::arg("C"),
          pybind11::arg("D") = pybind11::none(), pybind11::arg("z") = pybind11::none(),
          pybind11::arg("delta_bias") = pybind11::none(), pybind11::arg("initial_state") = pybind11::none(),
          pybind11::arg("delta_softplus") = false, pybind11::arg("return_last_state") = false);
}
