"""MGDA: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.common import NormedStrategy, on_active, subset_norms
from taskgrad.balancing.solvers import min_norm_simplex


@STRATEGIES.register("mgda")
class MGDA(NormedStrategy):
    r"""MGDA (Sener & Koltun 2018): the min-norm point of the convex hull of the task gradients.

    alpha = argmin_{alpha in simplex} ||sum_k alpha_k u_k||^2, solved exactly (NNLS, solvers.py)
    rather than by the paper's Frank-Wolfe iterations. With ``normalize`` (default, the "l2"
    gradient normalisation of the authors' code) u_k = g_k / n_k and a_k = alpha_k / n_k, which
    makes the update invariant to rescaling one task; without it u_k = g_k and a = alpha.

    Departures: n_k is the smoothed split-half signal norm (common.py); a task with an all-zero
    gradient (all advantages zero) is left out, since MGDA would otherwise return the zero update.

    Note: when the min-norm point is interior (every alpha_k > 0), its inner products with all the
    u_k are equal, so normalised MGDA then gives exactly IMTL-G's update; they differ when the
    min-norm point lies on a face of the hull (some task gets alpha_k = 0).
    """

    name = "mgda"
    reads = frozenset({"gram"})
    scale_invariant = True  # with normalize (the default)

    @dataclass
    class Options(NormedStrategy.Options):
        normalize: bool = True  # u_k = g_k / n_k ("l2" normalisation of the authors' code)

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, _ = self.signal(s)  # [K]

        def solve(gram: np.ndarray, idx) -> np.ndarray:
            if not self.options.normalize:
                return min_norm_simplex(gram)
            n = subset_norms(norms, idx, gram)  # [n]
            return min_norm_simplex(gram / np.outer(n, n)) / n

        return Balance(combination_weights(on_active(s, solve), s.shares))
