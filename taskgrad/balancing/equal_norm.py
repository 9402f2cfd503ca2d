"""Norm balancing: every task's gradient rescaled to one common norm."""

from __future__ import annotations

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.common import NormedStrategy, active_tasks


@STRATEGIES.register("equal_norm")
class EqualNorm(NormedStrategy):
    r"""Every task's gradient rescaled to one common norm: a_k \propto 1 / ||g_k||.

    The update is proportional to sum_k g_k / ||g_k||, the sum of the tasks' unit directions,
    normalised to sum a = 1 (base.py). It is the fixed point of GradNorm (Chen et al. 2018) with
    alpha = 0, taken in one step; invariant to rescaling any one task.

    RL departure: ||g_k|| is the smoothed split-half signal norm n_k (common.py; moving average
    ``ema``, floor ``floor`` times the sample squared norm), not the sample norm, which noise
    inflates unequally across tasks. The norms are updated once per training step.
    """

    name = "equal_norm"
    reads = frozenset({"gram"})
    scale_invariant = True

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, _ = self.signal(s)  # [K]
        usable = active_tasks(s) & (norms > 0)
        a = torch.where(usable, 1.0 / norms, 0.0)  # [K]
        return Balance(combination_weights(a, s.shares), task_info={"norm": norms})
