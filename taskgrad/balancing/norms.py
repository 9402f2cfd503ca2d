r"""Norm balancing: give every task's gradient a common size (equal_norm), or a size set by how
fast the task trains (gradnorm).

Both need each task's gradient norm ||g_k||, which the per-step Gram diagonal overstates by the
noise; they use the smoothed split-half signal norm n_k of common.py instead.
"""

from __future__ import annotations

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.common import (
    NormedStrategy,
    active_tasks,
    ema_update,
    nan_vector,
    per_task,
    stat,
)


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

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, _ = self.signal(s)  # [K]
        usable = active_tasks(s) & (norms > 0)
        a = torch.where(usable, 1.0 / norms, 0.0)  # [K]
        return Balance(combination_weights(a, s.shares), info=per_task("norm", s.tasks, norms))


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

    def __init__(
        self,
        num_tasks: int,
        alpha: float = 1.5,
        relax: float = 0.1,
        eps: float = 0.1,
        ema: float = 0.8,
        floor: float = 0.1,
    ) -> None:
        super().__init__(num_tasks, ema=ema, floor=floor)
        if alpha < 0 or not 0 < relax <= 1 or eps <= 0:
            raise ValueError("balance.options: need alpha >= 0, 0 < relax <= 1 and eps > 0")
        self.alpha, self.relax, self.eps = alpha, relax, eps
        self.state["weights"] = torch.ones(num_tasks, dtype=torch.float64)
        self.state["reward"] = nan_vector(num_tasks)
        self.state["loss0"] = nan_vector(num_tasks)

    def _rates(self) -> torch.Tensor:
        """r_k = L~_k / mean L~ [K]; 1 where a task's loss is not known yet."""
        loss = 1 - self.state["reward"] + self.eps
        self.state["loss0"] = torch.where(
            torch.isnan(self.state["loss0"]), loss, self.state["loss0"]
        )
        ratio = torch.nan_to_num(loss / self.state["loss0"], nan=1.0)  # [K]
        return ratio / ratio.mean()

    def __call__(self, s: TaskGradStats) -> Balance:
        norms, update = self.signal(s)  # [K]
        usable = active_tasks(s) & (norms > 0)
        w = self.state["weights"]
        if update and bool(usable.any()):
            self.state["reward"] = ema_update(self.state["reward"], stat(s, "reward"), self.ema)
            target = torch.where(usable, self._rates() ** self.alpha / norms, 0.0)  # [K]
            target = target * usable.sum() / target.sum()
            w = torch.where(usable, (1 - self.relax) * w + self.relax * target, w)
            self.state["weights"] = w
        a = torch.where(usable, w, 0.0)
        return Balance(combination_weights(a, s.shares), info=per_task("gradnorm_w", s.tasks, w))
