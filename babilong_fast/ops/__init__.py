"""Fused ops, each with a reference ``<op>_ref`` beside it.

``assoc_read`` has cuda, triton and torch backends (its CUDA kernels checked on an H100). ``assoc_write``,
``segment_embed``, ``rows_layer_norm`` (the segment's memory read/write), ``selective_scan`` and
``causal_conv1d`` have cuda, triton and torch backends too. Those kernels, and ``assoc_read``'s Triton kernel
(rewritten since its H100 run), are tested on CPU (Triton in its interpreter, CUDA compiled and emulated) and
not yet on a GPU, so ``auto`` keeps them on torch there. ``dpfp`` is torch only.
"""
from babilong_fast.ops.assoc_read import AssocRead, AssocReadFunction, assoc_read, assoc_read_ref
from babilong_fast.ops.assoc_write import AssocWriteFunction, assoc_write, assoc_write_ref
from babilong_fast.ops.causal_conv1d import CausalConv1dFunction, causal_conv1d, causal_conv1d_ref
from babilong_fast.ops.dpfp import dpfp
from babilong_fast.ops.segment_io import rows_layer_norm, rows_layer_norm_ref, segment_embed, segment_embed_ref
from babilong_fast.ops.selective_scan import SelectiveScanFunction, selective_scan, selective_scan_ref

__all__ = [
    "AssocRead", "AssocReadFunction", "AssocWriteFunction", "assoc_read", "assoc_read_ref", "assoc_write",
    "assoc_write_ref",
    "CausalConv1dFunction", "SelectiveScanFunction", "causal_conv1d", "causal_conv1d_ref", "dpfp", "selective_scan",
    "selective_scan_ref", "rows_layer_norm", "rows_layer_norm_ref", "segment_embed", "segment_embed_ref",
]
