"""Each task's own objective weighted equally: the base mix of the Gram methods."""

from __future__ import annotations

import torch

from taskgrad.balancing.base import (
    STRATEGIES,
    Balance,
    Strategy,
    TaskGradStats,
    combination_weights,
)


@STRATEGIES.register("equal_task")
class EqualTask(Strategy):
    r"""The update sum_k g_k / K: every task's own objective gradient counted once, whatever its
    share of the batch objective.

    ``uniform`` weighs task k by its share s_k of the batch objective (its token count under
    token_mean), so tasks with longer responses weigh more; PCGrad, MGDA, CAGrad and the other
    Gram methods start from the equal-task mix instead (their update with no conflict and equal
    norms). Comparing a method with ``equal_task`` separates what the method does from this
    change of base mix. task_weights = 1 / s_k, normalised as in base.py (sum a = 1).
    """

    name = "equal_task"

    def __call__(self, s: TaskGradStats) -> Balance:
        ones = torch.ones(s.num_tasks, dtype=torch.float64)
        return Balance(combination_weights(ones, s.shares))
