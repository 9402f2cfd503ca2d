"""IMTL-G: equal projections of the update onto every task's direction."""

from __future__ import annotations

import numpy as np

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.common import NormedStrategy, on_active, subset_norms
from taskgrad.balancing.solvers import scaled


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
    reads = frozenset({"gram"})
    scale_invariant = True

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, _ = self.signal(s)  # [K]

        def solve(gram: np.ndarray, idx) -> np.ndarray:
            n = subset_norms(norms, idx, gram)  # [n]
            return np.linalg.lstsq(scaled(gram), n, rcond=None)[0]

        return Balance(combination_weights(on_active(s, solve), s.shares))
