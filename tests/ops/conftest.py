"""Op tests run their Triton paths in Triton's interpreter when there is no GPU
(``TRITON_INTERPRET=1`` is set by tests/conftest.py before torch or triton load)."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
