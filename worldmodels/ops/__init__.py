"""Hot-path ops, each with a pure-PyTorch reference (``<op>_ref``) that is its spec
and fallback, and an ``impl=`` choice of Triton, C++ or reference.

Import is lazy: ``from worldmodels.ops import gru_scan`` loads only that op's module,
and no Triton kernel is compiled before it is first called.
"""

from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    # recurrent core
    "gru_cell": "gru",
    "gru_cell_ref": "gru",
    "gru_scan": "gru",
    "gru_scan_ref": "gru",
    "block_gru_cell": "gru",
    "block_gru_cell_ref": "gru",
    "block_gru_scan": "gru",
    "block_gru_scan_ref": "gru",
    "rssm_observe": "rssm",
    "rssm_observe_ref": "rssm",
    "rssm_imagine_step": "rssm",
    "rssm_imagine_step_ref": "rssm",
    "RSSMParams": "rssm",
    "RSSMObservation": "rssm",
    "RSSMImaginer": "rssm",
    # attention (IRIS / Delta-IRIS transformers)
    "attention": "attention",
    "attention_ref": "attention",
    "attention_decode": "attention",
    "block_causal_mask": "attention",
    # vector quantisation (IRIS / Delta-IRIS tokenizers)
    "vq": "vq",
    "vq_ref": "vq",
    "VQOutput": "vq",
    "vq_ema_update_": "vq",
    "restart_dead_codes_": "vq",
    # image quality (next-frame prediction scores)
    "psnr": "image_quality",
    "psnr_ref": "image_quality",
    "ssim": "image_quality",
    "ssim_ref": "image_quality",
    # sampling
    "st_categorical": "sampling",
    "st_categorical_ref": "sampling",
    "boundary_sample": "sampling",
    "boundary_sample_ref": "sampling",
    # linear layers over one-hot latents (DreamerV3's heads on imagined states)
    "onehot_linear": "onehot_linear",
    "onehot_linear_ref": "onehot_linear",
    "onehot_index": "onehot_linear",
}

__all__ = sorted(_EXPORTS)


class _OpsPackage(types.ModuleType):
    """The package as a module whose exported ops cannot be shadowed by submodules.

    Importing ``worldmodels.ops.vq`` makes Python set the package attribute ``vq`` to
    that submodule, hiding the op of the same name (``vq``, ``attention``); this class
    ignores such assignments, so ``from worldmodels.ops import vq`` is always the op.
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _OpsPackage


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'worldmodels.ops' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return __all__
