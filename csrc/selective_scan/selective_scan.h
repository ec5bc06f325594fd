#pragma once

#include <cstdint>

#include <cuda_runtime.h>

// Mamba-1 selective scan with an initial state, per (batch row b, channel d) and state index n:
//   dt_t = softplus?(delta_t + delta_bias)
//   x_t  = exp(dt_t A[d, n]) x_{t-1} + dt_t B_t[n] u_t,     x_{-1} = h0 (0 without it)
//   y_t  = (sum_n C_t[n] x_t + D u_t) * silu(z_t)
// B and C are (dim, N) (time-invariant) or read as B[b, d / dpg, n, t] through the strides below ((batch, N, L)
// is one group: dpg = dim, group stride 0). Offsets are int64 (10M+ steps); state and sums in float32.

namespace bfast {

struct SelectiveScanParams {
    const void *u;           // (batch, dim, L), u_type
    const void *delta;       // (batch, dim, L), delta_type
    const void *z;           // (batch, dim, L), z_type, or nullptr
    const void *B;           // B_type; see above
    const void *C;           // C_type
    const float *A;          // (dim, N)
    const float *D;          // (dim) or nullptr
    const float *delta_bias; // (dim) or nullptr
    const float *h0;         // (batch, dim, N) contiguous, or nullptr
    void *out;               // (batch, dim, L) contiguous, u_type
    float *hT;               // (batch, dim, N) contiguous, or nullptr

    int64_t batch, dim, N, L;
    int64_t u_sb, u_sd, dt_sb, dt_sd, z_sb, z_sd;  // element strides; stride 1 along L
    int64_t B_sb, B_sg, B_sn, B_dpg;               // time-varying B: batch, group, n strides, channels per group
    int64_t C_sb, C_sg, C_sn, C_dpg;
    int u_type, delta_type, z_type, B_type, C_type;  // DTypeCode (common/elem_runs.cuh)
    bool B_varying, C_varying, softplus;
};

constexpr int kScanMaxN = 256;  // largest state size (A.shape[1]) the kernel holds
constexpr int kScanThreads = 128;
constexpr int kScanStepsPerThread = 8;  // a block scans tiles of kScanThreads * kScanStepsPerThread steps

// One block of kScanThreads threads per (channel, batch row); launches on stream. Checked by the caller.
void selective_scan_launch(const SelectiveScanParams &p, cudaStream_t stream);

}  // namespace bfast
