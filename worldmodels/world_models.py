"""``python -m worldmodels.world_models``: the World Models pipeline (collect, vae, encode,
mdnrnn, controller, eval); see :mod:`worldmodels.algos.world_models.pipeline`."""

from __future__ import annotations

from .algos.world_models.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())
