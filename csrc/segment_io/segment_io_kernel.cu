// Kernels of the segment memory read/write; see segment_io.h for the math and the layouts.
#include <cmath>

#include "common/launch.cuh"

#include "common/convert.cuh"
#include "common/elem_runs.cuh"
#include "segment_io.h"

namespace {

using bfast::load_elem;
using bfast::from_float;
using bfast::to_float;

// grid (T, B), block kEmbedThreads. Each block writes one row of out.
template <typename out_t>
__global__ void segment_embed_kernel(const SegmentEmbedParams p) {
    const int64_t t = blockIdx.x;
    const int64_t b = blockIdx.y;
    const int64_t T = p.Mf + p.L + p.Mb;
    const int64_t d = p.d;
    out_t *out = static_cast<out_t *>(p.out) + (b * T + t) * d;
    const out_t *pos = static_cast<const out_t *>(p.wpe) + t * d;
    if (t < p.Mf) {
        const int64_t base = b * p.front_batch_stride + t * d;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
            out[i] = from_float<out_t>(load_elem(p.front, p.front_kind, base + i) + to_float(pos[i]));
    } else if (t < p.Mf + p.L) {
        const int64_t id = p.ids[b * p.L + (t - p.Mf)];
        if (id < 0 || id >= p.V) {  // out of the vocabulary: a NaN row, nothing read
            for (int64_t i = threadIdx.x; i < d; i += blockDim.x) out[i] = from_float<out_t>(NAN);
            return;
        }
        const out_t *tok = static_cast<const out_t *>(p.wte) + id * d;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
            out[i] = from_float<out_t>(to_float(tok[i]) + to_float(pos[i]));
    } else {
        const int64_t base = b * p.back_batch_stride + (t - p.Mf - p.L) * d;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
            out[i] = from_float<out_t>(load_elem(p.back, p.back_kind, base + i) + to_float(pos[i]));
    }
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// shm holds 33 floats; the leading barrier lets consecutive calls reuse it.
__device__ __forceinline__ float block_sum(float v, float *shm) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int num_warps = blockDim.x >> 5;
        float w = lane < num_warps ? shm[lane] : 0.f;
        for (int off = 16; off > 0; off >>= 1) w += __shfl_xor_sync(0xffffffffu, w, off);
        if (lane == 0) shm[32] = w;
    }
    __syncthreads();
    return shm[32];
}

// grid (count, B), block kNormThreads. Two passes for the moments (mean, then the centred variance), one to
// write; the row is re-read from L1/L2.
template <typename x_t>
__global__ void rows_layer_norm_kernel(const RowsLayerNormParams p) {
    __shared__ float shm[33];
    const int64_t r = blockIdx.x;
    const int64_t b = blockIdx.y;
    const int64_t d = p.d;
    const x_t *x = static_cast<const x_t *>(p.x) + (b * p.T + p.start + r) * d;
    float *out = p.out + (b * p.count + r) * d;
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) s += to_float(x[i]);
    const float mean = block_sum(s, shm) / static_cast<float>(d);
    float v = 0.f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        const float c = to_float(x[i]) - mean;
        v += c * c;
    }
    const float rstd = rsqrtf(block_sum(v, shm) / static_cast<float>(d) + p.eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
        out[i] = (to_float(x[i]) - mean) * rstd * load_elem(p.w, p.w_kind, i) + load_elem(p.b, p.b_kind, i);
}

}  // namespace

template <typename out_t>
void segment_embed_launch(const SegmentEmbedParams &params, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(params.Mf + params.L + params.Mb), static_cast<unsigned>(params.B));
    BFAST_LAUNCH(segment_embed_kernel<out_t>, grid, segment_io::kEmbedThreads, 0, stream, params);
    BFAST_LAUNCH_CHECK();
}

template <typename x_t>
void rows_layer_norm_launch(const RowsLayerNormParams &params, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(params.count), static_cast<unsigned>(params.B));
    BFAST_LAUNCH(rows_layer_norm_kernel<x_t>, grid, segment_io::kNormThreads, 0, stream, params);
    BFAST_LAUNCH_CHECK();
}

template void segment_embed_launch<float>(const SegmentEmbedParams &, cudaStream_t);
template void segment_embed_launch<__nv_bfloat16>(const SegmentEmbedParams &, cudaStream_t);
template void segment_embed_launch<__half>(const SegmentEmbedParams &, cudaStream_t);
template void rows_layer_norm_launch<float>(const RowsLayerNormParams &, cudaStream_t);
template void rows_layer_norm_launch<__nv_bfloat16>(const RowsLayerNormParams &, cudaStream_t);
template void rows_layer_norm_launch<__half>(const RowsLayerNormParams &, cudaStream_t);
