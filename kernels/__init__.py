"""Triton kernels of worldmodels, installed as ``worldmodels.kernels``.

Only ``@triton.jit`` functions and their launchers live here; the public ops that
dispatch to them (with a pure-PyTorch reference as spec and fallback) are in
``worldmodels.ops``. Nothing is compiled at import time.
"""
