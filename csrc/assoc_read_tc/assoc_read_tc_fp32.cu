#include "assoc_read_tc_kernel.cuh"

template void assoc_read_tc_launch<float>(const AssocReadTcParams &params, cudaStream_t stream);
