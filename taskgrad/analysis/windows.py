r"""Window estimators: sums of per-step unbiased estimates first, nonlinear functions after.

Per step, the split-half estimate u_k(t) = <g_kA, g_kB> is unbiased for ||E g_k(t)||^2 but, at
the batch sizes of these runs, mostly noise (it is often negative). A ratio, log, cosine or rank
of per-step values turns that zero-mean noise into bias (the median of per-step max/min ratios
reads several times the ratio of means). So every statistic here is taken of *window means*:

    U_k(w)   = mean_{t in w} u_k(t)               W consecutive measured steps (default 10)
    N_k(w)   = mean_{t in w} ||g_k(t)||^2          the naive (noise-inflated) squared norm
    I_jk(w)  = mean_{t in w} <g_j(t), g_k(t)>      cross-task inner products (unbiased)
    D_k(w)   = mean_{t in w} <w_k G_k(t), g(t)>    the task's part of ||g||^2 (update shares)

and pooled over windows and seeds as sums over steps. Intervals come from a block bootstrap:
seeds resampled with replacement, then windows within each seed (a window is a block of
consecutive steps, so correlation inside it is kept). A task whose pooled U has a 95% interval
that holds 0 has **no detectable gradient signal**: ratios and cosines that involve it are
undefined (reported as such), never large. The signal fraction U / N is the part of the naive
squared norm that is signal. Per-step values stay in metrics.jsonl as per-step estimates.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from taskgrad import metrics as M
from taskgrad.analysis.runs import Group, Run

WINDOW = 10
N_BOOT = 1000
TASK_STATS = (
    "reward", "reward_var", "abs_advantage", "zero_adv_share", "response_length",
    "prompt_length", "entropy", "batch_share",
)  # fmt: skip


def scope_of(run: Run) -> str:
    """The main gradient scope: ``full`` unless the buffers held another scope only."""
    if run.has(M.grad_scope_key("full", "total_sqnorm")):
        return "full"
    return str(run.cfg("diagnostics.scope", "full"))


@dataclass
class RunWindows:
    """One run's window sums and counts; arrays are [W, K] (inner: [W, K, K])."""

    run: Run
    starts: np.ndarray  # [W] first step of each window
    ends: np.ndarray  # [W] last step
    n: np.ndarray  # [W, K] measured steps with a finite u
    u_sum: np.ndarray  # [W, K] sum of u over the window
    u_sq: np.ndarray  # [W, K] sum of u^2 (for within-window standard errors)
    naive_sum: np.ndarray
    zeros: np.ndarray  # [W, K] exact zero u (no gradient: every group scored alike)
    negatives: np.ndarray  # [W, K] u < 0
    inner_sum: np.ndarray  # [W, K, K] sum of <g_j, g_k> (diagonal: u)
    dot_sum: np.ndarray  # [W, K] sum of <w_k G_k, g>
    total_sum: np.ndarray  # [W] sum of ||g||^2
    proxy_sum: np.ndarray | None  # [W, K] sum of the proxy scope's u, where measured with full
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [W, K] window means

    @property
    def tasks(self) -> list[str]:
        return self.run.tasks

    @property
    def u(self) -> np.ndarray:
        """[W, K] window means U_k(w)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.u_sum / self.n

    def u_se(self) -> np.ndarray:
        """[W, K] within-window standard error of U (t-interval material), NaN with n < 2."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.u
            var = (self.u_sq - self.n * mean**2) / (self.n - 1)
            return np.where(self.n >= 2, np.sqrt(np.clip(var, 0, None) / self.n), np.nan)


def run_windows(run: Run, size: int = WINDOW) -> RunWindows:
    """Consecutive blocks of ``size`` measured steps (a trailing block shorter than size/2 is
    merged into the one before)."""
    scope, tasks = scope_of(run), run.tasks
    u = run.task_frame(M.grad_key(scope, "{task}", "sqnorm_unbiased"))  # [T, K]
    steps = u.index[u.notna().any(axis=1)].to_numpy()
    blocks = [steps[i : i + size] for i in range(0, len(steps), size)]
    if len(blocks) > 1 and len(blocks[-1]) < size / 2:
        blocks[-2] = np.concatenate([blocks[-2], blocks.pop()])
    naive = run.task_frame(M.grad_key(scope, "{task}", "sqnorm_naive"))
    share = run.task_frame(M.grad_key(scope, "{task}", "update_share"))
    total = run.column(M.grad_scope_key(scope, "total_sqnorm"))
    proxy = None
    if scope == "full" and run.has(M.grad_key("proxy", tasks[0], "sqnorm_unbiased")):
        proxy = run.task_frame(M.grad_key("proxy", "{task}", "sqnorm_unbiased"))
    k, w = len(tasks), len(blocks)
    inner = np.full((len(u.index), k, k), np.nan)
    pos = {s: i for i, s in enumerate(u.index)}
    for a in range(k):
        inner[:, a, a] = u[tasks[a]].to_numpy()
        for b in range(a + 1, k):
            col = run.column(M.inner_key(scope, tasks[a], tasks[b])).reindex(u.index).to_numpy()
            inner[:, a, b] = inner[:, b, a] = col
    out = {name: np.zeros((w, k)) for name in ("n", "u_sum", "u_sq", "naive_sum", "zeros",
                                                 "negatives", "dot_sum")}  # fmt: skip
    inner_sum, total_sum = np.zeros((w, k, k)), np.zeros(w)
    proxy_sum = np.zeros((w, k)) if proxy is not None else None
    stats = {name: np.full((w, k), np.nan) for name in TASK_STATS}
    frames = {name: run.task_frame(M.task_key("{task}", name)) for name in TASK_STATS}
    for i, block in enumerate(blocks):
        ub = u.loc[block].to_numpy()  # [b, K]
        ok = np.isfinite(ub)
        out["n"][i] = ok.sum(0)
        out["u_sum"][i] = np.where(ok, ub, 0).sum(0)
        out["u_sq"][i] = np.where(ok, ub**2, 0).sum(0)
        out["naive_sum"][i] = np.nansum(naive.loc[block].to_numpy(), 0)
        out["zeros"][i] = (ub == 0).sum(0)
        out["negatives"][i] = (ub < 0).sum(0)
        tb = total.reindex(block).to_numpy()
        out["dot_sum"][i] = np.nansum(share.loc[block].to_numpy() * tb[:, None], 0)
        total_sum[i] = np.nansum(tb)
        inner_sum[i] = np.nansum(inner[[pos[s] for s in block]], 0)
        if proxy is not None:
            proxy_sum[i] = np.nansum(proxy.reindex(block).to_numpy(), 0)
        for name, frame in frames.items():
            with warnings.catch_warnings():  # a statistic a run never logged: NaN, quietly
                warnings.simplefilter("ignore", RuntimeWarning)
                stats[name][i] = (
                    np.nanmean(frame.reindex(block).to_numpy(), 0) if len(frame) else np.nan
                )
    return RunWindows(
        run, np.array([b[0] for b in blocks]), np.array([b[-1] for b in blocks]),
        out["n"], out["u_sum"], out["u_sq"], out["naive_sum"], out["zeros"], out["negatives"],
        inner_sum, out["dot_sum"], total_sum, proxy_sum, stats,
    )  # fmt: skip


# --- pooling and the block bootstrap -----------------------------------------------------------


def resample(windows: list[RunWindows], rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """One block-bootstrap draw: (run index, window indices) per drawn seed."""
    seeds = rng.integers(len(windows), size=len(windows))
    return [(int(s), rng.integers(len(windows[s].starts), size=len(windows[s].starts)))
            for s in seeds]  # fmt: skip


def identity(windows: list[RunWindows]) -> list[tuple[int, np.ndarray]]:
    return [(i, np.arange(len(w.starts))) for i, w in enumerate(windows)]


def pooled(windows: list[RunWindows], draw, attr: str) -> np.ndarray:
    """Sum over the drawn windows of ``attr`` (an array of sums), for pooled means."""
    return sum(getattr(windows[i], attr)[idx].sum(0) for i, idx in draw)


def pooled_u(windows: list[RunWindows], draw) -> np.ndarray:
    """[K] the pooled mean of u over every drawn step."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return pooled(windows, draw, "u_sum") / pooled(windows, draw, "n")


def bootstrap(windows, statistic, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[n_boot, ...] replicates of ``statistic(windows, draw)`` under the block bootstrap."""
    rng = np.random.default_rng(seed)
    return np.stack([statistic(windows, resample(windows, rng)) for _ in range(n_boot)])


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of replicates along axis 0 (non-finite replicates count as +inf for
    ratios: they are where the denominator vanished)."""
    tail = (1 - level) / 2 * 100
    r = np.where(np.isnan(replicates), np.inf, replicates)
    with np.errstate(invalid="ignore"):
        return np.percentile(r, tail, axis=0), np.percentile(r, 100 - tail, axis=0)


# --- what the reports read ---------------------------------------------------------------------


@dataclass
class Signal:
    """Per task, pooled over windows and seeds."""

    tasks: list[str]
    u: np.ndarray  # [K] pooled unbiased squared norm
    lo: np.ndarray  # [K] 95% block-bootstrap interval
    hi: np.ndarray
    naive: np.ndarray  # [K] pooled naive squared norm
    zeros: np.ndarray  # [K] per-step estimates exactly zero (count)
    negatives: np.ndarray  # [K] per-step estimates below zero (count)
    steps: np.ndarray  # [K] measured steps

    @property
    def detectable(self) -> np.ndarray:
        """[K] bool: the interval of the pooled U lies above zero."""
        return np.nan_to_num(self.lo, nan=-1) > 0

    @property
    def signal_fraction(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.u / self.naive


def signal(windows: list[RunWindows], n_boot: int = N_BOOT, seed: int = 0) -> Signal:
    draw = identity(windows)
    u = pooled_u(windows, draw)
    lo, hi = interval(bootstrap(windows, pooled_u, n_boot, seed))
    with np.errstate(invalid="ignore", divide="ignore"):
        naive = pooled(windows, draw, "naive_sum") / pooled(windows, draw, "n")
    return Signal(
        windows[0].tasks, u, lo, hi, naive, pooled(windows, draw, "zeros"),
        pooled(windows, draw, "negatives"), pooled(windows, draw, "n"),
    )  # fmt: skip


@dataclass
class Imbalance:
    """max_k U_k / min_k U_k over the tasks with detectable signal, pooled, with its interval."""

    ratio: float
    lo: float
    hi: float
    largest: str | None
    smallest: str | None
    excluded: list[str]  # tasks with no detectable gradient signal
    per_seed: list[float]  # the same ratio per seed (its own windows only)

    def text(self) -> str:
        from taskgrad.analysis.stats import times

        if not math.isfinite(self.ratio):
            return "undefined (fewer than two tasks with detectable gradient signal)"
        # not finite: draws in which a task's signal vanished (inf, or NaN where the percentile
        # interpolates between two infinite draws)
        hi = times(self.hi) if math.isfinite(self.hi) else "unbounded"
        out = f"{times(self.ratio)} [{times(self.lo)}, {hi}]"
        if self.excluded:
            out += f"; no detectable signal: {', '.join(self.excluded)}"
        return out


def ratio_of(u: np.ndarray, keep: np.ndarray) -> float:
    v = u[keep]
    if v.size < 2 or not np.all(np.isfinite(v)):
        return math.nan
    return float(v.max() / v.min()) if v.min() > 0 else math.inf


def imbalance(windows: list[RunWindows], sig: Signal, n_boot: int = N_BOOT) -> Imbalance:
    keep = sig.detectable
    tasks = np.array(sig.tasks)
    reps = bootstrap(windows, lambda ws, d: ratio_of(pooled_u(ws, d), keep), n_boot, seed=1)
    lo, hi = interval(reps) if keep.sum() >= 2 else (math.nan, math.nan)
    per_seed = [ratio_of(pooled_u([w], identity([w])), keep) for w in windows]
    u = np.where(keep, sig.u, np.nan)
    has = keep.sum() >= 2
    return Imbalance(
        ratio_of(sig.u, keep), float(lo), float(hi),
        str(tasks[np.nanargmax(u)]) if has else None,
        str(tasks[np.nanargmin(u)]) if has else None,
        [str(t) for t in tasks[~keep]], per_seed,
    )  # fmt: skip


def measures_gradients(run: Run) -> bool:
    """Whether the run logged per-task unbiased squared norms (the window estimators' input)."""
    return run.has(M.grad_key(scope_of(run), run.tasks[0], "sqnorm_unbiased"))


def configured_windows(run: Run) -> RunWindows:
    """The run's windows at its own ``diagnostics.window`` size."""
    return run_windows(run, int(run.cfg("diagnostics.window", WINDOW) or WINDOW))


def run_imbalance(run: Run) -> float:
    """The pooled window-estimator imbalance of one run (NaN when not measured or undefined)."""
    if not measures_gradients(run):
        return math.nan
    w = [configured_windows(run)]
    ratio = ratio_of(pooled_u(w, identity(w)), signal(w, n_boot=200).detectable)
    return ratio if math.isfinite(ratio) else math.nan


def window_imbalance(w: RunWindows) -> pd.Series:
    """Per window: max/min of U among tasks whose window t-interval is above zero (NaN if < 2)."""
    u, se = w.u, w.u_se()
    keep = np.nan_to_num(u - 1.96 * se, nan=-1) > 0
    values = [ratio_of(u[i], keep[i]) for i in range(len(u))]
    return pd.Series(values, index=w.ends, dtype=float)


def update_shares(windows: list[RunWindows], n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per task: the pooled share of the applied update, sum <w_k G_k, g> / sum ||g||^2."""

    def share(ws, d):
        with np.errstate(invalid="ignore", divide="ignore"):
            return pooled(ws, d, "dot_sum") / pooled(ws, d, "total_sum")

    point = share(windows, identity(windows))
    lo, hi = interval(bootstrap(windows, share, n_boot, seed=2))
    return pd.DataFrame({"share": point, "lo": lo, "hi": hi}, index=windows[0].tasks)


def cosines(
    windows: list[RunWindows], sig: Signal, part: str = "all", n_boot: int = N_BOOT
) -> pd.DataFrame:
    """[K, K] cosines of pooled inner products over pooled norms; NaN unless both tasks have
    detectable signal. ``part``: "early" / "late" (windows in each half of training) or "all"."""
    chosen = [_part(w, part) for w in windows]
    chosen = [w for w in chosen if len(w.starts)]
    keep = sig.detectable
    if not chosen:
        return pd.DataFrame(np.nan, index=sig.tasks, columns=sig.tasks)

    def cos(ws, d):
        n = pooled(ws, d, "n")  # [K] steps measured per task
        with np.errstate(invalid="ignore", divide="ignore"):
            inner = pooled(ws, d, "inner_sum") / np.minimum.outer(n, n)  # pooled means
            u = np.diag(inner).copy()
            c = inner / np.sqrt(np.outer(u, u))
        c[~np.outer(keep, keep)] = np.nan
        c[(u <= 0)[:, None] | (u <= 0)[None, :]] = np.nan
        return c

    return pd.DataFrame(cos(chosen, identity(chosen)), index=sig.tasks, columns=sig.tasks)


def _part(w: RunWindows, part: str) -> RunWindows:
    if part == "all":
        return w
    mid = w.run.steps / 2
    idx = np.flatnonzero(w.ends <= mid) if part == "early" else np.flatnonzero(w.starts > mid)
    fields = {}
    for name in ("starts", "ends", "n", "u_sum", "u_sq", "naive_sum", "zeros", "negatives",
                 "inner_sum", "dot_sum", "total_sum"):  # fmt: skip
        fields[name] = getattr(w, name)[idx]
    proxy = w.proxy_sum[idx] if w.proxy_sum is not None else None
    stats = {k: v[idx] for k, v in w.stats.items()}
    return RunWindows(w.run, **fields, proxy_sum=proxy, stats=stats)


def proxy_agreement(windows: list[RunWindows], n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """Mean over (seed, window) of Spearman across tasks of the window U, proxy vs full; block
    bootstrap interval. NaN where the proxy was not measured beside the full scope."""
    from taskgrad.stats import spearman

    usable = [w for w in windows if w.proxy_sum is not None]
    if not usable or len(usable[0].tasks) < 3:
        return math.nan, math.nan, math.nan

    def mean_rho(ws, d):
        rhos = []
        for i, idx in d:
            w = ws[i]
            with np.errstate(invalid="ignore", divide="ignore"):
                full, proxy = w.u_sum[idx] / w.n[idx], w.proxy_sum[idx] / w.n[idx]
            rhos += [spearman(f, p) for f, p in zip(full, proxy, strict=True)]
        return np.nanmean(rhos) if np.isfinite(rhos).any() else np.nan

    point = mean_rho(usable, identity(usable))
    lo, hi = interval(bootstrap(usable, mean_rho, n_boot, seed=3))
    return float(point), float(lo), float(hi)


def group_windows(group: Group, size: int | None = None) -> list[RunWindows]:
    size = size or int(group.cfg("diagnostics.window", WINDOW) or WINDOW)
    return [run_windows(r, size) for r in group.runs]
