#include "assoc_write_kernel.cuh"

template void assoc_write_proj_launch<__half>(const AssocWriteParams &params, cudaStream_t stream);
