r"""Gradient surgery: remove the conflicting components of task gradients (PCGrad), over the whole
scope or module kind by module kind (Modular Gradient Surgery).

Projections are linear combinations, so the projected sum is computed on the Gram alone as
coefficients on the original task gradients (solvers.pcgrad_coefficients).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from taskgrad.balancing.base import (
    STRATEGIES,
    Balance,
    Strategy,
    TaskGradStats,
    combination_weights,
)
from taskgrad.balancing.common import on_active
from taskgrad.balancing.solvers import pcgrad_coefficients

MODULE_KINDS = ("attention", "mlp", "embeddings", "norms")


class _Surgery(Strategy):
    """Shared by pcgrad and pcgrad_modular: the projection orders and one PCGrad solve."""

    def __init__(
        self, num_tasks: int, order: Literal["random", "fixed"] = "random", seed: int = 0
    ) -> None:
        super().__init__(num_tasks)
        if order not in ("random", "fixed"):
            raise ValueError(f"balance.options.order: 'random' or 'fixed', not {order!r}")
        self.order, self.seed = order, int(seed)
        self.state = {"calls": 0}

    def _orders(self) -> list[list[int]]:
        """For each task i, the order of the others it is projected against.

        ``random``: a fresh permutation per task and call, drawn from a generator seeded by
        (seed, number of calls so far), so the sequence is reproducible and resumes exactly from
        a checkpoint. ``fixed``: task index order.
        """
        k = self.num_tasks
        self.state["calls"] = self.state["calls"] + 1
        if self.order == "fixed":
            return [list(range(k)) for _ in range(k)]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.state["calls"])
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


@STRATEGIES.register("pcgrad")
class PCGrad(_Surgery):
    r"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

    For each task i, in turn for each other task j (random order): if <g_i', g_j> < 0, project
    g_i' onto the normal plane of g_j, g_i' <- g_i' - <g_i', g_j> / ||g_j||^2 g_j. The update is
    sum_i g_i'. It acts on the tasks' own gradients g_k (each task's objective counted once, as in
    the paper), expressed as coefficients on g_k and normalised to sum 1 (base.py); with no
    conflict the update is therefore the equal-task mix sum_k g_k / K, not the plain mix.

    Departures: the normalisation (the paper's sum has K times the mean's scale, which AdamW
    mostly undoes); ``order="fixed"`` (task index order) is offered besides the paper's random
    order, which is seeded from ``seed`` and the call count in the state. Projections use the
    sample Gram, since they remove components of the sampled vectors themselves; a task with an
    all-zero gradient is left out.
    """

    name = "pcgrad"

    def __call__(self, s: TaskGradStats) -> Balance:
        a, projections = self._solve(s, self._orders(), None)
        return Balance(combination_weights(a, s.shares), info={"projections": float(projections)})


@STRATEGIES.register("pcgrad_modular")
class PCGradModular(_Surgery):
    r"""Modular Gradient Surgery (Cai et al. 2026, arXiv 2602.02301): PCGrad per module.

    Conflicts are resolved separately in each module kind ("attention", "mlp", "embeddings",
    "norms"), so that a conflict in one module no longer shrinks the update of all others: each
    kind gets its own PCGrad coefficients, returned as ``module_weights`` (normalised per kind as
    in base.py). Parameters outside these kinds get PCGrad on the whole scope (``task_weights``).
    The same random projection orders are used in every kind within one call.

    Departures: the paper partitions each transformer layer's modules; we pool each module kind
    across layers (the scopes the Gram capture provides), and only kinds present in the captured
    scope get weights.
    """

    name = "pcgrad_modular"

    def __call__(self, s: TaskGradStats) -> Balance:
        orders = self._orders()
        a, projections = self._solve(s, orders, None)
        module_weights, info = {}, {"projections": float(projections)}
        for kind in MODULE_KINDS:
            if kind in s.module_grams:
                a_kind, n_kind = self._solve(s, orders, kind)
                module_weights[kind] = combination_weights(a_kind, s.shares)
                info[f"projections/{kind}"] = float(n_kind)
        return Balance(
            combination_weights(a, s.shares), module_weights=module_weights or None, info=info
        )
