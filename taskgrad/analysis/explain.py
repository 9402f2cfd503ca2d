r"""What explains a task's gradient size? |advantage|, training statistics, and length.

Notation as in gains.py: u_k(t) = unbiased squared gradient norm of task k at step t.

**|advantage| and the gradient** (the paper's scatter). Within task: Spearman's rho over steps
between ``task/<k>/abs_advantage`` and u_k, per (seed, task) series, averaged over series;
bootstrap: steps resampled within each series (2000 replicates, percentile interval). Both
quantities drift over training, so a within-task rho includes any shared trend. Across tasks: rho
between the task means (over steps) of both, per seed, averaged over seeds; bootstrap: tasks and
seeds resampled. Ranks need no logarithm, so negative estimates of u_k count. The fits drawn in
the figure are OLS of log10 u on |A| (u > 0 only): per task, and on the K task means.

**Regression.** y = ln u_k(t) over (seed, step, task) rows with u_k(t) > 0, by OLS (statsmodels,
HC1 standard errors) on z-scored training statistics (``task/<k>/<stat>``; lengths as logs)

    stats: y ~ 1 + sum_j b_j z_j      task: y ~ C(task)      both: y ~ C(task) + sum_j b_j z_j

all three on the same rows (commonality: task identity adds R2_both - R2_stats beyond the
statistics). The imbalance is the spread of the task means of ln u. Whether the statistics
*explain* it is asked with the within-task effects b_j of the "both" fit (estimated from
variation inside tasks only): if the statistics acted across tasks as they act within them, the
task means would differ by f_k = sum_j b_j xbar_kj. The *imbalance explained* is

    1 - sum_k n_k (ytil_k - ftil_k)^2 / sum_k n_k ytil_k^2     (til: centred over tasks, n_k rows)

1 when the statistics account for the task differences, 0 when they predict none, negative when
they predict the opposite order. Statistics that hardly vary within tasks (within-task sd below
1e-6 of their overall sd) have no within-task effect to estimate and are left out of it. Steps
are autocorrelated, so the reported standard errors are optimistic.

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
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from taskgrad import metrics as M
from taskgrad.analysis.gains import sq_key
from taskgrad.analysis.runs import Group
from taskgrad.analysis.stats import percentile_ci, quiet, rowwise_spearman, spearman

N_BOOT = 2000
STATISTICS = (
    "reward",
    "reward_var",
    "abs_advantage",
    "zero_adv_share",
    "response_length",
    "prompt_length",
    "entropy",
)
LOG_STATISTICS = frozenset({"response_length", "prompt_length"})  # multiplicative: enter as logs
STAT_SETS = {
    "all statistics": STATISTICS,
    "reward (reward, reward_var)": ("reward", "reward_var"),
    "advantage (abs_advantage, zero_adv_share)": ("abs_advantage", "zero_adv_share"),
    "length (response_length, prompt_length)": ("response_length", "prompt_length"),
}


@dataclass
class AdvantageResult:
    within: float
    within_lo: float
    within_hi: float
    per_task: dict[str, float]
    across: float
    across_lo: float
    across_hi: float
    fits: dict[str, tuple[float, float]] = field(default_factory=dict)  # log10 u = a + b |A|
    across_fit: tuple[float, float] | None = None
    task_means: pd.DataFrame | None = None  # per task: abs_advantage, sqnorm (pooled means)


def advantage_pairs(group: Group) -> pd.DataFrame:
    """Long frame: run, step, task, abs_advantage, sqnorm (unbiased), one row per measured step."""
    rows = []
    for i, run in enumerate(group.runs):
        adv = run.task_frame(M.task_key("{task}", "abs_advantage"))
        sq = run.task_frame(sq_key(run))
        for task in run.tasks:
            part = pd.DataFrame({"abs_advantage": adv[task], "sqnorm": sq[task]}).dropna()
            rows.append(part.assign(run=i, task=task).reset_index(names="step"))
    cols = ["step", "abs_advantage", "sqnorm", "run", "task"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)


def advantage_relation(group: Group, n_boot: int = N_BOOT, seed: int = 0) -> AdvantageResult:
    """Within-task and across-task rank correlations of |advantage| and u_k (see the top)."""
    pairs = advantage_pairs(group)
    rng = np.random.default_rng(seed)
    series = [(t, g) for (_, t), g in pairs.groupby(["run", "task"], sort=False) if len(g) >= 3]
    rhos = [spearman(g.abs_advantage, g.sqnorm) for _, g in series]
    boot = []
    for _, g in series:
        x, y = g.abs_advantage.to_numpy(), g.sqnorm.to_numpy()
        idx = rng.integers(len(g), size=(n_boot, len(g)))
        boot.append(rowwise_spearman(x[idx], y[idx]))
    with quiet():
        within_boot = np.nanmean(np.stack(boot), axis=0) if boot else np.array([])
    per_task = pd.Series(rhos, index=[t for t, _ in series], dtype=float).groupby(level=0).mean()
    per_task = per_task.reindex([t for t in group.tasks if t in per_task.index])
    means = pairs.groupby(["run", "task"], sort=False)[["abs_advantage", "sqnorm"]].mean()
    across, across_lo, across_hi = _across_tasks(means, group.tasks, n_boot, rng)
    lo, hi = percentile_ci(within_boot)
    pooled = pairs.groupby("task", sort=False)[["abs_advantage", "sqnorm"]].mean()
    return AdvantageResult(
        _nanmean(rhos),
        lo,
        hi,
        per_task.to_dict(),
        across,
        across_lo,
        across_hi,
        _within_fits(pairs),
        _log_fit(pooled),
        pooled,
    )


def _nanmean(values) -> float:
    with quiet():
        return float(np.nanmean(values)) if len(values) else math.nan


def _across_tasks(means: pd.DataFrame, tasks: list[str], n_boot: int, rng) -> tuple[float, ...]:
    """Mean over seeds of rho(task-mean |A|, task-mean u); bootstrap over tasks and seeds."""
    runs = sorted({r for r, _ in means.index})
    x = np.array([[means.abs_advantage.get((r, t), np.nan) for t in tasks] for r in runs])  # [R, K]
    y = np.array([[means.sqnorm.get((r, t), np.nan) for t in tasks] for r in runs])
    if x.size == 0 or len(tasks) < 3:
        return math.nan, math.nan, math.nan
    with quiet():
        point = float(np.nanmean([spearman(a, b) for a, b in zip(x, y, strict=True)]))
    draw = rng.integers(len(tasks), size=(n_boot, len(tasks)))  # [B, K] one task draw per replicate
    reps = np.stack([_rho_rows(x[i][draw], y[i][draw]) for i in range(len(runs))])  # [R, B]
    seeds = rng.integers(len(runs), size=(n_boot, len(runs)))  # [B, R]
    with quiet():
        boot = np.nanmean(np.take_along_axis(reps.T, seeds, axis=1), axis=1)  # [B]
    lo, hi = percentile_ci(boot)
    return point, lo, hi


def _rho_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rowwise_spearman, falling back to the NaN-aware one for rows with a missing task."""
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    rho = np.full(x.shape[0], np.nan)
    rho[ok] = rowwise_spearman(x[ok], y[ok])
    for r in np.flatnonzero(~ok):
        rho[r] = spearman(x[r], y[r])
    return rho


def _log_fit(frame: pd.DataFrame) -> tuple[float, float] | None:
    """OLS of log10 u on |A| over rows with u > 0: (intercept, slope); None if < 2 points."""
    ok = frame[(frame.sqnorm > 0) & frame.abs_advantage.notna()]
    if len(ok) < 2 or ok.abs_advantage.nunique() < 2:
        return None
    slope, intercept = np.polyfit(ok.abs_advantage, np.log10(ok.sqnorm), 1)
    return float(intercept), float(slope)


def _within_fits(pairs: pd.DataFrame) -> dict[str, tuple[float, float]]:
    fits = {}
    for task, g in pairs.groupby("task", sort=False):
        fit = _log_fit(g)
        if fit is not None:
            fits[str(task)] = fit
    return fits


# --- regression of ln u on training statistics -------------------------------------------------


@dataclass
class Regression:
    """R^2 of ln u on statistics, task identity and both (same rows), and the coefficients."""

    name: str
    n: int
    r2_stats: float
    r2_task: float
    r2_both: float
    imbalance_explained: float = math.nan  # by the within-task effects (see the top)
    coefs: pd.DataFrame = field(default_factory=pd.DataFrame)  # per statistic: with and w/o FE

    @property
    def unique_task(self) -> float:
        """What task identity explains beyond the statistics: R2_both - R2_stats."""
        return self.r2_both - self.r2_stats

    @property
    def unique_stats(self) -> float:
        return self.r2_both - self.r2_task

    @property
    def shared(self) -> float:
        return self.r2_stats + self.r2_task - self.r2_both


def regression_frame(group: Group) -> tuple[pd.DataFrame, int]:
    """Rows (run, step, task) with y = ln u > 0 and the statistics; also the count of u <= 0."""
    parts, dropped = [], 0
    for i, run in enumerate(group.runs):
        sq = run.task_frame(sq_key(run))
        for task in run.tasks:
            u = sq[task]
            dropped += int((u <= 0).sum())
            part = pd.DataFrame({"y": np.log(u.where(u > 0))}, index=u.index)
            for stat in STATISTICS:
                v = run.column(M.task_key(task, stat)).reindex(u.index)
                part[stat] = np.log(v.where(v > 0)) if stat in LOG_STATISTICS else v
            parts.append(part.assign(task=task, run=i).dropna(subset=["y"]))
    if not parts:
        return pd.DataFrame(columns=["y", "task", "run", *STATISTICS]), dropped
    return pd.concat(parts).reset_index(names="step"), dropped


def fit_regression(frame: pd.DataFrame, statistics: tuple[str, ...], name: str) -> Regression:
    """The three OLS fits (statistics, task, both) on the rows where all are defined."""
    import statsmodels.formula.api as smf

    cols = [s for s in statistics if s in frame and frame[s].notna().any()]
    data = frame.dropna(subset=["y", *cols]).copy()
    cols = [c for c in cols if data[c].std() > 0]  # a constant statistic explains nothing
    n_tasks = data["task"].nunique() if len(data) else 0
    if len(data) < len(cols) + n_tasks + 2:
        return Regression(name, len(data), math.nan, math.nan, math.nan)
    for c in cols:
        data[c] = (data[c] - data[c].mean()) / data[c].std()
    rhs = " + ".join(cols) or "1"
    with warnings.catch_warnings():  # collinear statistics: pinv still gives fitted values
        warnings.simplefilter("ignore")
        stats_fit = smf.ols(f"y ~ {rhs}", data).fit(cov_type="HC1")
        task_fit = smf.ols("y ~ C(task)", data).fit() if n_tasks >= 2 else None
        both_fit = smf.ols(f"y ~ C(task) + {rhs}", data).fit(cov_type="HC1") if task_fit else None
    coefs = pd.concat(
        [_coef_table(stats_fit, cols, ""), _coef_table(both_fit or stats_fit, cols, "_fe")], axis=1
    )
    return Regression(
        name,
        len(data),
        float(stats_fit.rsquared) if cols else 0.0,
        float(task_fit.rsquared) if task_fit else math.nan,
        float(both_fit.rsquared) if both_fit else math.nan,
        imbalance_explained(data, both_fit, cols) if both_fit else math.nan,
        coefs,
    )


def imbalance_explained(data: pd.DataFrame, fit, cols: list[str]) -> float:
    """1 - sum_k n_k (ytil_k - ftil_k)^2 / sum_k n_k ytil_k^2 with f_k = sum_j b_j xbar_kj, b_j
    the within-task (fixed-effects) coefficients; see the module docstring."""
    by = data.groupby("task")
    n, y_k = by.size(), by["y"].mean()
    within_sd = data[cols].sub(by[cols].transform("mean")).std() if cols else pd.Series()
    usable = [c for c in cols if within_sd[c] > 1e-6 * data[c].std()]
    beta = pd.Series({c: fit.params.get(c, 0.0) for c in usable}, dtype=float)
    f_k = by[usable].mean() @ beta if usable else pd.Series(0.0, index=y_k.index)
    centre = lambda v: v - (n * v).sum() / n.sum()  # noqa: E731  (n-weighted, as the rows are)
    total = float((n * centre(y_k) ** 2).sum())
    resid = float((n * (centre(y_k) - centre(f_k)) ** 2).sum())
    return 1 - resid / total if total > 0 else math.nan


def _coef_table(fit, cols: list[str], suffix: str) -> pd.DataFrame:
    ci = fit.conf_int()
    return pd.DataFrame(
        {
            f"coef{suffix}": [fit.params.get(c, np.nan) for c in cols],
            f"lo{suffix}": [ci.loc[c, 0] if c in ci.index else np.nan for c in cols],
            f"hi{suffix}": [ci.loc[c, 1] if c in ci.index else np.nan for c in cols],
            f"p{suffix}": [fit.pvalues.get(c, np.nan) for c in cols],
        },
        index=cols,
    )


def regressions(group: Group) -> tuple[list[Regression], int]:
    """One fit per statistic set (STAT_SETS), and how many rows had u <= 0 (dropped)."""
    frame, dropped = regression_frame(group)
    return [fit_regression(frame, stats, name) for name, stats in STAT_SETS.items()], dropped


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
            u = run.column(sq_key(run).format(task=task))
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
