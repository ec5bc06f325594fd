#pragma once

// torch::empty for kernel outputs and scratch. Under the tests' thread emulation (BFAST_EMULATION) the memory
// is NaN-filled, so an element that no kernel writes, or scratch read before it is written, shows in the results.
#include <limits>

#include <torch/types.h>

namespace bfast {

inline torch::Tensor new_buffer(at::IntArrayRef sizes, const at::TensorOptions &options) {
    auto t = torch::empty(sizes, options);
#ifdef BFAST_EMULATION
    t.fill_(std::numeric_limits<double>::quiet_NaN());
#endif
    return t;
}

}  // namespace bfast
