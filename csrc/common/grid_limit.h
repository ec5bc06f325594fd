#pragma once
// Grid y and z sizes are at most 65535; the kernels put the batch there. The message's tail for a batch past it,
// worded as the Triton wrappers' (kernels/launch_limits.py).

namespace bfast {

inline constexpr const char *kGridLimitHint =
    "CUDA's grid limit for the kernel; split the batch or use backend='torch'";

}  // namespace bfast
