"""A CMA-ES population split across the ranks of a ``torchrun`` job.

Rank 0 alone holds the strategy: it asks for a generation, broadcasts the candidates,
every rank scores its contiguous share of them (in the dream or in its own envs),
and the returns come back to every rank through ``all_gather``; rank 0 then tells.
Shares differ by at most one candidate; the gather pads them to the same length.
In the dream every rank draws the same common random numbers (they depend on the
generation's seed and R, not on the candidates), so a candidate scores what it scores
in one process and the split run asks the same generations as a single process.
A single process (no process group) is the world of one: everything is local.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


class PopulationSplit:
    """This rank's rows of a population of ``population`` candidates."""

    def __init__(self, population: int):
        self.population = population
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.share = -(-population // self.world_size)   # the padded share: ceil(P / world)
        bounds = np.linspace(0, population, self.world_size + 1).round().astype(int)
        self.rows = slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))
        self._bounds = bounds
        nccl = dist.is_initialized() and dist.get_backend() == "nccl"   # NCCL moves CUDA tensors only
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, solutions: np.ndarray | None, dim: int) -> np.ndarray:
        """Rank 0's ``solutions [P, n]`` float64 on every rank (others pass None)."""
        if self.world_size == 1:
            return solutions
        if self.is_main:
            buffer = torch.from_numpy(solutions).to(self.device)
        else:
            buffer = torch.empty(self.population, dim, dtype=torch.float64, device=self.device)
        dist.broadcast(buffer, src=0)
        return buffer.cpu().numpy()

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        if self.world_size == 1:
            return value
        buffer = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(buffer, src=0)
        return int(buffer.item())

    def gather(self, local: torch.Tensor) -> np.ndarray:
        """Every rank's scores of its rows ``[rows]``, in candidate order: ``[P]`` float64."""
        local = local.detach().to("cpu", torch.float64)
        if self.world_size == 1:
            return local.numpy()
        padded = torch.zeros(self.share, dtype=torch.float64, device=self.device)
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        sizes = np.diff(self._bounds)
        return torch.cat([part[:size].cpu() for part, size in zip(parts, sizes)]).numpy()
