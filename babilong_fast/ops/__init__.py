"""Fused ops. Each has backends ``cuda``, ``triton`` and ``torch`` and a reference ``<op>_ref``."""
from babilong_fast.ops.assoc_read import AssocRead, AssocReadFunction, assoc_read, assoc_read_ref
from babilong_fast.ops.dpfp import dpfp

__all__ = ["AssocRead", "AssocReadFunction", "assoc_read", "assoc_read_ref", "dpfp"]
