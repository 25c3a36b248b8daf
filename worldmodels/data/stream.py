"""Resumable batch streams: a batch is a pure function of its step.

Subclasses implement :meth:`StepStream.batch`; the stream keeps only the step
counter, so ``state_dict`` / ``load_state_dict`` restore the exact data position.
"""

from __future__ import annotations

import numpy as np

from ..training.contract import TrainData


def check_step(step, what: str = "step") -> int:
    """``step`` as an int, or a ValueError when it is not a non-negative integer."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {step!r}")
    return int(step)


class StepStream(TrainData):
    """A deterministic stream of batches indexed by the training step."""

    step: int = 0

    def batch(self, step: int) -> dict:
        raise NotImplementedError

    def next_batch(self) -> dict:
        """The batch at the internal step counter, which then advances by one."""
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"state must be {{'step': int >= 0}}, got {state!r}")
        self.step = check_step(state["step"], "state['step']")
