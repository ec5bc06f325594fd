#include "assoc_read_kernel.cuh"

template void assoc_read_qproj_launch<__nv_bfloat16>(const AssocReadParams &params, cudaStream_t stream);
template void assoc_read_main_launch<__nv_bfloat16>(const AssocReadParams &params, cudaStream_t stream);
