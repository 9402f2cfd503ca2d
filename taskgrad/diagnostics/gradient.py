"""Per-task gradient metrics of one step: pure functions of the group buffers, the balance that
was applied and the optimizer's state.

All estimators are entries or simple functions of the group Gram (gradients.py). Per-step values
are noisy estimates: they are logged as such, and reports aggregate them over steps first.

**AdamW geometry.** The step applied is not the gradient: AdamW divides by sqrt(v_hat) + eps.
With P = 1 / (sqrt(v_hat) + eps) from the state after the step, ``adam_share`` is each task's share
of the preconditioned gradient, <P G_k, P g> / ||P g||^2, and ``step_share`` its share of the
first-order loss decrease of the actual step: <G_k, dtheta> / <g, dtheta> (momentum and weight
decay included in dtheta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from taskgrad import metrics as M
from taskgrad.balancing import Balance
from taskgrad.gradients import GroupGradients, imbalance_ratio, scope_members, task_statistics
from taskgrad.stats import spearman

MAIN_STATS = ("sqnorm_unbiased", "sqnorm_naive", "noise", "update_share", "contribution_sqnorm")
BREAKDOWN_STATS = ("sqnorm_unbiased", "sqnorm_naive", "update_share")


@dataclass
class BalancedStep:
    """What the balance phase computed and applied: the step's Grams and the strategy's output."""

    grams: torch.Tensor  # [n_params, M, M] per-parameter group Gram, float64
    shares: torch.Tensor  # [K, 2] s_kh
    balance: Balance  # the strategy's weights (and module weights, sampling, info)

    @property
    def weights(self) -> torch.Tensor:
        return self.balance.task_weights.double()  # [K]


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
    return out


def scope_label(scope: str) -> str:
    """The metric name of the buffers' own scope: full, proxy, or custom (a regex)."""
    return scope if scope in ("full", "proxy") else "custom"


def gradient_metrics(
    groups: GroupGradients, step: BalancedStep, tasks: list[str], scope: str, breakdown: bool
) -> dict[str, float]:
    """Norms, noise, cosines and update shares of every scope the buffers cover."""
    members = scope_members(groups.names, breakdown)
    if scope != "full":  # buffers hold the scope only: no "full" to speak of
        members = {scope_label(scope): members.pop("full")}
    main = next(iter(members))
    out: dict[str, float] = {}
    unbiased = {}
    for name, idx in members.items():
        stats = task_statistics(step.grams[idx].sum(0), step.shares, step.weights)
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


def adam_metrics(
    groups: GroupGradients,
    step: BalancedStep,
    precond: torch.Tensor,
    delta: torch.Tensor,
    tasks: list[str],
    scope: str,
) -> dict[str, float]:
    """Task shares in the optimizer's geometry; ``delta`` [P] is the applied parameter update."""
    main = scope_label(scope)
    weights = step.weights
    stats = task_statistics(groups.param_grams(weight=precond).sum(0), step.shares, weights)
    dots = groups.dots(delta).view(len(tasks), 2).sum(1) * weights  # [K]  <w_k G_k, dtheta>
    total = dots.sum()
    out: dict[str, float] = {}
    for k, task in enumerate(tasks):
        out[M.grad_key(main, task, "adam_share")] = float(stats["update_share"][k])
        out[M.grad_key(main, task, "adam_sqnorm_unbiased")] = float(stats["sqnorm_unbiased"][k])
        out[M.grad_key(main, task, "step_dot")] = float(dots[k])
        share = float(dots[k] / total) if total != 0 else math.nan
        out[M.grad_key(main, task, "step_share")] = share
    out[M.grad_scope_key(main, "adam_imbalance")] = imbalance_ratio(stats["sqnorm_unbiased"])
    return out
