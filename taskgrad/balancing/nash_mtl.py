"""Nash-MTL: multi-task learning as a bargaining game."""

from __future__ import annotations

from taskgrad.balancing.base import (
    STRATEGIES,
    Balance,
    Strategy,
    TaskGradStats,
    combination_weights,
)
from taskgrad.balancing.common import on_active
from taskgrad.balancing.solvers import nash_bargaining


@STRATEGIES.register("nash_mtl")
class NashMTL(Strategy):
    r"""Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game").

    The Nash bargaining solution: a > 0 with Q a = 1 / a (elementwise), i.e. every task's
    directional derivative <g, g_k> equals 1 / a_k. Solved exactly by damped Newton on the convex
    potential 1/2 a^T Q a - sum log a_k (solvers.nash_bargaining) instead of the paper's sequence
    of cvxpy problems; a ridge 1e-8 diag(Q) keeps it well posed when gradients are positively
    dependent.

    Departures: the paper's clipping of the update norm (max_norm) is replaced by the common
    normalisation sum a = 1, and no warm start is needed (so the strategy is stateless). No norm
    estimate enters: the solution's direction is invariant to each task's scale.
    """

    name = "nash_mtl"
    reads = frozenset({"gram"})
    scale_invariant = True

    def __call__(self, s: TaskGradStats) -> Balance:
        a = on_active(s, lambda gram, idx: nash_bargaining(gram))
        return Balance(combination_weights(a, s.shares))
