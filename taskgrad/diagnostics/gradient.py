"""Per-task gradient metrics of one step: pure functions of the group buffers, the weights that
were applied and the optimizer's state.

All estimators are entries or simple functions of the group Gram (gradients.py). Per-step values
are noisy *estimates*: they are logged as such, and reports aggregate them over windows of steps
before any ratio, log or cosine (taskgrad.analysis.windows).

**Applied weights.** A strategy's multipliers can differ between parameters (per-module
strategies); ``BalancedStep.param_weights`` [n_params, K] holds the multiplier each parameter
applied to each task's contribution, and update shares, contributions, the transfer matrix and
the step shares are all computed with them.

**AdamW's geometry.** The step applied is not the gradient. Two measures:

- ``applied_share`` (exact, needs every update captured): AdamW's first moment is linear in the
  gradients, so it splits into per-task moments m_k(t) = beta1 m_k(t-1) + (1 - beta1) c_t G_k(t)
  (c_t: the clip factor; G_k: the applied contribution) that sum to m exactly. The step is then
  dtheta = -lr * wd * theta + sum_k dtheta_k with dtheta_k = -lr P m_k / (1 - beta1^t),
  P = 1 / (sqrt(v_hat) + eps) after the step; applied_share_k = <dtheta_k, dtheta> / ||dtheta||^2
  and ``decay_share`` the weight decay's part (they sum to one).
- ``precond_share``: the share of the preconditioned *fresh* gradient, <P G_k, P g> / ||P g||^2,
  which ignores momentum (the fresh gradient is only (1 - beta1) of the first moment), and
  ``precond_sqnorm``, the split-half cross product <P g_kA, P g_kB>: not unbiased, since P is
  built from the same gradients.

``step_share`` is each task's share of the first-order loss change of the applied step:
<G_k, dtheta> / <g, dtheta>.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from taskgrad import metrics as M
from taskgrad.balancing import Balance
from taskgrad.gradients import (
    GroupGradients,
    applied_gram,
    imbalance_ratio,
    scope_members,
    task_statistics,
)
from taskgrad.stats import spearman

MAIN_STATS = ("sqnorm_unbiased", "sqnorm_naive", "noise", "update_share", "contribution_sqnorm")
BREAKDOWN_STATS = ("sqnorm_unbiased", "sqnorm_naive", "update_share")


@dataclass
class BalancedStep:
    """What the balance phase computed and applied: the step's Grams and the strategy's output."""

    grams: torch.Tensor  # [n_params, M, M] per-parameter group Gram, float64
    shares: torch.Tensor  # [K, 2] s_kh
    balance: Balance  # the strategy's output (weights, module weights, sampling, info)
    param_weights: torch.Tensor  # [n_params, K] the multiplier each parameter applied

    @property
    def uniform_over_params(self) -> bool:
        """Every parameter applied the same task weights (no per-module weights)."""
        return bool(torch.all(self.param_weights == self.param_weights[:1]))

    @property
    def weights(self) -> torch.Tensor:
        """[K] the task weights where they are uniform; else the mean over parameters."""
        return self.param_weights.mean(0) if not self.uniform_over_params else self.param_weights[0]

    def statistics(self, idx: list[int]) -> dict[str, torch.Tensor]:
        """task_statistics over the parameters ``idx``, with the weights they applied."""
        if self.uniform_over_params:
            return task_statistics(self.grams[idx].sum(0), self.shares, self.param_weights[0])
        applied = applied_gram(self.grams[idx], self.param_weights[idx])
        return task_statistics(self.grams[idx].sum(0), self.shares, applied=applied)


def scope_metrics(
    name: str, stats: dict[str, torch.Tensor], tasks: list[str], which: tuple[str, ...], cos: bool
) -> dict[str, float]:
    out: dict[str, float] = {}
    for stat in which:
        for k, task in enumerate(tasks):
            out[M.grad_key(name, task, stat)] = float(stats[stat][k])
    out[M.grad_scope_key(name, "imbalance")] = imbalance_ratio(stats["sqnorm_unbiased"])
    if cos:
        out[M.grad_scope_key(name, "total_sqnorm")] = float(stats["total_sqnorm"])
        for a in range(len(tasks)):
            for b in range(a + 1, len(tasks)):
                out[M.cos_key(name, tasks[a], tasks[b])] = float(stats["cos"][a, b])
                out[M.inner_key(name, tasks[a], tasks[b])] = float(stats["inner"][a, b])
    return out


def scope_label(scope: str) -> str:
    """The metric name of the buffers' own scope: full, proxy, or custom (a regex)."""
    return scope if scope in ("full", "proxy") else "custom"


def gradient_metrics(
    groups: GroupGradients, step: BalancedStep, tasks: list[str], scope: str, breakdown: bool
) -> dict[str, float]:
    """Norms, noise, cosines, inner products and update shares of every scope the buffers cover."""
    members = scope_members(groups.names, breakdown)
    if scope != "full":  # buffers hold the scope only: no "full" to speak of
        members = {scope_label(scope): members.pop("full")}
    main = next(iter(members))
    out: dict[str, float] = {}
    unbiased = {}
    for name, idx in members.items():
        stats = step.statistics(idx)
        is_main = name in (main, "proxy")
        which = MAIN_STATS if is_main else BREAKDOWN_STATS
        out.update(scope_metrics(name, stats, tasks, which, is_main))
        unbiased[name] = stats["sqnorm_unbiased"].tolist()
    if "proxy" in unbiased and main == "full":
        out[M.PROXY_AGREEMENT] = spearman(unbiased["full"], unbiased["proxy"])
    return out


def preconditioner(
    groups: GroupGradients, optimizer: torch.optim.Optimizer, beta2: float, eps: float
) -> torch.Tensor:
    """P = 1 / (sqrt(v_hat) + eps) of AdamW after the step, flattened over the scope: [P]."""
    parts = []
    for _, p in groups.params:
        state = optimizer.state[p]
        t = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2**t)
        parts.append(1.0 / (v_hat.sqrt() + eps))
    return groups.flat(parts)


def task_parts(groups: GroupGradients, step: BalancedStep) -> torch.Tensor:
    """The applied contributions W_k G_k of each task, [K, P] (W per parameter)."""
    k = step.param_weights.shape[1]
    rows = groups.buffer.view(k, 2, -1).sum(1)  # [K, P]  G_k
    w = torch.stack([groups.expand(step.param_weights[:, j]) for j in range(k)])  # [K, P]
    return rows * w


def adam_metrics(
    groups: GroupGradients,
    step: BalancedStep,
    precond: torch.Tensor,
    delta: torch.Tensor,
    tasks: list[str],
    scope: str,
) -> dict[str, float]:
    """Preconditioned-fresh-gradient shares and step shares; ``delta`` [P] is the applied update."""
    main = scope_label(scope)
    pgrams = groups.param_grams(weight=precond)  # [n_params, M, M] of P G_m
    pre = BalancedStep(pgrams, step.shares, step.balance, step.param_weights)
    stats = pre.statistics(list(range(len(groups.names))))
    dots = groups.reduce((task_parts(groups, step) @ delta.to(groups.buffer)).double())  # [K]
    total = dots.sum()
    out: dict[str, float] = {}
    for k, task in enumerate(tasks):
        out[M.grad_key(main, task, "precond_share")] = float(stats["update_share"][k])
        out[M.grad_key(main, task, "precond_sqnorm")] = float(stats["sqnorm_unbiased"][k])
        out[M.grad_key(main, task, "step_dot")] = float(dots[k])
        share = float(dots[k] / total) if total != 0 else math.nan
        out[M.grad_key(main, task, "step_share")] = share
    out[M.grad_scope_key(main, "precond_imbalance")] = imbalance_ratio(stats["sqnorm_unbiased"])
    return out


class TaskMomentum:
    """AdamW's first moment split by task over the scope: m_k, with sum_k m_k = m (see top).

    Valid only if every optimizer step since the start was captured; ``valid`` turns False for
    good at the first update that was not (its per-task parts are unknown).
    """

    def __init__(self, groups: GroupGradients, num_tasks: int, beta1: float) -> None:
        self.beta1 = beta1
        self.buffer = torch.zeros(num_tasks, groups.offsets[-1], dtype=groups.buffer.dtype,
                                  device=groups.buffer.device)  # fmt: skip
        self.valid = True
        self.reduce = groups.reduce  # sums over ranks where the buffers are shards

    def update(self, parts: torch.Tensor | None, clip_coef: float) -> None:
        """Fold in one optimizer step's applied contributions [K, P] (None: not captured)."""
        if parts is None:
            self.valid = False
            return
        self.buffer.mul_(self.beta1).add_(parts * clip_coef, alpha=1 - self.beta1)

    def metrics(
        self,
        precond: torch.Tensor,
        delta: torch.Tensor,
        lr: float,
        adam_step: float,
        tasks: list[str],
        scope: str,
    ) -> dict[str, float]:
        """applied_share per task and decay_share, against the applied update ``delta`` [P]."""
        if not self.valid:
            return {}
        main = scope_label(scope)
        steps = -lr * precond * self.buffer / (1 - self.beta1**adam_step)  # [K, P] dtheta_k
        total = float(self.reduce(delta.double() @ delta.double()))
        if total == 0:
            return {}
        dots = self.reduce(steps.double() @ delta.double()) / total  # [K]
        out = {M.grad_key(main, t, "applied_share"): float(dots[k]) for k, t in enumerate(tasks)}
        out[M.grad_scope_key(main, "decay_share")] = 1.0 - float(dots.sum())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.cpu(), "valid": self.valid}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.copy_(state["buffer"])
        self.valid = bool(state["valid"])
