"""Plumbing shared by the strategies: smoothed statistics, task masks and a tiny Adam.

Everything here reads or writes a strategy's explicit ``state`` dict, so that a strategy's whole
memory is saved and restored with the checkpoint. State tensors are never modified in place
(each update assigns a new tensor), so a saved ``state_dict()`` is never changed behind its back.

**Norms under noise.** A task's sample squared norm ||g_k||^2 (the Gram diagonal) is inflated by
the noise variance over the batch; the split-half estimate <g_kA, g_kB> is unbiased but noisy
and can be negative. ``signal_sqnorms`` smooths both with an exponential moving average and
returns max(unbiased, floor * naive): a task is taken to have at least a fraction ``floor`` of
its sample squared norm as signal, so a task whose gradient is mostly noise is scaled up by at
most 1/sqrt(floor) relative to its sampled size. Where no split-half estimate exists yet (a half
was empty) the naive estimate stands in. Steps where a task's gradient is exactly zero are left
out of its averages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from taskgrad.balancing.base import Strategy, TaskGradStats
from taskgrad.schema import need


def nan_vector(k: int) -> torch.Tensor:
    return torch.full((k,), math.nan, dtype=torch.float64)


def ema_update(old: torch.Tensor, new: torch.Tensor, ema: float) -> torch.Tensor:
    """NaN-aware moving average [K]: starts at the first finite value, holds where new is NaN."""
    new = new.double()
    avg = torch.where(torch.isnan(old), new, ema * old + (1 - ema) * new)
    return torch.where(torch.isnan(avg), old, avg)


def first_call_of_step(state: dict[str, Any], s: TaskGradStats) -> bool:
    """True once per training step; later calls (PPO inner updates) reuse the step's state.

    Training statistics (rewards, gains, advantages) are the same for every inner update of a
    step, so folding them in again would count one batch several times.
    """
    if state.get("step") == s.step:
        return False
    state["step"] = int(s.step)
    return True


def stat(s: TaskGradStats, name: str) -> torch.Tensor:
    """A per-task training statistic of this step as float64 [K]; NaN where missing."""
    value = s.stats.get(name)
    return nan_vector(s.num_tasks) if value is None else value.double()


def window_stat(s: TaskGradStats, name: str) -> torch.Tensor:
    """The window mean of a statistic (TaskWindow, noise-aware) as float64 [K]; this step's value
    where the loop gave no window (e.g. strategies called outside the loop)."""
    if s.window is not None and name in s.window.mean:
        return s.window.mean[name].double()
    if name in ("sqnorm_unbiased", "sqnorm_naive"):
        from taskgrad.gradients import task_statistics

        return task_statistics(s.group_gram, s.shares)[name]
    return stat(s, name)


def sample_sqnorms(s: TaskGradStats, scope: str | None = None) -> torch.Tensor:
    """||g_k||^2 of the sampled task gradients [K] (the naive Gram diagonal); NaN if absent."""
    naive = s.task_gram(scope).diagonal()
    return torch.where(s.task_shares > 0, naive, math.nan)


def active_tasks(s: TaskGradStats, scope: str | None = None) -> torch.Tensor:
    """[K] bool: in the batch and with a non-zero gradient in ``scope``.

    A task whose prompts all had zero advantage has an exactly zero gradient; Gram methods leave
    it out of the solve (MGDA would otherwise stop all training on a zero vector).
    """
    naive = torch.nan_to_num(sample_sqnorms(s, scope), nan=0.0)
    return (s.task_shares > 0) & (naive > 1e-12 * naive.max())


def track_sqnorms(state: dict[str, Any], s: TaskGradStats, ema: float) -> None:
    """Fold this step's unbiased and naive squared norms into their moving averages.

    Steps where a task has no gradient (absent, or all advantages zero) are skipped: the norm
    describes the task's gradient when it has one, so that the first step after a run of
    all-zero-advantage batches is not divided by an average dragged toward zero.
    """
    active = active_tasks(s)
    unbiased = torch.where(active, s.sqnorm_unbiased(), math.nan)  # [K]
    naive = torch.where(active, sample_sqnorms(s), math.nan)  # [K]
    state["sqnorm_unbiased"] = ema_update(state["sqnorm_unbiased"], unbiased, ema)
    state["sqnorm_naive"] = ema_update(state["sqnorm_naive"], naive, ema)


def signal_sqnorms(state: dict[str, Any], floor: float) -> torch.Tensor:
    """Smoothed signal squared norms [K]: max(unbiased, floor * naive); NaN if never measured."""
    unbiased, naive = state["sqnorm_unbiased"], state["sqnorm_naive"]
    unbiased = torch.where(torch.isnan(unbiased), naive, unbiased)
    return torch.maximum(unbiased, floor * naive)


def norm_state(k: int) -> dict[str, torch.Tensor]:
    return {"sqnorm_unbiased": nan_vector(k), "sqnorm_naive": nan_vector(k)}


def signal_norms(
    state: dict[str, Any], s: TaskGradStats, ema: float, floor: float, update: bool
) -> torch.Tensor:
    """sqrt of ``signal_sqnorms`` [K], after folding in this step when ``update``."""
    if update:
        track_sqnorms(state, s, ema)
    return signal_sqnorms(state, floor).clamp(min=0).sqrt()


def floor_mix(p: torch.Tensor, floor: float) -> torch.Tensor:
    """floor + (1 - K floor) p: every entry at least ``floor``, still summing to one."""
    return floor + (1 - floor * p.numel()) * p


def softmax_jvp(z: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(d softmax / d logits)^T delta = z * (delta - <z, delta>) [K], z = softmax(logits)."""
    return z * (delta - (z * delta).sum())


def adam_step(
    state: dict[str, Any],
    key: str,
    grad: torch.Tensor,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One torch.optim.Adam step (L2 weight decay) on ``state[key]``, moments kept in ``state``."""
    x = state[key]
    g = grad.double() + weight_decay * x
    t = state[f"{key}_t"] + 1
    m = betas[0] * state[f"{key}_m"] + (1 - betas[0]) * g
    v = betas[1] * state[f"{key}_v"] + (1 - betas[1]) * g * g
    m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
    state[key] = x - lr * m_hat / (v_hat.sqrt() + eps)
    state[f"{key}_m"], state[f"{key}_v"], state[f"{key}_t"] = m, v, t


def adam_state(key: str, k: int) -> dict[str, Any]:
    zeros = torch.zeros(k, dtype=torch.float64)
    return {key: zeros, f"{key}_m": zeros, f"{key}_v": zeros, f"{key}_t": 0}


def on_active(
    s: TaskGradStats,
    solve: Callable[[np.ndarray, torch.Tensor], np.ndarray],
    scope: str | None = None,
) -> torch.Tensor:
    """Coefficients a [K] from ``solve(gram, idx)`` on the active tasks' Gram; zero elsewhere.

    ``gram`` is the [n, n] task Gram <g_j, g_k> of the n active tasks (``idx`` [n] their
    indices). With no active task the result is all zeros, which ``combination_weights`` turns
    into the plain mix.
    """
    active = active_tasks(s, scope)
    a = torch.zeros(s.num_tasks, dtype=torch.float64)
    if not bool(active.any()):
        return a
    idx = active.nonzero().flatten()
    gram = s.task_gram(scope)[idx][:, idx].double().numpy()  # [n, n]
    a[idx] = torch.from_numpy(np.asarray(solve(gram, idx), dtype=np.float64))
    return a


def subset_norms(norms: torch.Tensor, idx: torch.Tensor, gram: np.ndarray) -> np.ndarray:
    """The signal norms of the tasks ``idx`` [n]; the sample norm where none is known yet."""
    n = norms[idx].numpy()
    return np.where(np.isfinite(n) & (n > 0), n, np.sqrt(np.diag(gram)))


class NormedStrategy(Strategy):
    """Base for strategies that use the smoothed signal norms (options ``ema``, ``floor``)."""

    @dataclass
    class Options:
        ema: float = 0.8  # moving average of the squared-norm estimates, per step, in [0, 1)
        floor: float = 0.1  # signal at least floor * sample squared norm, in (0, 1]

        def check(self, where: str, **_: Any) -> None:
            need(0 <= self.ema < 1, f"{where}.ema", f"0 <= ema < 1, got {self.ema}")
            need(0 < self.floor <= 1, f"{where}.floor", f"0 < floor <= 1, got {self.floor}")

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        super().__init__(num_tasks, options, **kwargs)
        self.state = {"step": -1, **norm_state(num_tasks)}

    def signal(self, s: TaskGradStats) -> tuple[torch.Tensor, bool]:
        """(n_k [K], whether this is the step's first call); the norms update on the first."""
        update = first_call_of_step(self.state, s)
        o = self.options
        return signal_norms(self.state, s, o.ema, o.floor, update), update
