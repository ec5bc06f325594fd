#pragma once

#include <climits>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/util/Exception.h>

#include "assoc_write/assoc_write.h"
#include "common/launch.cuh"

// Three launches, all float32 arithmetic (no TF32, no fast math):
//   proj   (per mem dtype, here):    k, v and beta of every row in one pass over [w_k; w_v; w_b];
//   recall (assoc_write_state.cu):   phi built per feature chunk from k (never stored), phi A, phi . z and |phi|^2
//                                    in one pass over A; u = beta (v - phi A / delta) over v, and gamma;
//   update (assoc_write_state.cu):   A_new = A + phi^T u, z_new = z + phi^T gamma, out of place, so every row
//                                    sees the pre-update state.

#include "common/convert.cuh"
#include "common/relu.cuh"

namespace assoc_write {

using bfast::to_float;

constexpr int kPRowsPerThread = kPR * kPC / kThreads;  // projection outputs per thread
constexpr int kRRowsPerThread = kRM * kRD / kThreads;  // recall outputs per thread
constexpr int kUFeatPerThread = kUF * kUD / kThreads;  // update outputs per thread
static_assert(kThreads % kPC == 0 && kThreads % kRD == 0 && kThreads % kUD == 0, "one column per thread");
static_assert(kPK == 32, "tile loads assume one warp per kPK-wide row");
static_assert((kRF * kRM) % kThreads == 0 && kThreads % kRM == 0, "recall phi build: whole rows per thread");
static_assert((kUF * kUM) % kThreads == 0 && kThreads % kUM == 0, "update phi build: whole rows per thread");
static_assert((kRF * kRD) % kThreads == 0 && (kUM * kUD) % kThreads == 0, "tile loads split evenly");
static_assert(kUF <= kThreads && kRM <= kThreads, "row / feature sums need one thread each");

// s[i] of s = [relu(k), relu(-k)] for one row's raw key k (n floats), 0 <= i < 2n.
__device__ __forceinline__ float s_at(const float *__restrict__ k, const int i, const int n) {
    const float x = i < n ? k[i] : -k[i - n];
    return bfast::relu_keep_nan(x);
}

// DPFP feature f = j*2n + i of one row: s[i] * s[(i - j - 1) mod 2n] (torch.roll toward higher indices).
__device__ __forceinline__ float phi_at(const float *__restrict__ k, const int f, const int n) {
    const int two_n = 2 * n;
    const int j = f / two_n;
    const int i = f - j * two_n;
    int i2 = i - (j + 1) % two_n;
    if (i2 < 0) i2 += two_n;
    return s_at(k, i, n) * s_at(k, i2, n);
}

// Output column col of the concatenated weight [w_k (n rows); w_v (d rows); w_b (1 row)].
__device__ __forceinline__ const float *weight_row(const float *__restrict__ wk, const float *__restrict__ wv,
                                                   const float *__restrict__ wb, const int col, const int n,
                                                   const int d) {
    if (col < n) return wk + static_cast<int64_t>(col) * d;
    if (col < n + d) return wv + static_cast<int64_t>(col - n) * d;
    return wb;
}

// Block (x, y): rows [kPR x, kPR (x+1)) x output columns [kPC y, kPC (y+1)) of mem [w_k; w_v; w_b]^T.
// Thread (ty, tx) = (tid / kPC, tid % kPC) owns column tx and rows ty + (kThreads / kPC) * i.
template <typename T>
__global__ void __launch_bounds__(kThreads)
proj_kernel(const T *__restrict__ mem, const float *__restrict__ wk, const float *__restrict__ wv,
            const float *__restrict__ wb, const float *__restrict__ bb, float *__restrict__ k_out,
            float *__restrict__ v_out, float *__restrict__ beta_out, const int64_t R, const int d, const int n) {
    __shared__ float mem_s[kPR][kPK + 1];
    __shared__ float w_s[kPC][kPK + 1];

    const int tid = threadIdx.x;
    const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kPR;
    const int c0 = blockIdx.y * kPC;
    const int C = n + d + 1;
    const int tx = tid % kPC;
    const int ty = tid / kPC;

    float acc[kPRowsPerThread];
#pragma unroll
    for (int i = 0; i < kPRowsPerThread; ++i) acc[i] = 0.f;

    for (int k0 = 0; k0 < d; k0 += kPK) {
        for (int e = tid; e < kPR * kPK; e += kThreads) {
            const int rr = e / kPK;
            const int kk = e % kPK;
            const int64_t r = r0 + rr;
            const int c = k0 + kk;
            mem_s[rr][kk] = (r < R && c < d) ? to_float(mem[r * d + c]) : 0.f;
        }
        for (int e = tid; e < kPC * kPK; e += kThreads) {
            const int cc = e / kPK;
            const int kk = e % kPK;
            const int col = c0 + cc;
            const int c = k0 + kk;
            w_s[cc][kk] = (col < C && c < d) ? weight_row(wk, wv, wb, col, n, d)[c] : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < kPK; ++kk) {
            const float w = w_s[tx][kk];
#pragma unroll
            for (int i = 0; i < kPRowsPerThread; ++i)
                acc[i] = fmaf(mem_s[ty + (kThreads / kPC) * i][kk], w, acc[i]);
        }
        __syncthreads();
    }

    const int col = c0 + tx;
    if (col >= C) return;
#pragma unroll
    for (int i = 0; i < kPRowsPerThread; ++i) {
        const int64_t r = r0 + ty + (kThreads / kPC) * i;
        if (r >= R) continue;
        if (col < n) {
            k_out[r * n + col] = acc[i];
        } else if (col < n + d) {
            v_out[r * d + (col - n)] = acc[i];
        } else {
            beta_out[r] = 1.f / (1.f + expf(-(acc[i] + bb[0])));
        }
    }
}

}  // namespace assoc_write

template <typename input_t>
void assoc_write_proj_launch(const AssocWriteParams &params, cudaStream_t stream) {
    using namespace assoc_write;
    const int64_t grid_x = (params.R + kPR - 1) / kPR;
    const int64_t grid_y = (static_cast<int64_t>(params.n) + params.d + 1 + kPC - 1) / kPC;
    TORCH_CHECK(grid_x <= INT_MAX, "assoc_write_fwd: too many memory rows (", params.R, ")");
    TORCH_CHECK_VALUE(grid_y <= 65535, "assoc_write_fwd: d_mem + d = ", params.n + params.d, " is too large");
    BFAST_LAUNCH(proj_kernel<input_t>, dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y)), kThreads,
                 0, stream, static_cast<const input_t *>(params.mem_ptr), params.wk_ptr, params.wv_ptr, params.wb_ptr,
                 params.bb_ptr, params.k_ptr, params.u_ptr, params.beta_ptr, params.R, params.d, params.n);
    BFAST_LAUNCH_CHECK();
}
