#pragma once

// Runs CUDA kernels' source on the CPU, for tests on machines without a GPU: one std::thread per CUDA thread of
// a block, the blocks one after another. Provides threadIdx, blockIdx, blockDim, gridDim, __syncthreads (a
// barrier of the block's threads), __shfl_up_sync / __shfl_xor_sync on floats (a barrier of the warp's 32
// threads, so a missing __syncthreads between warps is not hidden by the warp's own exchanges), __ldg, and
// bf_emu::launch for csrc/common/launch.cuh's BFAST_LAUNCH (defines BFAST_EMULATION). A deadlock (threads
// missing from a barrier) or an exception in any thread becomes an exception of the launch. __shared__ becomes
// static, in a section of its own: one copy shared by the block's threads (blocks run one at a time), filled with
// NaN bytes before each block, as CUDA leaves it uninitialised. Under a serial schedule (bf_emu::schedule) the
// block's threads take turns, in thread order or in reverse, one running from a sync point to the next, so a
// shared-memory race (a read of what another thread writes between the same two sync points) shows as a wrong
// result in one of the two orders instead of depending on the host's interleaving (the reverse schedule also runs
// the blocks in reverse, for reads of what another block of the launch writes). Dynamic shared memory
// (BFAST_DYNAMIC_SMEM) is a per-block buffer filled with NaN bytes, with CUDA's 48 KB default limit and sm_90's
// opt-in maximum. The tensor-core instructions csrc uses (cvt.rna.tf32.f32, mma.sync m16n8k8 tf32) are
// emulated from the PTX ISA's definitions and fragment layouts. Include after the CUDA and torch headers,
// before csrc's kernels and launchers.
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <semaphore>
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
#define __shared__ static __attribute__((section("bf_emu_shared")))
#define __launch_bounds__(...)
#define BFAST_EMULATION 1

namespace bf_emu {

// Thrown in the threads of a block that another of its threads made fail; launch rethrows the first error.
struct BlockFailed : std::runtime_error {
    BlockFailed() : std::runtime_error("emulated block failed in another thread") {}
};

// How a block's threads run: all at once (host threads, interleaved as the OS schedules them), or one at a time
// in thread order (forward) or in reverse order, each from one sync point to the next.
enum class Schedule { threads, forward, reverse };
inline Schedule schedule = Schedule::threads;

// Fails the block: kernel threads missing from a barrier or warp exchange.
struct Deadlock : std::runtime_error {
    Deadlock() : std::runtime_error("emulated kernel deadlock: threads missing from a barrier or warp exchange") {}
};

// The turn of a serial schedule: exactly one thread of the block runs. A thread waiting at a barrier is blocked;
// when the last one arrives the barrier's threads are runnable again and the turn goes to the first runnable thread
// in the schedule's order. The turn passes through semaphores, which also order the threads' memory accesses.
class Turns {
public:
    Turns(int count, bool reverse) : reverse_(reverse), runnable_(count, 1) {
        for (int t = 0; t < count; ++t) sem_.push_back(std::make_unique<std::counting_semaphore<>>(0));
    }

    void begin() { sem_[next_after(-1)]->release(); }  // before the threads start: the first one's turn
    void wait(int me) {
        sem_[me]->acquire();
        if (broken_.load(std::memory_order_acquire)) throw BlockFailed();
    }
    // `me` arrives at a barrier of `count` threads, `waiters` those already there: the last to arrive makes them
    // runnable and the turn starts again from the first in order; otherwise `me` waits and the turn moves on.
    void arrive(int me, std::vector<int> &waiters, int count) {
        if (static_cast<int>(waiters.size()) + 1 == count) {
            for (int t : waiters) runnable_[t] = 1;
            waiters.clear();
            pass(me, next_after(-1));
        } else {
            waiters.push_back(me);
            runnable_[me] = 0;
            pass(me, next_after(me));
        }
    }
    // `me` returned from the kernel. False when threads are left waiting with none to release them.
    bool finish(int me) {
        runnable_[me] = 0;
        done_ += 1;
        const int next = next_after(me);
        if (next >= 0) sem_[next]->release();
        return next >= 0 || done_ == static_cast<int>(runnable_.size());
    }
    void break_all() {
        broken_.store(true, std::memory_order_release);
        for (auto &s : sem_) s->release();
    }

private:
    // The first runnable thread after `me` in the schedule's order, wrapping around (me = -1: from the start).
    int next_after(int me) const {
        const int n = static_cast<int>(runnable_.size());
        const int start = me < 0 ? -1 : (reverse_ ? n - 1 - me : me);  // me's position in the order
        for (int i = 1; i <= n; ++i) {
            const int pos = (start + i) % n;
            const int t = reverse_ ? n - 1 - pos : pos;
            if (runnable_[t]) return t;
        }
        return -1;
    }
    void pass(int me, int next) {
        if (next < 0) throw Deadlock();
        if (next == me) return;
        sem_[next]->release();
        wait(me);
    }

    const bool reverse_;
    std::vector<char> runnable_;
    std::vector<std::unique_ptr<std::counting_semaphore<>>> sem_;
    int done_ = 0;
    std::atomic<bool> broken_{false};
};

inline thread_local unsigned linear_tid = 0;

// A reusable barrier of `count` threads (futex waits, or the turns of a serial schedule) that break_all() opens
// for good: every wait then throws.
class Barrier {
public:
    Barrier(int count, Turns *turns) : count_(count), turns_(turns) {}

    void arrive_and_wait() {
        if (turns_) {  // serial: only the thread with the turn runs here
            turns_->arrive(static_cast<int>(linear_tid), waiters_, count_);
            return;
        }
        const uint32_t gen = gen_.load(std::memory_order_acquire);
        if (broken_.load(std::memory_order_acquire)) throw BlockFailed();
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
            arrived_.store(0, std::memory_order_relaxed);
            gen_.fetch_add(1, std::memory_order_release);
            gen_.notify_all();
            return;
        }
        while (gen_.load(std::memory_order_acquire) == gen) gen_.wait(gen, std::memory_order_acquire);
        if (broken_.load(std::memory_order_acquire)) throw BlockFailed();
    }

    void break_all() {
        broken_.store(true, std::memory_order_release);
        gen_.fetch_add(1, std::memory_order_release);
        gen_.notify_all();
    }

private:
    const int count_;
    Turns *const turns_;
    std::vector<int> waiters_;  // serial schedules
    std::atomic<int> arrived_{0};
    std::atomic<uint32_t> gen_{0};
    std::atomic<bool> broken_{false};
};

struct Warp {
    explicit Warp(Turns *turns) : bar(32, turns) {}
    Barrier bar;
    float slot[32] = {};
    uint32_t mma_a[32][4] = {};
    uint32_t mma_b[32][2] = {};
};

struct Block {
    Block(int threads, size_t shared_bytes)
        : turns(schedule == Schedule::threads ? nullptr
                                               : std::make_unique<Turns>(threads, schedule == Schedule::reverse)),
          bar(threads, turns.get()), warps(threads / 32),
          dyn(shared_bytes ? std::aligned_alloc(16, (shared_bytes + 15) / 16 * 16) : nullptr, &std::free) {
        for (auto &w : warps) w = std::make_unique<Warp>(turns.get());
        if (shared_bytes && !dyn) throw std::bad_alloc();
        if (dyn) std::memset(dyn.get(), 0xff, shared_bytes);  // NaN floats: a read before any write shows
    }
    std::unique_ptr<Turns> turns;  // serial schedules only
    Barrier bar;
    std::vector<std::unique_ptr<Warp>> warps;
    std::unique_ptr<void, decltype(&std::free)> dyn;
    std::mutex error_mutex;
    std::exception_ptr error;  // the first error of a thread (not a BlockFailed)

    // A thread failed: keep its error (none for a BlockFailed) and release every waiting thread of the block.
    void fail(std::exception_ptr e) {
        {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (e && !error) error = e;
        }
        bar.break_all();
        for (auto &w : warps) w->bar.break_all();
        if (turns) turns->break_all();
    }
};

// Dynamic shared memory limits: CUDA's default per kernel, raised up to sm_90's opt-in maximum. (CUDA's default
// is 48 KB less the kernel's static shared memory, which is not known here: only the dynamic part counts.)
constexpr size_t kSmemDefault = 48 * 1024;
constexpr size_t kSmemOptin = 232448;

inline std::map<const void *, size_t> &dynamic_smem_limits() {
    static std::map<const void *, size_t> limits;
    return limits;
}

inline std::mutex &dynamic_smem_mutex() {
    static std::mutex m;
    return m;
}

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
template <typename Kernel>
void set_max_dynamic_smem(Kernel kernel, size_t bytes) {
    if (bytes > kSmemOptin) throw std::invalid_argument("emulated cudaFuncSetAttribute: above the opt-in maximum");
    std::lock_guard<std::mutex> lock(dynamic_smem_mutex());
    dynamic_smem_limits()[reinterpret_cast<const void *>(kernel)] = bytes;
}

template <typename Kernel>
size_t max_dynamic_smem(Kernel kernel) {
    std::lock_guard<std::mutex> lock(dynamic_smem_mutex());
    const auto it = dynamic_smem_limits().find(reinterpret_cast<const void *>(kernel));
    return it == dynamic_smem_limits().end() ? kSmemDefault : it->second;
}

inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline thread_local dim3 block_dim;
inline thread_local dim3 grid_dim;
inline thread_local Block *block = nullptr;

inline void sync_threads() { block->bar.arrive_and_wait(); }

inline void *dynamic_shared() {
    if (!block->dyn) throw std::logic_error("emulated kernel uses dynamic shared memory but was launched with none");
    return block->dyn.get();
}

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

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest with ties away from zero; the low 13 bits are zero.
inline float cvt_rna_tf32(float x) {
    if (!std::isfinite(x)) return x;
    return std::bit_cast<float>((std::bit_cast<uint32_t>(x) + 0x1000u) & 0xffffe000u);
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d, a, b, d for the calling lane. Every lane publishes its
// fragments; then each lane computes its four outputs. PTX ISA fragment layouts (g = lane / 4, t = lane % 4):
// a[r] holds A[g + 8 * (r % 2)][t + 4 * (r / 2)], b[r] holds B[t + 4 * r][g],
// d[r] holds D[g + 8 * (r / 2)][2t + r % 2].
// The tensor cores read only the tf32 bits of a and b (the low 13 bits are dropped here); products are exact
// and summed in double, then added to d in float (hardware accumulates in fp32 in an unspecified order).
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    const unsigned lane = linear_tid % 32;
    Warp &w = *block->warps[linear_tid / 32];
    for (int r = 0; r < 4; ++r) w.mma_a[lane][r] = a[r];
    for (int r = 0; r < 2; ++r) w.mma_b[lane][r] = b[r];
    w.bar.arrive_and_wait();
    auto tf32 = [](uint32_t bits) { return static_cast<double>(std::bit_cast<float>(bits & 0xffffe000u)); };
    auto a_at = [&](unsigned row, unsigned k) { return tf32(w.mma_a[(row % 8) * 4 + k % 4][row / 8 + 2 * (k / 4)]); };
    auto b_at = [&](unsigned k, unsigned col) { return tf32(w.mma_b[col * 4 + k % 4][k / 4]); };
    const unsigned g = lane / 4;
    const unsigned t = lane % 4;
    for (int r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r / 2);
        const unsigned col = 2 * t + r % 2;
        double sum = 0.0;
        for (unsigned k = 0; k < 8; ++k) sum += a_at(row, k) * b_at(k, col);
        d[r] = static_cast<float>(static_cast<double>(d[r]) + sum);
    }
    w.bar.arrive_and_wait();
}

// The section of static __shared__ arrays (weak: none when a program declares none).
extern "C" __attribute__((weak)) char __start_bf_emu_shared[];
extern "C" __attribute__((weak)) char __stop_bf_emu_shared[];

// Static shared memory before a block runs: NaN bytes, so a read before any write of the block shows.
inline void poison_static_shared() {
    if (__start_bf_emu_shared) std::memset(__start_bf_emu_shared, 0xff, __stop_bf_emu_shared - __start_bf_emu_shared);
}

// How long a block may run before it counts as deadlocked.
inline std::chrono::milliseconds deadlock_timeout{120'000};

// kernel<<<grid, block, shared_bytes>>>(args...): block.x * block.y * block.z threads in whole warps (linear
// index x fastest, warps of 32 consecutive indices); returns when every block has run.
template <typename Kernel, typename... Args>
void launch(const dim3 grid, const dim3 block_shape, const size_t shared_bytes, Kernel kernel, const Args &...args) {
    const unsigned threads = block_shape.x * block_shape.y * block_shape.z;
    if (threads == 0 || threads % 32) throw std::invalid_argument("emulated launch: threads must be whole warps");
    if (shared_bytes > max_dynamic_smem(kernel))
        throw std::invalid_argument("emulated launch: dynamic shared memory above the kernel's limit "
                                    "(48 KB unless raised with cudaFuncSetAttribute)");
    if (threads > 1024 || grid.y > 65535 || grid.z > 65535 || grid.x == 0 || grid.y == 0 || grid.z == 0)
        throw std::invalid_argument("emulated launch: block or grid outside CUDA's limits");
    // Blocks one at a time, in grid order; the reverse schedule runs them in reverse too, so a block reading what
    // a later block of the same launch writes (no order on a GPU) also differs between the two orders.
    const bool reverse_blocks = schedule == Schedule::reverse;
    for (unsigned zi = 0; zi < grid.z; ++zi)
        for (unsigned yi = 0; yi < grid.y; ++yi)
            for (unsigned xi = 0; xi < grid.x; ++xi) {
                const unsigned x = reverse_blocks ? grid.x - 1 - xi : xi;
                const unsigned y = reverse_blocks ? grid.y - 1 - yi : yi;
                const unsigned z = reverse_blocks ? grid.z - 1 - zi : zi;
                poison_static_shared();
                Block blk(static_cast<int>(threads), shared_bytes);
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
                        try {
                            if (blk.turns) blk.turns->wait(static_cast<int>(t));
                            kernel(args...);
                            if (blk.turns && !blk.turns->finish(static_cast<int>(t))) throw Deadlock();
                        } catch (const BlockFailed &) {
                            blk.fail(nullptr);
                        } catch (...) {
                            blk.fail(std::current_exception());
                        }
                    });
                if (blk.turns) blk.turns->begin();
                // Threads missing from a barrier or warp exchange (divergent or early-exited threads) would
                // wait for ever: past deadlock_timeout the block fails instead.
                std::mutex done_mutex;
                std::condition_variable done_cv;
                bool done = false;
                std::thread watchdog([&] {
                    std::unique_lock<std::mutex> lock(done_mutex);
                    if (!done_cv.wait_for(lock, deadlock_timeout, [&] { return done; }))
                        blk.fail(std::make_exception_ptr(Deadlock()));
                });
                for (auto &th : pool) th.join();
                {
                    std::lock_guard<std::mutex> lock(done_mutex);
                    done = true;
                }
                done_cv.notify_one();
                watchdog.join();
                if (blk.error) std::rethrow_exception(blk.error);
            }
}

}  // namespace bf_emu

// Device math functions with no host declaration.
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline uint32_t __float_as_uint(float x) { return std::bit_cast<uint32_t>(x); }
inline float __uint_as_float(uint32_t x) { return std::bit_cast<float>(x); }

#define threadIdx (bf_emu::thread_idx)
#define blockIdx (bf_emu::block_idx)
#define blockDim (bf_emu::block_dim)
#define gridDim (bf_emu::grid_dim)
#define __syncthreads() bf_emu::sync_threads()
#define __shfl_up_sync(mask, v, off) bf_emu::shfl_up((mask), (v), (off))
#define __shfl_xor_sync(mask, v, bits) bf_emu::shfl_xor((mask), (v), (bits))
#define __ldg(p) (*(p))
