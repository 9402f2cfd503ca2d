"""The naive mix: plain multi-task GRPO."""

from __future__ import annotations

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, Strategy, TaskGradStats


@STRATEGIES.register("uniform")
class Uniform(Strategy):
    """The naive mix: one step on the summed loss, every task's contribution as it comes.

    Tasks weigh by their share of the batch objective (their token count under token_mean), so a
    task with longer responses weighs more; ``equal_task`` weighs each task's objective equally.
    """

    name = "uniform"

    def __call__(self, s: TaskGradStats) -> Balance:
        return Balance(task_weights=torch.ones(s.num_tasks, dtype=torch.float64))
