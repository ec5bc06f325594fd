#include <torch/extension.h>

torch::Tensor assoc_read_fwd(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z, int64_t nu,
                             double eps);

torch::Tensor assoc_read_fwd_tc(torch::Tensor h, torch::Tensor w_q, torch::Tensor A, torch::Tensor z,
                                int64_t nu, double eps);

std::tuple<torch::Tensor, torch::Tensor> assoc_write_fwd(torch::Tensor mem, torch::Tensor w_k, torch::Tensor w_v,
                                                         torch::Tensor w_b, torch::Tensor b_b, torch::Tensor A,
                                                         torch::Tensor z, int64_t nu, double eps, bool correction,
                                                         bool first_segment);

void segment_embed_fwd(torch::Tensor input_ids, torch::Tensor wte, torch::Tensor wpe, torch::Tensor out,
                       std::optional<torch::Tensor> front, std::optional<torch::Tensor> back);

void rows_layer_norm_fwd(torch::Tensor x, int64_t start, int64_t count, torch::Tensor weight, torch::Tensor bias,
                         double eps, torch::Tensor out);

std::tuple<torch::Tensor, std::optional<torch::Tensor>> selective_scan_fwd(
    torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B, torch::Tensor C,
    std::optional<torch::Tensor> D, std::optional<torch::Tensor> z, std::optional<torch::Tensor> delta_bias,
    std::optional<torch::Tensor> initial_state, bool delta_softplus, bool return_last_state);

std::tuple<torch::Tensor, std::optional<torch::Tensor>> causal_conv1d_fwd(torch::Tensor x, torch::Tensor weight,
                                                                           std::optional<torch::Tensor> bias,
                                                                           std::optional<torch::Tensor> initial_state,
                                                                           bool silu, bool return_final_state);

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
    m.def("assoc_read_fwd_tc", &assoc_read_fwd_tc,
          "assoc_read_fwd on tensor cores: the same read, with phi @ A as 3xTF32 mma.sync.\n\n"
          "Each operand x is split into big = tf32(x) and small = tf32(x - big), and phi @ A is accumulated in\n"
          "float32 as big*big + big*small + small*big, which keeps float32 accuracy. q = w_q @ h[b, t] uses\n"
          "assoc_read_fwd's FFMA projection; phi is built per tile in shared memory, never in global memory.\n\n"
          "Args:\n"
          "    h: (B, T, d) float32, bfloat16 or float16, contiguous CUDA tensor.\n"
          "    w_q: (n, d) float32, contiguous.\n"
          "    A: (B or 1, 2*nu*n, d) float32, contiguous; a leading 1 is broadcast over the batch.\n"
          "    z: (B or 1, 2*nu*n) float32, contiguous, same leading size as A.\n"
          "    nu: DPFP order, >= 1.\n"
          "    eps: denominator offset, > 0.\n\n"
          "Returns:\n"
          "    (B, T, d) tensor in h's dtype; products on TF32 tensor cores (3 passes), sums in float32.",
          pybind11::arg("h"), pybind11::arg("w_q"), pybind11::arg("A"), pybind11::arg("z"), pybind11::arg("nu"),
          pybind11::arg("eps") = 1e-5);
    m.def("assoc_write_fwd", &assoc_write_fwd,
          "ARMT associative-memory write: one rank-M delta-rule update of (A, z), fused on the GPU.\n\n"
          "k = mem w_k^T, v = mem w_v^T, beta = sigmoid(mem w_b^T + b_b), phi = DPFP_nu(k) (built on the fly).\n"
          "Later segments: delta = phi . z + eps, u = beta (v - phi A / delta), gamma = clip(1 - delta / (|phi|^2 +\n"
          "eps), 0, 1) (1 without correction); first segment: u = beta v, gamma = 1.\n"
          "A_new = A + phi^T u, z_new = z + phi^T gamma; every row sees the pre-update (A, z).\n\n"
          "Args:\n"
          "    mem: (B, M, d) float32, bfloat16 or float16, contiguous CUDA tensor.\n"
          "    w_k: (n, d), w_v: (d, d), w_b: (1, d), b_b: (1,), all float32, contiguous.\n"
          "    A: (B or 1, 2*nu*n, d) float32, contiguous; a leading 1 is broadcast over the batch.\n"
          "    z: (B or 1, 2*nu*n) float32, contiguous, same leading size as A.\n"
          "    nu: DPFP order, >= 1. eps: > 0. correction, first_segment: the ARMT write rules.\n\n"
          "Returns:\n"
          "    (A_new (B, 2*nu*n, d), z_new (B, 2*nu*n)), new float32 tensors; all arithmetic in float32.",
          pybind11::arg("mem"), pybind11::arg("w_k"), pybind11::arg("w_v"), pybind11::arg("w_b"),
          pybind11::arg("b_b"), pybind11::arg("A"), pybind11::arg("z"), pybind11::arg("nu"),
          pybind11::arg("eps") = 1e-5, pybind11::arg("correction") = true, pybind11::arg("first_segment") = false);
    m.def("segment_embed_fwd", &segment_embed_fwd,
          "Segment block input without concatenation, written into out (in place).\n\n"
          "out[b, t] = src + wpe[t], src = front[b or 0, t] (t < Mf), wte[ids[b, t - Mf]] (t < Mf + L) or\n"
          "back[b or 0, t - Mf - L]; summed in float32, rounded once. An id outside [0, V) gives a NaN row.\n\n"
          "Args:\n"
          "    input_ids: (B, L) int64. wte: (V, d), wpe: (P >= T, d), both out's dtype.\n"
          "    out: (B, T = Mf + L + Mb, d) float32, bfloat16 or float16. All contiguous CUDA tensors.\n"
          "    front: (B or 1, Mf, d) or None; back: (B or 1, Mb, d) or None; any float dtype.",
          pybind11::arg("input_ids"), pybind11::arg("wte"), pybind11::arg("wpe"), pybind11::arg("out"),
          pybind11::arg("front") = pybind11::none(), pybind11::arg("back") = pybind11::none());
    m.def("rows_layer_norm_fwd", &rows_layer_norm_fwd,
          "LayerNorm of rows start..start+count-1 of x only, in float32, written into out (in place).\n\n"
          "Args:\n"
          "    x: (B, T, d) float32, bfloat16 or float16. weight, bias: (d), any float dtype.\n"
          "    eps: > 0. out: (B, count, d) float32. All contiguous CUDA tensors.",
          pybind11::arg("x"), pybind11::arg("start"), pybind11::arg("count"), pybind11::arg("weight"),
          pybind11::arg("bias"), pybind11::arg("eps"), pybind11::arg("out"));
    m.def("selective_scan_fwd", &selective_scan_fwd,
          "Mamba-1 selective scan with an initial state (mamba_ssm's selective_scan_fn semantics), on the GPU.\n\n"
          "x_t = exp(dt_t A) x_{t-1} + dt_t B_t u_t from x_{-1} = initial_state (0 without it), dt_t =\n"
          "softplus?(delta_t + delta_bias), out_t = (C_t . x_t + D u_t) * silu(z_t). One block per (channel,\n"
          "batch row) scans tiles of steps with warp shuffles; state and sums in float32, offsets int64.\n\n"
          "Args:\n"
          "    u, delta: (batch, dim, L) float32, bfloat16 or float16 CUDA tensors, stride 1 along L.\n"
          "    A: (dim, N) float32 contiguous, N <= 256.\n"
          "    B, C: (dim, N) contiguous, (batch, N, L) or (batch, G, N, L) with stride 1 along L, any float dtype.\n"
          "    D, delta_bias: (dim,) float32 or None. z: like u, or None.\n"
          "    initial_state: (batch, dim, N) float32 contiguous, or None.\n"
          "    delta_softplus: apply softplus to delta + delta_bias. return_last_state: also return the last state.\n\n"
          "Returns:\n"
          "    (out (batch, dim, L) in u's dtype, last_state (batch, dim, N) float32 or None).",
          pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"), pybind11::arg("C"),
          pybind11::arg("D") = pybind11::none(), pybind11::arg("z") = pybind11::none(),
          pybind11::arg("delta_bias") = pybind11::none(), pybind11::arg("initial_state") = pybind11::none(),
          pybind11::arg("delta_softplus") = false, pybind11::arg("return_last_state") = false);
    m.def("causal_conv1d_fwd", &causal_conv1d_fwd,
          "Depthwise causal conv1d with the conv state carried between calls, on the GPU.\n\n"
          "xp = [initial_state (zeros without it), x] along L; out[t] = act(bias + sum_k weight[:, k] xp[t + k]),\n"
          "act = silu when silu else identity; final_state = the last width - 1 columns of xp. Sums in float32.\n\n"
          "Args:\n"
          "    x: (batch, dim, L) float32, bfloat16 or float16 CUDA tensor, stride 1 along L.\n"
          "    weight: (dim, width) contiguous, width <= 32, any float dtype. bias: (dim,) or None.\n"
          "    initial_state: (batch, dim, width - 1) contiguous in x's dtype, or None.\n"
          "    silu: apply silu. return_final_state: also return the final state.\n\n"
          "Returns:\n"
          "    (out (batch, dim, L) in x's dtype, final_state (batch, dim, width - 1) in x's dtype or None).",
          pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias") = pybind11::none(),
          pybind11::arg("initial_state") = pybind11::none(), pybind11::arg("silu") = false,
          pybind11::arg("return_final_state") = false);
}
