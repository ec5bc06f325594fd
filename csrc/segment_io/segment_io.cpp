// Host side of the segment memory read/write: device checks, then segment_io_host.h's checks and one launch on
// the current stream.
#include <optional>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "segment_io/segment_io_host.h"

#define SIO_CHECK_CUDA(fn, x) TORCH_CHECK((x).is_cuda(), fn, ": " #x " must be a CUDA tensor")
#define SIO_CHECK_DEVICE(fn, x, ref) \
    TORCH_CHECK((x).device() == (ref).device(), fn, ": " #x " must be on ", (ref).device(), ", got ", (x).device())

void segment_embed_fwd(torch::Tensor input_ids, torch::Tensor wte, torch::Tensor wpe, torch::Tensor out,
                       std::optional<torch::Tensor> front, std::optional<torch::Tensor> back) {
    constexpr const char *fn = "segment_embed_fwd";
    SIO_CHECK_CUDA(fn, out);
    SIO_CHECK_CUDA(fn, input_ids);
    SIO_CHECK_CUDA(fn, wte);
    SIO_CHECK_CUDA(fn, wpe);
    SIO_CHECK_DEVICE(fn, input_ids, out);
    SIO_CHECK_DEVICE(fn, wte, out);
    SIO_CHECK_DEVICE(fn, wpe, out);
    if (front) SIO_CHECK_DEVICE(fn, *front, out);
    if (back) SIO_CHECK_DEVICE(fn, *back, out);
    c10::cuda::CUDAGuard device_guard(out.device());
    segment_embed_run(input_ids, wte, wpe, out, front, back, c10::cuda::getCurrentCUDAStream());
}

void rows_layer_norm_fwd(torch::Tensor x, int64_t start, int64_t count, torch::Tensor weight, torch::Tensor bias,
                         double eps, torch::Tensor out) {
    constexpr const char *fn = "rows_layer_norm_fwd";
    SIO_CHECK_CUDA(fn, x);
    SIO_CHECK_CUDA(fn, weight);
    SIO_CHECK_CUDA(fn, bias);
    SIO_CHECK_CUDA(fn, out);
    SIO_CHECK_DEVICE(fn, weight, x);
    SIO_CHECK_DEVICE(fn, bias, x);
    SIO_CHECK_DEVICE(fn, out, x);
    c10::cuda::CUDAGuard device_guard(x.device());
    rows_layer_norm_run(x, start, count, weight, bias, eps, out, c10::cuda::getCurrentCUDAStream());
}
