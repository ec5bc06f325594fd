#pragma once

// torch::empty for kernel outputs and scratch (new_buffer, or poison after allocating). Under the tests' thread
// emulation (BFAST_EMULATION) the memory is NaN-filled, so an element that no kernel writes, or scratch read
// before it is written, shows in the results.
#include <limits>

#include <torch/types.h>

namespace bfast {

// NaN-fills a float tensor under emulation (nothing on CUDA); for outputs whose dtype is checked after allocation.
inline void poison(torch::Tensor &t) {
#ifdef BFAST_EMULATION
    t.fill_(std::numeric_limits<double>::quiet_NaN());
#else
    (void)t;
#endif
}

inline torch::Tensor new_buffer(at::IntArrayRef sizes, const at::TensorOptions &options) {
    auto t = torch::empty(sizes, options);
    poison(t);
    return t;
}

}  // namespace bfast
