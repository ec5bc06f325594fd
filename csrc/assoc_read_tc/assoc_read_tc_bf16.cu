#include "assoc_read_tc_kernel.cuh"

template void assoc_read_tc_launch<__nv_bfloat16>(const AssocReadTcParams &params, cudaStream_t stream);
