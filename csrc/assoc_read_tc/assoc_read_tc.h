#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// Associative-memory read on tensor cores: out = h + (phi @ A) / (phi . z + eps), phi = DPFP(q), q = h @ w_q^T.
// phi @ A runs as 3xTF32 mma.sync (x = big + small, x*y ~ big*big + big*small + small*big, fp32 accumulate),
// which keeps fp32 accuracy. q comes from the FFMA q projection of csrc/assoc_read (q_part, split over d).
// Tokens are flattened to rows m = g * group_len + t; group g uses A + g * A_group_stride (0 = broadcast).
struct AssocReadTcParams {
    const void *h_ptr;       // (num_tokens, d), input dtype
    const float *q_part;     // (q_splits, num_tokens, n): partial sums of q, added in split order
    const float *A_ptr;      // (num_groups or 1, F, d)
    const float *z_ptr;      // (num_groups or 1, F)
    void *out_ptr;           // (num_tokens, d), input dtype

    int64_t num_tokens;
    int64_t num_groups;
    int64_t group_len;       // num_tokens == num_groups * group_len
    int64_t A_group_stride;  // elements
    int64_t z_group_stride;  // elements

    int d;
    int n;
    int F;                   // 2 * nu * n
    int q_splits;
    float eps;
};

// Tiling, shared by the host (assoc_read_tc.cpp) and the kernel (assoc_read_tc_kernel.cuh).
// A block owns kBM tokens x kBN columns of d and walks F in steps of kBK features. Its 8 warps form a
// 2 (tokens) x 4 (columns) grid; each warp owns a 64 x 32 tile = 4 x 4 mma.m16n8k8 accumulators.
namespace assoc_read_tc {
constexpr int kThreads = 256;
constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kBK = 16;
constexpr int kWarpsM = 2;
constexpr int kWarpsN = 4;
constexpr int kWM = kBM / kWarpsM;  // 64
constexpr int kWN = kBN / kWarpsN;  // 32
constexpr int kMT = kWM / 16;       // m16 tiles per warp
constexpr int kNT = kWN / 8;        // n8 tiles per warp
// Row strides (floats) of the shared tiles: 20 = 4 mod 32 and 136 = 8 mod 32 make the fragment loads of
// phi (row g, col t4) and A (row t4, col g) hit 32 distinct banks.
constexpr int kPStride = kBK + 4;
constexpr int kAStride = kBN + 8;
constexpr int kPTile = kBM * kPStride;  // floats of one phi tile (big or small, one buffer)
constexpr int kATile = kBK * kAStride;  // floats of one A tile

// Dynamic shared memory in floats: phi big/small and A big/small, each double-buffered, then den [kBM],
// then q [kBM][n].
__host__ __device__ constexpr size_t smem_floats(int n) {
    return 4 * static_cast<size_t>(kPTile) + 4 * static_cast<size_t>(kATile) + kBM +
           static_cast<size_t>(kBM) * static_cast<size_t>(n);
}
}  // namespace assoc_read_tc

// Launches the fused tensor-core kernel (q_part must be filled; the caller checked shapes and sizes).
template <typename input_t>
void assoc_read_tc_launch(const AssocReadTcParams &params, cudaStream_t stream);
