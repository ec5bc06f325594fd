#include "assoc_read_kernel.cuh"

template void assoc_read_qproj_launch<float>(const AssocReadParams &params, cudaStream_t stream);
template void assoc_read_main_launch<float>(const AssocReadParams &params, cudaStream_t stream);
