"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskgrad.balancing.base import (
    STRATEGIES,
    Balance,
    Strategy,
    TaskGradStats,
    combination_weights,
)
from taskgrad.balancing.common import on_active
from taskgrad.balancing.solvers import cagrad_direction
from taskgrad.schema import need


@STRATEGIES.register("cagrad")
class CAGrad(Strategy):
    r"""CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

    d = g0 + c ||g0|| g_w / ||g_w||, g0 = mean_k g_k, with w = argmin_{w in simplex}
    <g_w, g0> + c ||g0|| ||g_w||: the update that maximises the worst task's improvement within
    a ball of radius c ||g0|| around the average gradient. c = 0 is the equal-task mean.

    Departures: the paper's optional rescaling of d (by 1 / (1 + c^2)) is replaced by the common
    normalisation sum a = 1; the inner problem is solved by SLSQP as in the authors' code, with
    exact gradients. Not invariant to rescaling a task (neither is the paper's method).
    """

    name = "cagrad"
    reads = frozenset({"gram"})

    @dataclass
    class Options:
        c: float = 0.4  # radius of the ball around the mean gradient, in units of its norm

        def check(self, where: str, **_: Any) -> None:
            need(self.c >= 0, f"{where}.c", f"c >= 0, got {self.c}")

    def __call__(self, s: TaskGradStats) -> Balance:
        a = on_active(s, lambda gram, idx: cagrad_direction(gram, self.options.c))
        return Balance(combination_weights(a, s.shares))
