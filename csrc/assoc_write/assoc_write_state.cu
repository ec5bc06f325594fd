// The float32 kernels that read and update the state (A, z): recall and update. They do not depend on mem's dtype,
// so they are compiled once, here.
#include "assoc_write/assoc_write_kernel.cuh"
#include "common/grid_limit.h"

namespace assoc_write {

// Block (x, y, b): columns [kRD x, kRD (x+1)) of rows [kRM y, kRM (y+1)) of batch entry b.
// Later segments: num = phi A over all F features (phi built per chunk from k), delta = phi . z + eps and
// |phi|^2 per row; u = beta * (v - num / delta) written over v; blocks with x == 0 write gamma.
// First segment: u = beta * v and gamma = 1 (A and z are not read).
// Thread (ty, tx) = (tid / kRD, tid % kRD) owns column tx and rows ty + (kThreads / kRD) * i; for the phi
// build thread (pg, pm) = (tid / kRM, tid % kRM) owns row pm and features pg + (kThreads / kRM) * e.
__global__ void __launch_bounds__(kThreads)
recall_kernel(const float *__restrict__ k, const float *__restrict__ A, const float *__restrict__ z,
              const float *__restrict__ beta, float *__restrict__ u, float *__restrict__ gamma, const int64_t M,
              const int64_t A_batch_stride, const int64_t z_batch_stride, const int d, const int n, const int F,
              const float eps, const bool correction, const bool first_segment) {
    __shared__ float A_s[kRF][kRD];
    __shared__ float phi_s[kRF][kRM + 1];
    __shared__ float den_s[kThreads / kRM][kRM];
    __shared__ float kk_s[kThreads / kRM][kRM];
    __shared__ float delta_s[kRM];
    __shared__ float kk_tot_s[kRM];

    const int tid = threadIdx.x;
    const int c0 = blockIdx.x * kRD;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kRM;
    const int64_t b = blockIdx.z;
    const int64_t row0 = b * M + m0;
    const int rows = static_cast<int>(M - m0 < kRM ? M - m0 : kRM);
    const float *Ab = A + b * A_batch_stride;
    const float *zb = z + b * z_batch_stride;
    const int tx = tid % kRD;
    const int ty = tid / kRD;
    const int pm = tid % kRM;
    const int pg = tid / kRM;

    float acc[kRRowsPerThread];
#pragma unroll
    for (int i = 0; i < kRRowsPerThread; ++i) acc[i] = 0.f;
    float den = 0.f;
    float kk = 0.f;

    if (!first_segment) {
        const float *krow = k + (row0 + (pm < rows ? pm : 0)) * n;
        for (int f0 = 0; f0 < F; f0 += kRF) {
#pragma unroll
            for (int e = 0; e < kRF * kRD / kThreads; ++e) {
                const int idx = tid + e * kThreads;
                const int fr = idx / kRD;
                const int cc = idx % kRD;
                const int f = f0 + fr;
                const int c = c0 + cc;
                A_s[fr][cc] = (f < F && c < d) ? Ab[static_cast<int64_t>(f) * d + c] : 0.f;
            }
#pragma unroll
            for (int e = 0; e < kRF * kRM / kThreads; ++e) {
                const int fr = pg + e * (kThreads / kRM);
                const int f = f0 + fr;
                float p = 0.f;
                if (pm < rows && f < F) {
                    p = phi_at(krow, f, n);
                    den = fmaf(p, zb[f], den);
                    kk = fmaf(p, p, kk);
                }
                phi_s[fr][pm] = p;
            }
            __syncthreads();
#pragma unroll 8
            for (int fr = 0; fr < kRF; ++fr) {
                const float a = A_s[fr][tx];
#pragma unroll
                for (int i = 0; i < kRRowsPerThread; ++i)
                    acc[i] = fmaf(phi_s[fr][ty + (kThreads / kRD) * i], a, acc[i]);
            }
            __syncthreads();
        }
    }

    // Per-row totals of the thread partials, summed in a fixed order (every column block gets the same delta).
    den_s[pg][pm] = den;
    kk_s[pg][pm] = kk;
    __syncthreads();
    if (tid < kRM) {
        float ds = 0.f;
        float ks = 0.f;
        for (int g = 0; g < kThreads / kRM; ++g) {
            ds += den_s[g][tid];
            ks += kk_s[g][tid];
        }
        delta_s[tid] = ds + eps;
        kk_tot_s[tid] = ks;
    }
    __syncthreads();

    const int c = c0 + tx;
#pragma unroll
    for (int i = 0; i < kRRowsPerThread; ++i) {
        const int r = ty + (kThreads / kRD) * i;
        if (r < rows && c < d) {
            const int64_t off = (row0 + r) * d + c;
            const float bt = beta[row0 + r];
            u[off] = first_segment ? bt * u[off] : bt * (u[off] - acc[i] / delta_s[r]);
        }
    }
    if (blockIdx.x == 0 && tid < rows) {
        float g = 1.f;
        if (!first_segment && correction) {
            g = 1.f - delta_s[tid] / (kk_tot_s[tid] + eps);
            g = g < 0.f ? 0.f : (g > 1.f ? 1.f : g);  // NaN passes through, as torch.clamp
        }
        gamma[row0 + tid] = g;
    }
}

// Block (x, y, b): A_new[b] columns [kUD x, kUD (x+1)) x features [kUF y, kUF (y+1)) = A + sum_m phi[m]^T u[m],
// rows in chunks of kUM; blocks with x == 0 also write z_new[b] = z + sum_m gamma[m] phi[m] for their features.
// Thread (ty, tx) = (tid / kUD, tid % kUD) owns column tx and features ty + (kThreads / kUD) * i; for the phi
// build thread (pg, pm) = (tid / kUM, tid % kUM) owns row pm and features pg + (kThreads / kUM) * e.
__global__ void __launch_bounds__(kThreads)
update_kernel(const float *__restrict__ k, const float *__restrict__ u, const float *__restrict__ gamma,
              const float *__restrict__ A, const float *__restrict__ z, float *__restrict__ A_new,
              float *__restrict__ z_new, const int64_t M, const int64_t A_batch_stride,
              const int64_t z_batch_stride, const int d, const int n, const int F) {
    __shared__ float u_s[kUM][kUD];
    __shared__ float phi_s[kUF][kUM + 1];
    __shared__ float g_s[kUM];

    const int tid = threadIdx.x;
    const int c0 = blockIdx.x * kUD;
    const int f0 = blockIdx.y * kUF;
    const int64_t b = blockIdx.z;
    const float *Ab = A + b * A_batch_stride;
    const float *zb = z + b * z_batch_stride;
    const int tx = tid % kUD;
    const int ty = tid / kUD;
    const int pm = tid % kUM;
    const int pg = tid / kUM;
    const int c = c0 + tx;
    const bool z_block = blockIdx.x == 0 && tid < kUF;

    float acc[kUFeatPerThread];
#pragma unroll
    for (int i = 0; i < kUFeatPerThread; ++i) {
        const int f = f0 + ty + (kThreads / kUD) * i;
        acc[i] = (f < F && c < d) ? Ab[static_cast<int64_t>(f) * d + c] : 0.f;
    }
    float zacc = 0.f;

    for (int64_t m0 = 0; m0 < M; m0 += kUM) {
        const int rows = static_cast<int>(M - m0 < kUM ? M - m0 : kUM);
        const int64_t row0 = b * M + m0;
#pragma unroll
        for (int e = 0; e < kUM * kUD / kThreads; ++e) {
            const int idx = tid + e * kThreads;
            const int rr = idx / kUD;
            const int cc = idx % kUD;
            u_s[rr][cc] = (rr < rows && c0 + cc < d) ? u[(row0 + rr) * d + c0 + cc] : 0.f;
        }
#pragma unroll
        for (int e = 0; e < kUF * kUM / kThreads; ++e) {
            const int fr = pg + e * (kThreads / kUM);
            const int f = f0 + fr;
            phi_s[fr][pm] = (pm < rows && f < F) ? phi_at(k + (row0 + pm) * n, f, n) : 0.f;
        }
        if (tid < kUM) g_s[tid] = tid < rows ? gamma[row0 + tid] : 0.f;
        __syncthreads();
#pragma unroll
        for (int mm = 0; mm < kUM; ++mm) {
            const float uv = u_s[mm][tx];
#pragma unroll
            for (int i = 0; i < kUFeatPerThread; ++i)
                acc[i] = fmaf(phi_s[ty + (kThreads / kUD) * i][mm], uv, acc[i]);
        }
        if (z_block) {
#pragma unroll
            for (int mm = 0; mm < kUM; ++mm) zacc = fmaf(phi_s[tid][mm], g_s[mm], zacc);
        }
        __syncthreads();
    }

    if (c < d) {
#pragma unroll
        for (int i = 0; i < kUFeatPerThread; ++i) {
            const int f = f0 + ty + (kThreads / kUD) * i;
            if (f < F) A_new[(b * F + f) * d + c] = acc[i];
        }
    }
    if (z_block && f0 + tid < F) z_new[b * F + f0 + tid] = zb[f0 + tid] + zacc;
}

}  // namespace assoc_write

namespace {

void check_batch_grid(const AssocWriteParams &params, const int64_t grid_y, const char *what) {
    TORCH_CHECK_VALUE(grid_y <= 65535, "assoc_write_fwd: ", what, " is too large for one launch");
    TORCH_CHECK_VALUE(params.B <= 65535, "assoc_write_fwd: batch ", params.B, " is above 65535, ",
                      bfast::kGridLimitHint);
}

}  // namespace

void assoc_write_recall_launch(const AssocWriteParams &params, cudaStream_t stream) {
    using namespace assoc_write;
    const int64_t grid_x = (static_cast<int64_t>(params.d) + kRD - 1) / kRD;
    const int64_t grid_y = (params.M + kRM - 1) / kRM;
    check_batch_grid(params, grid_y, "the number of memory rows M");
    BFAST_LAUNCH(recall_kernel,
                 dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), static_cast<unsigned>(params.B)),
                 kThreads, 0, stream, params.k_ptr, params.A_ptr, params.z_ptr, params.beta_ptr, params.u_ptr,
                 params.gamma_ptr, params.M, params.A_batch_stride, params.z_batch_stride, params.d, params.n, params.F,
                 params.eps, params.correction, params.first_segment);
    BFAST_LAUNCH_CHECK();
}

void assoc_write_update_launch(const AssocWriteParams &params, cudaStream_t stream) {
    using namespace assoc_write;
    const int64_t grid_x = (static_cast<int64_t>(params.d) + kUD - 1) / kUD;
    const int64_t grid_y = (static_cast<int64_t>(params.F) + kUF - 1) / kUF;
    check_batch_grid(params, grid_y, "2*nu*d_mem");
    BFAST_LAUNCH(update_kernel,
                 dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), static_cast<unsigned>(params.B)),
                 kThreads, 0, stream, params.k_ptr, params.u_ptr, params.gamma_ptr, params.A_ptr, params.z_ptr,
                 params.A_new_ptr, params.z_new_ptr, params.M, params.A_batch_stride, params.z_batch_stride, params.d,
                 params.n, params.F);
    BFAST_LAUNCH_CHECK();
}
