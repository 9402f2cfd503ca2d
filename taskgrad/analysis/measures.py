r"""Per-run measurements summarised: imbalance, noise, cosines, proxy agreement, transfer, accuracy.

imbalance(t)      max_k u_k(t) / min_k u_k(t) over tasks with u_k(t) > 0 (``grad/full/imbalance``;
                  recomputed from u when not logged); summarised by its median over steps, per
                  seed. Because the smallest positive estimate can be mostly noise, the ratio of
                  the tasks' training-mean u_k (means of unbiased estimates are unbiased) is
                  given beside it.
noise fraction    noise / naive = (||g_hat||^2 - u) / ||g_hat||^2 per step (naive > 0), median
cosine            ``grad/full/cos/<a>__<b>``, mean over steps of the first and second half
proxy agreement   Spearman of proxy (last attention block) vs full u over (seed, step, task)
transfer          ``transfer/<j>__<k>``: probe gain on k from task j's part of one step
held-out accuracy ``eval/<k>/accuracy`` (greedy, fixed set of eval.size prompts); the interval
                  of a final accuracy is the t-interval over seeds, or with one seed the
                  binomial normal approximation 1.96 sqrt(p (1 - p) / n) (for the task mean:
                  1.96 sqrt(sum_k p_k (1 - p_k) / n) / K)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from taskgrad import metrics as M
from taskgrad.analysis.gains import scope, sq_key
from taskgrad.analysis.runs import Group, Run
from taskgrad.analysis.stats import Z95, mean_ci, nanmedian, spearman


def imbalance_series(run: Run, geometry: str = "") -> pd.Series:
    """Per-step imbalance (``precond_`` geometry optional); recomputed where not logged."""
    key = M.grad_scope_key(scope(run), f"{geometry}imbalance")
    if run.has(key):
        return run.column(key)[run.metrics.index > 0]
    stat = "precond_sqnorm" if geometry else "sqnorm_unbiased"
    u = run.task_frame(sq_key(run, stat))
    pos = u.where(u > 0)
    ratio = pos.max(axis=1) / pos.min(axis=1)
    return ratio.where(pos.count(axis=1) >= 2)


@dataclass
class Imbalance:
    per_seed_median: list[float]  # median over steps of the per-step ratio, per seed
    mean_ratio: float  # ratio of training-mean u_k (pooled over seeds)
    largest: str | None  # task with the largest training-mean u
    smallest: str | None
    adam_median: float  # median per-step ratio in AdamW's geometry (if measured)
    task_means: pd.Series  # training-mean u_k per task

    @property
    def median(self) -> float:
        """The median of the per-seed medians."""
        return nanmedian(self.per_seed_median)


def imbalance(group: Group) -> Imbalance:
    per_seed = [nanmedian(imbalance_series(r)) for r in group.runs]
    adam = [nanmedian(imbalance_series(r, "precond_")) for r in group.runs]
    frames = [r.task_frame(sq_key(r)) for r in group.runs]
    means = pd.concat(frames).mean() if frames else pd.Series(dtype=float)
    pos = means[means > 0]
    return Imbalance(
        per_seed,
        float(pos.max() / pos.min()) if len(pos) >= 2 else math.nan,
        str(means.idxmax()) if means.notna().any() else None,
        str(means.idxmin()) if means.notna().any() else None,
        nanmedian(adam),
        means,
    )


def noise_fraction(group: Group) -> pd.Series:
    """Per task: median over (seed, step) of noise / naive squared norm (naive > 0)."""
    out = {}
    for task in group.tasks:
        values = []
        for run in group.runs:
            naive = run.column(sq_key(run, "sqnorm_naive").format(task=task))
            noise = run.column(sq_key(run, "noise").format(task=task))
            values += list((noise / naive.where(naive > 0)).dropna())
        out[task] = nanmedian(values)
    return pd.Series(out, dtype=float)


def cosine_halves(group: Group) -> dict[str, pd.DataFrame] | None:
    """K x K mean task cosines over the first ("early") and second ("late") half of training."""
    tasks = group.tasks
    if not any(group.has(M.cos_key(scope(group.runs[0]), a, b)) for a in tasks for b in tasks):
        return None
    out = {}
    for half in ("early", "late"):
        m = np.eye(len(tasks))
        for i, a in enumerate(tasks):
            for j in range(i + 1, len(tasks)):
                values = []
                for run in group.runs:
                    s = run.column(M.cos_key(scope(run), a, tasks[j]))
                    s = s[s.index > 0]
                    mid = run.steps / 2
                    values += list(
                        (s[s.index <= mid] if half == "early" else s[s.index > mid]).dropna()
                    )
                m[i, j] = m[j, i] = float(np.mean(values)) if values else np.nan
        out[half] = pd.DataFrame(m, index=tasks, columns=tasks)
    return out


def proxy_pairs(group: Group) -> pd.DataFrame:
    """(full u, proxy u, task) over seeds and steps where both were measured."""
    parts = []
    for run in group.runs:
        full = run.task_frame(M.grad_key("full", "{task}", "sqnorm_unbiased"))
        proxy = run.task_frame(M.grad_key("proxy", "{task}", "sqnorm_unbiased"))
        for task in run.tasks:
            part = pd.DataFrame({"full": full[task], "proxy": proxy[task]}).dropna()
            parts.append(part.assign(task=task))
    return pd.concat(parts) if parts else pd.DataFrame(columns=["full", "proxy", "task"])


def proxy_agreement(group: Group) -> tuple[float, list[float]]:
    """Pooled Spearman of proxy vs full u, and each seed's summary.json value."""
    pairs = proxy_pairs(group)
    logged = [r.summary.get("proxy_vs_full_spearman") for r in group.runs]
    logged = [float(v) if v is not None else math.nan for v in logged]
    return spearman(pairs.full, pairs.proxy) if len(pairs) else math.nan, logged


def transfer(group: Group) -> dict[int, pd.DataFrame]:
    """Step -> K x K mean (over seeds) of T[j, k] (rows: j, whose update; cols: k, evaluated)."""
    tasks = group.tasks
    keys = {(j, k): M.transfer_key(j, k) for j in tasks for k in tasks}
    steps = sorted(
        {
            int(s)
            for run in group.runs
            for key in keys.values()
            for s in run.column(key).dropna().index
        }
    )
    out = {}
    for step in steps:
        m = pd.DataFrame(np.nan, index=tasks, columns=tasks)
        for (j, k), key in keys.items():
            values = [r.column(key).get(step, np.nan) for r in group.runs]
            m.loc[j, k] = np.nanmean(values) if np.isfinite(values).any() else np.nan
        out[step] = m
    return out


def final_accuracy(group: Group) -> pd.DataFrame:
    """Per task and for the task mean: final held-out accuracy, its 95% interval and the start."""
    rows = {}
    size = int(group.cfg("eval.size", 64) or 64)
    finals = [r.heldout().iloc[-1] for r in group.runs if len(r.heldout())]
    starts = [r.heldout().iloc[0] for r in group.runs if len(r.heldout())]
    if not finals:
        return pd.DataFrame(columns=["start", "end", "lo", "hi"])
    final, start = pd.DataFrame(finals), pd.DataFrame(starts)
    final["mean"], start["mean"] = final[group.tasks].mean(axis=1), start[group.tasks].mean(axis=1)
    for col in [*group.tasks, "mean"]:
        mean, lo, hi = mean_ci(final[col])
        if len(final) < 2 and math.isfinite(mean):  # one seed: binomial sampling error of the set
            p = final[group.tasks].iloc[0] if col == "mean" else pd.Series([mean])
            half = Z95 * math.sqrt(float((p * (1 - p)).sum()) / size) / len(p)
            lo, hi = mean - half, mean + half
        rows[col] = {"start": float(start[col].mean()), "end": mean, "lo": lo, "hi": hi}
    return pd.DataFrame.from_dict(rows, orient="index")
