#include "assoc_write_kernel.cuh"

template void assoc_write_proj_launch<float>(const AssocWriteParams &params, cudaStream_t stream);
