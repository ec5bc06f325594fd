#pragma once

namespace bfast {

// max(x, 0) keeping NaN, as torch.relu does (fmaxf(NaN, 0.f) returns 0, which would hide a NaN input).
__device__ __forceinline__ float relu_keep_nan(const float x) { return x < 0.f ? 0.f : x; }

}  // namespace bfast
