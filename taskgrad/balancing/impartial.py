r"""Scale-invariant combinations that treat every task impartially: IMTL-G and Nash-MTL.

Both are invariant to rescaling any one task's gradient: the update's direction depends only on
the tasks' directions and the angles between them. Solved on the sample Gram (base.py's
normalisation sum a = 1 applies).
"""

from __future__ import annotations

import numpy as np

from taskgrad.balancing.base import (
    STRATEGIES,
    Balance,
    Strategy,
    TaskGradStats,
    combination_weights,
)
from taskgrad.balancing.common import NormedStrategy, on_active, subset_norms
from taskgrad.balancing.solvers import nash_bargaining, scaled


@STRATEGIES.register("imtl_g")
class IMTLG(NormedStrategy):
    r"""IMTL-G (Liu et al. 2021, "Towards Impartial Multi-task Learning"), closed form on the Gram.

    The update g = sum_k a_k g_k has equal projections onto every unit task direction:
    <g, g_k> / n_k = const for all k, with sum a = 1. Since <g, g_k> = (Q a)_k this is
    Q a \propto n, so a = Q^+ n / 1^T Q^+ n (the paper's closed form for alpha_{2:K}, written
    symmetrically; a pseudo-inverse via least squares when Q is singular). Coefficients may be
    negative, as in the paper.

    Departure: n_k is the smoothed split-half signal norm (common.py) rather than the sample norm,
    so the projection onto a task whose gradient is mostly noise is asked to be smaller. Only the
    gradient part of IMTL is implemented (the loss-scale part IMTL-L needs losses with a floor).
    """

    name = "imtl_g"

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, _ = self.signal(s)  # [K]

        def solve(gram: np.ndarray, idx) -> np.ndarray:
            n = subset_norms(norms, idx, gram)  # [n]
            return np.linalg.lstsq(scaled(gram), n, rcond=None)[0]

        return Balance(combination_weights(on_active(s, solve), s.shares))


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

    def __call__(self, s: TaskGradStats) -> Balance:
        a = on_active(s, lambda gram, idx: nash_bargaining(gram))
        return Balance(combination_weights(a, s.shares))
