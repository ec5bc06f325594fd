"""Triton kernels, installed as ``babilong_fast.kernels``. Import only where Triton is installed."""
