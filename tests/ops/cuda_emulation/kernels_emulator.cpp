// csrc's CUDA kernels run on the CPU under thread emulation, with the same parameter setup as their CUDA
// bindings: a CPU torch extension for the tests. Outputs and scratch are NaN-filled first (bfast::new_buffer in
// the host code), so an element a kernel leaves unwritten fails the comparisons.
#include <cmath>
#include <optional>
#include <string>
#include <vector>
#include <tuple>

#include <torch/extension.h>

#include "thread_emulation.h"

// The kernels with their launchers (nvcc's translation units), then the bindings' host code.
#include "assoc_read/assoc_read_kernel.cuh"
#include "assoc_read_tc/assoc_read_tc_kernel.cuh"
#include "assoc_write/assoc_write_kernel.cuh"
#include "assoc_write/assoc_write_state.cu"
#include "causal_conv1d/causal_conv1d_launch.cu"
#include "segment_io/segment_io_kernel.cu"
#include "selective_scan/selective_scan_launch.cu"

#include "assoc_read/assoc_read_host.h"
#include "assoc_read_tc/assoc_read_tc_host.h"
#include "assoc_write/assoc_write_host.h"
#include "causal_conv1d/causal_conv1d_params.h"
#include "segment_io/segment_io_host.h"
#include "selective_scan/selective_scan_params.h"

std::tuple<torch::Tensor, std::optional<torch::Tensor>> selective_scan_fwd_emulated(
    torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B, torch::Tensor C,
    std::optional<torch::Tensor> D, std::optional<torch::Tensor> z, std::optional<torch::Tensor> delta_bias,
    std::optional<torch::Tensor> initial_state, bool delta_softplus, bool return_last_state) {
    TORCH_CHECK(u.device().is_cpu(), "the emulated kernel takes CPU tensors");
    return bfast::selective_scan_run(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                     return_last_state, nullptr);
}

std::tuple<torch::Tensor, std::optional<torch::Tensor>> causal_conv1d_fwd_emulated(
    torch::Tensor x, torch::Tensor weight, std::optional<torch::Tensor> bias,
    std::optional<torch::Tensor> initial_state, bool silu, bool return_final_state) {
    TORCH_CHECK(x.device().is_cpu(), "the emulated kernel takes CPU tensors");
    return bfast::causal_conv1d_run(x, weight, bias, initial_state, silu, return_final_state, nullptr);
}

// The emulated device for the split plans: an H100's 132 SMs unless a test asks for fewer (fewer splits).
constexpr int kEmulatedSms = 132;

torch::Tensor assoc_read_fwd_emulated(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z,
                                      int64_t nu, double eps, int64_t num_sms) {
    TORCH_CHECK(h.device().is_cpu(), "the emulated kernels take CPU tensors");
    return assoc_read_run(h, w_q, A, z, nu, eps, static_cast<int>(num_sms), nullptr);
}

torch::Tensor assoc_read_fwd_tc_emulated(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z,
                                         int64_t nu, double eps, int64_t num_sms) {
    TORCH_CHECK(h.device().is_cpu(), "the emulated kernels take CPU tensors");
    return assoc_read_tc_run(h, w_q, A, z, nu, eps, static_cast<int>(num_sms), bf_emu::kSmemOptin, nullptr);
}

std::tuple<torch::Tensor, torch::Tensor> assoc_write_fwd_emulated(torch::Tensor mem, torch::Tensor w_k,
                                                                  torch::Tensor w_v, torch::Tensor w_b,
                                                                  torch::Tensor b_b, torch::Tensor A, torch::Tensor z,
                                                                  int64_t nu, double eps, bool correction,
                                                                  bool first_segment) {
    TORCH_CHECK(mem.device().is_cpu(), "the emulated kernels take CPU tensors");
    return assoc_write_run(mem, w_k, w_v, w_b, b_b, A, z, nu, eps, correction, first_segment, nullptr);
}

void segment_embed_fwd_emulated(torch::Tensor input_ids, torch::Tensor wte, torch::Tensor wpe, torch::Tensor out,
                                std::optional<torch::Tensor> front, std::optional<torch::Tensor> back) {
    TORCH_CHECK(out.device().is_cpu(), "the emulated kernel takes CPU tensors");
    segment_embed_run(input_ids, wte, wpe, out, front, back, nullptr);
}

void rows_layer_norm_fwd_emulated(torch::Tensor x, int64_t start, int64_t count, torch::Tensor weight,
                                  torch::Tensor bias, double eps, torch::Tensor out) {
    TORCH_CHECK(x.device().is_cpu(), "the emulated kernel takes CPU tensors");
    rows_layer_norm_run(x, start, count, weight, bias, eps, out, nullptr);
}

// The emulation's own failure paths: a __syncthreads that only odd threads reach (a deadlock), and a read of
// dynamic shared memory the launch did not give (an exception in the threads). Both must raise, not hang or abort.
__global__ void divergent_sync_kernel() {
    if (threadIdx.x % 2) __syncthreads();
}

__global__ void missing_smem_kernel(float *out) {
    BFAST_DYNAMIC_SMEM(float, s);
    out[threadIdx.x] = s[threadIdx.x];
}

// A shared-memory race: each thread writes its slot, then reads its neighbour's, with or without the barrier
// between. Without it the serial schedules read the neighbour's slot before it is written (NaN), forward for all
// but the last thread, reverse for the last.
__global__ void neighbour_kernel(float *out, bool sync) {
    __shared__ float slot[64];
    slot[threadIdx.x] = static_cast<float>(threadIdx.x);
    if (sync) __syncthreads();
    out[threadIdx.x] = slot[(threadIdx.x + 1) % 64];
}

torch::Tensor emulator_neighbour_read(bool sync) {
    auto out = torch::empty({64}, torch::kFloat32);
    bf_emu::launch(dim3(1), dim3(64), 0, neighbour_kernel, out.data_ptr<float>(), sync);
    return out;
}

// The same across blocks: block b writes its slot of global memory, then reads block b + 1's (a race on a GPU,
// where blocks have no order). Forward, blocks 0..2 read an unwritten slot (NaN); reverse, block 3 does.
__global__ void neighbour_block_kernel(float *slots, float *out) {
    if (threadIdx.x != 0) return;
    slots[blockIdx.x] = static_cast<float>(blockIdx.x);
    out[blockIdx.x] = slots[(blockIdx.x + 1) % gridDim.x];
}

torch::Tensor emulator_neighbour_block_read() {
    auto slots = torch::full({4}, NAN, torch::kFloat32);
    auto out = torch::empty({4}, torch::kFloat32);
    bf_emu::launch(dim3(4), dim3(32), 0, neighbour_block_kernel, slots.data_ptr<float>(), out.data_ptr<float>());
    return out;
}

// The schedule of the emulated blocks' threads for the launches that follow: "threads", "forward" or "reverse".
void set_schedule(const std::string &name) {
    if (name == "threads") {
        bf_emu::schedule = bf_emu::Schedule::threads;
    } else if (name == "forward") {
        bf_emu::schedule = bf_emu::Schedule::forward;
    } else if (name == "reverse") {
        bf_emu::schedule = bf_emu::Schedule::reverse;
    } else {
        TORCH_CHECK(false, "schedule must be 'threads', 'forward' or 'reverse', got '", name, "'");
    }
}

void emulator_self_check(const std::string &kind, int64_t timeout_ms) {
    const auto saved = bf_emu::deadlock_timeout;
    bf_emu::deadlock_timeout = std::chrono::milliseconds(timeout_ms);
    try {
        if (kind == "divergent_sync") {
            bf_emu::launch(dim3(1), dim3(64), 0, divergent_sync_kernel);
        } else if (kind == "missing_smem") {
            std::vector<float> out(64);
            bf_emu::launch(dim3(1), dim3(64), 0, missing_smem_kernel, out.data());
        } else {
            TORCH_CHECK(false, "unknown self check ", kind);
        }
    } catch (...) {
        bf_emu::deadlock_timeout = saved;
        throw;
    }
    bf_emu::deadlock_timeout = saved;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("emulator_self_check", &emulator_self_check, "runs one of the emulation's failure cases",
          pybind11::arg("kind"), pybind11::arg("timeout_ms"));
    m.def("emulator_neighbour_read", &emulator_neighbour_read,
          "a block of 64 threads that reads its neighbour's shared slot, with or without __syncthreads",
          pybind11::arg("sync"));
    m.def("emulator_neighbour_block_read", &emulator_neighbour_block_read,
          "4 blocks, each reading the global slot the next block writes");
    m.def("set_schedule", &set_schedule, "how emulated blocks run their threads: threads, forward or reverse",
          pybind11::arg("name"));
    m.def("selective_scan_fwd", &selective_scan_fwd_emulated, "csrc's selective scan kernel, emulated on the CPU",
          pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"), pybind11::arg("C"),
          pybind11::arg("D") = pybind11::none(), pybind11::arg("z") = pybind11::none(),
          pybind11::arg("delta_bias") = pybind11::none(), pybind11::arg("initial_state") = pybind11::none(),
          pybind11::arg("delta_softplus") = false, pybind11::arg("return_last_state") = false);
    m.def("causal_conv1d_fwd", &causal_conv1d_fwd_emulated, "csrc's causal conv1d kernel, emulated on the CPU",
          pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias") = pybind11::none(),
          pybind11::arg("initial_state") = pybind11::none(), pybind11::arg("silu") = false,
          pybind11::arg("return_final_state") = false);
    m.def("assoc_read_fwd", &assoc_read_fwd_emulated, "csrc's assoc_read kernels, emulated on the CPU",
          pybind11::arg("h"), pybind11::arg("w_q"), pybind11::arg("A"), pybind11::arg("z"), pybind11::arg("nu"),
          pybind11::arg("eps") = 1e-5, pybind11::arg("num_sms") = kEmulatedSms);
    m.def("assoc_read_fwd_tc", &assoc_read_fwd_tc_emulated,
          "csrc's assoc_read kernels on tensor cores (3xTF32 mma.sync), emulated on the CPU", pybind11::arg("h"),
          pybind11::arg("w_q"), pybind11::arg("A"), pybind11::arg("z"), pybind11::arg("nu"),
          pybind11::arg("eps") = 1e-5, pybind11::arg("num_sms") = kEmulatedSms);
    m.def("assoc_write_fwd", &assoc_write_fwd_emulated, "csrc's assoc_write kernels, emulated on the CPU",
          pybind11::arg("mem"), pybind11::arg("w_k"), pybind11::arg("w_v"), pybind11::arg("w_b"),
          pybind11::arg("b_b"), pybind11::arg("A"), pybind11::arg("z"), pybind11::arg("nu"),
          pybind11::arg("eps") = 1e-5, pybind11::arg("correction") = true, pybind11::arg("first_segment") = false);
    m.def("segment_embed_fwd", &segment_embed_fwd_emulated, "csrc's segment_embed kernel, emulated on the CPU",
          pybind11::arg("input_ids"), pybind11::arg("wte"), pybind11::arg("wpe"), pybind11::arg("out"),
          pybind11::arg("front") = pybind11::none(), pybind11::arg("back") = pybind11::none());
    m.def("rows_layer_norm_fwd", &rows_layer_norm_fwd_emulated, "csrc's rows_layer_norm kernel, emulated on the CPU",
          pybind11::arg("x"), pybind11::arg("start"), pybind11::arg("count"), pybind11::arg("weight"),
          pybind11::arg("bias"), pybind11::arg("eps"), pybind11::arg("out"));
}
