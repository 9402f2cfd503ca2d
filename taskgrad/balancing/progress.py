r"""Weights driven by each task's training progress: FAMO and MT-GRPO.

Neither reads the Gram. Both keep softmax task weights z = softmax(xi) whose logits move by
Adam on (d z / d xi)^T delta, delta_k a per-task progress signal, so that tasks that progress
more lose weight. The rewards they read are the mean training rewards of the current batch,
sampled before this step's update; state moves once per training step.
"""

from __future__ import annotations

from typing import Literal

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
    floor_mix,
    nan_vector,
    per_task,
    softmax_jvp,
    stat,
)


@STRATEGIES.register("famo")
class FAMO(Strategy):
    r"""FAMO (Liu et al. 2023, "FAMO: Fast Adaptive Multitask Optimization").

    FAMO descends sum_k z_k log L_k: the update is sum_k a_k grad L_k with a_k = z_k / L_k /
    sum_j (z_j / L_j) (so sum a = 1, as base.py asks), z = softmax(xi). After each step, with
    delta_k = log L_k(before) - log L_k(after) the achieved log-improvement, xi takes an Adam step
    (weight decay ``weight_decay``) on (d z / d xi)^T delta: tasks that improved more lose weight,
    which equalises the rate of improvement across tasks.

    Departures for RL: GRPO's surrogate loss is centred by the group baseline and has no floor, so
    the loss is L_k = 1 - reward_k + ``eps`` (the floor eps bounds the 1/L_k factor, which favours
    tasks near reward 1, to 1/eps); the reward is smoothed by ``ema`` because before/after are
    two different batches of prompts (FAMO re-evaluates the same batch). grad L_k = -grad reward_k
    is taken to point along the task's GRPO gradient g_k.
    """

    name = "famo"

    def __init__(
        self,
        num_tasks: int,
        lr: float = 0.025,
        weight_decay: float = 0.01,
        eps: float = 0.1,
        ema: float = 0.5,
    ) -> None:
        super().__init__(num_tasks)
        if lr <= 0 or weight_decay < 0 or eps <= 0 or not 0 <= ema < 1:
            raise ValueError("balance.options: need lr > 0, weight_decay >= 0, eps > 0, 0<=ema<1")
        self.lr, self.weight_decay, self.eps, self.ema = lr, weight_decay, eps, ema
        self.state = {
            "step": -1,
            "reward": nan_vector(num_tasks),
            "loss": nan_vector(num_tasks),
            **adam_state("logits", num_tasks),
        }

    def _observe(self, s: TaskGradStats) -> None:
        """Fold this step's rewards in; move the logits by the log-improvement since last step."""
        self.state["reward"] = ema_update(self.state["reward"], stat(s, "reward"), self.ema)
        loss = 1 - self.state["reward"] + self.eps  # [K], NaN where never seen
        previous = self.state["loss"]
        delta = torch.nan_to_num(previous.log() - loss.log(), nan=0.0)  # [K]
        if bool(torch.isfinite(previous).any()):
            z = torch.softmax(self.state["logits"], 0)
            adam_step(self.state, "logits", softmax_jvp(z, delta), self.lr, self.weight_decay)
        self.state["loss"] = torch.where(torch.isnan(loss), previous, loss)

    def __call__(self, s: TaskGradStats) -> Balance:
        if first_call_of_step(self.state, s):
            self._observe(s)
        z = torch.softmax(self.state["logits"], 0)  # [K]
        a = z / torch.nan_to_num(self.state["loss"], nan=1.0)
        return Balance(combination_weights(a, s.shares), info=per_task("z", s.tasks, z))


@STRATEGIES.register("mt_grpo")
class MTGRPO(Strategy):
    r"""MT-GRPO (Ramesh et al. 2026, "Multi-Task GRPO: Reliable LLM Reasoning Across Tasks").

    Improvement-aware worst-task weights: z = softmax(xi) mixed with a floor ``floor`` per task;
    xi takes an Adam step on (d z / d xi)^T delta with delta_k = I_k + ``lam`` * r_k, where r_k is
    the task's (smoothed) reward and I_k its per-step improvement, clipped to +-``clip``. Tasks
    that score high and improve lose weight; low, stagnating tasks gain it (``lam`` trades worst-
    task focus against average progress; lam -> infinity is a smoothed max-min).

    Ratio-preserving sampler: prompts with zero advantage (all completions scored alike) give no
    gradient, so z is realised in the *informative* prompts: the next batch samples task k with
    probability \propto z_k / max(1 - zeta_k, ``min_signal``), zeta_k the (smoothed) share of its
    prompts with zero advantage. With ``mode="sampling"`` (default, as in the paper) the weights
    act only through this sampler and ``task_weights`` stay ones; ``mode="weights"`` applies z as
    the combination coefficients instead (a = z, normalised per base.py) and leaves sampling.

    Departures: the paper's sampler over-samples and filters to hit exact ratios in each batch;
    here the ratio is matched in expectation by the sampling probabilities, since the loop keeps
    every sampled prompt. Improvement is the change of the smoothed reward (``ema``) between
    consecutive steps, which are different prompt batches.
    """

    name = "mt_grpo"

    def __init__(
        self,
        num_tasks: int,
        lam: float = 0.2,
        lr: float = 0.05,
        weight_decay: float = 0.01,
        clip: float = 0.1,
        ema: float = 0.5,
        floor: float = 0.05,
        min_signal: float = 0.05,
        mode: Literal["sampling", "weights"] = "sampling",
    ) -> None:
        super().__init__(num_tasks)
        if lam < 0 or lr <= 0 or weight_decay < 0 or clip <= 0 or not 0 <= ema < 1:
            raise ValueError("balance.options: need lam >= 0, lr > 0, wd >= 0, clip > 0, 0<=ema<1")
        if not 0 <= floor < 1 / num_tasks or not 0 < min_signal <= 1:
            raise ValueError("balance.options: need 0 <= floor < 1/K and 0 < min_signal <= 1")
        if mode not in ("sampling", "weights"):
            raise ValueError(f"balance.options.mode: 'sampling' or 'weights', not {mode!r}")
        self.lam, self.lr, self.weight_decay, self.clip = lam, lr, weight_decay, clip
        self.ema, self.floor, self.min_signal, self.mode = ema, floor, min_signal, mode
        self.state = {
            "step": -1,
            "reward": nan_vector(num_tasks),
            "zero_adv": nan_vector(num_tasks),
            **adam_state("logits", num_tasks),
        }

    def _observe(self, s: TaskGradStats) -> None:
        previous = self.state["reward"]
        reward = ema_update(previous, stat(s, "reward"), self.ema)  # [K]
        improvement = torch.nan_to_num(reward - previous, nan=0.0).clamp(-self.clip, self.clip)
        delta = improvement + self.lam * torch.nan_to_num(reward, nan=0.0)  # [K]
        z = torch.softmax(self.state["logits"], 0)  # the floor mix scales the Jacobian:
        grad = (1 - self.floor * s.num_tasks) * softmax_jvp(z, delta)
        adam_step(self.state, "logits", grad, self.lr, self.weight_decay)
        self.state["reward"] = reward
        self.state["zero_adv"] = ema_update(
            self.state["zero_adv"], stat(s, "zero_adv_share"), self.ema
        )

    def __call__(self, s: TaskGradStats) -> Balance:
        if first_call_of_step(self.state, s):
            self._observe(s)
        z = floor_mix(torch.softmax(self.state["logits"], 0), self.floor)  # [K]
        info = per_task("z", s.tasks, z)
        if self.mode == "weights":
            return Balance(combination_weights(z, s.shares), info=info)
        informative = (1 - torch.nan_to_num(self.state["zero_adv"], nan=0.0)).clamp(
            min=self.min_signal
        )  # [K]
        p = z / informative
        p = p / p.sum()
        ones = torch.ones(s.num_tasks, dtype=torch.float64)
        return Balance(ones, sampling=p, info=info | per_task("sampling", s.tasks, p))
