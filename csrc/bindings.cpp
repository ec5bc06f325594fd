#include <torch/extension.h>

torch::Tensor assoc_read_fwd(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z, int64_t nu,
                             double eps);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("assoc_read_fwd", &assoc_read_fwd,
          "Associative-memory read with a DPFP feature map, fused on the GPU.\n\n"
          "out[b, t] = h[b, t] + (phi[b, t] @ A[b]) / (phi[b, t] . z[b] + eps), where q = w_q @ h[b, t],\n"
          "s = [relu(q), relu(-q)] and phi[j*2n + i] = s[i] * s[(i - j - 1) mod 2n] for j < nu, i < 2n.\n"
          "phi is never materialised in global memory; with few tokens the reductions over d and F are split\n"
          "across blocks and the partial sums reduced in a fixed order.\n\n"
          "Args:\n"
          "    h: (B, T, d) float32, bfloat16 or float16, contiguous CUDA tensor.\n"
          "    w_q: (n, d) float32, contiguous.\n"
          "    A: (B or 1, 2*nu*n, d) float32, contiguous; a leading 1 is broadcast over the batch.\n"
          "    z: (B or 1, 2*nu*n) float32, contiguous, same leading size as A.\n"
          "    nu: DPFP order, >= 1.\n"
          "    eps: denominator offset, > 0.\n\n"
          "Returns:\n"
          "    (B, T, d) tensor in h's dtype; all arithmetic in float32.",
          pybind11::arg("h"), pybind11::arg("w_q"), pybind11::arg("A"), pybind11::arg("z"), pybind11::arg("nu"),
          pybind11::arg("eps") = 1e-5);
}
