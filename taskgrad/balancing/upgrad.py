"""UPGrad: the average of the rows projected onto the dual cone (Jacobian descent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.common import NormedStrategy, on_active, subset_norms
from taskgrad.balancing.solvers import dual_cone_weights
from taskgrad.schema import need


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
    reads = frozenset({"gram"})
    scale_invariant = True  # with normalize (the default)

    @dataclass
    class Options(NormedStrategy.Options):
        normalize: bool = True  # rows are unit directions g_k / n_k (TorchJD: raw rows)
        reg: float = 1e-4  # ridge added to the trace-normalised Gram, >= 0

        def check(self, where: str, **context: Any) -> None:
            super().check(where, **context)
            need(self.reg >= 0, f"{where}.reg", f"reg >= 0, got {self.reg}")

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, _ = self.signal(s)  # [K]

        def solve(gram: np.ndarray, idx) -> np.ndarray:
            n = subset_norms(norms, idx, gram) if self.options.normalize else np.ones(len(idx))
            q = gram / np.outer(n, n)  # [n, n]
            m = q.shape[0]
            q = q / np.trace(q) + self.options.reg * np.eye(m)
            w = sum(dual_cone_weights(q, np.eye(m)[i] / m) for i in range(m))
            return w / n

        return Balance(combination_weights(on_active(s, solve), s.shares))
