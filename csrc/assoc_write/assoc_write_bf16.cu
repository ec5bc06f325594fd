#include "assoc_write_kernel.cuh"

template void assoc_write_proj_launch<__nv_bfloat16>(const AssocWriteParams &params, cudaStream_t stream);
