r"""Gradient surgery: remove the conflicting components of task gradients (PCGrad), over the whole
scope (pcgrad.py) or module kind by module kind (pcgrad_modular.py).

Projections are linear combinations, so the projected sum is computed on the Gram alone as
coefficients on the original task gradients (solvers.pcgrad_coefficients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from taskgrad.balancing.base import Strategy, TaskGradStats
from taskgrad.balancing.common import on_active
from taskgrad.balancing.solvers import pcgrad_coefficients

MODULE_KINDS = ("attention", "mlp", "embeddings", "norms")


class Surgery(Strategy):
    """Shared by pcgrad and pcgrad_modular: the projection orders and one PCGrad solve."""

    reads = frozenset({"gram"})
    order_dependent = True

    @dataclass
    class Options:
        order: Literal["random", "fixed"] = "random"  # projection order (paper: random)
        seed: int = 0  # seed of the random orders

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        self.state = {"calls": 0}

    def _orders(self) -> list[list[int]]:
        """For each task i, the order of the others it is projected against.

        ``random``: a fresh permutation per task and call, drawn from a generator seeded by
        (seed, number of calls so far), so the sequence is reproducible and resumes exactly from
        a checkpoint. ``fixed``: task index order.
        """
        k = self.num_tasks
        self.state["calls"] = self.state["calls"] + 1
        if self.options.order == "fixed":
            return [list(range(k)) for _ in range(k)]
        gen = torch.Generator().manual_seed(self.options.seed * 1_000_003 + self.state["calls"])
        return [torch.randperm(k, generator=gen).tolist() for _ in range(k)]

    @staticmethod
    def _solve(
        s: TaskGradStats, orders: list[list[int]], scope: str | None
    ) -> tuple[torch.Tensor, int]:
        """(a [K], projections) of PCGrad restricted to the active tasks of ``scope``."""
        count = [0]

        def solve(gram: np.ndarray, idx: torch.Tensor) -> np.ndarray:
            pos = {int(t): n for n, t in enumerate(idx)}  # task index -> row in gram
            sub = [[pos[j] for j in orders[int(i)] if j in pos] for i in idx]
            coef, count[0] = pcgrad_coefficients(gram, sub)
            return coef

        a = on_active(s, solve, scope)
        return a, count[0]
