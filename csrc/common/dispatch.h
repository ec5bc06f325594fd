#pragma once

// Host-side dtype dispatch: calls f(std::type_identity<T>{}) with T the CUDA storage type of a float32,
// bfloat16 or float16 tensor dtype; any other dtype is an error that starts with fn.
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/types.h>

namespace bfast {

template <typename Fn>
void dispatch_float_dtype(const at::ScalarType t, const char *fn, Fn &&f) {
    switch (t) {
        case at::ScalarType::Float:
            f(std::type_identity<float>{});
            break;
        case at::ScalarType::BFloat16:
            f(std::type_identity<__nv_bfloat16>{});
            break;
        case at::ScalarType::Half:
            f(std::type_identity<__half>{});
            break;
        default:
            TORCH_CHECK(false, fn, ": unsupported dtype ", t);
    }
}

}  // namespace bfast
