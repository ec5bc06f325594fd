#include <algorithm>
#include <climits>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "assoc_read.h"
#include "assoc_read_checks.h"
#include "common/dispatch.h"

namespace {

// Validates the inputs of assoc_read_fwd and fills every field of params except the scratch buffers and
// the split plan. Returns false when there is nothing to compute (B*T == 0 or d == 0).
bool check_and_fill(const torch::Tensor &h, const torch::Tensor &w_q, const torch::Tensor &A,
                    const torch::Tensor &z, int64_t nu, double eps, const torch::Tensor &out,
                    AssocReadParams &params) {
    const AssocReadSizes sizes = check_assoc_read_inputs("assoc_read_fwd", h, w_q, A, z, nu, eps);
    const int64_t B = sizes.B, T = sizes.T, d = sizes.d, n = sizes.n, F = sizes.F, Ba = sizes.Ba;

    const int64_t num_tokens = B * T;

    params.h_ptr = h.data_ptr();
    params.wq_ptr = w_q.data_ptr<float>();
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
    params.nu = static_cast<int>(nu);
    params.F = static_cast<int>(F);
    params.eps = static_cast<float>(eps);
    return num_tokens != 0 && d != 0;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits a reduction of `chunks` chunks so that base * splits reaches about `target` blocks; no split is empty.
void plan_split(int64_t base, int64_t target, int64_t chunks, int64_t max_splits, int &splits,
                int &chunks_per_split) {
    int64_t s = base >= target ? 1 : ceil_div(target, base);
    s = std::min({s, chunks, max_splits});
    s = std::max<int64_t>(s, 1);
    const int64_t per = ceil_div(chunks, s);
    chunks_per_split = static_cast<int>(per);
    splits = static_cast<int>(ceil_div(chunks, per));
}

}  // namespace

torch::Tensor assoc_read_fwd(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z, int64_t nu,
                             double eps) {
    using namespace assoc_read;
    auto out = torch::empty_like(h, at::MemoryFormat::Contiguous);
    AssocReadParams params;
    if (!check_and_fill(h, w_q, A, z, nu, eps, out, params)) return out;

    c10::cuda::CUDAGuard device_guard(h.device());
    int device = 0;
    int num_sms = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));

    // q projection: split d until there are about 2 blocks (256 threads) per SM.
    const int64_t q_base = ceil_div(params.num_tokens, kQM) * ceil_div(params.n, kQN);
    plan_split(q_base, 2 * static_cast<int64_t>(num_sms), ceil_div(params.d, kQK), kMaxQSplits, params.q_splits,
               params.q_chunks_per_split);
    // Main product: split F until there are about 4 blocks (64 threads) per SM.
    const int64_t m_base = ceil_div(params.group_len, kBT) * params.num_groups * ceil_div(params.d, kBD);
    plan_split(m_base, 4 * static_cast<int64_t>(num_sms), ceil_div(params.F, kFC), 65535, params.f_splits,
               params.f_chunks_per_split);

    const auto f32 = h.options().dtype(at::ScalarType::Float);
    auto q_part = torch::empty({params.q_splits, params.num_tokens, static_cast<int64_t>(params.n)}, f32);
    params.q_part = q_part.data_ptr<float>();
    torch::Tensor num_part;
    torch::Tensor den_part;
    params.num_part = nullptr;
    params.den_part = nullptr;
    if (params.f_splits > 1) {
        num_part = torch::empty({params.f_splits, params.num_tokens, static_cast<int64_t>(params.d)}, f32);
        den_part = torch::empty({params.f_splits, params.num_tokens}, f32);
        params.num_part = num_part.data_ptr<float>();
        params.den_part = den_part.data_ptr<float>();
    }

    // Same stream as at::cuda::getCurrentCUDAStream(); c10 header avoids the cuBLAS/cuSPARSE include chain.
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    bfast::dispatch_float_dtype(h.scalar_type(), "assoc_read_fwd", [&](auto type) {
        using T = typename decltype(type)::type;
        assoc_read_qproj_launch<T>(params, stream);
        assoc_read_main_launch<T>(params, stream);
    });
    return out;
}
