#pragma once

#include <climits>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include "assoc_read.h"

namespace assoc_read {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// q projection tiling: a block computes kQM tokens x kQN outputs, reducing over d in chunks of kQK.
// Thread (qy, qx) = (tid / 16, tid % 16) owns tokens 2*qy + {0,1} and outputs 4*qx + {0..3}.
constexpr int kQThreads = 256;
constexpr int kQM = 32;
constexpr int kQN = 64;
constexpr int kQK = 32;
constexpr int kQTM = 2;
constexpr int kQTN = 4;
static_assert((kQM / kQTM) * (kQN / kQTN) == kQThreads, "q tile / thread mismatch");
static_assert(kQK == 32 && kQThreads % 32 == 0, "h tile load assumes one warp per 32-wide row");
static_assert(kQN % 4 == 0 && kQK % 8 == 0, "w tile load uses 4 x 8 warp patches");
static_assert((kQN / 4) * (kQK / 8) % (kQThreads / 32) == 0, "w tile patches must split evenly over warps");

// Main tiling: a block computes kBT tokens x kBD output columns, looping over the F features in
// chunks of kFC. Thread (ty, tx) = (tid / 32, tid % 32) owns tokens kTM*ty + {0..7} and
// columns kTN*tx + {0..3}.
constexpr int kThreads = 256;
constexpr int kBT = 64;
constexpr int kBD = 128;
constexpr int kFC = 16;
constexpr int kTM = 8;
constexpr int kTN = 4;
constexpr int kPhiGroups = kThreads / kBT;        // threads sharing one token while building phi
constexpr int kAVecPerThread = kFC * kBD / 4 / kThreads;
static_assert((kBT / kTM) * (kBD / kTN) == kThreads, "tile / thread mismatch");
static_assert(kBD / kTN == 32, "one warp per token group (phi reads are broadcasts)");
static_assert(kTM == 8 && kTN == 4, "micro-tile loads are two float4 of phi and one float4 of A");
static_assert(kThreads % kBT == 0 && kFC % kPhiGroups == 0, "phi build mapping");
static_assert(kBT % 32 == 0, "phi build rows must fill whole warps");
static_assert((kFC * kBD / 4) % kThreads == 0 && kThreads % (kBD / 4) == 0, "A tile load mapping");

// Blocks per SM requested from ptxas: 3 (80 registers) fits sm_90 without spills; sm_80 needs the looser 2.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr int kMinBlocksPerSM = 2;
#else
constexpr int kMinBlocksPerSM = 3;
#endif

constexpr size_t kMainStaticSmem = sizeof(float) * (kFC * kBT + kFC * kBD + kPhiGroups * kBT);

__host__ __device__ __forceinline__ int q_smem_stride(int n) { return n | 1; }

template <typename T>
__global__ void __launch_bounds__(kQThreads)
qproj_kernel(const T *__restrict__ h, const float *__restrict__ wq, float *__restrict__ q,
             const int64_t num_tokens, const int d, const int n) {
    __shared__ float h_s[kQM][kQK + 1];
    __shared__ __align__(16) float w_s[kQK][kQN + 4];

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int qy = tid / (kQN / kQTN);
    const int qx = tid % (kQN / kQTN);
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kQM;
    const int n0 = blockIdx.y * kQN;

    float acc[kQTM][kQTN];
#pragma unroll
    for (int i = 0; i < kQTM; ++i)
#pragma unroll
        for (int j = 0; j < kQTN; ++j) acc[i][j] = 0.f;

    for (int k0 = 0; k0 < d; k0 += kQK) {
        // h tile: each warp reads kQK consecutive elements of one token row.
#pragma unroll
        for (int e = 0; e < kQM * kQK / kQThreads; ++e) {
            const int row = warp + e * (kQThreads / 32);
            const int64_t m = m0 + row;
            const int c = k0 + lane;
            h_s[row][lane] = (m < num_tokens && c < d) ? to_float(h[m * d + c]) : 0.f;
        }
        // w tile, stored transposed: each warp reads a 4 (outputs) x 8 (d) patch; the padded
        // stride kQN + 4 makes the transposed stores bank-conflict free.
#pragma unroll
        for (int e = 0; e < kQN * kQK / kQThreads; ++e) {
            const int patch = warp + e * (kQThreads / 32);
            const int col = (patch / (kQK / 8)) * 4 + lane / 8;
            const int kk = (patch % (kQK / 8)) * 8 + lane % 8;
            const int nn = n0 + col;
            const int c = k0 + kk;
            w_s[kk][col] = (nn < n && c < d) ? wq[static_cast<int64_t>(nn) * d + c] : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kQK; ++k) {
            float a[kQTM];
#pragma unroll
            for (int i = 0; i < kQTM; ++i) a[i] = h_s[qy * kQTM + i][k];
            const float4 b4 = *reinterpret_cast<const float4 *>(&w_s[k][qx * kQTN]);
            const float b[kQTN] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < kQTM; ++i)
#pragma unroll
                for (int j = 0; j < kQTN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < kQTM; ++i) {
        const int64_t m = m0 + qy * kQTM + i;
        if (m < num_tokens) {
#pragma unroll
            for (int j = 0; j < kQTN; ++j) {
                const int nn = n0 + qx * kQTN + j;
                if (nn < n) q[m * n + nn] = acc[i][j];
            }
        }
    }
}

// s_i = relu(q_i) for i < n, relu(-q_{i-n}) for n <= i < 2n.
__device__ __forceinline__ float dpfp_s(const float *qrow, const int i, const int n) {
    return i < n ? fmaxf(qrow[i], 0.f) : fmaxf(-qrow[i - n], 0.f);
}

// Loads A[f0 + row, c0 + col .. c0 + col + 3] of the block's (A, z) group into registers, zero-filled
// outside (F, d). Thread tid covers rows tid / (kBD/4) + e * (kThreads / (kBD/4)), column 4 * (tid % (kBD/4)).
template <bool kVecA>
__device__ __forceinline__ void load_a_chunk(float4 (&regs)[kAVecPerThread], const float *__restrict__ Ag,
                                             const int f0, const int c0, const int F, const int d,
                                             const int tid) {
#pragma unroll
    for (int e = 0; e < kAVecPerThread; ++e) {
        const int row = tid / (kBD / 4) + e * (kThreads / (kBD / 4));
        const int f = f0 + row;
        const int c = c0 + (tid % (kBD / 4)) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (f < F && c < d) {
            const float *src = Ag + static_cast<int64_t>(f) * d + c;
            if (kVecA) {
                v = __ldg(reinterpret_cast<const float4 *>(src));
            } else {
                v.x = __ldg(src);
                if (c + 1 < d) v.y = __ldg(src + 1);
                if (c + 2 < d) v.z = __ldg(src + 2);
                if (c + 3 < d) v.w = __ldg(src + 3);
            }
        }
        regs[e] = v;
    }
}

// Dynamic shared memory: q_s[kBT][q_smem_stride(n)] (odd stride: conflict-free column reads).
template <typename T, bool kVecA>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
assoc_read_kernel(const T *__restrict__ h, const float *__restrict__ q, const float *__restrict__ A,
                  const float *__restrict__ z, T *__restrict__ out, const int64_t group_len,
                  const int64_t tiles_per_group, const int64_t A_group_stride, const int64_t z_group_stride,
                  const int d, const int n, const int F, const float eps) {
    extern __shared__ float q_s[];
    __shared__ __align__(16) float phi_s[kFC][kBT];
    __shared__ __align__(16) float A_s[kFC][kBD];
    __shared__ float den_s[kPhiGroups][kBT];

    const int tid = threadIdx.x;
    const int64_t g = blockIdx.x / tiles_per_group;
    const int64_t t0 = (blockIdx.x % tiles_per_group) * kBT;
    const int c0 = blockIdx.y * kBD;
    const int64_t row0 = g * group_len + t0;
    const int rows = static_cast<int>(group_len - t0 < kBT ? group_len - t0 : kBT);
    const float *Ag = A + g * A_group_stride;
    const float *zg = z + g * z_group_stride;
    const int two_n = 2 * n;
    const int ldq = q_smem_stride(n);

    // Stage q for the tile's tokens (rows are consecutive flattened tokens); zero-fill the tail.
    {
        const float *qsrc = q + row0 * n;
        const int valid = rows * n;
        for (int i = tid; i < kBT * n; i += kThreads) {
            const int r = i / n;
            q_s[r * ldq + (i - r * n)] = i < valid ? qsrc[i] : 0.f;
        }
    }

    // Phi build: thread owns token pr and features pk + kPhiGroups * e of each chunk.
    const int pr = tid % kBT;
    const int pk = tid / kBT;
    const float *qrow = q_s + pr * ldq;
    float den_part = 0.f;

    const int ty = tid / (kBD / kTN);
    const int tx = tid % (kBD / kTN);
    float acc[kTM][kTN];
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] = 0.f;

    float4 a_regs[kAVecPerThread];
    load_a_chunk<kVecA>(a_regs, Ag, 0, c0, F, d, tid);
    __syncthreads();

    for (int f0 = 0; f0 < F; f0 += kFC) {
#pragma unroll
        for (int e = 0; e < kAVecPerThread; ++e) {
            const int row = tid / (kBD / 4) + e * (kThreads / (kBD / 4));
            *reinterpret_cast<float4 *>(&A_s[row][(tid % (kBD / 4)) * 4]) = a_regs[e];
        }
#pragma unroll
        for (int e = 0; e < kFC / kPhiGroups; ++e) {
            const int k = pk + e * kPhiGroups;
            const int f = f0 + k;
            float v = 0.f;
            if (f < F) {
                // phi[j*2n + i] = s_i * s_{(i - (j+1)) mod 2n}
                const int j = f / two_n;
                const int i = f - j * two_n;
                int i2 = i - (j + 1) % two_n;
                if (i2 < 0) i2 += two_n;
                v = dpfp_s(qrow, i, n) * dpfp_s(qrow, i2, n);
                den_part = fmaf(v, __ldg(zg + f), den_part);
            }
            phi_s[k][pr] = v;
        }
        __syncthreads();

        if (f0 + kFC < F) load_a_chunk<kVecA>(a_regs, Ag, f0 + kFC, c0, F, d, tid);

#pragma unroll
        for (int k = 0; k < kFC; ++k) {
            const float4 p_lo = *reinterpret_cast<const float4 *>(&phi_s[k][ty * kTM]);
            const float4 p_hi = *reinterpret_cast<const float4 *>(&phi_s[k][ty * kTM + 4]);
            const float4 a4 = *reinterpret_cast<const float4 *>(&A_s[k][tx * kTN]);
            const float p[kTM] = {p_lo.x, p_lo.y, p_lo.z, p_lo.w, p_hi.x, p_hi.y, p_hi.z, p_hi.w};
            const float a[kTN] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
            for (int i = 0; i < kTM; ++i)
#pragma unroll
                for (int j = 0; j < kTN; ++j) acc[i][j] = fmaf(p[i], a[j], acc[i][j]);
        }
        __syncthreads();
    }

    den_s[pk][pr] = den_part;
    __syncthreads();

#pragma unroll
    for (int i = 0; i < kTM; ++i) {
        const int r = ty * kTM + i;
        if (r < rows) {
            float den = 0.f;
#pragma unroll
            for (int p = 0; p < kPhiGroups; ++p) den += den_s[p][r];
            den += eps;
            const int64_t off = (row0 + r) * d;
#pragma unroll
            for (int j = 0; j < kTN; ++j) {
                const int c = c0 + tx * kTN + j;
                if (c < d) out[off + c] = from_float<T>(to_float(h[off + c]) + acc[i][j] / den);
            }
        }
    }
}

}  // namespace assoc_read

template <typename input_t>
void assoc_read_qproj_launch(const AssocReadParams &params, cudaStream_t stream) {
    using namespace assoc_read;
    const int64_t grid_x = (params.num_tokens + kQM - 1) / kQM;
    const int64_t grid_y = (static_cast<int64_t>(params.n) + kQN - 1) / kQN;
    TORCH_CHECK(grid_x <= INT_MAX, "assoc_read_fwd: too many tokens (", params.num_tokens, ")");
    TORCH_CHECK(grid_y <= 65535, "assoc_read_fwd: n = ", params.n, " is too large");
    qproj_kernel<input_t><<<dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y)), kQThreads, 0,
                            stream>>>(static_cast<const input_t *>(params.h_ptr), params.wq_ptr, params.q_ptr,
                                      params.num_tokens, params.d, params.n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename input_t>
void assoc_read_main_launch(const AssocReadParams &params, cudaStream_t stream) {
    using namespace assoc_read;
    const int64_t tiles_per_group = (params.group_len + kBT - 1) / kBT;
    const int64_t grid_x = tiles_per_group * params.num_groups;
    const int64_t grid_y = (static_cast<int64_t>(params.d) + kBD - 1) / kBD;
    TORCH_CHECK(grid_x <= INT_MAX, "assoc_read_fwd: too many tokens (", params.num_tokens, ")");
    TORCH_CHECK(grid_y <= 65535, "assoc_read_fwd: d = ", params.d, " is too large");

    const bool vec_a = params.d % 4 == 0 && reinterpret_cast<uintptr_t>(params.A_ptr) % 16 == 0;
    auto kernel = vec_a ? assoc_read_kernel<input_t, true> : assoc_read_kernel<input_t, false>;

    const size_t dyn_smem = sizeof(float) * kBT * static_cast<size_t>(q_smem_stride(params.n));
    if (dyn_smem + kMainStaticSmem > 48 * 1024) {
        int device = 0;
        int optin = 0;
        C10_CUDA_CHECK(cudaGetDevice(&device));
        C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        const int64_t max_n = (static_cast<int64_t>(optin) - static_cast<int64_t>(kMainStaticSmem)) /
                                  (static_cast<int64_t>(sizeof(float)) * kBT) - 1;
        TORCH_CHECK(dyn_smem + kMainStaticSmem <= static_cast<size_t>(optin), "assoc_read_fwd: n = ", params.n,
                    " (w_q.size(0)) needs ", dyn_smem + kMainStaticSmem,
                    " bytes of shared memory per block but the device allows ", optin,
                    "; the largest supported n on this device is about ", max_n);
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(dyn_smem)));
    }

    kernel<<<dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y)), kThreads, dyn_smem, stream>>>(
        static_cast<const input_t *>(params.h_ptr), params.q_ptr, params.A_ptr, params.z_ptr,
        static_cast<input_t *>(params.out_ptr), params.group_len, tiles_per_group, params.A_group_stride,
        params.z_group_stride, params.d, params.n, params.F, params.eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}
