r"""Pareto-style aggregators that avoid conflict: MGDA, CAGrad and UPGrad, solved on the Gram.

Each finds coefficients a on the task gradients g_k from the [K, K] task Gram (small exact QPs in
solvers.py); the update sum_k a_k g_k is normalised to sum a = 1 (base.py). Inner products come
from the sample Gram: the combination is of the sampled vectors, so their conflicts are the ones
that matter. Where a method normalises the gradients first, the norms are the smoothed
split-half signal norms n_k (common.py), so a task whose gradient is mostly noise has a
normalised sample norm above 1 and is avoided rather than amplified.
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
from taskgrad.balancing.solvers import cagrad_direction, dual_cone_weights, min_norm_simplex


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

    def __init__(
        self, num_tasks: int, normalize: bool = True, ema: float = 0.8, floor: float = 0.1
    ) -> None:
        super().__init__(num_tasks, ema=ema, floor=floor)
        self.normalize = bool(normalize)

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, _ = self.signal(s)  # [K]

        def solve(gram: np.ndarray, idx) -> np.ndarray:
            if not self.normalize:
                return min_norm_simplex(gram)
            n = subset_norms(norms, idx, gram)  # [n]
            return min_norm_simplex(gram / np.outer(n, n)) / n

        return Balance(combination_weights(on_active(s, solve), s.shares))


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

    def __init__(self, num_tasks: int, c: float = 0.4) -> None:
        super().__init__(num_tasks)
        if not c >= 0:
            raise ValueError(f"balance.options.c: need c >= 0, got {c}")
        self.c = float(c)

    def __call__(self, s: TaskGradStats) -> Balance:
        a = on_active(s, lambda gram, idx: cagrad_direction(gram, self.c))
        return Balance(combination_weights(a, s.shares))


@STRATEGIES.register("upgrad")
class UPGrad(NormedStrategy):
    r"""UPGrad (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization"; TorchJD).

    Each row u_i is projected onto the dual cone {x : <x, u_k> >= 0 for all k} and the
    projections are averaged: a = (1/K) sum_i v_i with v_i = argmin_{v >= e_i} v^T Q v
    (Proposition 1 of the paper; one NNLS each, solvers.py). As in TorchJD, Q is divided by its
    trace and ``reg`` * I is added. The result never conflicts with any task.

    Departure: with ``normalize`` (default) the rows are the unit directions u_k = g_k / n_k, n_k
    the smoothed split-half signal norm, so that the 10-30x norm imbalance of RL tasks does not
    set the average (TorchJD's UPGrad uses the raw rows: ``normalize=False``); a_k = w_k / n_k.
    This makes the update invariant to rescaling one task.
    """

    name = "upgrad"

    def __init__(
        self,
        num_tasks: int,
        normalize: bool = True,
        reg: float = 1e-4,
        ema: float = 0.8,
        floor: float = 0.1,
    ) -> None:
        super().__init__(num_tasks, ema=ema, floor=floor)
        if not reg >= 0:
            raise ValueError(f"balance.options.reg: need reg >= 0, got {reg}")
        self.normalize, self.reg = bool(normalize), float(reg)

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, _ = self.signal(s)  # [K]

        def solve(gram: np.ndarray, idx) -> np.ndarray:
            n = subset_norms(norms, idx, gram) if self.normalize else np.ones(len(idx))
            q = gram / np.outer(n, n)  # [n, n]
            m = q.shape[0]
            q = q / np.trace(q) + self.reg * np.eye(m)
            w = sum(dual_cone_weights(q, np.eye(m)[i] / m) for i in range(m))
            return w / n

        return Balance(combination_weights(on_active(s, solve), s.shares))
