"""FAMO: fast adaptive multitask optimization, on the GRPO reward."""

from __future__ import annotations

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
from taskgrad.balancing.common import (
    adam_state,
    adam_step,
    ema_update,
    first_call_of_step,
    nan_vector,
    softmax_jvp,
    stat,
    window_stat,
)
from taskgrad.schema import need


@STRATEGIES.register("famo")
class FAMO(Strategy):
    r"""FAMO (Liu et al. 2023, "FAMO: Fast Adaptive Multitask Optimization").

    FAMO descends sum_k z_k log L_k: the update is sum_k a_k grad L_k with a_k = z_k / L_k /
    sum_j (z_j / L_j) (so sum a = 1, as base.py asks), z = softmax(xi). After each step, with
    delta_k = log L_k(before) - log L_k(after) the achieved log-improvement, xi takes an Adam step
    (weight decay ``weight_decay``) on (d z / d xi)^T delta: tasks that improved more lose weight,
    which equalises the rate of improvement across tasks.

    Departures for RL: GRPO's surrogate loss is centred by the group baseline and has no floor, so
    the loss is L_k = 1 - J_k + ``eps`` with J_k the task's expected reward, estimated by its
    window mean reward (TaskWindow; FAMO re-evaluates one batch before and after the step, here
    before and after are different prompt batches, so single-step rewards would be mostly noise),
    smoothed further by ``ema``; eps bounds the 1/L_k factor, which favours tasks near reward 1.
    The GRPO gradient is not grad L_k itself: E g_k ~ kappa_k grad L_k, with kappa_k the task's
    ``objective_scale`` (group-std scaling and length normalisation; batch.objective_scale), so
    the coefficient on g_k is z_k / (L_k kappa_k), which makes the update sum_k z_k grad log L_k
    as FAMO asks.
    """

    name = "famo"
    reads = frozenset({"reward", "window", "objective_scale"})

    @dataclass
    class Options:
        lr: float = 0.025  # Adam step size of the logits xi, > 0
        weight_decay: float = 0.01  # on the logits, >= 0
        eps: float = 0.1  # floor of the loss proxy L_k = 1 - reward_k + eps, > 0
        ema: float = 0.0  # extra moving average over the window mean rewards, in [0, 1)

        def check(self, where: str, **_: Any) -> None:
            need(self.lr > 0, f"{where}.lr", f"lr > 0, got {self.lr}")
            wd = self.weight_decay
            need(wd >= 0, f"{where}.weight_decay", f">= 0, got {wd}")
            need(self.eps > 0, f"{where}.eps", f"eps > 0, got {self.eps}")
            need(0 <= self.ema < 1, f"{where}.ema", f"0 <= ema < 1, got {self.ema}")

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        self.state = {
            "step": -1,
            "reward": nan_vector(num_tasks),
            "loss": nan_vector(num_tasks),
            **adam_state("logits", num_tasks),
        }

    def _observe(self, s: TaskGradStats) -> None:
        """Fold this step's rewards in; move the logits by the log-improvement since last step."""
        o = self.options
        self.state["reward"] = ema_update(self.state["reward"], window_stat(s, "reward"), o.ema)
        loss = 1 - self.state["reward"] + o.eps  # [K], NaN where never seen
        previous = self.state["loss"]
        delta = torch.nan_to_num(previous.log() - loss.log(), nan=0.0)  # [K]
        if bool(torch.isfinite(previous).any()):
            z = torch.softmax(self.state["logits"], 0)
            adam_step(self.state, "logits", softmax_jvp(z, delta), o.lr, o.weight_decay)
        self.state["loss"] = torch.where(torch.isnan(loss), previous, loss)

    def __call__(self, s: TaskGradStats) -> Balance:
        if first_call_of_step(self.state, s):
            self._observe(s)
        z = torch.softmax(self.state["logits"], 0)  # [K]
        kappa = stat(s, "objective_scale")  # [K] E g_k ~ kappa_k grad L_k
        kappa = torch.where(torch.isfinite(kappa) & (kappa > 0), kappa, 1.0)
        a = z / (torch.nan_to_num(self.state["loss"], nan=1.0) * kappa)
        return Balance(combination_weights(a, s.shares), task_info={"z": z})
