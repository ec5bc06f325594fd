#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// Associative-memory read: out = h + (phi(w_q h) @ A) / (phi(w_q h) . z + eps), phi = DPFP of order nu.
// Tokens are flattened to rows m = g * group_len + t; every group g uses its own (A, z) slice,
// selected through the group strides (0 when A and z are broadcast over the batch).
// Split-K: the q projection may split d over q_splits blocks (q_part holds q_splits partial sums that the
// main kernel adds), and the main kernel may split F over f_splits blocks (num_part / den_part then hold
// partial sums that a finalize kernel reduces).
struct AssocReadParams {
    const void *h_ptr;      // (num_tokens, d), input dtype
    const float *wq_ptr;    // (n, d)
    const float *A_ptr;     // (num_groups or 1, F, d)
    const float *z_ptr;     // (num_groups or 1, F)
    void *out_ptr;          // (num_tokens, d), input dtype
    float *q_part;          // (q_splits, num_tokens, n) scratch
    float *num_part;        // (f_splits, num_tokens, d) scratch, only when f_splits > 1
    float *den_part;        // (f_splits, num_tokens) scratch, only when f_splits > 1

    int64_t num_tokens;
    int64_t num_groups;
    int64_t group_len;      // num_tokens == num_groups * group_len
    int64_t A_group_stride; // elements
    int64_t z_group_stride; // elements

    int d;
    int n;
    int nu;
    int F;                  // 2 * nu * n
    float eps;

    int q_splits;
    int q_chunks_per_split; // in kQK columns of d
    int f_splits;
    int f_chunks_per_split; // in kFC features
};

// Tiling, shared by the host planner (assoc_read.cpp) and the kernels (assoc_read_kernel.cuh).
namespace assoc_read {
constexpr int kQThreads = 256;  // q projection: kQM tokens x kQN outputs per block, d in chunks of kQK
constexpr int kQM = 32;
constexpr int kQN = 64;
constexpr int kQK = 32;
constexpr int kMaxQSplits = 32;
constexpr int kThreads = 64;    // main: kBT tokens x kBD columns per block, features in chunks of kFC
constexpr int kBT = 32;
constexpr int kBD = 128;
constexpr int kFC = 8;
constexpr int kSStride = kBT + 1;  // s table row stride (floats)
}  // namespace assoc_read

// q_part = split partial sums of h @ w_q^T.
template <typename input_t>
void assoc_read_qproj_launch(const AssocReadParams &params, cudaStream_t stream);

// DPFP features built on the fly from q; numerator, denominator and residual add fused (plus a finalize
// kernel that reduces the partial sums when f_splits > 1).
template <typename input_t>
void assoc_read_main_launch(const AssocReadParams &params, cudaStream_t stream);
