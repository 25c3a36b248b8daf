"""PSNR and SSIM (``worldmodels.ops.image_quality``): the reference ops against
``torch.compile`` of the same reference, on a validation-sized batch of 64x64 RGB frames
(the next-frame family scores 512 held-out stacks per evaluation, in chunks of 64).

The ops have one implementation (``impl="ref"``), so the rows say what an evaluation
pays for the metrics and whether compiling them helps. Each row stores its shape, device
and the eager reference's median seconds in this process (``reference_s``) with
``speedup_vs_reference``.

    pytest benchmarks/bench_image_quality.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from worldmodels.ops.image_quality import psnr_ref, ssim_ref

from conftest import median_seconds, sync

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPE = (64, 3, 64, 64)
OPS = {"psnr": psnr_ref, "ssim": ssim_ref}


def frames(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(SHAPE, generator=generator)
    prediction = (target + 0.05 * torch.randn(SHAPE, generator=generator)).clamp(0, 1)
    return prediction.to(device), target.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("impl", ["ref", "compiled_ref"])
def test_image_quality(benchmark, device, op, impl):
    prediction, target = frames(device)
    reference = OPS[op]
    fn = torch.compile(reference) if impl == "compiled_ref" else reference
    fn(prediction, target)  # warm-up (and compilation)
    reference_s = median_seconds(lambda: reference(prediction, target), device)
    benchmark(lambda: (fn(prediction, target), sync(device)))
    benchmark.extra_info.update(dict(shape=list(SHAPE), device=device, reference_s=reference_s,
                                     speedup_vs_reference=reference_s / benchmark.stats.stats.median))
