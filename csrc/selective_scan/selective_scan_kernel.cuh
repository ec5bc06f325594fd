#pragma once

// The selective scan kernel (see selective_scan.h). One block per (channel d, batch row b) walks the sequence in
// tiles of NT * K steps; thread i owns the tile's steps i*K .. i*K+K-1. Per tile and state index n:
//   1. each thread composes its K steps' pairs (a, b) = (exp(dt A), dt B u) into one (x -> a x + b);
//   2. a block-wide scan of those (warp shuffles, then the warps' totals through shared memory) gives each
//      thread the state before its first step, starting from the carry left by the previous tile;
//   3. each thread replays its K steps from that state and adds C_t[n] x_t to its outputs; the last thread's
//      final state is the next tile's carry.
// A thread's K steps of u, delta, z, B_n, C_n and out move as 16-byte vectors where the row allows (all K steps
// present, aligned), else one element at a time. State and sums in float32. Compiles with nvcc, and with a host
// compiler under the tests' thread emulation (threadIdx, __syncthreads and __shfl_up_sync provided there).
#include <cstdint>

#include "common/elem_runs.cuh"
#include "selective_scan/selective_scan.h"

namespace bfast {

constexpr float kLog2e = 1.4426950408889634f;

// torch's softplus: log1p(exp(x)), or x above 20.
__device__ __forceinline__ float scan_softplus(const float x) { return x > 20.f ? x : log1pf(expf(x)); }

// Offset of B or C's row (b, group of channel d, n = 0); time-invariant: row d of (dim, N).
__device__ __forceinline__ int64_t bc_row(const bool varying, const int64_t b, const int64_t d, const int64_t N,
                                          const int64_t sb, const int64_t sg, const int64_t dpg) {
    return varying ? b * sb + (d / dpg) * sg : d * N;
}

// State n's B (or C) values at a thread's K steps: a run of the time-varying row, or the time-invariant value.
template <int K>
__device__ __forceinline__ void bc_run(const void *X, const int type, const bool varying, const int64_t row,
                                       const int64_t sn, const int64_t n, const int64_t ts, const int64_t valid,
                                       float (&v)[K]) {
    if (varying) {
        load_run<K>(X, type, row + n * sn + ts, valid, v);
        return;
    }
    const float c = load_elem(X, type, row + n);
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = c;
}

template <int NT, int K>
__global__ void __launch_bounds__(NT, 4) selective_scan_fwd_kernel(const SelectiveScanParams p) {
    constexpr int W = NT / 32;
    static_assert(NT % 32 == 0 && W <= 32, "NT: whole warps, at most 32");
    __shared__ float warp_a[2][W];          // warps' composed pairs, double-buffered by round
    __shared__ float warp_b[2][W];
    __shared__ float carry[2][kScanMaxN];  // state at each tile's start, double-buffered by tile

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int64_t d = blockIdx.x;
    const int64_t b = blockIdx.y;
    const int64_t N = p.N;
    const int64_t L = p.L;
    const int64_t bd = b * p.dim + d;

    for (int64_t n = tid; n < N; n += NT) carry[0][n] = p.h0 ? p.h0[bd * N + n] : 0.f;
    const float bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    const float Dd = p.D ? p.D[d] : 0.f;
    const int64_t u_row = b * p.u_sb + d * p.u_sd;
    const int64_t dt_row = b * p.dt_sb + d * p.dt_sd;
    const int64_t z_row = b * p.z_sb + d * p.z_sd;
    const int64_t B_row = bc_row(p.B_varying, b, d, N, p.B_sb, p.B_sg, p.B_dpg);
    const int64_t C_row = bc_row(p.C_varying, b, d, N, p.C_sb, p.C_sg, p.C_dpg);
    const float *A_row = p.A + d * N;
    __syncthreads();

    int tile_buf = 0;   // carry[tile_buf]: the state before this tile
    int round_buf = 0;  // warp_a/warp_b buffer of this (tile, n) round
    for (int64_t t0 = 0; t0 < L; t0 += int64_t(NT) * K, tile_buf ^= 1) {
        const int64_t ts = t0 + int64_t(tid) * K;
        const int64_t valid = L - ts;  // this thread's steps that exist (<= 0 past the end)
        float dt[K], dtu[K], uu[K], y[K];
        load_run<K>(p.u, p.u_type, u_row + ts, valid, uu);
        load_run<K>(p.delta, p.delta_type, dt_row + ts, valid, dt);
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const float v = dt[k] + bias;
            dt[k] = k < valid ? (p.softplus ? scan_softplus(v) : v) : 0.f;  // past the end: decay 1, no input
            dtu[k] = dt[k] * uu[k];
            y[k] = 0.f;
        }
        for (int64_t n = 0; n < N; ++n, round_buf ^= 1) {
            const float An = A_row[n] * kLog2e;  // exp(dt A) = exp2(dt A log2(e))
            float Bv[K], Cv[K];
            bc_run<K>(p.B, p.B_type, p.B_varying, B_row, p.B_sn, n, ts, valid, Bv);
            bc_run<K>(p.C, p.C_type, p.C_varying, C_row, p.C_sn, n, ts, valid, Cv);
            float a[K], bu[K];
            float ta = 1.f, tb = 0.f;  // this thread's K steps composed
#pragma unroll
            for (int k = 0; k < K; ++k) {
                // past the end: the identity, set (dt = 0 gives 0 * inf = NaN for an infinite A or B)
                a[k] = k < valid ? exp2f(dt[k] * An) : 1.f;
                bu[k] = k < valid ? dtu[k] * Bv[k] : 0.f;
                tb = a[k] * tb + bu[k];
                ta *= a[k];
            }
            // Inclusive scan over the warp's lanes: (pa, pb) then (ta, tb).
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const float pa = __shfl_up_sync(0xffffffffu, ta, off);
                const float pb = __shfl_up_sync(0xffffffffu, tb, off);
                if (lane >= off) {
                    tb = ta * pb + tb;
                    ta = pa * ta;
                }
            }
            // Exclusive: the lanes before this one.
            float ea = __shfl_up_sync(0xffffffffu, ta, 1);
            float eb = __shfl_up_sync(0xffffffffu, tb, 1);
            if (lane == 0) {
                ea = 1.f;
                eb = 0.f;
            }
            if (lane == 31) {
                warp_a[round_buf][warp] = ta;
                warp_b[round_buf][warp] = tb;
            }
            __syncthreads();
            float h = carry[tile_buf][n];
            for (int w = 0; w < warp; ++w) h = warp_a[round_buf][w] * h + warp_b[round_buf][w];
            h = ea * h + eb;  // the state before this thread's first step
#pragma unroll
            for (int k = 0; k < K; ++k) {
                h = a[k] * h + bu[k];
                y[k] += Cv[k] * h;
            }
            if (tid == NT - 1) carry[tile_buf ^ 1][n] = h;  // the tile's last step (padding steps are identities)
        }
        if (p.D) {  // only with D: 0 * u is NaN for an infinite u
#pragma unroll
            for (int k = 0; k < K; ++k) y[k] += Dd * uu[k];
        }
        if (p.z) {
            float zz[K];
            load_run<K>(p.z, p.z_type, z_row + ts, valid, zz);
#pragma unroll
            for (int k = 0; k < K; ++k) y[k] *= zz[k] / (1.f + expf(-zz[k]));
        }
        store_run<K>(p.out, p.u_type, bd * L + ts, valid, y);
    }
    if (p.hT) {
        __syncthreads();
        for (int64_t n = tid; n < N; n += NT) p.hT[bd * N + n] = carry[tile_buf][n];
    }
}

}  // namespace bfast
