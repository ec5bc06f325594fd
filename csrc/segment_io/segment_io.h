#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/dtype_enum.h"

// Inputs read as float inside the kernels through a DTypeCode ("kind"): memory rows, LayerNorm weight and bias
// may have a dtype other than the buffer's (float64 included).

// segment_embed: out[b, t] = src(b, t) + wpe[t] for t < T = Mf + L + Mb, where src is front[b or 0, t]
// (t < Mf), wte[ids[b, t - Mf]] (t < Mf + L) or back[b or 0, t - Mf - L]; float32 sum, one rounding.
struct SegmentEmbedParams {
    const int64_t *ids;  // (B, L)
    const void *wte;     // (V, d), out's dtype
    const void *wpe;     // (P >= T, d), out's dtype
    const void *front;   // (B or 1, Mf, d), front_kind; unused when Mf == 0
    const void *back;    // (B or 1, Mb, d), back_kind; unused when Mb == 0
    void *out;           // (B, T, d)
    int64_t B, L, V, d, Mf, Mb;
    int64_t front_batch_stride;  // elements; 0 broadcasts a batch of 1
    int64_t back_batch_stride;
    int front_kind, back_kind;
};

// rows_layer_norm: out[b, r] = LayerNorm(x[b, start + r]) * w + b in float32, r < count.
struct RowsLayerNormParams {
    const void *x;   // (B, T, d)
    const void *w;   // (d), w_kind
    const void *b;   // (d), b_kind
    float *out;      // (B, count, d)
    int64_t B, T, start, count, d;
    int w_kind, b_kind;
    float eps;
};

namespace segment_io {
constexpr int kEmbedThreads = 128;  // one block per (row, sample), threads stride over d
constexpr int kNormThreads = 256;   // one block per (row, sample), block-wide reductions over d
}  // namespace segment_io

template <typename out_t>
void segment_embed_launch(const SegmentEmbedParams &params, cudaStream_t stream);

template <typename x_t>
void rows_layer_norm_launch(const RowsLayerNormParams &params, cudaStream_t stream);
