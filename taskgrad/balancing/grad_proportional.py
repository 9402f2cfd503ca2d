"""The paper's ablation: sample tasks in proportion to their squared gradient norm."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, Strategy, TaskGradStats
from taskgrad.balancing.common import window_stat
from taskgrad.schema import need


@STRATEGIES.register("grad_proportional")
class GradProportional(Strategy):
    """The paper's ablation: sample tasks in proportion to their squared gradient norm.

    Wu et al. (2026) sample the next batch's tasks with probability proportional to the task's
    squared gradient norm. One step's split-half estimate is unbiased but mostly noise (and can
    be negative), so we use its window mean over the last ``diagnostics.window`` steps
    (TaskWindow), optionally smoothed further by ``ema``; a task whose window mean is not above
    zero by 1.96 standard errors has no detectable gradient signal and gets the floor probability
    ``floor`` only, so that it is still measured. The update itself is the plain mix (weights one).
    """

    name = "grad_proportional"
    reads = frozenset({"gram", "window"})

    @dataclass
    class Options:
        ema: float = 0.0  # extra moving average over the window means, in [0, 1)
        floor: float = 0.02  # least sampling probability, in [0, 1/K)

        def check(self, where: str, num_tasks: int = 1, **_: Any) -> None:
            need(0 <= self.ema < 1, f"{where}.ema", f"0 <= ema < 1, got {self.ema}")
            ok = 0 <= self.floor < 1 / num_tasks
            need(ok, f"{where}.floor", f"0 <= floor < 1/K, got {self.floor}")

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        self.state = {"sqnorm": torch.full((num_tasks,), math.nan, dtype=torch.float64)}

    def __call__(self, s: TaskGradStats) -> Balance:
        ema, floor = self.options.ema, self.options.floor
        new = window_stat(s, "sqnorm_unbiased")  # [K], NaN where a task had no two halves
        if s.window is not None:  # no detectable signal: no share beyond the floor
            new = torch.where(s.window.detectable(), new, torch.zeros_like(new))
        old = self.state["sqnorm"]
        avg = torch.where(torch.isnan(old), new, ema * old + (1 - ema) * new)
        avg = torch.where(torch.isnan(avg), old, avg)  # keep the last value when unmeasured
        self.state["sqnorm"] = avg
        positive = torch.nan_to_num(avg, nan=0.0).clamp(min=0)
        if positive.sum() > 0:
            p = positive / positive.sum()
        else:
            p = torch.full((s.num_tasks,), 1.0 / s.num_tasks, dtype=torch.float64)
        p = floor + (1 - floor * s.num_tasks) * p
        return Balance(torch.ones(s.num_tasks, dtype=torch.float64), sampling=p)
