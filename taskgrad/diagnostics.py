"""In-loop measurements: per-task gradient metrics (from gradients.py), the update actually
applied in AdamW's geometry, and learning gains (windowed, paired probe, one-step, transfer).

Metric keys (flat, namespaced; the scope is part of the key):

    grad/<scope>/<task>/sqnorm_unbiased | sqnorm_naive | noise | update_share | task_weight
    grad/<scope>/<task>/contribution_sqnorm          ||w_k g_k||^2, the task's part of the update
    grad/<scope>/cos/<a>__<b>                        cosine of task gradients (unbiased norms)
    grad/<scope>/imbalance | total_sqnorm
    grad/full/<task>/adam_share | adam_sqnorm_unbiased | step_share | step_dot
    grad/proxy_agreement/spearman                    full vs proxy, across tasks, this step
    gain/<task>/window (+ gain/window_center)        paper: mean reward next s - previous s
    gain/<task>/probe | probe_ci_low | probe_ci_high paired probe difference since last probe
    gain/<task>/one_step                              probe after minus before one update
    transfer/<j>__<k>                                 probe gain on k from task j's part of a step

**AdamW geometry.** The step applied is not the gradient: AdamW divides by sqrt(v_hat) + eps.
With P = 1 / (sqrt(v_hat) + eps) from the state after the step, ``adam_share`` is each task's share
of the preconditioned gradient, <P G_k, P g> / ||P g||^2, and ``step_share`` its share of the
first-order loss decrease of the actual step: <G_k, dtheta> / <g, dtheta> (momentum and weight
decay included in dtheta).

**Transfer.** Task j's part of a step is the fresh-gradient term of the AdamW update restricted to
its gradient: dtheta_j = -lr (1 - beta1) / (1 - beta1^t) * c * P * G_j (c: the clip factor). These
add up to the fresh-gradient part of the real step. T[j, k] = probe_k(theta + dtheta_j) -
probe_k(theta), paired on the same probe prompts and sampling seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from taskgrad.gradients import imbalance_ratio, scope_members, spearman, task_statistics
from taskgrad.grpo import token_weights
from taskgrad.rollout import Rollout, generate

if TYPE_CHECKING:
    from taskgrad.trainer import Trainer

MAIN_STATS = ("sqnorm_unbiased", "sqnorm_naive", "noise", "update_share", "contribution_sqnorm")
BREAKDOWN_STATS = ("sqnorm_unbiased", "sqnorm_naive", "update_share")


# --- per-task gradient metrics -----------------------------------------------------------------


def half_shares(trainer: Trainer, rollout: Rollout, half: list[int]) -> torch.Tensor:
    """s_kh: weight of (task k, half h)'s own objective in the batch objective, [K, 2].

    The batch loss restricted to a subset S is s_S times the same aggregation applied to S alone,
    so s_S = sum_S c(batch) / sum_S c(S alone): N_S/N for token_mean, B_S/B for the others.
    """
    cfg = trainer.cfg
    agg, const = cfg.grpo.loss_agg, cfg.grpo.loss_constant or cfg.rollout.max_new_tokens
    batch_weights = token_weights(rollout.response_mask, agg, const)  # [B*G, L]
    row_half = torch.tensor(half).repeat_interleave(rollout.group_size)  # [B*G]
    shares = torch.zeros(len(trainer.tasks), 2, dtype=torch.float64)
    for k in range(len(trainer.tasks)):
        for h in (0, 1):
            rows = (rollout.task_index == k) & (row_half == h)
            own = token_weights(rollout.response_mask[rows], agg, const).sum()
            if rows.any() and own > 0:
                shares[k, h] = float(batch_weights[rows].sum() / own)
    return shares


def scope_metrics(
    name: str, stats: dict[str, torch.Tensor], tasks: list[str], which: tuple[str, ...], cos: bool
) -> dict[str, float]:
    out: dict[str, float] = {}
    for stat in which:
        for k, task in enumerate(tasks):
            out[f"grad/{name}/{task}/{stat}"] = float(stats[stat][k])
    out[f"grad/{name}/imbalance"] = imbalance_ratio(stats["sqnorm_unbiased"])
    if cos:
        out[f"grad/{name}/total_sqnorm"] = float(stats["total_sqnorm"])
        for a in range(len(tasks)):
            for b in range(a + 1, len(tasks)):
                out[f"grad/{name}/cos/{tasks[a]}__{tasks[b]}"] = float(stats["cos"][a, b])
    return out


@dataclass
class GradSnapshot:
    """The step's group Grams, as computed once for the strategy and the diagnostics."""

    grams: torch.Tensor  # [n_params, M, M] per-parameter group Gram, float64
    shares: torch.Tensor  # [K, 2] s_kh
    weights: torch.Tensor  # [K] the strategy's multipliers on each task's contribution


def gradient_metrics(
    trainer: Trainer, snapshot: GradSnapshot, before: torch.Tensor | None
) -> dict[str, float]:
    """All gradient diagnostics of this step, from the captured group gradients."""
    groups, cfg = trainer.groups, trainer.cfg
    tasks = [t.name for t in trainer.tasks]
    grams, shares, weights = snapshot.grams, snapshot.shares, snapshot.weights
    members = scope_members(groups.names, cfg.diagnostics.breakdown)
    if cfg.diagnostics.scope != "full":  # buffers hold the scope only: no "full" to speak of
        name = "proxy" if cfg.diagnostics.scope == "proxy" else "custom"  # custom: a regex scope
        members = {name: members.pop("full")}
    main = next(iter(members))
    out: dict[str, float] = {}
    for k, task in enumerate(tasks):
        out[f"grad/{main}/{task}/task_weight"] = float(shares[k].sum())
    unbiased = {}
    for name, idx in members.items():
        stats = task_statistics(grams[idx].sum(0), shares, weights)
        is_main = name in (main, "proxy")
        out.update(
            scope_metrics(name, stats, tasks, MAIN_STATS if is_main else BREAKDOWN_STATS, is_main)
        )
        unbiased[name] = stats["sqnorm_unbiased"].tolist()
    if "proxy" in unbiased and main == "full":
        out["grad/proxy_agreement/spearman"] = spearman(unbiased["full"], unbiased["proxy"])
    if cfg.diagnostics.optimizer_geometry and before is not None:
        out.update(adam_metrics(trainer, snapshot, before, main, tasks))
    return out


def preconditioner(trainer: Trainer) -> torch.Tensor:
    """P = 1 / (sqrt(v_hat) + eps) of AdamW after the step, flattened over the scope: [P]."""
    opt = trainer.optimizer
    beta2, eps = trainer.cfg.optim.betas[1], trainer.cfg.optim.eps
    parts = []
    for _, p in trainer.groups.params:
        state = opt.state[p]
        t = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2**t)
        parts.append(1.0 / (v_hat.sqrt() + eps))
    return trainer.groups.flat(parts)


def adam_metrics(trainer, snapshot: GradSnapshot, before, main, tasks) -> dict[str, float]:
    groups, weights = trainer.groups, snapshot.weights
    precond = preconditioner(trainer)  # [P]
    stats = task_statistics(groups.param_grams(weight=precond).sum(0), snapshot.shares, weights)
    delta = snapshot_scope(trainer) - before  # [P]  the applied update
    dots = groups.dots(delta).view(len(tasks), 2).sum(1) * weights  # [K]  <w_k G_k, dtheta>
    total = dots.sum()
    out: dict[str, float] = {}
    for k, task in enumerate(tasks):
        out[f"grad/{main}/{task}/adam_share"] = float(stats["update_share"][k])
        out[f"grad/{main}/{task}/adam_sqnorm_unbiased"] = float(stats["sqnorm_unbiased"][k])
        out[f"grad/{main}/{task}/step_dot"] = float(dots[k])
        out[f"grad/{main}/{task}/step_share"] = float(dots[k] / total) if total != 0 else math.nan
    out[f"grad/{main}/adam_imbalance"] = imbalance_ratio(stats["sqnorm_unbiased"])
    return out


def snapshot_scope(trainer: Trainer) -> torch.Tensor | None:
    """A flat copy of the in-scope parameters (to measure the applied update)."""
    if trainer.groups is None or not trainer.cfg.diagnostics.optimizer_geometry:
        return None
    with torch.no_grad():
        return trainer.groups.flat([p.detach() for _, p in trainer.groups.params])


# --- learning gains ----------------------------------------------------------------------------


def latest_gains(trainer: Trainer) -> torch.Tensor:
    """The most recent windowed gain per task, [K] (NaN before 2s steps), for strategies."""
    s = trainer.cfg.diagnostics.gain_window
    out = []
    for task in trainer.tasks:
        r = trainer.history[task.name]
        known = s > 0 and len(r) >= 2 * s
        out.append(sum(r[-s:]) / s - sum(r[-2 * s : -s]) / s if known else math.nan)
    return torch.tensor(out, dtype=torch.float64)


def gain_metrics(trainer: Trainer, step: int) -> dict[str, float]:
    """The paper's windowed gain centred s steps back, and the paired probe gain when due."""
    s = trainer.cfg.diagnostics.gain_window
    out: dict[str, float] = {}
    if s > 0 and step >= 2 * s:
        center = step - s  # mean reward of steps center+1..step minus center-s+1..center
        for task in trainer.tasks:
            r = trainer.history[task.name]
            after, before = r[center : center + s], r[center - s : center]
            out[f"gain/{task.name}/window"] = sum(after) / s - sum(before) / s
        out["gain/window_center"] = center
    every = trainer.cfg.diagnostics.probe_every
    if every > 0 and step % every == 0:
        out.update(probe_gain(trainer))
    return out


@torch.no_grad()
def probe(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Mean reward per probe prompt, per task, with fixed sampling seeds: {task: [n_probe]}."""
    cfg, d = trainer.cfg, trainer.cfg.diagnostics
    model = trainer.accelerator.unwrap_model(trainer.model)
    out = {}
    for k, task in enumerate(trainer.tasks):
        samples = task.eval_set()[: d.probe_size]
        rollout = generate(
            model, trainer.tokenizer, samples, [k] * len(samples), group_size=d.probe_samples,
            max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p, seed=1000 + k, chat_template=cfg.model.chat_template,
            max_prompt_tokens=cfg.model.max_prompt_tokens,
            generation_batch=cfg.rollout.generation_batch,
        )  # fmt: skip
        rewards = [r.value for r in task.rewards(
            [samples[i // d.probe_samples] for i in range(len(rollout.completions))],
            rollout.completions,
        )]  # fmt: skip
        out[task.name] = torch.tensor(rewards).view(len(samples), d.probe_samples).mean(1)
    return out


def paired(after: torch.Tensor, before: torch.Tensor) -> tuple[float, float, float]:
    """Mean paired difference and its 95% normal-approximation interval."""
    diff = (after - before).double()
    mean = float(diff.mean())
    half = (
        1.96 * float(diff.std(unbiased=True)) / math.sqrt(diff.numel())
        if diff.numel() > 1
        else math.nan
    )
    return mean, mean - half, mean + half


def initial_probe(trainer: Trainer) -> dict[str, float]:
    if trainer.cfg.diagnostics.probe_every <= 0 or not trainer.cfg.diagnostics.enabled:
        return {}
    trainer.probe_last = probe(trainer)
    return {f"probe/{t}/reward": float(v.mean()) for t, v in trainer.probe_last.items()}


def probe_gain(trainer: Trainer) -> dict[str, float]:
    now = probe(trainer)
    out = {}
    for task, values in now.items():
        out[f"probe/{task}/reward"] = float(values.mean())
        if task in trainer.probe_last:
            mean, lo, hi = paired(values, trainer.probe_last[task])
            out[f"gain/{task}/probe"] = mean
            out[f"gain/{task}/probe_ci_low"] = lo
            out[f"gain/{task}/probe_ci_high"] = hi
    trainer.probe_last = now
    return out


def before_update(trainer: Trainer, step: int, capture: bool) -> dict[str, float]:
    """Probe the policy just before the update at one-step / transfer steps."""
    d = trainer.cfg.diagnostics
    trainer.probe_before = None
    if step in d.one_step_at or (step in d.transfer_at and capture):
        trainer.probe_before = (probe(trainer), snapshot_all(trainer))
    return {}


def snapshot_all(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for _, p in trainer.groups.params] if trainer.groups else []


def after_update(trainer: Trainer, step: int) -> dict[str, float]:
    saved = trainer.probe_before
    if saved is None:
        return {}
    before, params_before = saved
    d, out = trainer.cfg.diagnostics, {}
    if step in d.one_step_at:
        for task, values in probe(trainer).items():
            mean, lo, hi = paired(values, before[task])
            out.update({f"gain/{task}/one_step": mean, f"gain/{task}/one_step_ci_low": lo,
                        f"gain/{task}/one_step_ci_high": hi})  # fmt: skip
    if step in d.transfer_at and params_before:
        out.update(transfer_matrix(trainer, before, params_before))
    trainer.probe_before = None
    return out


@torch.no_grad()
def transfer_matrix(trainer, before: dict[str, torch.Tensor], params_before) -> dict[str, float]:
    """T[j, k]: probe gain on task k from applying only task j's part of the step (see top)."""
    groups, cfg = trainer.groups, trainer.cfg
    beta1 = cfg.optim.betas[0]
    opt_state = trainer.optimizer.state[groups.params[0][1]]
    t = float(opt_state["step"])
    lr = trainer.last_lr  # the step's own rate: the scheduler has already moved on
    precond = preconditioner(trainer)  # [P]
    params_after = [p.detach().clone() for _, p in groups.params]
    out = {}
    for j, task_j in enumerate(trainer.tasks):
        w_j = float(trainer.task_weights[j]) if trainer.task_weights is not None else 1.0
        g_j = w_j * (groups.buffer[2 * j] + groups.buffer[2 * j + 1])  # [P]  w_j G_j
        delta = -lr * (1 - beta1) / (1 - beta1**t) * trainer.clip_coef * precond * g_j
        for (_, p), p0, lo, hi in zip(
            groups.params, params_before, groups.offsets[:-1], groups.offsets[1:], strict=True
        ):
            p.copy_(p0 + delta[lo:hi].view_as(p).to(p.dtype))
        for task_k, values in probe(trainer).items():
            out[f"transfer/{task_j.name}__{task_k}"] = float((values - before[task_k]).mean())
    for (_, p), p1 in zip(groups.params, params_after, strict=True):
        p.copy_(p1)
    return out


# --- run summary ---------------------------------------------------------------------------------


def summarize(records: list[dict], tasks: list[str]) -> dict:
    """Final numbers of a run: held-out accuracy at start and end, imbalance, proxy agreement."""
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    summary: dict = {"steps": max((r["step"] for r in records), default=0), "tasks": tasks}
    if evals:
        first, last = evals[0], evals[-1]
        summary["eval_start"] = {t: first.get(f"eval/{t}/accuracy") for t in tasks}
        summary["eval_end"] = {t: last.get(f"eval/{t}/accuracy") for t in tasks}
    full, proxy = [], []
    for r in records:
        for t in tasks:
            a, b = r.get(f"grad/full/{t}/sqnorm_unbiased"), r.get(f"grad/proxy/{t}/sqnorm_unbiased")
            if a is not None and b is not None:
                full.append(a)
                proxy.append(b)
    if full:
        summary["proxy_vs_full_spearman"] = spearman(full, proxy)
    ratios = [r["grad/full/imbalance"] for r in records if r.get("grad/full/imbalance") is not None]
    if ratios:
        summary["imbalance_median"] = sorted(ratios)[len(ratios) // 2]
    times = [r["time/step"] for r in records if "time/step" in r]
    if times:
        summary["seconds_per_step_median"] = sorted(times)[len(times) // 2]
    return summary
