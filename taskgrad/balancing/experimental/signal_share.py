r"""Experimental: each task's estimated signal on a unit scale, shrunk by its signal fraction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from taskgrad.balancing.base import (
    STRATEGIES,
    Balance,
    Strategy,
    TaskGradStats,
    combination_weights,
)
from taskgrad.balancing.common import active_tasks, window_stat
from taskgrad.schema import need


@STRATEGIES.register("signal_share")
class SignalShare(Strategy):
    r"""Experimental. Effort where the gradient is signal, not noise (a new method).

    Model: task k's step gradient is g_k = mu_k + e_k with signal S_k = ||mu_k||^2 and noise
    N_k = E||e_k||^2. The window means (TaskWindow, the last ``diagnostics.window`` steps) of the
    split-half estimate <g_kA, g_kB> (unbiased for S_k) and of ||g_k||^2 (S_k + N_k in
    expectation) estimate both, and their ratio is the signal fraction f_k = S_k / (S_k + N_k):
    the shrinkage factor for which f_k g_k is the least-squares linear estimate of mu_k. The
    update is

        sum_k a_k g_k,   a_k = f_k / sqrt(S_k) = sqrt(S_k) / (S_k + N_k)   (0 where S_k <= 0),

    normalised to sum a = 1 (base.py): each task's estimated signal put on a unit scale (so a task
    whose loss is scaled by c gets a_k / c: invariant to one task's scale), shrunk by how much of
    its step gradient is signal. What it acts on, from the paper and stage 0-2 of the testbed:
    a task with large gradients that do not carry learning (a distractor whose reward ignores the
    completion: S = 0, a = 0; a task at the floor), and a scale imbalance (undone exactly).
    Ratios are taken of window means, never of single steps. A task whose window mean is not above
    zero by ``z`` standard errors gets a = 0 (``z = 0``: the sign of the mean decides). Its prompts
    are still sampled and measured, so its weight returns when its signal does. With no window
    (outside the loop) the step's own estimates stand in. When no task has signal the update is
    the plain mix (weights one).

    Known weakness: a task whose mean gradient is large but already learned (saturated reward)
    keeps S > 0 while its accuracy no longer moves; and the weight ignores transfer between tasks
    (cosines), which a Gram method would use.
    """

    name = "signal_share"
    reads = frozenset({"gram", "window"})
    scale_invariant = True

    @dataclass
    class Options:
        z: float = 0.0  # standard errors the window's signal must clear, >= 0

        def check(self, where: str, **_: Any) -> None:
            need(math.isfinite(self.z) and self.z >= 0, f"{where}.z", f">= 0, got {self.z}")

    def __call__(self, s: TaskGradStats) -> Balance:
        signal = window_stat(s, "sqnorm_unbiased")  # [K] S_k, NaN where unmeasured
        total = window_stat(s, "sqnorm_naive")  # [K] S_k + N_k
        if s.window is not None and self.options.z > 0:
            signal = torch.where(s.window.detectable(z=self.options.z), signal, 0.0)
        usable = active_tasks(s) & (signal > 0) & (total > 0)  # NaN compares False
        a = torch.where(usable, signal.clamp(min=0).sqrt() / total.clamp(min=1e-300), 0.0)
        fraction = torch.where(total > 0, signal / total.clamp(min=1e-300), math.nan)
        info = {"signal_fraction": fraction, "coefficient": a}
        return Balance(combination_weights(a, s.shares), task_info=info)
