#include <algorithm>
#include <climits>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "assoc_read/assoc_read.h"
#include "assoc_read/assoc_read_checks.h"
#include "common/dispatch.h"
#include "assoc_read_tc.h"

namespace {

int64_t tc_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Validates the inputs and fills params except q_part / q_splits. Returns false when out is empty.
bool tc_check_and_fill(const torch::Tensor &h, const torch::Tensor &w_q, const torch::Tensor &A,
                       const torch::Tensor &z, int64_t nu, double eps, const torch::Tensor &out,
                       AssocReadTcParams &params) {
    const AssocReadSizes sizes = check_assoc_read_inputs("assoc_read_fwd_tc", h, w_q, A, z, nu, eps);
    const int64_t B = sizes.B, T = sizes.T, d = sizes.d, n = sizes.n, F = sizes.F, Ba = sizes.Ba;

    const int64_t num_tokens = B * T;
    params.h_ptr = h.data_ptr();
    params.q_part = nullptr;
    params.A_ptr = A.data_ptr<float>();
    params.z_ptr = z.data_ptr<float>();
    params.out_ptr = out.data_ptr();
    params.num_tokens = num_tokens;
    // A broadcast: one group spanning all tokens (tiles may then cross batch boundaries).
    params.num_groups = Ba == 1 ? 1 : B;
    params.group_len = Ba == 1 ? num_tokens : T;
    params.A_group_stride = Ba == 1 ? 0 : F * d;
    params.z_group_stride = Ba == 1 ? 0 : F;
    params.d = static_cast<int>(d);
    params.n = static_cast<int>(n);
    params.F = static_cast<int>(F);
    params.q_splits = 1;
    params.eps = static_cast<float>(eps);
    return num_tokens != 0 && d != 0;
}

}  // namespace

torch::Tensor assoc_read_fwd_tc(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z, int64_t nu,
                                double eps) {
    auto out = torch::empty_like(h, at::MemoryFormat::Contiguous);
    AssocReadTcParams params;
    if (!tc_check_and_fill(h, w_q, A, z, nu, eps, out, params)) return out;

    c10::cuda::CUDAGuard device_guard(h.device());
    int device = 0;
    int num_sms = 0;
    int smem_optin = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    const size_t smem = assoc_read_tc::smem_floats(params.n) * sizeof(float);
    TORCH_CHECK(smem <= static_cast<size_t>(smem_optin), "assoc_read_fwd_tc: n = ", params.n, " needs ", smem,
                " bytes of shared memory per block but the device allows ", smem_optin,
                "; use assoc_read_fwd for this n");

    // q = h @ w_q^T with the FFMA projection of assoc_read_fwd, d split until there are ~2 blocks per SM.
    AssocReadParams qp{};
    qp.h_ptr = params.h_ptr;
    qp.wq_ptr = w_q.data_ptr<float>();
    qp.num_tokens = params.num_tokens;
    qp.d = params.d;
    qp.n = params.n;
    {
        using namespace assoc_read;
        const int64_t base = tc_ceil_div(params.num_tokens, kQM) * tc_ceil_div(params.n, kQN);
        const int64_t chunks = tc_ceil_div(params.d, kQK);
        int64_t splits = base >= 2 * num_sms ? 1 : tc_ceil_div(2 * static_cast<int64_t>(num_sms), base);
        splits = std::max<int64_t>(1, std::min<int64_t>({splits, chunks, kMaxQSplits}));
        const int64_t per = tc_ceil_div(chunks, splits);
        qp.q_chunks_per_split = static_cast<int>(per);
        qp.q_splits = static_cast<int>(tc_ceil_div(chunks, per));
    }
    const auto f32 = h.options().dtype(at::ScalarType::Float);
    auto q_part = torch::empty({qp.q_splits, params.num_tokens, static_cast<int64_t>(params.n)}, f32);
    qp.q_part = q_part.data_ptr<float>();
    params.q_part = qp.q_part;
    params.q_splits = qp.q_splits;

    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    bfast::dispatch_float_dtype(h.scalar_type(), "assoc_read_fwd_tc", [&](auto type) {
        using T = typename decltype(type)::type;
        assoc_read_qproj_launch<T>(qp, stream);
        assoc_read_tc_launch<T>(params, stream);
    });
    return out;
}
