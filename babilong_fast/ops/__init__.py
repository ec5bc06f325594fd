"""Fused ops, each with a reference ``<op>_ref`` beside it.

``assoc_read`` has cuda, triton and torch backends; ``assoc_write`` has triton and torch (not yet run on a GPU).
"""
from babilong_fast.ops.assoc_read import AssocRead, AssocReadFunction, assoc_read, assoc_read_ref
from babilong_fast.ops.assoc_write import AssocWriteFunction, assoc_write, assoc_write_ref
from babilong_fast.ops.causal_conv1d import CausalConv1dFunction, causal_conv1d, causal_conv1d_ref
from babilong_fast.ops.dpfp import dpfp
from babilong_fast.ops.selective_scan import SelectiveScanFunction, selective_scan, selective_scan_ref

__all__ = [
    "AssocRead", "AssocReadFunction", "AssocWriteFunction", "assoc_read", "assoc_read_ref", "assoc_write", "assoc_write_ref",
    "CausalConv1dFunction", "SelectiveScanFunction", "causal_conv1d", "causal_conv1d_ref", "dpfp", "selective_scan",
    "selective_scan_ref",
]
