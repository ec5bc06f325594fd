#pragma once

// Host side of assoc_write_fwd past the device checks: shapes, dtypes, outputs and scratch, the parameters and
// the three launches on `stream`. Shared by the CUDA binding and the tests' CPU emulation of the kernels.
#include <climits>
#include <tuple>

#include <torch/types.h>

#include "assoc_write/assoc_write.h"
#include "common/dispatch.h"
#include "common/new_buffer.h"

#define AW_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), "assoc_write_fwd: " #x " must be contiguous")
#define AW_CHECK_FLOAT(x)                                                                                        \
    TORCH_CHECK((x).scalar_type() == at::ScalarType::Float, "assoc_write_fwd: " #x " must be float32, got ", \
                (x).scalar_type())
#define AW_CHECK_SHAPE(x, ...)                                                                                    \
    TORCH_CHECK((x).sizes() == torch::IntArrayRef({__VA_ARGS__}), "assoc_write_fwd: " #x " must have shape (", \
                torch::IntArrayRef({__VA_ARGS__}), "), got ", (x).sizes())

inline std::tuple<torch::Tensor, torch::Tensor> assoc_write_run(const torch::Tensor &mem, const torch::Tensor &w_k,
                                                                const torch::Tensor &w_v, const torch::Tensor &w_b,
                                                                const torch::Tensor &b_b, const torch::Tensor &A,
                                                                const torch::Tensor &z, int64_t nu, double eps,
                                                                bool correction, bool first_segment,
                                                                cudaStream_t stream) {
    TORCH_CHECK(mem.dim() == 3, "assoc_write_fwd: mem must be 3-D (B, M, d), got ", mem.dim(), " dims");
    TORCH_CHECK(w_k.dim() == 2, "assoc_write_fwd: w_k must be 2-D (n, d), got ", w_k.dim(), " dims");
    TORCH_CHECK(A.dim() == 3, "assoc_write_fwd: A must be 3-D (B or 1, 2*nu*n, d), got ", A.dim(), " dims");
    const auto mem_type = mem.scalar_type();
    TORCH_CHECK(mem_type == at::ScalarType::Float || mem_type == at::ScalarType::BFloat16 ||
                    mem_type == at::ScalarType::Half,
                "assoc_write_fwd: mem must be float32, bfloat16 or float16, got ", mem_type);
    AW_CHECK_FLOAT(w_k);
    AW_CHECK_FLOAT(w_v);
    AW_CHECK_FLOAT(w_b);
    AW_CHECK_FLOAT(b_b);
    AW_CHECK_FLOAT(A);
    AW_CHECK_FLOAT(z);
    AW_CHECK_CONTIGUOUS(mem);
    AW_CHECK_CONTIGUOUS(w_k);
    AW_CHECK_CONTIGUOUS(w_v);
    AW_CHECK_CONTIGUOUS(w_b);
    AW_CHECK_CONTIGUOUS(b_b);
    AW_CHECK_CONTIGUOUS(A);
    AW_CHECK_CONTIGUOUS(z);

    const int64_t B = mem.size(0);
    const int64_t M = mem.size(1);
    const int64_t d = mem.size(2);
    const int64_t n = w_k.size(0);
    TORCH_CHECK(nu >= 1, "assoc_write_fwd: nu must be >= 1, got ", nu);
    TORCH_CHECK(eps > 0, "assoc_write_fwd: eps must be > 0, got ", eps);
    TORCH_CHECK(d < INT_MAX / 2 && n < INT_MAX / 2 && (n == 0 || nu <= INT_MAX / (2 * n)),
                "assoc_write_fwd: d, d_mem or 2*nu*d_mem exceeds the int32 range");
    const int64_t F = 2 * nu * n;
    const int64_t Ba = A.size(0);
    TORCH_CHECK(Ba == B || Ba == 1, "assoc_write_fwd: A.size(0) must be B (", B, ") or 1, got ", Ba);
    AW_CHECK_SHAPE(w_k, n, d);
    AW_CHECK_SHAPE(w_v, d, d);
    AW_CHECK_SHAPE(w_b, 1, d);
    AW_CHECK_SHAPE(b_b, 1);
    AW_CHECK_SHAPE(A, Ba, F, d);
    AW_CHECK_SHAPE(z, Ba, F);

    const auto f32 = mem.options().dtype(at::ScalarType::Float);
    const int64_t R = B * M;
    if (R == 0 || F == 0 || d == 0) {  // no rows to write (or an empty state): the state, broadcast to B
        return {A.expand({B, F, d}).clone(at::MemoryFormat::Contiguous),
                z.expand({B, F}).clone(at::MemoryFormat::Contiguous)};
    }
    auto A_new = bfast::new_buffer({B, F, d}, f32);
    auto z_new = bfast::new_buffer({B, F}, f32);
    auto k = bfast::new_buffer({R, n}, f32);
    auto u = bfast::new_buffer({R, d}, f32);
    auto beta = bfast::new_buffer({R}, f32);
    auto gamma = bfast::new_buffer({R}, f32);

    AssocWriteParams params;
    params.mem_ptr = mem.data_ptr();
    params.wk_ptr = w_k.data_ptr<float>();
    params.wv_ptr = w_v.data_ptr<float>();
    params.wb_ptr = w_b.data_ptr<float>();
    params.bb_ptr = b_b.data_ptr<float>();
    params.A_ptr = A.data_ptr<float>();
    params.z_ptr = z.data_ptr<float>();
    params.A_new_ptr = A_new.data_ptr<float>();
    params.z_new_ptr = z_new.data_ptr<float>();
    params.k_ptr = k.data_ptr<float>();
    params.u_ptr = u.data_ptr<float>();
    params.beta_ptr = beta.data_ptr<float>();
    params.gamma_ptr = gamma.data_ptr<float>();
    params.B = B;
    params.M = M;
    params.R = R;
    params.A_batch_stride = Ba == 1 ? 0 : F * d;
    params.z_batch_stride = Ba == 1 ? 0 : F;
    params.d = static_cast<int>(d);
    params.n = static_cast<int>(n);
    params.nu = static_cast<int>(nu);
    params.F = static_cast<int>(F);
    params.eps = static_cast<float>(eps);
    params.correction = correction;
    params.first_segment = first_segment;

    // The three launches run in order on stream.
    bfast::dispatch_float_dtype(mem_type, "assoc_write_fwd", [&](auto type) {
        assoc_write_proj_launch<typename decltype(type)::type>(params, stream);
    });
    assoc_write_recall_launch(params, stream);
    assoc_write_update_launch(params, stream);
    return {A_new, z_new};
}
