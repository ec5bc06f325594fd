#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// Associative-memory read: out = h + (phi(w_q h) @ A) / (phi(w_q h) . z + eps), phi = DPFP of order nu.
// Tokens are flattened to rows m = g * group_len + t; every group g uses its own (A, z) slice,
// selected through the group strides (0 when A and z are broadcast over the batch).
struct AssocReadParams {
    const void *h_ptr;      // (num_tokens, d), input dtype
    const float *wq_ptr;    // (n, d)
    const float *A_ptr;     // (num_groups or 1, F, d)
    const float *z_ptr;     // (num_groups or 1, F)
    float *q_ptr;           // (num_tokens, n) scratch
    void *out_ptr;          // (num_tokens, d), input dtype

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
};

// q = h @ w_q^T, written to params.q_ptr.
template <typename input_t>
void assoc_read_qproj_launch(const AssocReadParams &params, cudaStream_t stream);

// DPFP features built on the fly from q; numerator, denominator and residual add fused.
template <typename input_t>
void assoc_read_main_launch(const AssocReadParams &params, cudaStream_t stream);
