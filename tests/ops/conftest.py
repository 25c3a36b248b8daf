"""Op tests: without a GPU, Triton kernels run on CPU tensors in Triton's interpreter.

The variable must be set before any kernel module is imported (``triton.jit`` reads
it when decorating), so it is set here, at collection of tests/ops.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
