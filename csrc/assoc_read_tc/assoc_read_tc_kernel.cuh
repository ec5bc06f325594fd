#pragma once

#include <climits>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/util/Exception.h>

#include "assoc_read_tc/assoc_read_tc.h"

#include "common/convert.cuh"
#include "common/launch.cuh"
#include "common/loads.cuh"
#include "common/relu.cuh"

namespace assoc_read_tc {

using bfast::from_float;
using bfast::load_row4;
using bfast::to_float;

// Two adjacent elements; the address must be aligned to 2 * sizeof(T).
template <typename T> __device__ __forceinline__ float2 load_pair(const T *p);
template <> __device__ __forceinline__ float2 load_pair<float>(const float *p) {
    return *reinterpret_cast<const float2 *>(p);
}
template <> __device__ __forceinline__ float2 load_pair<__half>(const __half *p) {
    return __half22float2(*reinterpret_cast<const __half2 *>(p));
}
template <> __device__ __forceinline__ float2 load_pair<__nv_bfloat16>(const __nv_bfloat16 *p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(p));
}
template <typename T> __device__ __forceinline__ void store_pair(T *p, float a, float b);
template <> __device__ __forceinline__ void store_pair<float>(float *p, float a, float b) {
    *reinterpret_cast<float2 *>(p) = make_float2(a, b);
}
template <> __device__ __forceinline__ void store_pair<__half>(__half *p, float a, float b) {
    *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(a, b);
}
template <> __device__ __forceinline__ void store_pair<__nv_bfloat16>(__nv_bfloat16 *p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

// Round to TF32 (nearest, ties away); the low 13 mantissa bits of the result are zero.
__device__ __forceinline__ float tf32_round(float x) {
#ifdef BFAST_EMULATION
    return bf_emu::cvt_rna_tf32(x);
#else
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
#endif
}

// 3xTF32 split: x = big + small + O(2^-22 |x|).
__device__ __forceinline__ void split_tf32(float x, float &big, float &small) {
    big = tf32_round(x);
    small = tf32_round(x - big);
}

// d += a * b, one m16n8k8 TF32 tensor-core product with fp32 accumulation.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef BFAST_EMULATION
    bf_emu::mma_m16n8k8_tf32(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// A staging: thread tid covers rows tid / 32 + 8 * e (e < kAVec) and columns 4 * (tid % 32) + {0..3}.
constexpr int kAVec = kBK * kBN / 4 / kThreads;
static_assert(kBN == 128 && kThreads % 32 == 0 && kBK % (kThreads / 32) == 0, "A staging mapping");
static_assert(kAVec * (kThreads / 32) == kBK, "A staging covers the tile");
// phi build: thread tid covers feature tid % kBK and tokens tid / kBK + (kThreads / kBK) * e (e < kPRows).
constexpr int kPRows = kBM * kBK / kThreads;
static_assert(kBK == 16 && kThreads / kBK * kPRows == kBM, "phi build mapping (half-warp per token)");
static_assert(kWarpsM * kWarpsN * 32 == kThreads && kBK % 8 == 0, "warp grid");

// Loads A rows [f0, f0 + kBK) x columns [c0, c0 + kBN) into registers, zero outside (F, d).
__device__ __forceinline__ void load_a(float4 (&regs)[kAVec], const float *__restrict__ Ag, const int f0,
                                       const int c0, const int F, const int d, const bool vec_a, const int tid) {
#pragma unroll
    for (int e = 0; e < kAVec; ++e) {
        const int f = f0 + tid / 32 + e * (kThreads / 32);
        const int c = c0 + (tid % 32) * 4;
        regs[e] = (f < F && c < d) ? load_row4(Ag + static_cast<int64_t>(f) * d + c, c, d, vec_a)
                                   : make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

// One block: tokens [row0, row0 + rows) of group g, columns [c0, c0 + kBN) of d, all F features.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
assoc_read_tc_kernel(const T *__restrict__ h, const float *__restrict__ q_part, const float *__restrict__ A,
                     const float *__restrict__ z, T *__restrict__ out, const int64_t num_tokens,
                     const int64_t group_len, const int64_t tiles_per_group, const int64_t A_group_stride,
                     const int64_t z_group_stride, const int d, const int n, const int F, const int q_splits,
                     const float eps, const bool vec_a, const bool vec_io) {
    BFAST_DYNAMIC_SMEM(float, smem);
    float *p_big = smem;                    // [2][kBM][kPStride]
    float *p_small = p_big + 2 * kPTile;    // [2][kBM][kPStride]
    float *a_big = p_small + 2 * kPTile;    // [2][kBK][kAStride]
    float *a_small = a_big + 2 * kATile;    // [2][kBK][kAStride]
    float *den_s = a_small + 2 * kATile;    // [kBM]
    float *q_s = den_s + kBM;               // [kBM][n]

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int64_t g = blockIdx.x / tiles_per_group;
    const int64_t t0 = (blockIdx.x % tiles_per_group) * kBM;
    const int c0 = blockIdx.y * kBN;
    const int64_t row0 = g * group_len + t0;
    const int rows = static_cast<int>(group_len - t0 < kBM ? group_len - t0 : kBM);
    const float *Ag = A + g * A_group_stride;
    const float *zg = z + g * z_group_stride;
    const int two_n = 2 * n;
    const int nsteps = (F + kBK - 1) / kBK;

    float4 a_regs[kAVec];
    load_a(a_regs, Ag, 0, c0, F, d, vec_a, tid);

    // q tile: q_s[t][i] = sum of the q_part splits (0 past the tile's last token).
    for (int t = warp; t < kBM; t += kThreads / 32) {
        const int64_t m = row0 + t;
        for (int i = lane; i < n; i += 32) {
            float qv = 0.f;
            if (t < rows) {
                for (int ks = 0; ks < q_splits; ++ks) qv += q_part[(ks * num_tokens + m) * n + i];
            }
            q_s[t * n + i] = qv;
        }
    }
    __syncthreads();

    // phi build: phi[t][f] = s[i](t) * s[i2](t), f = j*2n + i, i2 = (i - j - 1) mod 2n, s = [relu(q), relu(-q)];
    // den partial sums phi . z per token, kept per thread (one feature column, kPRows tokens).
    const int pk = tid % kBK;
    const int pt = tid / kBK;
    float den_acc[kPRows];
#pragma unroll
    for (int e = 0; e < kPRows; ++e) den_acc[e] = 0.f;

    auto stage = [&](const int step, const int buf) {
        float *ab = a_big + buf * kATile;
        float *as = a_small + buf * kATile;
#pragma unroll
        for (int e = 0; e < kAVec; ++e) {
            const int row = tid / 32 + e * (kThreads / 32);
            const int col = (tid % 32) * 4;
            float4 big;
            float4 small;
            split_tf32(a_regs[e].x, big.x, small.x);
            split_tf32(a_regs[e].y, big.y, small.y);
            split_tf32(a_regs[e].z, big.z, small.z);
            split_tf32(a_regs[e].w, big.w, small.w);
            *reinterpret_cast<float4 *>(ab + row * kAStride + col) = big;
            *reinterpret_cast<float4 *>(as + row * kAStride + col) = small;
        }
        const int f = step * kBK + pk;
        const bool valid = f < F;
        int qi = 0;
        int qi2 = 0;
        float si = 0.f;
        float si2 = 0.f;
        float zf = 0.f;
        if (valid) {
            const int j = f / two_n;
            const int i = f - j * two_n;
            int i2 = i - (j + 1) % two_n;
            if (i2 < 0) i2 += two_n;
            qi = i < n ? i : i - n;
            si = i < n ? 1.f : -1.f;
            qi2 = i2 < n ? i2 : i2 - n;
            si2 = i2 < n ? 1.f : -1.f;
            zf = __ldg(zg + f);
        }
        float *pb = p_big + buf * kPTile;
        float *ps = p_small + buf * kPTile;
#pragma unroll
        for (int e = 0; e < kPRows; ++e) {
            const int t = pt + e * (kThreads / kBK);
            // Invalid features have si = si2 = 0, so v = 0 where q_s is finite (a NaN token's row is NaN anyway).
            const float v =
                bfast::relu_keep_nan(si * q_s[t * n + qi]) * bfast::relu_keep_nan(si2 * q_s[t * n + qi2]);
            den_acc[e] = fmaf(v, zf, den_acc[e]);
            float big;
            float small;
            split_tf32(v, big, small);
            pb[t * kPStride + pk] = big;
            ps[t * kPStride + pk] = small;
        }
    };

    const int wm = warp / kWarpsN;
    const int wn = warp % kWarpsN;
    const int gq = lane / 4;  // mma groupID
    const int t4 = lane % 4;  // mma threadID_in_group
    float acc[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.f;

    stage(0, 0);
    __syncthreads();
    for (int step = 0; step < nsteps; ++step) {
        const int buf = step & 1;
        const bool more = step + 1 < nsteps;
        if (more) load_a(a_regs, Ag, (step + 1) * kBK, c0, F, d, vec_a, tid);
        const float *pb = p_big + buf * kPTile + (wm * kWM + gq) * kPStride + t4;
        const float *ps = p_small + buf * kPTile + (wm * kWM + gq) * kPStride + t4;
        const float *ab = a_big + buf * kATile + t4 * kAStride + wn * kWN + gq;
        const float *as = a_small + buf * kATile + t4 * kAStride + wn * kWN + gq;
#pragma unroll
        for (int k8 = 0; k8 < kBK; k8 += 8) {
            uint32_t bb[kNT][2];
            uint32_t bs[kNT][2];
#pragma unroll
            for (int nt = 0; nt < kNT; ++nt) {
                bb[nt][0] = __float_as_uint(ab[k8 * kAStride + nt * 8]);
                bb[nt][1] = __float_as_uint(ab[(k8 + 4) * kAStride + nt * 8]);
                bs[nt][0] = __float_as_uint(as[k8 * kAStride + nt * 8]);
                bs[nt][1] = __float_as_uint(as[(k8 + 4) * kAStride + nt * 8]);
            }
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
                const int o = mt * 16 * kPStride + k8;
                const uint32_t pab[4] = {__float_as_uint(pb[o]), __float_as_uint(pb[o + 8 * kPStride]),
                                         __float_as_uint(pb[o + 4]), __float_as_uint(pb[o + 8 * kPStride + 4])};
                const uint32_t pas[4] = {__float_as_uint(ps[o]), __float_as_uint(ps[o + 8 * kPStride]),
                                         __float_as_uint(ps[o + 4]), __float_as_uint(ps[o + 8 * kPStride + 4])};
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) {
                    mma_tf32(acc[mt][nt], pas, bb[nt]);
                    mma_tf32(acc[mt][nt], pab, bs[nt]);
                    mma_tf32(acc[mt][nt], pab, bb[nt]);
                }
            }
        }
        if (more) stage(step + 1, buf ^ 1);
        __syncthreads();
    }

    // den: sum the kBK feature columns of each token (lanes of one half-warp share a token), fixed order.
#pragma unroll
    for (int e = 0; e < kPRows; ++e) {
        float v = den_acc[e];
#pragma unroll
        for (int off = kBK / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (pk == 0) den_s[pt + e * (kThreads / kBK)] = v;
    }
    __syncthreads();

    // Epilogue: accumulator (mt, nt, r) sits at row wm*64 + mt*16 + gq + 8*(r/2), col wn*32 + nt*8 + 2*t4 + r%2.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = wm * kWM + mt * 16 + gq + 8 * half;
            if (r < rows) {
                const float den = den_s[r] + eps;
                const int64_t off = (row0 + r) * d;
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) {
                    const int col = c0 + wn * kWN + nt * 8 + 2 * t4;
                    const float v0 = acc[mt][nt][2 * half];
                    const float v1 = acc[mt][nt][2 * half + 1];
                    if (vec_io && col + 1 < d) {
                        const float2 hv = load_pair<T>(h + off + col);
                        store_pair<T>(out + off + col, hv.x + v0 / den, hv.y + v1 / den);
                    } else {
                        if (col < d) out[off + col] = from_float<T>(to_float(h[off + col]) + v0 / den);
                        if (col + 1 < d) out[off + col + 1] = from_float<T>(to_float(h[off + col + 1]) + v1 / den);
                    }
                }
            }
        }
    }
}

}  // namespace assoc_read_tc

template <typename input_t>
void assoc_read_tc_launch(const AssocReadTcParams &params, cudaStream_t stream) {
    using namespace assoc_read_tc;
    const int64_t tiles_per_group = (params.group_len + kBM - 1) / kBM;
    const int64_t grid_x = tiles_per_group * params.num_groups;
    const int64_t grid_y = (static_cast<int64_t>(params.d) + kBN - 1) / kBN;
    TORCH_CHECK(grid_x <= INT_MAX, "assoc_read_fwd_tc: too many tokens (", params.num_tokens, ")");
    TORCH_CHECK(grid_y <= 65535, "assoc_read_fwd_tc: d = ", params.d, " is too large");

    const bool vec_a = params.d % 4 == 0 && reinterpret_cast<uintptr_t>(params.A_ptr) % 16 == 0;
    const bool vec_io = params.d % 2 == 0 && reinterpret_cast<uintptr_t>(params.h_ptr) % (2 * sizeof(input_t)) == 0 &&
                        reinterpret_cast<uintptr_t>(params.out_ptr) % (2 * sizeof(input_t)) == 0;
    const size_t smem = smem_floats(params.n) * sizeof(float);
    auto kernel = assoc_read_tc_kernel<input_t>;
    bfast::set_max_dynamic_smem(kernel, smem, /*prefer_shared=*/true);
    BFAST_LAUNCH(kernel, dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y)), kThreads, smem, stream,
                 static_cast<const input_t *>(params.h_ptr), params.q_part, params.A_ptr, params.z_ptr,
                 static_cast<input_t *>(params.out_ptr), params.num_tokens, params.group_len, tiles_per_group,
                 params.A_group_stride, params.z_group_stride, params.d, params.n, params.F, params.q_splits,
                 params.eps, vec_a, vec_io);
    BFAST_LAUNCH_CHECK();
}
