#pragma once

// The causal conv1d kernel (see causal_conv1d.h). A block takes NT * K consecutive steps of one (b, d) row: its
// threads stage the tile's inputs and the W-1 before it (from x, or h0 before t = 0) in shared memory as float,
// then each thread computes K consecutive outputs and stores them as 16-byte vectors where the row is aligned.
// The first tile's block also writes the final state. Compiles with nvcc and under the tests' thread emulation.
#include <cstdint>

#include "causal_conv1d/causal_conv1d.h"
#include "common/elem_runs.cuh"

namespace bfast {

template <int NT, int K>
__global__ void __launch_bounds__(NT) causal_conv1d_fwd_kernel(const CausalConvParams p) {
    __shared__ float xs[NT * K + kConvMaxWidth - 1];  // xp[t0 .. t0 + NT*K + W - 2]
    __shared__ float ws[kConvMaxWidth];

    const int tid = threadIdx.x;
    const int64_t t0 = int64_t(blockIdx.x) * NT * K;
    const int64_t d = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int64_t L = p.L;
    const int W = static_cast<int>(p.W);
    const int64_t x_row = b * p.x_sb + d * p.x_sd;
    const int64_t h_row = (b * p.dim + d) * (W - 1);
    const int64_t bd = b * p.dim + d;

    // xs[j] = xp[t0 + j] = x[t0 + j - (W-1)], or h0 before t = 0; 0 past L (never used for a stored output).
    for (int j = tid; j < NT * K + W - 1; j += NT) {
        const int64_t s = t0 + j - (W - 1);
        float v = 0.f;
        if (s >= 0) {
            if (s < L) v = load_elem(p.x, p.x_type, x_row + s);
        } else if (p.h0) {
            v = load_elem(p.h0, p.x_type, h_row + (W - 1) + s);
        }
        xs[j] = v;
    }
    if (tid < W) ws[tid] = load_elem(p.w, p.w_type, d * W + tid);
    __syncthreads();

    const float bias = p.bias ? load_elem(p.bias, p.bias_type, d) : 0.f;
    float y[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const float *src = xs + tid * K + k;
        float acc = bias;
        for (int j = 0; j < W; ++j) acc += ws[j] * src[j];
        y[k] = p.silu ? acc / (1.f + expf(-acc)) : acc;
    }
    const int64_t ts = t0 + int64_t(tid) * K;
    store_run<K>(p.out, p.x_type, bd * L + ts, L - ts, y);

    if (p.hT && blockIdx.x == 0) {
        for (int j = tid; j < W - 1; j += NT) {
            const int64_t s = L - (W - 1) + j;  // x's time of final-state column j
            float v = 0.f;
            if (s >= 0) {
                v = load_elem(p.x, p.x_type, x_row + s);
            } else if (p.h0) {
                v = load_elem(p.h0, p.x_type, h_row + (W - 1) + s);
            }
            store_elem(p.hT, p.x_type, h_row + j, v);
        }
    }
}

}  // namespace bfast
