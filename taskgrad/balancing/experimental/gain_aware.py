r"""Experimental: effort follows learning gain per unit of gradient norm (a new method)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.common import (
    NormedStrategy,
    active_tasks,
    ema_update,
    floor_mix,
    nan_vector,
)
from taskgrad.schema import need


@STRATEGIES.register("gain_aware")
class GainAware(NormedStrategy):
    r"""Experimental. Effort follows learning gain per unit of gradient norm (new method).

    The paper finds the largest-gradient task often learns least. Here each task gets a share p_k
    of the update's effort in proportion to its recent learning gain: with gbar_k the moving
    average (``gain_ema``) of the windowed learning gain, p = max(gbar, 0) / sum max(gbar, 0)
    (uniform when no task gains), mixed with a floor so that no task starves,
    p <- min_share + (1 - K min_share) p. The coefficients a_k = p_k / n_k put effort p_k on the
    task's unit direction, so the task's contribution has norm \propto p_k; a_k is the gain per
    unit of gradient norm up to the floor. While no gain is known yet (the first 2 s steps) the
    update is the plain mix (weights one). A task whose gain is unknown gets the mean share.
    Invariant to rescaling one task's gradient.

    n_k is the smoothed split-half signal norm (common.py). Known weakness: a task held at the
    floor gains little *because* it gets little effort, so gains feed back on the allocation;
    ``min_share`` is what keeps such a task measurable.
    """

    name = "gain_aware"
    reads = frozenset({"gram", "gains"})
    scale_invariant = True

    @dataclass
    class Options(NormedStrategy.Options):
        min_share: float = 0.05  # least effort share per task, in [0, 1/K)
        gain_ema: float = 0.5  # moving average of the windowed gains, in [0, 1)

        def check(self, where: str, num_tasks: int = 1, **context: Any) -> None:
            super().check(where, num_tasks=num_tasks, **context)
            ms = self.min_share
            need(0 <= ms < 1 / num_tasks, f"{where}.min_share", f"0 <= min_share < 1/K, got {ms}")
            ge = self.gain_ema
            need(0 <= ge < 1, f"{where}.gain_ema", f"0 <= gain_ema < 1, got {ge}")

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        self.state["gain"] = nan_vector(num_tasks)

    def _effort(self) -> torch.Tensor:
        """p [K]: each task's share of the update's effort, from its smoothed gain."""
        positive = self.state["gain"].clamp(min=0)  # [K], NaN where unknown
        positive = torch.where(torch.isnan(positive), positive.nanmean(), positive)
        total = positive.sum()
        p = positive / total if total > 0 else torch.full_like(positive, 1.0 / positive.numel())
        return floor_mix(p, self.options.min_share)

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, update = self.signal(s)  # [K]
        if update and s.gains is not None:
            self.state["gain"] = ema_update(self.state["gain"], s.gains, self.options.gain_ema)
        info = {"gain": self.state["gain"]}
        if bool(torch.isnan(self.state["gain"]).all()):
            return Balance(torch.ones(s.num_tasks, dtype=torch.float64), task_info=info)
        p = self._effort()
        usable = active_tasks(s) & (norms > 0)
        a = torch.where(usable, p / norms, 0.0)  # [K]
        return Balance(combination_weights(a, s.shares), task_info=info | {"effort": p})
