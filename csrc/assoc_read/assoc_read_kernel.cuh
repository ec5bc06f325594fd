#pragma once

#include <climits>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/util/Exception.h>

#include "assoc_read/assoc_read.h"

#include "common/convert.cuh"
#include "common/launch.cuh"
#include "common/loads.cuh"
#include "common/relu.cuh"

namespace assoc_read {

using bfast::from_float;
using bfast::load_row4;
using bfast::relu_keep_nan;
using bfast::to_float;

// q projection: thread (qy, qx) = (tid / 16, tid % 16) owns tokens 2*qy + {0,1} and outputs 4*qx + {0..3}.
// Block z reduces d columns [z * chunks * kQK, min(d, (z + 1) * chunks * kQK)) into q_part[z].
constexpr int kQTM = 2;
constexpr int kQTN = 4;
constexpr int kQHRegs = kQM * kQK / kQThreads;
constexpr int kQWRegs = kQN * kQK / kQThreads;
static_assert((kQM / kQTM) * (kQN / kQTN) == kQThreads, "q tile / thread mismatch");
static_assert(kQK == 32 && kQThreads % 32 == 0, "h tile load assumes one warp per 32-wide row");
static_assert(kQN % 4 == 0 && kQK % 8 == 0, "w tile load uses 4 x 8 warp patches");
static_assert((kQN / 4) * (kQK / 8) == kQWRegs * (kQThreads / 32), "w tile patches must split evenly over warps");

// Main: warp w owns columns [64w, 64w + 64) of the block tile; lane (ty, tx) = (lane / 8, lane % 8) owns
// tokens {0, 16} + 4*ty + {0..3} and columns 64w + {0, 32} + 4*tx + {0..3}, so every shared-memory read of
// the inner loop is one wavefront.
constexpr int kWarps = kThreads / 32;
constexpr int kAVec = kFC * kBD / 4 / kThreads;  // float4 of A staged per thread per chunk
static_assert(kBT == 32 && kBD == 64 * kWarps, "micro-tile layout");
static_assert(kFC % kWarps == 0, "phi build: one feature row per warp");
static_assert((kFC * kBD / 4) % kThreads == 0 && kThreads % (kBD / 4) == 0, "A chunk load mapping");

// 7 blocks/SM (14 warps) is the shared-memory limit on sm_90 at n = 64; the scalar-A variant needs more
// than the resulting 128 registers, so it asks for 6. sm_80 fits 5 blocks.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr int kMinBlocksPerSM = 5;
constexpr int kMinBlocksPerSMScalarA = 5;
#else
constexpr int kMinBlocksPerSM = 7;
constexpr int kMinBlocksPerSMScalarA = 6;
#endif

constexpr size_t kMainStaticSmem = sizeof(float) * (2 * kFC * kBT + 2 * kFC * kBD + kWarps * kBT);

// Dynamic shared memory: s table [2n][kSStride], then feature table [steps] (packed s-row offsets of
// i and i2) and z table [steps], steps = f_chunks_per_split * kFC.
__host__ __device__ __forceinline__ size_t main_dyn_smem(int n, int steps) {
    return sizeof(float) * (2 * static_cast<size_t>(n) * kSStride + 2 * static_cast<size_t>(steps));
}

template <typename T>
__device__ __forceinline__ void q_load(float (&hr)[kQHRegs], float (&wr)[kQWRegs], const T *__restrict__ h,
                                       const float *__restrict__ wq, const int64_t m0, const int n0,
                                       const int k0, const int kend, const int64_t num_tokens, const int d,
                                       const int n, const int lane, const int warp) {
#pragma unroll
    for (int e = 0; e < kQHRegs; ++e) {
        const int64_t m = m0 + warp + e * (kQThreads / 32);
        const int c = k0 + lane;
        hr[e] = (m < num_tokens && c < kend) ? to_float(h[m * d + c]) : 0.f;
    }
#pragma unroll
    for (int e = 0; e < kQWRegs; ++e) {
        const int patch = warp + e * (kQThreads / 32);
        const int nn = n0 + (patch / (kQK / 8)) * 4 + lane / 8;
        const int c = k0 + (patch % (kQK / 8)) * 8 + lane % 8;
        wr[e] = (nn < n && c < kend) ? __ldg(wq + static_cast<int64_t>(nn) * d + c) : 0.f;
    }
}

template <typename T>
__global__ void __launch_bounds__(kQThreads)
qproj_kernel(const T *__restrict__ h, const float *__restrict__ wq, float *__restrict__ q_part,
             const int64_t num_tokens, const int d, const int n, const int chunks_per_split) {
    __shared__ float h_s[kQM][kQK + 1];
    __shared__ __align__(16) float w_s[kQK][kQN + 4];

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int qy = tid / (kQN / kQTN);
    const int qx = tid % (kQN / kQTN);
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kQM;
    const int n0 = blockIdx.y * kQN;
    const int span = chunks_per_split * kQK;
    const int kbeg = blockIdx.z * span;
    const int kend = d - kbeg < span ? d : kbeg + span;

    float acc[kQTM][kQTN];
#pragma unroll
    for (int i = 0; i < kQTM; ++i)
#pragma unroll
        for (int j = 0; j < kQTN; ++j) acc[i][j] = 0.f;

    float hr[kQHRegs];
    float wr[kQWRegs];
    q_load<T>(hr, wr, h, wq, m0, n0, kbeg, kend, num_tokens, d, n, lane, warp);

    for (int k0 = kbeg; k0 < kend; k0 += kQK) {
#pragma unroll
        for (int e = 0; e < kQHRegs; ++e) h_s[warp + e * (kQThreads / 32)][lane] = hr[e];
        // w stored transposed; the padded stride kQN + 4 keeps the 4 x 8 patch stores conflict free.
#pragma unroll
        for (int e = 0; e < kQWRegs; ++e) {
            const int patch = warp + e * (kQThreads / 32);
            w_s[(patch % (kQK / 8)) * 8 + lane % 8][(patch / (kQK / 8)) * 4 + lane / 8] = wr[e];
        }
        __syncthreads();
        if (k0 + kQK < kend) q_load<T>(hr, wr, h, wq, m0, n0, k0 + kQK, kend, num_tokens, d, n, lane, warp);
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

    float *dst = q_part + static_cast<int64_t>(blockIdx.z) * num_tokens * n;
#pragma unroll
    for (int i = 0; i < kQTM; ++i) {
        const int64_t m = m0 + qy * kQTM + i;
        if (m < num_tokens) {
#pragma unroll
            for (int j = 0; j < kQTN; ++j) {
                const int nn = n0 + qx * kQTN + j;
                if (nn < n) dst[m * n + nn] = acc[i][j];
            }
        }
    }
}

// Stages A rows [f0, f0 + kFC) x columns [c0, c0 + kBD) into registers, zero-filled outside (F, d).
// Thread tid covers rows tid / (kBD/4) + e * (kThreads / (kBD/4)), columns 4 * (tid % (kBD/4)) + {0..3}.
template <bool kVecA>
__device__ __forceinline__ void load_a(float4 (&regs)[kAVec], const float *__restrict__ Ag, const int f0,
                                       const int c0, const int F, const int d, const int tid) {
#pragma unroll
    for (int e = 0; e < kAVec; ++e) {
        const int f = f0 + tid / (kBD / 4) + e * (kThreads / (kBD / 4));
        const int c = c0 + (tid % (kBD / 4)) * 4;
        regs[e] = (f < F && c < d) ? load_row4(Ag + static_cast<int64_t>(f) * d + c, c, d, kVecA)
                                   : make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

template <typename T, bool kVecA, bool kSplit>
__global__ void __launch_bounds__(kThreads, kVecA ? kMinBlocksPerSM : kMinBlocksPerSMScalarA)
assoc_read_kernel(const T *__restrict__ h, const float *__restrict__ q_part, const float *__restrict__ A,
                  const float *__restrict__ z, T *__restrict__ out, float *__restrict__ num_part,
                  float *__restrict__ den_part, const int64_t num_tokens, const int64_t group_len,
                  const int64_t tiles_per_group, const int64_t A_group_stride, const int64_t z_group_stride,
                  const int d, const int n, const int F, const int q_splits, const int chunks_per_split,
                  const float eps) {
    BFAST_DYNAMIC_SMEM(float, smem);
    __shared__ __align__(16) float phi_s[2][kFC][kBT];
    __shared__ __align__(16) float A_s[2][kFC][kBD];
    __shared__ float den_s[kWarps][kBT];

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int64_t g = blockIdx.x / tiles_per_group;
    const int64_t t0 = (blockIdx.x % tiles_per_group) * kBT;
    const int c0 = blockIdx.y * kBD;
    const int64_t row0 = g * group_len + t0;
    const int rows = static_cast<int>(group_len - t0 < kBT ? group_len - t0 : kBT);
    const float *Ag = A + g * A_group_stride;
    const float *zg = z + g * z_group_stride;
    const int two_n = 2 * n;
    const int steps = chunks_per_split * kFC;
    const int f_begin = blockIdx.z * steps;
    const int f_left = (F - f_begin + kFC - 1) / kFC;
    const int nchunks = f_left < chunks_per_split ? f_left : chunks_per_split;

    float *s_s = smem;
    uint32_t *tab = reinterpret_cast<uint32_t *>(s_s + two_n * kSStride);
    float *zt = reinterpret_cast<float *>(tab + steps);

    float4 a_regs[kAVec];
    load_a<kVecA>(a_regs, Ag, f_begin, c0, F, d, tid);

    // s table: s_s[i][t] = relu(q_i), s_s[n + i][t] = relu(-q_i) of tile token t (0 past the tile end).
    for (int t = warp; t < kBT; t += kWarps) {
        const int64_t m = row0 + t;
        for (int i = lane; i < n; i += 32) {
            float qv = 0.f;
            if (t < rows) {
                for (int ks = 0; ks < q_splits; ++ks) qv += q_part[(ks * num_tokens + m) * n + i];
            }
            s_s[i * kSStride + t] = relu_keep_nan(qv);
            s_s[(n + i) * kSStride + t] = relu_keep_nan(-qv);
        }
    }
    // Feature table: phi[f] = s[i] * s[i2], f = j*2n + i, i2 = (i - (j+1)) mod 2n; entries past F point at
    // row 0 with z = 0 (their A rows are zero-filled, so they add nothing).
    for (int k = tid; k < steps; k += kThreads) {
        const int f = f_begin + k;
        uint32_t p = 0;
        float zv = 0.f;
        if (f < F) {
            const int j = f / two_n;
            const int i = f - j * two_n;
            int i2 = i - (j + 1) % two_n;
            if (i2 < 0) i2 += two_n;
            p = static_cast<uint32_t>(i * kSStride) | (static_cast<uint32_t>(i2 * kSStride) << 16);
            zv = __ldg(zg + f);
        }
        tab[k] = p;
        zt[k] = zv;
    }
    __syncthreads();

    const float *s_lane = s_s + lane;
    float den_acc = 0.f;
    auto stage = [&](const int chunk, const int buf) {
#pragma unroll
        for (int e = 0; e < kAVec; ++e) {
            const int row = tid / (kBD / 4) + e * (kThreads / (kBD / 4));
            *reinterpret_cast<float4 *>(&A_s[buf][row][(tid % (kBD / 4)) * 4]) = a_regs[e];
        }
#pragma unroll
        for (int e = 0; e < kFC / kWarps; ++e) {
            const int k = warp + e * kWarps;
            const int idx = chunk * kFC + k;
            const uint32_t p = tab[idx];
            const float v = s_lane[p & 0xffffu] * s_lane[p >> 16];
            den_acc = fmaf(v, zt[idx], den_acc);
            phi_s[buf][k][lane] = v;
        }
    };

    const int ty = lane / 8;
    const int tx = lane % 8;
    const int col = warp * 64 + tx * 4;
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    stage(0, 0);
    __syncthreads();
    for (int c = 0; c < nchunks; ++c) {
        const int buf = c & 1;
        const bool more = c + 1 < nchunks;
        if (more) load_a<kVecA>(a_regs, Ag, f_begin + (c + 1) * kFC, c0, F, d, tid);
#pragma unroll
        for (int k = 0; k < kFC; ++k) {
            const float4 p0 = *reinterpret_cast<const float4 *>(&phi_s[buf][k][ty * 4]);
            const float4 p1 = *reinterpret_cast<const float4 *>(&phi_s[buf][k][16 + ty * 4]);
            const float4 a0 = *reinterpret_cast<const float4 *>(&A_s[buf][k][col]);
            const float4 a1 = *reinterpret_cast<const float4 *>(&A_s[buf][k][col + 32]);
            const float p[8] = {p0.x, p0.y, p0.z, p0.w, p1.x, p1.y, p1.z, p1.w};
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(p[i], a[j], acc[i][j]);
        }
        if (more) stage(c + 1, buf ^ 1);
        __syncthreads();
    }

    den_s[warp][lane] = den_acc;
    __syncthreads();

    if (kSplit && blockIdx.y == 0 && warp == 0 && lane < rows) {
        float den = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) den += den_s[w][lane];
        den_part[blockIdx.z * num_tokens + row0 + lane] = den;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int r = (i / 4) * 16 + ty * 4 + i % 4;
        if (r < rows) {
            float den = 0.f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) den += den_s[w][r];
            den += eps;
            const int64_t off = (row0 + r) * d;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int cc = c0 + col + (j / 4) * 32 + j % 4;
                if (cc < d) {
                    if (kSplit) {
                        num_part[blockIdx.z * num_tokens * d + off + cc] = acc[i][j];
                    } else {
                        out[off + cc] = from_float<T>(to_float(h[off + cc]) + acc[i][j] / den);
                    }
                }
            }
        }
    }
}

// out = h + sum_s num_part[s] / (sum_s den_part[s] + eps); block x handles token x, summing splits in order.
template <typename T>
__global__ void __launch_bounds__(256)
finalize_kernel(const T *__restrict__ h, const float *__restrict__ num_part, const float *__restrict__ den_part,
                T *__restrict__ out, const int64_t num_tokens, const int d, const int f_splits, const float eps) {
    const int64_t m = blockIdx.x;
    float den = 0.f;
    for (int s = 0; s < f_splits; ++s) den += den_part[s * num_tokens + m];
    den += eps;
    const int64_t off = m * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float num = 0.f;
        for (int s = 0; s < f_splits; ++s) num += num_part[s * num_tokens * d + off + c];
        out[off + c] = from_float<T>(to_float(h[off + c]) + num / den);
    }
}

}  // namespace assoc_read

template <typename input_t>
void assoc_read_qproj_launch(const AssocReadParams &params, cudaStream_t stream) {
    using namespace assoc_read;
    const int64_t grid_x = (params.num_tokens + kQM - 1) / kQM;
    const int64_t grid_y = (static_cast<int64_t>(params.n) + kQN - 1) / kQN;
    TORCH_CHECK(grid_x <= INT_MAX, "assoc_read_fwd: too many tokens (", params.num_tokens, ")");
    TORCH_CHECK_VALUE(grid_y <= 65535, "assoc_read_fwd: n = ", params.n, " is too large");
    TORCH_CHECK(params.q_splits >= 1 && params.q_splits <= 65535, "assoc_read_fwd: bad q split count");
    BFAST_LAUNCH(qproj_kernel<input_t>,
                 dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y),
                      static_cast<unsigned>(params.q_splits)),
                 kQThreads, 0, stream, static_cast<const input_t *>(params.h_ptr), params.wq_ptr, params.q_part,
                 params.num_tokens, params.d, params.n, params.q_chunks_per_split);
    BFAST_LAUNCH_CHECK();
}

template <typename input_t>
void assoc_read_main_launch(const AssocReadParams &params, cudaStream_t stream) {
    using namespace assoc_read;
    const int64_t tiles_per_group = (params.group_len + kBT - 1) / kBT;
    const int64_t grid_x = tiles_per_group * params.num_groups;
    const int64_t grid_y = (static_cast<int64_t>(params.d) + kBD - 1) / kBD;
    TORCH_CHECK(grid_x <= INT_MAX, "assoc_read_fwd: too many tokens (", params.num_tokens, ")");
    TORCH_CHECK_VALUE(grid_y <= 65535, "assoc_read_fwd: d = ", params.d, " is too large");
    TORCH_CHECK(params.f_splits >= 1 && params.f_splits <= 65535, "assoc_read_fwd: bad feature split count");

    const bool split = params.f_splits > 1;
    const bool vec_a = params.d % 4 == 0 && reinterpret_cast<uintptr_t>(params.A_ptr) % 16 == 0;
    auto kernel = split ? (vec_a ? assoc_read_kernel<input_t, true, true> : assoc_read_kernel<input_t, false, true>)
                        : (vec_a ? assoc_read_kernel<input_t, true, false>
                                 : assoc_read_kernel<input_t, false, false>);

    const size_t dyn_smem = main_dyn_smem(params.n, params.f_chunks_per_split * kFC);
    // Packed s-row offsets are 16-bit: 2n * kSStride must stay below 65536 (always true when the s table fits).
    TORCH_CHECK(2 * static_cast<int64_t>(params.n) * kSStride < 65536, "assoc_read_fwd: n = ", params.n,
                " is too large (2*n*", kSStride, " must be < 65536)");
    if (dyn_smem + kMainStaticSmem > 48 * 1024) {
        const int optin = bfast::device_smem_optin();
        TORCH_CHECK(dyn_smem + kMainStaticSmem <= static_cast<size_t>(optin), "assoc_read_fwd: n = ", params.n,
                    " and 2*nu*n = ", params.F, " need ", dyn_smem + kMainStaticSmem,
                    " bytes of shared memory per block but the device allows ", optin);
        bfast::set_max_dynamic_smem(kernel, dyn_smem);
    }

    BFAST_LAUNCH(kernel,
                 dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y),
                      static_cast<unsigned>(params.f_splits)),
                 kThreads, dyn_smem, stream, static_cast<const input_t *>(params.h_ptr), params.q_part,
                 params.A_ptr, params.z_ptr, static_cast<input_t *>(params.out_ptr), params.num_part,
                 params.den_part, params.num_tokens, params.group_len, tiles_per_group, params.A_group_stride,
                 params.z_group_stride, params.d, params.n, params.F, params.q_splits, params.f_chunks_per_split,
                 params.eps);
    BFAST_LAUNCH_CHECK();

    if (split) {
        TORCH_CHECK(params.num_tokens <= INT_MAX, "assoc_read_fwd: too many tokens (", params.num_tokens, ")");
        BFAST_LAUNCH(finalize_kernel<input_t>, dim3(static_cast<unsigned>(params.num_tokens)), 256, 0, stream,
                     static_cast<const input_t *>(params.h_ptr), params.num_part, params.den_part,
                     static_cast<input_t *>(params.out_ptr), params.num_tokens, params.d, params.f_splits,
                     params.eps);
        BFAST_LAUNCH_CHECK();
    }
}
