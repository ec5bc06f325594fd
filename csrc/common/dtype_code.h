#pragma once

// A torch tensor's DTypeCode (dtype_enum.h), or an error naming the function and the argument.
#include <torch/types.h>

#include "common/dtype_enum.h"

namespace bfast {

inline int dtype_code(const torch::Tensor &x, const char *fn, const char *name) {
    switch (x.scalar_type()) {
        case at::ScalarType::Float:
            return kF32;
        case at::ScalarType::BFloat16:
            return kBF16;
        case at::ScalarType::Half:
            return kF16;
        default:
            TORCH_CHECK(false, fn, ": ", name, " must be float32, bfloat16 or float16, got ", x.scalar_type());
    }
    return kF32;
}

}  // namespace bfast
