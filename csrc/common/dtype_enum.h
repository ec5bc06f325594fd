#pragma once

// Run-time element types of float tensors (host and device): kernels that take several tensors in independent
// dtypes read them through elem_runs.cuh's loads; dtype_code.h maps a torch dtype to one.
namespace bfast {

enum DTypeCode : int { kF32 = 0, kBF16 = 1, kF16 = 2, kF64 = 3 };  // kF64: small side inputs only

}  // namespace bfast
