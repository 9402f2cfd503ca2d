r"""What explains a task's gradient size? |advantage|, training statistics, and length.

Everything is computed on window means (windows.py): U_k(w), the mean unbiased squared norm over
a window of steps, and the window means of the training statistics. Zero and negative window
means are kept: nothing is selected on the outcome.

**|advantage| and the gradient** (the paper's scatter): within a task, Spearman's rho across
windows of window-mean |advantage| and U, per (seed, task) series; across tasks, rho of the task
means (pooled over windows) per seed (verdicts.rule_advantage).

**Regression** (the paper's "statistics do not explain it"): a log-link GLM with variance
proportional to the mean squared (relative errors; it accepts zero and negative window means),

    E U_k(w) = exp(alpha_k + sum_j b_j z_j(k, w))      (task fixed effects alpha_k)

on z-scored statistics (lengths as logs). The b_j are within-task effects. If the statistics
acted across tasks as they act within them, the task means would differ by f_k = sum_j b_j
zbar_kj. The *imbalance explained* compares that with the tasks' log pooled U (aggregated
before the log):

    1 - sum_k n_k (ytil_k - ftil_k)^2 / sum_k n_k ytil_k^2        (til: centred over tasks)

1 when the statistics account for the task differences, 0 when they predict none, negative when
they predict the opposite order; its 95% interval is a block bootstrap over seeds and windows.

**Decomposition** (the length question). With per-token loss weights c_it and on-policy ratios,
task k's own gradient is g_k = sum_i sum_t c_it A_i grad log pi(o_it). Writing c_it = lambda_k / n_k
(n_k sequences) gives g_k = |A|_k lambda_k S_k with the length normalisation

    token_mean, seq_mean:  lambda_k = 1 / mean response length   (seq_mean: 1/L_i per sequence;
                                                                  the mean length stands in)
    constant:              lambda_k = 1 / loss_constant          (the same for every task)

and S_k what remains, the score term u_k / (|A|_k^2 lambda_k^2). On task means (over seeds and
steps) ln u = 2 ln|A| + 2 ln lambda + ln S exactly, so the across-task variance of ln u splits
into shares Cov(ln u, factor) / Var(ln u) that sum to 1. The task's part of the mixed update is
w_k g_k (w_k = ``batch_share``, its share of the batch objective); w_k^2 u_k is its
*contribution*. Under token_mean w_k grows with length, so length cancels in the contribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from taskgrad import metrics as M
from taskgrad.analysis.runs import Group
from taskgrad.analysis.windows import RunWindows, scope_of

STATISTICS = (
    "reward",
    "reward_var",
    "abs_advantage",
    "zero_adv_share",
    "response_length",
    "prompt_length",
    "entropy",
)
STAT_SETS = {
    "all statistics": STATISTICS,
    "reward (reward, reward_var)": ("reward", "reward_var"),
    "advantage (abs_advantage, zero_adv_share)": ("abs_advantage", "zero_adv_share"),
    "length (response_length, prompt_length)": ("response_length", "prompt_length"),
}


@dataclass
class Explanation:
    """The imbalance explained by one set of statistics, with its interval."""

    name: str
    statistics: tuple[str, ...]
    explained: float
    lo: float
    hi: float


def explanations(windows: list[RunWindows], n_boot: int = 250) -> list[Explanation]:
    """One per statistic set (STAT_SETS), from the window-mean GLM (see the top)."""
    from taskgrad.analysis.verdicts import explained_interval

    out = []
    for i, (name, stats) in enumerate(STAT_SETS.items()):
        e, lo, hi = explained_interval(windows, stats, n_boot, seed=20 + i)
        out.append(Explanation(name, stats, e, lo, hi))
    return out


# --- decomposition: |advantage|, length normalisation, score term ------------------------------


def normalisation(loss_agg: str, length: float, constant: float) -> float:
    """lambda: per-token weight times sequence count of the task's own objective (see top)."""
    if loss_agg == "constant":
        return 1.0 / constant
    return 1.0 / length if length > 0 else math.nan


def decomposition(group: Group) -> pd.DataFrame:
    """Per task, means over seeds and measured steps: |A|, length, lambda, w, u, S, w^2 u."""
    agg = group.cfg("grpo.loss_agg", "token_mean")
    const = group.cfg("grpo.loss_constant") or group.cfg("rollout.max_new_tokens", 1)
    rows = {}
    for task in group.tasks:
        cols: dict[str, list] = {k: [] for k in ("adv", "len", "w", "u", "wu")}
        for run in group.runs:
            u = run.column(M.grad_key(scope_of(run), task, "sqnorm_unbiased"))
            w = run.column(M.task_key(task, "batch_share"))
            steps = u.index[u.notna() & (u.index > 0)]
            cols["u"] += list(u[steps])
            adv = run.column(M.task_key(task, "abs_advantage"))
            cols["adv"] += list(adv.reindex(steps))
            cols["len"] += list(run.column(M.task_key(task, "response_length")).reindex(steps))
            cols["w"] += list(w.reindex(steps))
            cols["wu"] += list((w.reindex(steps) ** 2) * u[steps])
        m = {k: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for k, v in cols.items()}
        lam = normalisation(agg, m["len"], float(const))
        score = m["u"] / (m["adv"] ** 2 * lam**2) if m["adv"] > 0 else math.nan
        rows[task] = {
            "abs_advantage": m["adv"],
            "response_length": m["len"],
            "normalisation": lam,
            "batch_share": m["w"],
            "sqnorm": m["u"],
            "score": score,
            "contribution": m["wu"],
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def log_variance_shares(table: pd.DataFrame) -> dict[str, float]:
    """Across tasks: Cov(ln u, ln factor) / Var(ln u) for |A|^2, lambda^2 and S (sum to 1)."""
    ok = table[(table.sqnorm > 0) & (table.abs_advantage > 0) & (table.score > 0)]
    factors = {
        "|advantage|^2": 2 * np.log(ok.abs_advantage),
        "length normalisation^2": 2 * np.log(ok.normalisation),
        "score term": np.log(ok.score),
    }
    y = np.log(ok.sqnorm)
    var = float(np.var(y)) if len(ok) >= 2 else 0.0
    if var <= 0:
        return {k: math.nan for k in factors}
    return {k: float(np.mean((y - y.mean()) * (x - x.mean())) / var) for k, x in factors.items()}


def ratio(values) -> float:
    """Largest over smallest positive value (the imbalance of a per-task quantity)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(v.max() / v.min()) if v.size >= 2 else math.nan
