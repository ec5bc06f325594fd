#pragma once

// Read-only global loads shared by the kernels.
#include <cuda_runtime.h>

namespace bfast {

// Four floats of a row starting at column c (src points at it); columns >= d read as 0. vec: src is 16-byte
// aligned and c + 3 < d, so one vector load does.
__device__ __forceinline__ float4 load_row4(const float *__restrict__ src, const int c, const int d, const bool vec) {
    if (vec) return __ldg(reinterpret_cast<const float4 *>(src));
    float4 v = make_float4(__ldg(src), 0.f, 0.f, 0.f);
    if (c + 1 < d) v.y = __ldg(src + 1);
    if (c + 2 < d) v.z = __ldg(src + 2);
    if (c + 3 < d) v.w = __ldg(src + 3);
    return v;
}

}  // namespace bfast
