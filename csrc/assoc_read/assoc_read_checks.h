#pragma once

#include <climits>
#include <utility>
#include <vector>

#include <torch/types.h>

// The sizes of a validated associative read: h (B, T, d), w_q (n, d), A (Ba, F, d), z (Ba, F), F = 2*nu*n.
struct AssocReadSizes {
    int64_t B, T, d, n, F, Ba;
};

// The CUDA bindings' device checks: every input a CUDA tensor on h's device. Errors start with fn (the bound
// function's name) and name the argument to fix.
inline void check_assoc_read_devices(const char *fn, const torch::Tensor &h, const torch::Tensor &w_q,
                                     const torch::Tensor &A, const torch::Tensor &z) {
    const std::pair<const char *, const torch::Tensor *> args[] = {{"h", &h}, {"w_q", &w_q}, {"A", &A}, {"z", &z}};
    for (const auto &[name, t] : args) {
        TORCH_CHECK(t->is_cuda(), fn, ": ", name, " must be a CUDA tensor");
    }
    for (const auto &[name, t] : args) {
        TORCH_CHECK(t->device() == h.device(), fn, ": ", name, " must be on the same device as h (", h.device(),
                    "), got ", t->device());
    }
}

// Checks everything else every assoc_read kernel needs (dims, dtypes, contiguity, sizes); errors as above.
inline AssocReadSizes check_assoc_read_inputs(const char *fn, const torch::Tensor &h, const torch::Tensor &w_q,
                                              const torch::Tensor &A, const torch::Tensor &z, int64_t nu,
                                              double eps) {
    const std::pair<const char *, const torch::Tensor *> args[] = {{"h", &h}, {"w_q", &w_q}, {"A", &A}, {"z", &z}};
    TORCH_CHECK(h.dim() == 3, fn, ": h must be 3-D (B, T, d), got ", h.dim(), " dims");
    TORCH_CHECK(w_q.dim() == 2, fn, ": w_q must be 2-D (n, d), got ", w_q.dim(), " dims");
    TORCH_CHECK(A.dim() == 3, fn, ": A must be 3-D (B or 1, 2*nu*n, d), got ", A.dim(), " dims");
    TORCH_CHECK(z.dim() == 2, fn, ": z must be 2-D (B or 1, 2*nu*n), got ", z.dim(), " dims");
    const auto h_type = h.scalar_type();
    TORCH_CHECK(h_type == at::ScalarType::Float || h_type == at::ScalarType::BFloat16 ||
                    h_type == at::ScalarType::Half,
                fn, ": h must be float32, bfloat16 or float16, got ", h_type);
    for (const auto &[name, t] : args) {
        if (t == &h) continue;
        TORCH_CHECK(t->scalar_type() == at::ScalarType::Float, fn, ": ", name, " must be float32, got ",
                    t->scalar_type());
    }
    for (const auto &[name, t] : args) {
        TORCH_CHECK(t->is_contiguous(), fn, ": ", name, " must be contiguous");
    }

    AssocReadSizes s{h.size(0), h.size(1), h.size(2), w_q.size(0), 0, A.size(0)};
    TORCH_CHECK(s.n >= 1, fn, ": w_q must have at least one row (n >= 1)");
    TORCH_CHECK(nu >= 1, fn, ": nu must be >= 1, got ", nu);
    TORCH_CHECK(eps > 0, fn, ": eps must be > 0, got ", eps);
    TORCH_CHECK(s.d <= INT_MAX && s.n <= INT_MAX / 2 && nu <= INT_MAX / (2 * s.n), fn,
                ": d, n or 2*nu*n exceeds the int32 range");
    s.F = 2 * nu * s.n;
    TORCH_CHECK(s.Ba == s.B || s.Ba == 1, fn, ": A.size(0) must be B (", s.B, ") or 1, got ", s.Ba);
    const std::pair<const char *, std::vector<int64_t>> shapes[] = {
        {"w_q", {s.n, s.d}}, {"A", {s.Ba, s.F, s.d}}, {"z", {s.Ba, s.F}}};
    const torch::Tensor *shaped[] = {&w_q, &A, &z};
    for (int i = 0; i < 3; ++i) {
        TORCH_CHECK(shaped[i]->sizes() == torch::IntArrayRef(shapes[i].second), fn, ": ", shapes[i].first,
                    " must have shape (", torch::IntArrayRef(shapes[i].second), "), got ", shaped[i]->sizes());
    }
    return s;
}
