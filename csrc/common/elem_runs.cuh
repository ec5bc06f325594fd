#pragma once

// Element loads and stores of float32 / bfloat16 / float16 tensors whose dtype is known only at run time (a
// DTypeCode, dtype_enum.h), as float; and "runs": K consecutive elements of one thread, moved as 16-byte vectors
// where all K exist and are aligned, else one element at a time. Compiles with nvcc and with a host compiler
// (the tests' thread emulation).
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/dtype_enum.h"

namespace bfast {

__device__ __forceinline__ float load_elem(const void *p, const int type, const int64_t i) {
    switch (type) {
        case kBF16:
            return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
        case kF16:
            return __half2float(static_cast<const __half *>(p)[i]);
        case kF64:
            return static_cast<float>(static_cast<const double *>(p)[i]);
        default:
            return static_cast<const float *>(p)[i];
    }
}

__device__ __forceinline__ void store_elem(void *p, const int type, const int64_t i, const float v) {
    switch (type) {
        case kBF16:
            static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v);
            break;
        case kF16:
            static_cast<__half *>(p)[i] = __float2half_rn(v);
            break;
        default:
            static_cast<float *>(p)[i] = v;
    }
}

// Whether element i of p starts a 16-byte vector; never for kF64 (runs move 32- and 16-bit values only).
__device__ __forceinline__ bool aligned16(const void *p, const int type, const int64_t i) {
    if (type == kF64) return false;
    const int64_t bytes = type == kF32 ? 4 : 2;
    return (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(i * bytes)) % 16 == 0;
}

// Elements i .. i+K-1 of p into v; only the first `valid` exist (later ones read as 0).
template <int K>
__device__ __forceinline__ void load_run(const void *p, const int type, const int64_t i, const int64_t valid,
                                         float (&v)[K]) {
    static_assert(K % 8 == 0, "K: whole 16-byte vectors of 16-bit and of 32-bit values");
    if (valid >= K && aligned16(p, type, i)) {
        if (type == kF32) {
            const float4 *q = reinterpret_cast<const float4 *>(static_cast<const float *>(p) + i);
#pragma unroll
            for (int j = 0; j < K / 4; ++j) {
                const float4 f = q[j];
                v[4 * j] = f.x;
                v[4 * j + 1] = f.y;
                v[4 * j + 2] = f.z;
                v[4 * j + 3] = f.w;
            }
        } else {
            const uint4 *q = reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(p) + i);
#pragma unroll
            for (int j = 0; j < K / 8; ++j) {
                const uint4 raw = q[j];
                const uint16_t *h = reinterpret_cast<const uint16_t *>(&raw);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    v[8 * j + e] = type == kBF16 ? __bfloat162float(__ushort_as_bfloat16(h[e]))
                                                 : __half2float(__ushort_as_half(h[e]));
                }
            }
        }
        return;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = k < valid ? load_elem(p, type, i + k) : 0.f;
}

// The first `valid` of v into elements i .. of p, rounded to p's dtype.
template <int K>
__device__ __forceinline__ void store_run(void *p, const int type, const int64_t i, const int64_t valid,
                                          const float (&v)[K]) {
    static_assert(K % 8 == 0, "K: whole 16-byte vectors of 16-bit and of 32-bit values");
    if (valid >= K && aligned16(p, type, i)) {
        if (type == kF32) {
            float4 *q = reinterpret_cast<float4 *>(static_cast<float *>(p) + i);
#pragma unroll
            for (int j = 0; j < K / 4; ++j) q[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
        } else {
            uint4 *q = reinterpret_cast<uint4 *>(static_cast<uint16_t *>(p) + i);
#pragma unroll
            for (int j = 0; j < K / 8; ++j) {
                uint4 raw;
                uint16_t *h = reinterpret_cast<uint16_t *>(&raw);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    h[e] = type == kBF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v[8 * j + e]))
                                         : __half_as_ushort(__float2half_rn(v[8 * j + e]));
                }
                q[j] = raw;
            }
        }
        return;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
        if (k < valid) store_elem(p, type, i + k, v[k]);
    }
}

}  // namespace bfast
