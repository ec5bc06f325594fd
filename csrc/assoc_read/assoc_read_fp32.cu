#include "assoc_read_kernel.cuh"
#include "assoc_read_v2_kernel.cuh"

template void assoc_read_qproj_launch<float>(const AssocReadParams &params, cudaStream_t stream);
template void assoc_read_main_launch<float>(const AssocReadParams &params, cudaStream_t stream);
template void assoc_read_v2_qproj_launch<float>(const AssocReadV2Params &params, cudaStream_t stream);
template void assoc_read_v2_main_launch<float>(const AssocReadV2Params &params, cudaStream_t stream);
