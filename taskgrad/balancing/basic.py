"""The baselines: the naive mix, fixed weights, and the paper's gradient-proportional sampling."""

from __future__ import annotations

import math

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, Strategy, TaskGradStats


@STRATEGIES.register("uniform")
class Uniform(Strategy):
    """The naive mix: one step on the summed loss, every task's contribution as it comes."""

    name = "uniform"
    needs_gradients = False

    def __call__(self, s: TaskGradStats) -> Balance:
        return Balance(task_weights=torch.ones(s.num_tasks, dtype=torch.float64))


@STRATEGIES.register("static")
class Static(Strategy):
    """Fixed multipliers on each task's contribution (option ``weights``, one per task).

    The mixture baseline every correction must beat. ``taskgrad compare`` tunes it first: a
    small sweep (uniform, and each task in turn weighted 2) on tuning seeds disjoint from the
    comparison's, keeping the best by (final mean + worst-task held-out accuracy) / 2.
    Weights act on the task's per-token loss weights, i.e. like a per-task learning-rate
    multiplier under SGD; under AdamW only their ratios matter to first order.
    """

    name = "static"
    needs_gradients = False

    def __init__(self, num_tasks: int, weights: list[float] | None = None) -> None:
        super().__init__(num_tasks)
        weights = weights if weights is not None else [1.0] * num_tasks
        if len(weights) != num_tasks or any(not w >= 0 for w in weights):
            raise ValueError(f"balance.options.weights: need {num_tasks} non-negative numbers")
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def __call__(self, s: TaskGradStats) -> Balance:
        return Balance(task_weights=self.weights.clone())


@STRATEGIES.register("grad_proportional")
class GradProportional(Strategy):
    """The paper's ablation: sample tasks in proportion to their squared gradient norm.

    Wu et al. (2026) sample the next batch's tasks with probability proportional to the task's
    squared gradient norm. We use the split-half unbiased estimate, smoothed by an exponential
    moving average (``ema``) because one step's estimate is noisy and can be negative; tasks
    whose smoothed estimate is not positive get the floor probability ``floor`` so that they
    are still measured. The update itself is the plain mix (weights one).
    """

    name = "grad_proportional"

    def __init__(self, num_tasks: int, ema: float = 0.8, floor: float = 0.02) -> None:
        super().__init__(num_tasks)
        if not 0 <= ema < 1 or not 0 <= floor < 1 / num_tasks:
            raise ValueError("balance.options: need 0 <= ema < 1 and 0 <= floor < 1/K")
        self.ema, self.floor = ema, floor
        self.state = {"sqnorm": torch.full((num_tasks,), math.nan, dtype=torch.float64)}

    def __call__(self, s: TaskGradStats) -> Balance:
        new = s.sqnorm_unbiased()  # [K], NaN where a task had no two halves
        old = self.state["sqnorm"]
        avg = torch.where(torch.isnan(old), new, self.ema * old + (1 - self.ema) * new)
        avg = torch.where(torch.isnan(avg), old, avg)  # keep the last value when unmeasured
        self.state["sqnorm"] = avg
        positive = torch.nan_to_num(avg, nan=0.0).clamp(min=0)
        if positive.sum() > 0:
            p = positive / positive.sum()
        else:
            p = torch.full((s.num_tasks,), 1.0 / s.num_tasks, dtype=torch.float64)
        p = self.floor + (1 - self.floor * s.num_tasks) * p
        info = {f"sampling/{t}": float(v) for t, v in zip(s.tasks, p, strict=True)}
        return Balance(torch.ones(s.num_tasks, dtype=torch.float64), sampling=p, info=info)
