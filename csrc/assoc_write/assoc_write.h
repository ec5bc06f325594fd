#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// Associative-memory write (ARMT): one rank-M update of (A, z) from the M memory rows of every batch entry.
//   k = mem w_k^T, v = mem w_v^T, beta = sigmoid(mem w_b^T + b_b), phi = DPFP_nu(k)
//   later segments: delta = phi . z + eps, u = beta * (v - (phi A) / delta),
//                   gamma = clip(1 - delta / (|phi|^2 + eps), 0, 1), or 1 without the correction
//   first segment:  u = beta * v, gamma = 1
//   A_new = A + phi^T u, z_new = z + phi^T gamma   (per batch entry; every row sees the pre-update A, z)
// Rows are flattened to r = b * M + m. A and z are read through batch strides (0 when broadcast from batch 1).
struct AssocWriteParams {
    const void *mem_ptr;    // (R, d), input dtype, R = B * M
    const float *wk_ptr;    // (n, d)
    const float *wv_ptr;    // (d, d)
    const float *wb_ptr;    // (d)
    const float *bb_ptr;    // (1)
    const float *A_ptr;     // (B or 1, F, d)
    const float *z_ptr;     // (B or 1, F)
    float *A_new_ptr;       // (B, F, d)
    float *z_new_ptr;       // (B, F)
    float *k_ptr;           // (R, n) scratch: raw keys
    float *u_ptr;           // (R, d) scratch: v from the projection, then u in place
    float *beta_ptr;        // (R) scratch
    float *gamma_ptr;       // (R) scratch

    int64_t B;
    int64_t M;
    int64_t R;              // B * M
    int64_t A_batch_stride; // elements
    int64_t z_batch_stride; // elements

    int d;
    int n;
    int nu;
    int F;                  // 2 * nu * n
    float eps;
    bool correction;
    bool first_segment;
};

// Tiling, shared by the launchers and the kernels (assoc_write_kernel.cuh, assoc_write_state.cu).
namespace assoc_write {
constexpr int kThreads = 256;
constexpr int kPR = 16;  // projection: kPR rows x kPC output columns per block, d in chunks of kPK
constexpr int kPC = 64;
constexpr int kPK = 32;
constexpr int kRM = 16;  // recall: kRM rows x kRD columns per block, features in chunks of kRF
constexpr int kRD = 64;
constexpr int kRF = 32;
constexpr int kUF = 32;  // update: kUF features x kUD columns per block, rows in chunks of kUM
constexpr int kUD = 64;
constexpr int kUM = 16;
}  // namespace assoc_write

// k, v (into u_ptr) and beta of every row: one pass over the concatenated weight rows [w_k; w_v; w_b].
template <typename input_t>
void assoc_write_proj_launch(const AssocWriteParams &params, cudaStream_t stream);

// u = beta * (v - (phi A) / delta) in place (u = beta * v on the first segment) and gamma.
void assoc_write_recall_launch(const AssocWriteParams &params, cudaStream_t stream);

// A_new = A + phi^T u, z_new = z + phi^T gamma.
void assoc_write_update_launch(const AssocWriteParams &params, cudaStream_t stream);
