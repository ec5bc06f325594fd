#pragma once

// Host side of assoc_read_fwd_tc past the device checks: input checks, the shared-memory check against
// smem_optin, the q projection's split plan for num_sms SMs, output and scratch, the two launches on `stream`.
// Shared by the CUDA binding and the tests' CPU emulation of the kernels.
#include <torch/types.h>

#include "assoc_read/assoc_read_host.h"
#include "assoc_read_tc/assoc_read_tc.h"
#include "common/dispatch.h"
#include "common/new_buffer.h"

inline torch::Tensor assoc_read_tc_run(const torch::Tensor &h, const torch::Tensor &w_q, const torch::Tensor &A,
                                       const torch::Tensor &z, int64_t nu, double eps, int num_sms, int smem_optin,
                                       cudaStream_t stream) {
    const AssocReadSizes sizes = check_assoc_read_inputs("assoc_read_fwd_tc", h, w_q, A, z, nu, eps);
    const size_t smem = assoc_read_tc::smem_floats(static_cast<int>(sizes.n)) * sizeof(float);
    TORCH_CHECK(smem <= static_cast<size_t>(smem_optin), "assoc_read_fwd_tc: n = ", sizes.n, " needs ", smem,
                " bytes of shared memory per block but the device allows ", smem_optin,
                "; use assoc_read_fwd for this n");
    auto out = bfast::new_buffer(h.sizes(), h.options());
    // q = h @ w_q^T with the FFMA projection of assoc_read_fwd.
    AssocReadParams qp;
    if (!assoc_read_fill(sizes, h, w_q, A, z, nu, eps, out, qp)) return out;
    assoc_read::plan_q_split(qp, num_sms);
    const auto f32 = h.options().dtype(at::ScalarType::Float);
    auto q_part = bfast::new_buffer({qp.q_splits, qp.num_tokens, static_cast<int64_t>(qp.n)}, f32);
    qp.q_part = q_part.data_ptr<float>();

    AssocReadTcParams params;
    params.h_ptr = qp.h_ptr;
    params.q_part = qp.q_part;
    params.A_ptr = qp.A_ptr;
    params.z_ptr = qp.z_ptr;
    params.out_ptr = qp.out_ptr;
    params.num_tokens = qp.num_tokens;
    params.num_groups = qp.num_groups;
    params.group_len = qp.group_len;
    params.A_group_stride = qp.A_group_stride;
    params.z_group_stride = qp.z_group_stride;
    params.d = qp.d;
    params.n = qp.n;
    params.F = qp.F;
    params.q_splits = qp.q_splits;
    params.eps = qp.eps;

    bfast::dispatch_float_dtype(h.scalar_type(), "assoc_read_fwd_tc", [&](auto type) {
        using T = typename decltype(type)::type;
        assoc_read_qproj_launch<T>(qp, stream);
        assoc_read_tc_launch<T>(params, stream);
    });
    return out;
}
