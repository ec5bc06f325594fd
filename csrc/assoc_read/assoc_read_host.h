#pragma once

// Host side of assoc_read_fwd past the device checks: input checks, the split plan for num_sms SMs, output and
// scratch, the launches on `stream`. Shared by the CUDA binding and the tests' CPU emulation of the kernels.
#include <algorithm>

#include <torch/types.h>

#include "assoc_read/assoc_read.h"
#include "assoc_read/assoc_read_checks.h"
#include "common/dispatch.h"
#include "common/new_buffer.h"

namespace assoc_read {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits a reduction of `chunks` chunks so that base * splits reaches about `target` blocks; no split is empty.
inline void plan_split(int64_t base, int64_t target, int64_t chunks, int64_t max_splits, int &splits,
                       int &chunks_per_split) {
    int64_t s = base >= target ? 1 : ceil_div(target, base);
    s = std::min({s, chunks, max_splits});
    s = std::max<int64_t>(s, 1);
    const int64_t per = ceil_div(chunks, s);
    chunks_per_split = static_cast<int>(per);
    splits = static_cast<int>(ceil_div(chunks, per));
}

// The q projection's split of d: about 2 blocks (256 threads) per SM.
inline void plan_q_split(AssocReadParams &params, int num_sms) {
    const int64_t q_base = ceil_div(params.num_tokens, kQM) * ceil_div(params.n, kQN);
    plan_split(q_base, 2 * static_cast<int64_t>(num_sms), ceil_div(params.d, kQK), kMaxQSplits, params.q_splits,
               params.q_chunks_per_split);
}

}  // namespace assoc_read

// Fills params from validated inputs (all but the scratch buffers and the split plan). Returns false when there
// is nothing to compute (B*T == 0 or d == 0).
inline bool assoc_read_fill(const AssocReadSizes &sizes, const torch::Tensor &h, const torch::Tensor &w_q,
                            const torch::Tensor &A, const torch::Tensor &z, int64_t nu, double eps,
                            const torch::Tensor &out, AssocReadParams &params) {
    const int64_t num_tokens = sizes.B * sizes.T;
    params.h_ptr = h.data_ptr();
    params.wq_ptr = w_q.data_ptr<float>();
    params.A_ptr = A.data_ptr<float>();
    params.z_ptr = z.data_ptr<float>();
    params.out_ptr = out.data_ptr();
    params.q_part = nullptr;
    params.num_part = nullptr;
    params.den_part = nullptr;
    params.num_tokens = num_tokens;
    // A broadcast: one group spanning all tokens (tiles may then cross batch boundaries).
    params.num_groups = sizes.Ba == 1 ? 1 : sizes.B;
    params.group_len = sizes.Ba == 1 ? num_tokens : sizes.T;
    params.A_group_stride = sizes.Ba == 1 ? 0 : sizes.F * sizes.d;
    params.z_group_stride = sizes.Ba == 1 ? 0 : sizes.F;
    params.d = static_cast<int>(sizes.d);
    params.n = static_cast<int>(sizes.n);
    params.nu = static_cast<int>(nu);
    params.F = static_cast<int>(sizes.F);
    params.eps = static_cast<float>(eps);
    return num_tokens != 0 && sizes.d != 0;
}

inline torch::Tensor assoc_read_run(const torch::Tensor &h, const torch::Tensor &w_q, const torch::Tensor &A,
                                    const torch::Tensor &z, int64_t nu, double eps, int num_sms,
                                    cudaStream_t stream) {
    using namespace assoc_read;
    const AssocReadSizes sizes = check_assoc_read_inputs("assoc_read_fwd", h, w_q, A, z, nu, eps);
    auto out = bfast::new_buffer(h.sizes(), h.options());
    AssocReadParams params;
    if (!assoc_read_fill(sizes, h, w_q, A, z, nu, eps, out, params)) return out;

    plan_q_split(params, num_sms);
    // Main product: split F until there are about 4 blocks (64 threads) per SM.
    const int64_t m_base = ceil_div(params.group_len, kBT) * params.num_groups * ceil_div(params.d, kBD);
    plan_split(m_base, 4 * static_cast<int64_t>(num_sms), ceil_div(params.F, kFC), 65535, params.f_splits,
               params.f_chunks_per_split);

    const auto f32 = h.options().dtype(at::ScalarType::Float);
    auto q_part = bfast::new_buffer({params.q_splits, params.num_tokens, static_cast<int64_t>(params.n)}, f32);
    params.q_part = q_part.data_ptr<float>();
    torch::Tensor num_part;
    torch::Tensor den_part;
    if (params.f_splits > 1) {
        num_part = bfast::new_buffer({params.f_splits, params.num_tokens, static_cast<int64_t>(params.d)}, f32);
        den_part = bfast::new_buffer({params.f_splits, params.num_tokens}, f32);
        params.num_part = num_part.data_ptr<float>();
        params.den_part = den_part.data_ptr<float>();
    }

    bfast::dispatch_float_dtype(h.scalar_type(), "assoc_read_fwd", [&](auto type) {
        using T = typename decltype(type)::type;
        assoc_read_qproj_launch<T>(params, stream);
        assoc_read_main_launch<T>(params, stream);
    });
    return out;
}
