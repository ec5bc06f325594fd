#pragma once

// Runs CUDA kernels' source on the CPU, for tests on machines without a GPU: one std::thread per CUDA thread of
// a block, the blocks one after another. Provides threadIdx, blockIdx, blockDim, gridDim, __syncthreads (a
// barrier of the block's threads), __shfl_up_sync / __shfl_xor_sync on floats (a barrier of the warp's 32
// threads, so a missing __syncthreads between warps is not hidden by the warp's own exchanges), __ldg, and
// bf_emu::launch for csrc/common/launch.cuh's BFAST_LAUNCH (defines BFAST_EMULATION). __shared__ becomes
// static: one copy shared by the block's threads (blocks run one at a time). Dynamic shared memory is not
// supported. Include after the CUDA and torch headers, before csrc's kernels and launchers.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define BFAST_EMULATION 1

namespace bf_emu {

struct Warp {
    std::barrier<> bar{32};
    float slot[32] = {};
};

struct Block {
    explicit Block(int threads) : bar(threads), warps(threads / 32) {
        for (auto &w : warps) w = std::make_unique<Warp>();
    }
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline thread_local dim3 block_dim;
inline thread_local dim3 grid_dim;
inline thread_local unsigned linear_tid = 0;
inline thread_local Block *block = nullptr;

inline void sync_threads() { block->bar.arrive_and_wait(); }

// One exchange within the warp: every lane publishes v, then reads lane src(lane) (its own v when out of range).
template <typename Src>
inline float exchange(unsigned mask, float v, Src src) {
    if (mask != 0xffffffffu) throw std::logic_error("emulated warp shuffles support the full mask only");
    const unsigned lane = linear_tid % 32;
    Warp &w = *block->warps[linear_tid / 32];
    w.slot[lane] = v;
    w.bar.arrive_and_wait();
    const unsigned from = src(lane);
    const float r = from < 32 ? w.slot[from] : v;
    w.bar.arrive_and_wait();
    return r;
}

inline float shfl_up(unsigned mask, float v, unsigned off) {
    return exchange(mask, v, [off](unsigned lane) { return lane >= off ? lane - off : 32u; });
}

inline float shfl_xor(unsigned mask, float v, unsigned bits) {
    return exchange(mask, v, [bits](unsigned lane) { return lane ^ bits; });
}

// kernel<<<grid, block, shared_bytes>>>(args...): block.x * block.y * block.z threads in whole warps (linear
// index x fastest, warps of 32 consecutive indices); returns when every block has run.
template <typename Kernel, typename... Args>
void launch(const dim3 grid, const dim3 block_shape, const size_t shared_bytes, Kernel kernel, const Args &...args) {
    const unsigned threads = block_shape.x * block_shape.y * block_shape.z;
    if (threads == 0 || threads % 32) throw std::invalid_argument("emulated launch: threads must be whole warps");
    if (shared_bytes) throw std::invalid_argument("emulated launch: no dynamic shared memory");
    if (threads > 1024 || grid.y > 65535 || grid.z > 65535 || grid.x == 0 || grid.y == 0 || grid.z == 0)
        throw std::invalid_argument("emulated launch: block or grid outside CUDA's limits");
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                Block blk(static_cast<int>(threads));
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned t = 0; t < threads; ++t)
                    pool.emplace_back([&, t] {
                        linear_tid = t;
                        thread_idx = dim3(t % block_shape.x, t / block_shape.x % block_shape.y,
                                          t / (block_shape.x * block_shape.y));
                        block_idx = dim3(x, y, z);
                        block_dim = block_shape;
                        grid_dim = grid;
                        block = &blk;
                        kernel(args...);
                    });
                for (auto &th : pool) th.join();
            }
}

}  // namespace bf_emu

// Device math functions with no host declaration.
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

#define threadIdx (bf_emu::thread_idx)
#define blockIdx (bf_emu::block_idx)
#define blockDim (bf_emu::block_dim)
#define gridDim (bf_emu::grid_dim)
#define __syncthreads() bf_emu::sync_threads()
#define __shfl_up_sync(mask, v, off) bf_emu::shfl_up((mask), (v), (off))
#define __shfl_xor_sync(mask, v, bits) bf_emu::shfl_xor((mask), (v), (bits))
#define __ldg(p) (*(p))
