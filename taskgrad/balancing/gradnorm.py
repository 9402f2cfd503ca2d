"""GradNorm: task gradients sized by how fast each task trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.common import (
    NormedStrategy,
    active_tasks,
    ema_update,
    nan_vector,
    stat,
)
from taskgrad.schema import need


@STRATEGIES.register("gradnorm")
class GradNorm(NormedStrategy):
    r"""GradNorm (Chen et al. 2018), relaxed toward its fixed point, with a reward-based rate.

    GradNorm keeps task weights w (sum K) and descends sum_k |w_k n_k - mean_j(w_j n_j) r_k^alpha|
    where n_k = ||g_k|| and r_k = L~_k / mean_j L~_j is the relative inverse training rate,
    L~_k = L_k(t) / L_k(0). The loss vanishes at w*_k \propto r_k^alpha / n_k: tasks that train
    slowly get a larger gradient. The update is sum_k w_k g_k (normalised, base.py).

    Departures for RL: (1) L_k = 1 - reward_k + ``eps`` with the reward smoothed by ``ema``
    (GRPO's surrogate loss is centred by the group baseline and has no floor, so it says nothing
    about progress); L_k(0) is the first smoothed value. (2) Instead of gradient steps on the L1
    loss, whose scale follows the gradient norms (they fall by 2-3 orders of magnitude during RL
    training, so no fixed learning rate suits the whole run), w relaxes toward the fixed point:
    w <- (1 - relax) w + relax w*. (3) n_k is the smoothed split-half signal norm (common.py).
    State is updated once per training step.
    """

    name = "gradnorm"
    reads = frozenset({"gram", "reward"})

    @dataclass
    class Options(NormedStrategy.Options):
        alpha: float = 1.5  # GradNorm's asymmetry: how strongly slow tasks are favoured, >= 0
        relax: float = 0.1  # step toward the fixed point per training step, in (0, 1]
        eps: float = 0.1  # floor of the loss proxy 1 - reward + eps, > 0

        def check(self, where: str, **context: Any) -> None:
            super().check(where, **context)
            need(self.alpha >= 0, f"{where}.alpha", f">= 0, got {self.alpha}")
            need(0 < self.relax <= 1, f"{where}.relax", f"0 < relax <= 1, got {self.relax}")
            need(self.eps > 0, f"{where}.eps", f"> 0, got {self.eps}")

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        self.state["weights"] = torch.ones(num_tasks, dtype=torch.float64)
        self.state["reward"] = nan_vector(num_tasks)
        self.state["loss0"] = nan_vector(num_tasks)

    def _rates(self) -> torch.Tensor:
        """r_k = L~_k / mean L~ [K]; 1 where a task's loss is not known yet."""
        loss = 1 - self.state["reward"] + self.options.eps
        self.state["loss0"] = torch.where(
            torch.isnan(self.state["loss0"]), loss, self.state["loss0"]
        )
        ratio = torch.nan_to_num(loss / self.state["loss0"], nan=1.0)  # [K]
        return ratio / ratio.mean()

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, update = self.signal(s)  # [K]
        usable = active_tasks(s) & (norms > 0)
        w = self.state["weights"]
        o = self.options
        if update and bool(usable.any()):
            self.state["reward"] = ema_update(self.state["reward"], stat(s, "reward"), o.ema)
            target = torch.where(usable, self._rates() ** o.alpha / norms, 0.0)  # [K]
            target = target * usable.sum() / target.sum()
            w = torch.where(usable, (1 - o.relax) * w + o.relax * target, w)
            self.state["weights"] = w
        a = torch.where(usable, w, 0.0)
        return Balance(combination_weights(a, s.shares), task_info={"gradnorm_w": w})
