#pragma once

// A torch tensor's DTypeCode (dtype_enum.h), or an error naming the function and the argument.
#include <torch/types.h>

#include "common/dtype_enum.h"

namespace bfast {

// allow_f64: float64 too (read through load_elem only, never as runs).
inline int dtype_code(const torch::Tensor &x, const char *fn, const char *name, const bool allow_f64 = false) {
    switch (x.scalar_type()) {
        case at::ScalarType::Float:
            return kF32;
        case at::ScalarType::BFloat16:
            return kBF16;
        case at::ScalarType::Half:
            return kF16;
        case at::ScalarType::Double:
            if (allow_f64) return kF64;
            [[fallthrough]];
        default:
            TORCH_CHECK(false, fn, ": ", name, " must be float32, bfloat16, float16", allow_f64 ? " or float64" : "",
                        ", got ", x.scalar_type());
    }
    return kF32;
}

}  // namespace bfast
