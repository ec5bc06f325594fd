#pragma once

// Runs a CUDA kernel's source on the CPU, for tests on machines without a GPU: one std::thread per CUDA thread
// of a block, the blocks one after another. Provides threadIdx, blockIdx, blockDim, __syncthreads (a barrier of
// the block's threads) and __shfl_up_sync on floats (a barrier of the warp's 32 threads, so a missing
// __syncthreads between warps is not hidden by the warp's own exchanges). __shared__ becomes static: one copy
// shared by the block's threads. Include after the CUDA and torch headers, before the kernel.
#include <barrier>
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
inline thread_local Block *block = nullptr;

inline void sync_threads() { block->bar.arrive_and_wait(); }

inline float shfl_up(unsigned mask, float v, unsigned off) {
    if (mask != 0xffffffffu) throw std::logic_error("emulated __shfl_up_sync supports the full mask only");
    const unsigned lane = thread_idx.x % 32;
    Warp &w = *block->warps[thread_idx.x / 32];
    w.slot[lane] = v;
    w.bar.arrive_and_wait();
    const float r = lane >= off ? w.slot[lane - off] : v;
    w.bar.arrive_and_wait();
    return r;
}

// kernel<<<grid, threads>>>(args...), with threads a multiple of 32; returns when every block has run.
template <typename Kernel, typename... Args>
void launch(const dim3 grid, const unsigned threads, Kernel kernel, const Args &...args) {
    if (threads == 0 || threads % 32) throw std::invalid_argument("emulated launch: threads must be whole warps");
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                Block blk(static_cast<int>(threads));
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned t = 0; t < threads; ++t)
                    pool.emplace_back([&, t] {
                        thread_idx = dim3(t, 0, 0);
                        block_idx = dim3(x, y, z);
                        block_dim = dim3(threads, 1, 1);
                        block = &blk;
                        kernel(args...);
                    });
                for (auto &th : pool) th.join();
            }
}

}  // namespace bf_emu

#define threadIdx (bf_emu::thread_idx)
#define blockIdx (bf_emu::block_idx)
#define blockDim (bf_emu::block_dim)
#define __syncthreads() bf_emu::sync_threads()
#define __shfl_up_sync(mask, v, off) bf_emu::shfl_up((mask), (v), (off))
