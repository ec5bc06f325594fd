#pragma once

// Host side of selective_scan_fwd past the device checks: the parameters from the tensors (with their checks),
// the outputs and the launch. Shared by the CUDA binding and the tests' CPU emulation of the kernel.
#include <optional>
#include <tuple>

#include <torch/types.h>

#include "common/dtype_code.h"
#include "common/grid_limit.h"
#include "common/new_buffer.h"
#include "selective_scan/selective_scan.h"

namespace bfast {

// B or C: (dim, N) contiguous, (batch, N, L) or (batch, G, N, L) with stride 1 along L.
inline void scan_bc(const torch::Tensor &X, const char *name, const int64_t batch, const int64_t dim,
                    const int64_t N, const int64_t L, const void *&ptr, int &type, bool &varying, int64_t &sb,
                    int64_t &sg, int64_t &sn, int64_t &dpg) {
    constexpr const char *fn = "selective_scan_fwd";
    ptr = X.data_ptr();
    type = dtype_code(X, fn, name);
    varying = X.dim() > 2;
    TORCH_CHECK(X.dim() >= 2 && X.dim() <= 4, fn, ": ", name, " must be 2-D, 3-D or 4-D");
    if (varying) {
        const int64_t G = X.dim() == 4 ? X.size(1) : 1;
        TORCH_CHECK(X.size(0) == batch && X.size(-2) == N && X.size(-1) == L, fn, ": time-varying ", name,
                    " must be (batch, [G,] N, L) = (", batch, ", [G,] ", N, ", ", L, "), got ", X.sizes());
        TORCH_CHECK(G >= 1 && dim % G == 0, fn, ": ", name, "'s groups G = ", G, " must divide dim = ", dim);
        TORCH_CHECK(L <= 1 || X.stride(-1) == 1, fn, ": ", name, " needs stride 1 along L");
    }
    if (!varying) {
        TORCH_CHECK(X.sizes() == torch::IntArrayRef({dim, N}) && X.is_contiguous(), fn, ": time-invariant ", name,
                    " must be (dim, N) = (", dim, ", ", N, ") contiguous, got ", X.sizes());
        sb = sg = sn = 0;
        dpg = 1;
    } else if (X.dim() == 3) {
        sb = X.stride(0);
        sg = 0;
        sn = X.stride(1);
        dpg = dim;
    } else {
        sb = X.stride(0);
        sg = X.stride(1);
        sn = X.stride(2);
        dpg = dim / X.size(1);
    }
}

inline SelectiveScanParams make_scan_params(const torch::Tensor &u, const torch::Tensor &delta,
                                            const torch::Tensor &A, const torch::Tensor &B, const torch::Tensor &C,
                                            const std::optional<torch::Tensor> &D,
                                            const std::optional<torch::Tensor> &z,
                                            const std::optional<torch::Tensor> &delta_bias,
                                            const std::optional<torch::Tensor> &h0, bool softplus,
                                            torch::Tensor &out, std::optional<torch::Tensor> &hT) {
    TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan_fwd: u and delta must be (batch, dim, L)");
    TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1) && A.is_contiguous() &&
                    A.scalar_type() == at::ScalarType::Float,
                "selective_scan_fwd: A must be (dim, N) float32 contiguous");
    TORCH_CHECK(A.size(1) >= 1 && A.size(1) <= kScanMaxN, "selective_scan_fwd: N = A.size(1) must be in [1, ",
                kScanMaxN, "]");
    TORCH_CHECK(u.size(2) <= 1 || (u.stride(2) == 1 && delta.stride(2) == 1),
                "selective_scan_fwd: u and delta need stride 1 along L");
    TORCH_CHECK_VALUE(u.size(0) <= 65535, "selective_scan_fwd: batch ", u.size(0), " is above 65535, ",
                      bfast::kGridLimitHint);
    SelectiveScanParams p{};
    p.batch = u.size(0);
    p.dim = u.size(1);
    p.L = u.size(2);
    p.N = A.size(1);
    p.u = u.data_ptr();
    p.u_type = dtype_code(u, "selective_scan_fwd", "u");
    p.u_sb = u.stride(0);
    p.u_sd = u.stride(1);
    p.delta = delta.data_ptr();
    p.delta_type = dtype_code(delta, "selective_scan_fwd", "delta");
    p.dt_sb = delta.stride(0);
    p.dt_sd = delta.stride(1);
    if (z) {
        TORCH_CHECK(z->sizes() == u.sizes() && (u.size(2) <= 1 || z->stride(2) == 1),
                    "selective_scan_fwd: z must be (batch, dim, L) with stride 1 along L");
        p.z = z->data_ptr();
        p.z_type = dtype_code(*z, "selective_scan_fwd", "z");
        p.z_sb = z->stride(0);
        p.z_sd = z->stride(1);
    }
    scan_bc(B, "B", p.batch, p.dim, p.N, p.L, p.B, p.B_type, p.B_varying, p.B_sb, p.B_sg, p.B_sn, p.B_dpg);
    scan_bc(C, "C", p.batch, p.dim, p.N, p.L, p.C, p.C_type, p.C_varying, p.C_sb, p.C_sg, p.C_sn, p.C_dpg);
    p.A = A.data_ptr<float>();
    auto vec = [&](const std::optional<torch::Tensor> &v, const char *name) -> const float * {
        if (!v) return nullptr;
        TORCH_CHECK(v->dim() == 1 && v->size(0) == p.dim && v->is_contiguous() &&
                        v->scalar_type() == at::ScalarType::Float,
                    "selective_scan_fwd: ", name, " must be (dim,) float32 contiguous");
        return v->data_ptr<float>();
    };
    p.D = vec(D, "D");
    p.delta_bias = vec(delta_bias, "delta_bias");
    if (h0) {
        TORCH_CHECK(h0->sizes() == torch::IntArrayRef({p.batch, p.dim, p.N}) && h0->is_contiguous() &&
                        h0->scalar_type() == at::ScalarType::Float,
                    "selective_scan_fwd: initial_state must be (batch, dim, N) float32 contiguous");
        p.h0 = h0->data_ptr<float>();
    }
    p.softplus = softplus;
    p.out = out.data_ptr();
    p.hT = hT ? hT->data_ptr<float>() : nullptr;
    return p;
}

// out (contiguous, u's dtype) and, when asked for, the last state (batch, dim, N) float32.
inline std::tuple<torch::Tensor, std::optional<torch::Tensor>> selective_scan_run(
    const torch::Tensor &u, const torch::Tensor &delta, const torch::Tensor &A, const torch::Tensor &B,
    const torch::Tensor &C, const std::optional<torch::Tensor> &D, const std::optional<torch::Tensor> &z,
    const std::optional<torch::Tensor> &delta_bias, const std::optional<torch::Tensor> &initial_state,
    bool delta_softplus, bool return_last_state, cudaStream_t stream) {
    TORCH_CHECK(u.dim() == 3 && A.dim() == 2, "selective_scan_fwd: u must be (batch, dim, L) and A (dim, N)");
    auto out = torch::empty(u.sizes(), u.options());
    std::optional<torch::Tensor> hT;
    if (return_last_state) hT = torch::empty({u.size(0), u.size(1), A.size(1)}, u.options().dtype(at::kFloat));
    const auto p = make_scan_params(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, out, hT);
    poison(out);  // after the checks: u's dtype may not be a float one
    if (hT) poison(*hT);
    selective_scan_launch(p, stream);
    return {out, hT};
}

}  // namespace bfast
