#include <algorithm>
#include <climits>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "assoc_read/assoc_read.h"
#include "assoc_read_tc.h"

#define TC_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), "assoc_read_fwd_tc: " #x " must be a CUDA tensor")
#define TC_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), "assoc_read_fwd_tc: " #x " must be contiguous")
#define TC_CHECK_FLOAT(x)                                                                                \
    TORCH_CHECK((x).scalar_type() == at::ScalarType::Float, "assoc_read_fwd_tc: " #x " must be float32, got ", \
                (x).scalar_type())
#define TC_CHECK_SHAPE(x, ...)                                                                                   \
    TORCH_CHECK((x).sizes() == torch::IntArrayRef({__VA_ARGS__}), "assoc_read_fwd_tc: " #x " must have shape (", \
                torch::IntArrayRef({__VA_ARGS__}), "), got ", (x).sizes())

namespace {

int64_t tc_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Validates the inputs and fills params except q_part / q_splits. Returns false when out is empty.
bool tc_check_and_fill(const torch::Tensor &h, const torch::Tensor &w_q, const torch::Tensor &A,
                       const torch::Tensor &z, int64_t nu, double eps, const torch::Tensor &out,
                       AssocReadTcParams &params) {
    TC_CHECK_CUDA(h);
    TC_CHECK_CUDA(w_q);
    TC_CHECK_CUDA(A);
    TC_CHECK_CUDA(z);
    TORCH_CHECK(h.dim() == 3, "assoc_read_fwd_tc: h must be 3-D (B, T, d), got ", h.dim(), " dims");
    TORCH_CHECK(w_q.dim() == 2, "assoc_read_fwd_tc: w_q must be 2-D (n, d), got ", w_q.dim(), " dims");
    TORCH_CHECK(A.dim() == 3, "assoc_read_fwd_tc: A must be 3-D (B or 1, 2*nu*n, d), got ", A.dim(), " dims");
    TORCH_CHECK(z.dim() == 2, "assoc_read_fwd_tc: z must be 2-D (B or 1, 2*nu*n), got ", z.dim(), " dims");
    const auto h_type = h.scalar_type();
    TORCH_CHECK(h_type == at::ScalarType::Float || h_type == at::ScalarType::BFloat16 ||
                    h_type == at::ScalarType::Half,
                "assoc_read_fwd_tc: h must be float32, bfloat16 or float16, got ", h_type);
    TC_CHECK_FLOAT(w_q);
    TC_CHECK_FLOAT(A);
    TC_CHECK_FLOAT(z);
    for (const torch::Tensor *t : {&w_q, &A, &z}) {
        TORCH_CHECK(t->device() == h.device(), "assoc_read_fwd_tc: w_q, A and z must be on h's device (",
                    h.device(), "), got ", t->device());
    }
    TC_CHECK_CONTIGUOUS(h);
    TC_CHECK_CONTIGUOUS(w_q);
    TC_CHECK_CONTIGUOUS(A);
    TC_CHECK_CONTIGUOUS(z);

    const int64_t B = h.size(0);
    const int64_t T = h.size(1);
    const int64_t d = h.size(2);
    const int64_t n = w_q.size(0);
    TORCH_CHECK(n >= 1, "assoc_read_fwd_tc: w_q must have at least one row (n >= 1)");
    TORCH_CHECK(nu >= 1, "assoc_read_fwd_tc: nu must be >= 1, got ", nu);
    TORCH_CHECK(eps > 0, "assoc_read_fwd_tc: eps must be > 0, got ", eps);
    TORCH_CHECK(d <= INT_MAX && n <= INT_MAX / 2 && nu <= INT_MAX / (2 * n),
                "assoc_read_fwd_tc: d, n or 2*nu*n exceeds the int32 range");
    const int64_t F = 2 * nu * n;
    const int64_t Ba = A.size(0);
    TORCH_CHECK(Ba == B || Ba == 1, "assoc_read_fwd_tc: A.size(0) must be B (", B, ") or 1, got ", Ba);
    TC_CHECK_SHAPE(w_q, n, d);
    TC_CHECK_SHAPE(A, Ba, F, d);
    TC_CHECK_SHAPE(z, Ba, F);

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
    switch (h.scalar_type()) {
        case at::ScalarType::Float:
            assoc_read_qproj_launch<float>(qp, stream);
            assoc_read_tc_launch<float>(params, stream);
            break;
        case at::ScalarType::BFloat16:
            assoc_read_qproj_launch<__nv_bfloat16>(qp, stream);
            assoc_read_tc_launch<__nv_bfloat16>(params, stream);
            break;
        case at::ScalarType::Half:
            assoc_read_qproj_launch<__half>(qp, stream);
            assoc_read_tc_launch<__half>(params, stream);
            break;
        default:
            TORCH_CHECK(false, "assoc_read_fwd_tc: unsupported dtype ", h.scalar_type());
    }
    return out;
}
