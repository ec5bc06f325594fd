#pragma once

#include <cstdint>

#include <cuda_runtime.h>

// Depthwise causal conv1d with the conv state carried between calls (Mamba's short convolution), per (b, d):
//   xp = [h0[b, d, :] (W-1 columns, zeros without it), x[b, d, :]]
//   out[t] = act(bias[d] + sum_k w[d, k] xp[t + k]),   act = silu or identity
//   hT[b, d, :] = xp[L .. L+W-2]   (the last W-1 inputs; from h0 where L < W-1)
// Sums in float32; offsets int64 (10M+ steps).

namespace bfast {

struct CausalConvParams {
    const void *x;     // (batch, dim, L), x_type, stride 1 along L
    const void *w;     // (dim, W) contiguous, w_type
    const void *bias;  // (dim), bias_type, or nullptr
    const void *h0;    // (batch, dim, W-1) contiguous, x_type, or nullptr
    void *out;         // (batch, dim, L) contiguous, x_type
    void *hT;          // (batch, dim, W-1) contiguous, x_type, or nullptr

    int64_t batch, dim, L, W;
    int64_t x_sb, x_sd;  // element strides
    int x_type, w_type, bias_type;  // DTypeCode (common/elem_runs.cuh)
    bool silu;
};

constexpr int kConvMaxWidth = 32;  // largest W the kernel holds
constexpr int kConvThreads = 128;
constexpr int kConvStepsPerThread = 8;  // a block convolves NT * K steps of one (b, d) row

// Grid (tiles of the row, dim, batch); launches on stream. Checked by the caller.
void causal_conv1d_launch(const CausalConvParams &p, cudaStream_t stream);

}  // namespace bfast
