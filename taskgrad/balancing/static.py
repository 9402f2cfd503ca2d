"""Fixed task multipliers: the mixture baseline every correction must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, Strategy, TaskGradStats
from taskgrad.schema import need


@STRATEGIES.register("static")
class Static(Strategy):
    """Fixed multipliers on each task's contribution (option ``weights``, one per task).

    The mixture baseline every correction must beat. ``taskgrad compare`` tunes it first: a
    small sweep (uniform, and each task in turn weighted 2) on tuning seeds disjoint from the
    comparison's, keeping the best by (final mean + worst-task held-out accuracy) / 2.
    Weights act on the task's per-token loss weights, i.e. like a per-task learning-rate
    multiplier under SGD; under AdamW only their ratios matter to first order.
    """

    name = "static"

    @dataclass
    class Options:
        weights: list[float] | None = None  # one non-negative multiplier per task; None: ones

        def check(self, where: str, num_tasks: int = 0, **_: Any) -> None:
            w = self.weights
            ok = w is None or (len(w) == num_tasks and all(x >= 0 for x in w))
            need(ok, f"{where}.weights", f"{num_tasks} non-negative numbers, got {w!r}")

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        weights = self.options.weights or [1.0] * num_tasks
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def __call__(self, s: TaskGradStats) -> Balance:
        return Balance(task_weights=self.weights.clone())
