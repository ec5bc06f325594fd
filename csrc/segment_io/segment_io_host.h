#pragma once

// Host side of the segment memory read/write past the device checks: shapes, dtypes, the parameters and one
// launch on `stream`. Shared by the CUDA bindings (segment_io.cpp) and the tests' CPU emulation of the kernels.
#include <climits>
#include <cstdint>
#include <optional>
#include <utility>

#include <torch/types.h>

#include "common/dispatch.h"
#include "common/dtype_code.h"
#include "common/grid_limit.h"
#include "segment_io/segment_io.h"

#define SIO_CHECK_CONTIGUOUS(fn, x) TORCH_CHECK((x).is_contiguous(), fn, ": " #x " must be contiguous")

namespace segment_io_host {

inline bool is_half_or_float(at::ScalarType t) {
    return t == at::ScalarType::Float || t == at::ScalarType::BFloat16 || t == at::ScalarType::Half;
}

// Checks one memory side ((B or 1, M, d)) and returns (M, batch stride in elements).
inline std::pair<int64_t, int64_t> check_memory(const std::optional<torch::Tensor> &m, const char *name,
                                                const torch::Tensor &out, int &kind) {
    constexpr const char *fn = "segment_embed_fwd";
    kind = bfast::kF32;
    if (!m.has_value()) return {0, 0};
    const auto &t = *m;
    SIO_CHECK_CONTIGUOUS(fn, t);
    TORCH_CHECK(t.dim() == 3, fn, ": ", name, " must be 3-D (B or 1, M, d), got ", t.dim(), " dims");
    TORCH_CHECK(t.size(0) == out.size(0) || t.size(0) == 1, fn, ": ", name, ".size(0) must be B (", out.size(0),
                ") or 1, got ", t.size(0));
    TORCH_CHECK(t.size(2) == out.size(2), fn, ": ", name, ".size(2) must be d = ", out.size(2), ", got ", t.size(2));
    kind = bfast::dtype_code(t, fn, name, true);
    const int64_t M = t.size(1);
    return {M, t.size(0) == 1 ? 0 : M * t.size(2)};
}

}  // namespace segment_io_host

inline void segment_embed_run(const torch::Tensor &input_ids, const torch::Tensor &wte, const torch::Tensor &wpe,
                              const torch::Tensor &out, const std::optional<torch::Tensor> &front,
                              const std::optional<torch::Tensor> &back, cudaStream_t stream) {
    using namespace segment_io_host;
    constexpr const char *fn = "segment_embed_fwd";
    SIO_CHECK_CONTIGUOUS(fn, out);
    SIO_CHECK_CONTIGUOUS(fn, input_ids);
    SIO_CHECK_CONTIGUOUS(fn, wte);
    SIO_CHECK_CONTIGUOUS(fn, wpe);
    TORCH_CHECK(input_ids.dim() == 2, fn, ": input_ids must be 2-D (B, L), got ", input_ids.dim(), " dims");
    TORCH_CHECK(input_ids.scalar_type() == at::ScalarType::Long, fn, ": input_ids must be int64, got ",
                input_ids.scalar_type());
    TORCH_CHECK(out.dim() == 3 && wte.dim() == 2 && wpe.dim() == 2, fn,
                ": out must be 3-D (B, T, d), wte and wpe 2-D (V, d), (P, d)");
    TORCH_CHECK(is_half_or_float(out.scalar_type()), fn, ": out must be float32, bfloat16 or float16, got ",
                out.scalar_type());
    TORCH_CHECK(wte.scalar_type() == out.scalar_type() && wpe.scalar_type() == out.scalar_type(), fn,
                ": wte and wpe must have out's dtype ", out.scalar_type());
    const int64_t B = input_ids.size(0);
    const int64_t L = input_ids.size(1);
    const int64_t d = out.size(2);
    TORCH_CHECK(out.size(0) == B, fn, ": out.size(0) must be B = ", B, ", got ", out.size(0));
    TORCH_CHECK(wte.size(1) == d && wpe.size(1) == d, fn, ": wte and wpe must have d = ", d, " columns");
    int front_kind = bfast::kF32;
    int back_kind = bfast::kF32;
    const auto [Mf, front_stride] = check_memory(front, "front", out, front_kind);
    const auto [Mb, back_stride] = check_memory(back, "back", out, back_kind);
    const int64_t T = Mf + L + Mb;
    TORCH_CHECK(out.size(1) == T, fn, ": out.size(1) must be Mf + L + Mb = ", T, ", got ", out.size(1));
    TORCH_CHECK(T <= wpe.size(0), fn, ": the segment has ", T, " rows but wpe only ", wpe.size(0), " positions");
    TORCH_CHECK_VALUE(B <= 65535, fn, ": batch ", B, " is above 65535, ", bfast::kGridLimitHint);
    TORCH_CHECK_VALUE(T <= INT32_MAX, fn, ": the segment has ", T, " rows; at most 2^31 - 1");
    if (B == 0 || T == 0 || d == 0) return;

    SegmentEmbedParams p;
    p.ids = input_ids.data_ptr<int64_t>();
    p.wte = wte.data_ptr();
    p.wpe = wpe.data_ptr();
    p.front = front.has_value() ? front->data_ptr() : nullptr;
    p.back = back.has_value() ? back->data_ptr() : nullptr;
    p.out = out.data_ptr();
    p.B = B;
    p.L = L;
    p.V = wte.size(0);
    p.d = d;
    p.Mf = Mf;
    p.Mb = Mb;
    p.front_batch_stride = front_stride;
    p.back_batch_stride = back_stride;
    p.front_kind = front_kind;
    p.back_kind = back_kind;

    bfast::dispatch_float_dtype(out.scalar_type(), "segment_embed_fwd", [&](auto type) {
        segment_embed_launch<typename decltype(type)::type>(p, stream);
    });
}

inline void rows_layer_norm_run(const torch::Tensor &x, int64_t start, int64_t count, const torch::Tensor &weight,
                                const torch::Tensor &bias, double eps, const torch::Tensor &out,
                                cudaStream_t stream) {
    using namespace segment_io_host;
    constexpr const char *fn = "rows_layer_norm_fwd";
    SIO_CHECK_CONTIGUOUS(fn, x);
    SIO_CHECK_CONTIGUOUS(fn, weight);
    SIO_CHECK_CONTIGUOUS(fn, bias);
    SIO_CHECK_CONTIGUOUS(fn, out);
    TORCH_CHECK(x.dim() == 3, fn, ": x must be 3-D (B, T, d), got ", x.dim(), " dims");
    TORCH_CHECK(is_half_or_float(x.scalar_type()), fn, ": x must be float32, bfloat16 or float16, got ",
                x.scalar_type());
    TORCH_CHECK(out.scalar_type() == at::ScalarType::Float, fn, ": out must be float32, got ", out.scalar_type());
    const int64_t B = x.size(0);
    const int64_t T = x.size(1);
    const int64_t d = x.size(2);
    TORCH_CHECK(start >= 0 && count >= 0 && start + count <= T, fn, ": rows start..start+count-1 must lie in 0..",
                T - 1, ", got start = ", start, ", count = ", count);
    TORCH_CHECK(weight.dim() == 1 && weight.size(0) == d && bias.dim() == 1 && bias.size(0) == d, fn,
                ": weight and bias must be (d) = (", d, ")");
    TORCH_CHECK(out.dim() == 3 && out.size(0) == B && out.size(1) == count && out.size(2) == d, fn,
                ": out must be (B, count, d) = (", B, ", ", count, ", ", d, "), got ", out.sizes());
    TORCH_CHECK(eps > 0, fn, ": eps must be > 0, got ", eps);
    TORCH_CHECK_VALUE(B <= 65535, fn, ": batch ", B, " is above 65535, ", bfast::kGridLimitHint);
    TORCH_CHECK_VALUE(count <= INT32_MAX, fn, ": count ", count, " is above 2^31 - 1");
    if (B == 0 || count == 0 || d == 0) return;

    RowsLayerNormParams p;
    p.x = x.data_ptr();
    p.w = weight.data_ptr();
    p.b = bias.data_ptr();
    p.out = out.data_ptr<float>();
    p.B = B;
    p.T = T;
    p.start = start;
    p.count = count;
    p.d = d;
    p.w_kind = bfast::dtype_code(weight, fn, "weight", true);
    p.b_kind = bfast::dtype_code(bias, fn, "bias", true);
    p.eps = static_cast<float>(eps);

    bfast::dispatch_float_dtype(x.scalar_type(), "rows_layer_norm_fwd", [&](auto type) {
        rows_layer_norm_launch<typename decltype(type)::type>(p, stream);
    });
}
