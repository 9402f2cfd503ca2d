"""MT-GRPO: improvement-aware worst-task weights realised by a ratio-preserving sampler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
    softmax_jvp,
    window_stat,
)
from taskgrad.schema import need


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
    every sampled prompt. The reward and the zero-advantage share are window means over the last
    ``diagnostics.window`` steps (TaskWindow; one batch's reward is mostly sampling noise),
    optionally smoothed by ``ema``; improvement is the change of that mean between consecutive
    steps, which are different prompt batches.
    """

    name = "mt_grpo"
    reads = frozenset({"reward", "zero_adv_share", "window"})

    @dataclass
    class Options:
        lam: float = 0.2  # weight of the reward level against improvement, >= 0
        lr: float = 0.05  # Adam step size of the logits, > 0
        weight_decay: float = 0.01  # on the logits, >= 0
        clip: float = 0.1  # per-step improvement clipped to +-clip, > 0
        ema: float = 0.0  # extra moving average over the window means, in [0, 1)
        floor: float = 0.05  # least weight per task, in [0, 1/K)
        min_signal: float = 0.05  # least informative share in the sampler, in (0, 1]
        mode: Literal["sampling", "weights"] = "sampling"  # how z acts (paper: sampling)

        def check(self, where: str, num_tasks: int = 1, **_: Any) -> None:
            need(self.lam >= 0, f"{where}.lam", f"lam >= 0, got {self.lam}")
            need(self.lr > 0, f"{where}.lr", f"lr > 0, got {self.lr}")
            wd = self.weight_decay
            need(wd >= 0, f"{where}.weight_decay", f">= 0, got {wd}")
            need(self.clip > 0, f"{where}.clip", f"clip > 0, got {self.clip}")
            need(0 <= self.ema < 1, f"{where}.ema", f"0 <= ema < 1, got {self.ema}")
            ok = 0 <= self.floor < 1 / num_tasks
            need(ok, f"{where}.floor", f"0 <= floor < 1/K, got {self.floor}")
            ms = self.min_signal
            need(0 < ms <= 1, f"{where}.min_signal", f"0 < min_signal <= 1, got {ms}")

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        self.state = {
            "step": -1,
            "reward": nan_vector(num_tasks),
            "zero_adv": nan_vector(num_tasks),
            **adam_state("logits", num_tasks),
        }

    def _observe(self, s: TaskGradStats) -> None:
        o = self.options
        previous = self.state["reward"]
        reward = ema_update(previous, window_stat(s, "reward"), o.ema)  # [K]
        improvement = torch.nan_to_num(reward - previous, nan=0.0).clamp(-o.clip, o.clip)
        delta = improvement + o.lam * torch.nan_to_num(reward, nan=0.0)  # [K]
        z = torch.softmax(self.state["logits"], 0)  # the floor mix scales the Jacobian:
        grad = (1 - o.floor * s.num_tasks) * softmax_jvp(z, delta)
        adam_step(self.state, "logits", grad, o.lr, o.weight_decay)
        self.state["reward"] = reward
        zero_adv = window_stat(s, "zero_adv_share")
        self.state["zero_adv"] = ema_update(self.state["zero_adv"], zero_adv, o.ema)

    def __call__(self, s: TaskGradStats) -> Balance:
        if first_call_of_step(self.state, s):
            self._observe(s)
        o = self.options
        z = floor_mix(torch.softmax(self.state["logits"], 0), o.floor)  # [K]
        if o.mode == "weights":
            return Balance(combination_weights(z, s.shares), task_info={"z": z})
        zero_adv = torch.nan_to_num(self.state["zero_adv"], nan=0.0)
        informative = (1 - zero_adv).clamp(min=o.min_signal)  # [K]
        p = z / informative
        p = p / p.sum()
        ones = torch.ones(s.num_tasks, dtype=torch.float64)
        return Balance(ones, sampling=p, task_info={"z": z})
