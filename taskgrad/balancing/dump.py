r"""Curriculum over tasks: sample the next batch's tasks by how much they can still teach (DUMP).

Acts only through ``sampling``; the update of each batch is the plain mix (weights one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from taskgrad.balancing.base import STRATEGIES, Balance, Strategy, TaskGradStats
from taskgrad.balancing.common import (
    ema_update,
    first_call_of_step,
    floor_mix,
    nan_vector,
    stat,
    window_stat,
)
from taskgrad.schema import need


@STRATEGIES.register("dump")
class DUMP(Strategy):
    r"""DUMP (Wang et al. 2025, "Automated Distribution-Level Curriculum Learning for RL-based LLM
    Post-training"): a UCB bandit over tasks rewarded by the mean absolute advantage.

    The expected |advantage| of a task's completions measures how much the policy can still learn
    from it (zero once every group is solved or failed alike). Score_k = Abar_k + ``exploration``
    * sqrt(2 ln(N + 1) / (n_k + 1)), with Abar_k the task's recent mean |advantage|, n_k how much
    it has been sampled and N = sum n; the next batch samples task k with probability
    softmax(score / ``temperature``)_k (DUMP's default temperature is 0.1), mixed with ``floor``.

    Departures: DUMP averages |A| over a sliding window of the last 300 completions and counts
    completions; here Abar_k is the window mean over the last ``diagnostics.window`` steps
    (TaskWindow), optionally smoothed by ``ema``, and n_k counts batches in
    units of a uniform task share (a task sampled with probability p adds K p per step), which
    makes the exploration bonus larger than DUMP's for the same number of steps. The loop keeps at
    least one or two prompts per task in every batch, so no task goes unmeasured (SEC, Chen et al.
    2025, is the same bandit with a TD(0) value and no count bonus).
    """

    name = "dump"
    reads = frozenset({"abs_advantage", "window"})

    @dataclass
    class Options:
        temperature: float = 0.1  # softmax temperature of the UCB scores, > 0 (DUMP: 0.1)
        exploration: float = 1.0  # weight of the count bonus, >= 0
        ema: float = 0.0  # extra moving average over the window mean |advantage|, in [0, 1)
        floor: float = 0.0  # least sampling probability, in [0, 1/K)

        def check(self, where: str, num_tasks: int = 1, **_: Any) -> None:
            t = self.temperature
            need(t > 0, f"{where}.temperature", f"temperature > 0, got {t}")
            e = self.exploration
            need(e >= 0, f"{where}.exploration", f"exploration >= 0, got {e}")
            need(0 <= self.ema < 1, f"{where}.ema", f"0 <= ema < 1, got {self.ema}")
            ok = 0 <= self.floor < 1 / num_tasks
            need(ok, f"{where}.floor", f"0 <= floor < 1/K, got {self.floor}")

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        self.state = {
            "step": -1,
            "score": nan_vector(num_tasks),
            "counts": torch.zeros(num_tasks, dtype=torch.float64),
            "sampling": torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64),
        }

    def _ucb(self) -> torch.Tensor:
        counts = self.state["counts"]  # [K]
        bonus = (2 * torch.log(counts.sum() + 1) / (counts + 1)).sqrt()
        return torch.nan_to_num(self.state["score"], nan=0.0) + self.options.exploration * bonus

    def __call__(self, s: TaskGradStats) -> Balance:
        o = self.options
        if first_call_of_step(self.state, s):
            seen = torch.isfinite(stat(s, "abs_advantage"))  # in this batch
            adv = window_stat(s, "abs_advantage")  # [K] window mean
            self.state["score"] = ema_update(self.state["score"], adv, o.ema)
            share = s.num_tasks * self.state["sampling"]
            self.state["counts"] = self.state["counts"] + torch.where(seen, share, 0.0)
            p = torch.softmax(self._ucb() / o.temperature, 0)
            self.state["sampling"] = floor_mix(p, o.floor)
        ones = torch.ones(s.num_tasks, dtype=torch.float64)
        return Balance(
            ones, sampling=self.state["sampling"], task_info={"score": self.state["score"]}
        )
