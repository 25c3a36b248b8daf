"""CMA-ES over controller parameters through pycma (``cma``), with a resume that needs no pickle.

pycma's strategy object is only saved by pickling, which this package never loads.
Instead every generation's candidates and losses are kept (an npz, written atomically)
and a resumed run rebuilds the strategy from its seed by replaying ``ask``/``tell`` on
the recorded losses: pycma draws its samples through the ``randn`` option, here a
NumPy generator of the strategy's own seeded from the run's seed (not NumPy's global
one, which other code may touch), so the replayed strategy, and the next generation it
asks for, are the ones the uninterrupted run has. Each replayed ``ask`` is checked against the record.

Antithetic sampling (``antithetic=True``, the authors' ``antithetic`` option of their
OpenES/PEPG and the mirrored sampling of Brockhoff et al. 2010): the population is
P/2 pairs ``m + sigma*y_i`` (rows ``i < P/2``) and ``m - sigma*y_i`` (row ``i + P/2``),
the ``y_i`` being the first half of pycma's own draw; pycma is told all P (the
mirrored half as solutions it did not ask for, of the same Mahalanobis length as their
twins, so its repair leaves them as they are). The evaluators give the two members of
a pair the same env seeds (:class:`~worldmodels.algos.world_models.envs.TwinBatch`).

Fitness is the authors' ``mean return - weight_decay * mean(theta^2)`` (weight decay
0.01); pycma minimises, so it is told the negated fitness.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import WorldModelsError
from ...utils.atomic import atomic_write


class SearchStateError(WorldModelsError, RuntimeError):
    """A recorded CMA-ES history does not match this run's settings."""


def fitness(returns: np.ndarray, theta: np.ndarray, weight_decay: float) -> np.ndarray:
    """``returns [P] - weight_decay * mean(theta^2)`` per candidate ``theta [P, n]``."""
    return np.asarray(returns, np.float64) - weight_decay * np.square(theta).mean(1)


class PopulationSearch:
    """Ask/tell CMA-ES from zeros with step size ``sigma0``, keeping the history."""

    def __init__(self, dim: int, popsize: int, sigma0: float, seed: int, antithetic: bool = False):
        import cma

        if antithetic and popsize % 2:
            raise SearchStateError(f"antithetic sampling needs an even population, not {popsize}.")
        self.dim, self.popsize, self.sigma0, self.seed, self.antithetic = dim, popsize, sigma0, seed, antithetic
        self._rng = np.random.default_rng(seed)
        options = {"popsize": popsize, "seed": seed + 1, "verbose": -9,  # pycma treats seed 0 as "random"
                   "randn": lambda *shape: self._rng.standard_normal(shape)}
        self._es = cma.CMAEvolutionStrategy(np.zeros(dim), sigma0, options)
        self.solutions: list[np.ndarray] = []
        self.losses: list[np.ndarray] = []

    @property
    def generation(self) -> int:
        return len(self.losses)

    def ask(self) -> np.ndarray:
        """The next generation ``[P, n]`` float64 (mirrored halves when antithetic)."""
        solutions = np.stack(self._es.ask())
        if not self.antithetic:
            return solutions
        half = solutions[: self.popsize // 2]
        return np.concatenate([half, 2 * self.mean - half])

    def tell(self, solutions: np.ndarray, fitnesses: np.ndarray) -> None:
        """Record a generation and update the strategy (higher fitness is better)."""
        losses = -np.asarray(fitnesses, np.float64)
        self._es.tell(list(solutions), losses.tolist())
        self.solutions.append(np.asarray(solutions, np.float64))
        self.losses.append(losses)

    @property
    def mean(self) -> np.ndarray:
        """The distribution's current mean ``[n]``."""
        return np.asarray(self._es.mean, np.float64)

    def save(self, path: str | os.PathLike) -> Path:
        """Write settings and history to ``path`` (npz) atomically."""
        path = Path(path)
        arrays = {
            "settings": np.array([self.dim, self.popsize, self.seed], np.int64),
            "sigma0": np.array(self.sigma0, np.float64),
            "antithetic": np.array(self.antithetic),
            "solutions": np.asarray(self.solutions, np.float64).reshape(-1, self.popsize, self.dim),
            "losses": np.asarray(self.losses, np.float64).reshape(-1, self.popsize),
        }
        return atomic_write(path, lambda handle: np.savez(handle, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike, dim: int, popsize: int, sigma0: float, seed: int,
             antithetic: bool = False) -> "PopulationSearch":
        """A strategy rebuilt by replaying the history in ``path``; its settings must match."""
        with np.load(path, allow_pickle=False) as data:
            settings, saved_sigma = data["settings"].tolist(), float(data["sigma0"])
            saved_antithetic = bool(data["antithetic"]) if "antithetic" in data.files else False
            solutions, losses = data["solutions"], data["losses"]
        saved = (*settings, saved_sigma, saved_antithetic)
        if saved != (dim, popsize, seed, sigma0, antithetic):
            raise SearchStateError(f"{path} was made with (dim, popsize, seed, sigma0, antithetic)={saved}, "
                                   f"this run has {(dim, popsize, seed, sigma0, antithetic)}; use a new run directory.")
        search = cls(dim, popsize, sigma0, seed, antithetic)
        for generation, (recorded, loss) in enumerate(zip(solutions, losses)):
            asked = search.ask()
            if not np.allclose(asked, recorded, rtol=0, atol=1e-12):
                raise SearchStateError(f"{path}: replaying generation {generation} asked other candidates than "
                                       "recorded (another pycma version or NumPy generator?); use a new run directory.")
            search.tell(asked, -loss)
        return search
