r"""Experimental strategies (STYLE item 12): new methods, not yet validated by a measured
comparison. They have property tests; promote one out of this module once it has beaten a tuned
uniform mix in a reported run.
"""

from __future__ import annotations

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.common import (
    NormedStrategy,
    active_tasks,
    ema_update,
    floor_mix,
    nan_vector,
    per_task,
)


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

    def __init__(
        self,
        num_tasks: int,
        min_share: float = 0.05,
        gain_ema: float = 0.5,
        ema: float = 0.8,
        floor: float = 0.1,
    ) -> None:
        super().__init__(num_tasks, ema=ema, floor=floor)
        if not 0 <= min_share < 1 / num_tasks or not 0 <= gain_ema < 1:
            raise ValueError("balance.options: need 0 <= min_share < 1/K and 0 <= gain_ema < 1")
        self.min_share, self.gain_ema = min_share, gain_ema
        self.state["gain"] = nan_vector(num_tasks)

    def _effort(self) -> torch.Tensor:
        """p [K]: each task's share of the update's effort, from its smoothed gain."""
        positive = self.state["gain"].clamp(min=0)  # [K], NaN where unknown
        positive = torch.where(torch.isnan(positive), positive.nanmean(), positive)
        total = positive.sum()
        p = positive / total if total > 0 else torch.full_like(positive, 1.0 / positive.numel())
        return floor_mix(p, self.min_share)

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, update = self.signal(s)  # [K]
        if update and s.gains is not None:
            self.state["gain"] = ema_update(self.state["gain"], s.gains, self.gain_ema)
        info = per_task("gain", s.tasks, self.state["gain"])
        if bool(torch.isnan(self.state["gain"]).all()):
            return Balance(torch.ones(s.num_tasks, dtype=torch.float64), info=info)
        p = self._effort()
        usable = active_tasks(s) & (norms > 0)
        a = torch.where(usable, p / norms, 0.0)  # [K]
        return Balance(combination_weights(a, s.shares), info=info | per_task("effort", s.tasks, p))
