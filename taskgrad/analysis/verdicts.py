r"""The paper's claims as rules with three outcomes: holds, contradicted, undetermined.

Every rule states, before looking at data, a statistic, its interval and a margin; the outcome
follows from where the interval lies:

    holds          the interval lies on the claim's side of the margin
    contradicted   the interval lies on the other side (the data show the opposite)
    undetermined   the interval straddles it: these data cannot decide

"No relation" claims are equivalence tests: they hold only when the interval excludes every
relation as large as the margin, never merely because an interval holds zero. Every statistic
is computed from window means (windows.py), so noise cannot turn into bias through a ratio,
log or rank of single-step estimates. Operating characteristics of every rule (how often a
strong planted effect is called contradicted, how often a null one is) are measured on planted
data in tests/test_power.py and printed in the report at the run's own size (power.py).

Units of the gain rules (b), (c): a seed's windows are paired, (w, w + 1) for w = 0, 2, 4, ...
(disjoint pairs): the gradient before is U_k(w), the learning gain is the mean reward over
window w + 1 minus over window w (the paper's windowed gain with s = the window size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from taskgrad.analysis.stats import fmt, fmt_explained, times
from taskgrad.analysis.windows import (
    N_BOOT,
    RunWindows,
    identity,
    imbalance,
    interval,
    pooled,
    pooled_u,
    signal,
)
from taskgrad.stats import rowwise_spearman, spearman

HOLDS, CONTRADICTED, UNDETERMINED = "holds", "contradicted", "undetermined"

# Margins, stated in advance (they appear in the rule texts).
IMBALANCE_MARGIN = 10.0  # (a): the low end of the paper's 10-30x
CHANCE_MARGIN = 0.25  # (b): an excess over chance smaller than this is no tendency
RANK_MARGIN = 0.3  # (c), (d) across: a rank correlation below this is no relation
EXPLAINED_MARGIN = 0.5  # (e), (f): statistics explain half of the imbalance or more
REMAINS_MARGIN = 0.5  # (f): under other aggregations at least half the imbalance remains
ACCURACY_MARGIN = 0.02  # (g): a gain of 2 points of mean accuracy or more is a gain


@dataclass
class Verdict:
    outcome: str  # holds | contradicted | undetermined
    statistic: float
    lo: float
    hi: float
    text: str  # what was found, in a phrase

    @staticmethod
    def decide(statistic, lo, hi, holds: bool, contradicted: bool, text: str) -> Verdict:
        if not all(math.isfinite(v) or math.isinf(v) for v in (lo, hi)) or not math.isfinite(
            statistic
        ):
            return Verdict(UNDETERMINED, statistic, lo, hi, text)
        outcome = HOLDS if holds else CONTRADICTED if contradicted else UNDETERMINED
        return Verdict(outcome, float(statistic), float(lo), float(hi), text)


def combine(*verdicts: Verdict) -> str:
    """All parts hold -> holds; any contradicted -> contradicted; else undetermined."""
    outcomes = [v.outcome for v in verdicts]
    if CONTRADICTED in outcomes:
        return CONTRADICTED
    return HOLDS if all(o == HOLDS for o in outcomes) else UNDETERMINED


# --- (a) imbalance exists -----------------------------------------------------------------------

RULE_A = (
    "pooled max/min of the tasks' window-mean unbiased squared norms (tasks with detectable "
    f"signal), 95% block-bootstrap interval: holds if it lies at or above {IMBALANCE_MARGIN:g}x "
    "(the paper's low end), contradicted if below, else undetermined"
)


def rule_imbalance(windows: list[RunWindows], n_boot: int = N_BOOT) -> Verdict:
    sig = signal(windows, n_boot)
    im = imbalance(windows, sig, n_boot)
    return Verdict.decide(
        im.ratio, im.lo, im.hi, im.lo >= IMBALANCE_MARGIN, im.hi < IMBALANCE_MARGIN, im.text()
    )


# --- units of the gain rules ------------------------------------------------------------------


@dataclass
class Units:
    grad: np.ndarray  # [U, K] window-mean unbiased squared norm before the gain
    gain: np.ndarray  # [U, K] window-mean reward after minus before
    seed: np.ndarray  # [U] which seed (run index) the unit belongs to


def gain_units(windows: list[RunWindows]) -> Units:
    grads, gains, seeds = [], [], []
    for i, w in enumerate(windows):
        reward = w.stats.get("reward")
        if reward is None:
            continue
        for a in range(0, len(w.starts) - 1, 2):
            grads.append(w.u[a])
            gains.append(reward[a + 1] - reward[a])
            seeds.append(i)
    k = len(windows[0].tasks) if windows else 0
    if not grads:
        return Units(np.zeros((0, k)), np.zeros((0, k)), np.zeros(0, dtype=int))
    return Units(np.array(grads), np.array(gains), np.array(seeds))


# --- (b) the largest-gradient task has the lowest gain ------------------------------------------

RULE_B = (
    "share of (seed, window) units in which the task with the largest window-mean squared norm "
    "has the lowest learning gain, Clopper-Pearson 95% interval: holds if it lies above chance "
    f"(1/K), contradicted if it lies below chance + {CHANCE_MARGIN:g}, else undetermined"
)


def lowest_gain_indicator(units: Units) -> np.ndarray:
    """Per unit: 1 if the largest-gradient task has the (strictly) lowest gain, 0 if not; units
    with a tie for the largest gradient or missing values are left out."""
    out = []
    for grad, gain in zip(units.grad, units.gain, strict=True):
        if not (np.all(np.isfinite(grad)) and np.all(np.isfinite(gain))):
            continue
        if (grad == grad.max()).sum() > 1:
            continue
        top = int(np.argmax(grad))
        out.append(float(gain[top] < np.delete(gain, top).min()))
    return np.array(out)


def rule_largest_lowest(windows: list[RunWindows]) -> Verdict:
    units = gain_units(windows)
    hits = lowest_gain_indicator(units)
    k = len(windows[0].tasks)
    if hits.size == 0 or k < 2:
        return Verdict(UNDETERMINED, math.nan, math.nan, math.nan, "no usable units")
    n, x = hits.size, int(hits.sum())
    ci = sps.binomtest(x, n).proportion_ci(0.95, method="exact")
    chance = 1 / k
    text = f"{x} of {n} units ({100 * x / n:.0f}%; chance {100 * chance:.0f}%)"
    return Verdict.decide(
        x / n, ci.low, ci.high, ci.low > chance, ci.high < chance + CHANCE_MARGIN, text
    )


# --- (c) gradient size does not rank learning gain ---------------------------------------------

RULE_C = (
    "mean over (seed, window) units of Spearman's rho across tasks between the window-mean "
    "squared norm and the learning gain after it, 95% t-interval over units: holds "
    f"(no positive relation) if it lies below {RANK_MARGIN:g}, contradicted if above 0, else "
    "undetermined"
)


def unit_rhos(units: Units) -> np.ndarray:
    ok = np.isfinite(units.grad).all(1) & np.isfinite(units.gain).all(1)
    if not ok.any() or units.grad.shape[1] < 3:
        return np.zeros(0)
    rho = rowwise_spearman(units.grad[ok], units.gain[ok])
    return rho[np.isfinite(rho)]


def rho_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of rank correlations and its 95% t-interval, clipped to [-1, 1] where a mean of
    correlations lies (every rule's thresholds are inside, so the clip changes no verdict). The
    units are treated as independent; with few units a percentile bootstrap is too narrow, and
    the planted-data tests measure the calibration. No interval below two units."""
    if values.size < 2:
        return (float(values.mean()) if values.size else math.nan), math.nan, math.nan
    m = float(values.mean())
    half = float(sps.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return m, max(m - half, -1.0), min(m + half, 1.0)


def ci_text(value: float, lo: float, hi: float, fmt_one=fmt) -> str:
    """'0.12 [-0.30, 0.54]'; 'n/a' or '0.12 (no interval)' where they are undefined."""
    if not math.isfinite(value):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{fmt_one(value)} (no interval)"
    return f"{fmt_one(value)} [{fmt_one(lo)}, {fmt_one(hi)}]"


def rule_rank(windows: list[RunWindows]) -> Verdict:
    rhos = unit_rhos(gain_units(windows))
    rho, lo, hi = rho_interval(rhos)
    text = f"mean rho {ci_text(rho, lo, hi)} over {rhos.size} units"
    return Verdict.decide(rho, lo, hi, hi < RANK_MARGIN, lo > 0, text)


# --- (d) |advantage| tracks the gradient within tasks, not across -------------------------------

RULE_D = (
    "within: mean over (seed, task) series of Spearman's rho across windows between window-mean "
    "|advantage| and squared norm; across: mean over seeds of rho across tasks between their "
    "means; 95% t-intervals: holds if within lies above 0 and across below "
    f"{RANK_MARGIN:g}; contradicted if within lies below 0 or across above 0; else undetermined "
    "(window means of u are noisy, which attenuates the within-task correlation: a weak one "
    "cannot be told from none, so only an opposite one contradicts)"
)


def advantage_rhos(windows: list[RunWindows]) -> tuple[np.ndarray, np.ndarray]:
    within, across = [], []
    for w in windows:
        adv = w.stats.get("abs_advantage")
        if adv is None:
            continue
        u = w.u
        for k in range(u.shape[1]):
            if np.isfinite(adv[:, k]).sum() >= 3:
                within.append(spearman(adv[:, k], u[:, k]))
        if u.shape[1] >= 3:
            n = w.n.sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                across.append(spearman(np.nanmean(adv, 0), w.u_sum.sum(0) / n))
    return np.array([r for r in within if math.isfinite(r)]), np.array(
        [r for r in across if math.isfinite(r)]
    )


def rule_advantage(windows: list[RunWindows]) -> Verdict:
    within, across = advantage_rhos(windows)
    w, wlo, whi = rho_interval(within)
    a, alo, ahi = rho_interval(across)
    part_w = Verdict.decide(w, wlo, whi, wlo > 0, whi < 0, "")
    part_a = Verdict.decide(a, alo, ahi, ahi < RANK_MARGIN, alo > 0, "")
    text = (
        f"within rho {ci_text(w, wlo, whi)} ({within.size} series); across rho "
        f"{ci_text(a, alo, ahi)} ({across.size} seeds)"
    )
    return Verdict(combine(part_w, part_a), w, wlo, whi, text)


# --- (e), (f) statistics do not explain the imbalance -------------------------------------------

RULE_E = (
    "imbalance explained by reward and reward variance: their within-task effects, from a "
    "log-link GLM (variance proportional to the mean squared) of window-mean squared norms on "
    "the statistics with task fixed effects (zero and negative window means kept), applied to "
    "the task means; 95% block-"
    f"bootstrap interval: holds if it lies below {EXPLAINED_MARGIN:g}, contradicted if above, "
    "else undetermined"
)
RULE_F = (
    "(i) the same for log response and prompt length; (ii) where the mixture was also trained "
    "under the other loss aggregations: the ratio of their pooled imbalance to token_mean's, "
    f"95% interval: holds if it lies at or above {REMAINS_MARGIN:g}; both parts must hold; "
    "contradicted if either is"
)
LOG_STATS = frozenset({"response_length", "prompt_length"})


def fit_log_link(x: np.ndarray, y: np.ndarray, iters: int = 100) -> np.ndarray | None:
    """The log-link GLM E y = exp(x b) with variance proportional to the mean squared (the
    Gamma quasi-likelihood: relative errors), by IRLS: with a log link and V(mu) = mu^2 the
    working weights are constant and the working response is z = eta + (y - mu) / mu, which is
    defined for zero and negative y (window means of an unbiased estimate can be either).
    None if it does not converge."""
    scale = max(np.abs(y).max(), 1e-300)
    b = np.linalg.lstsq(x, np.log(np.clip(y, 1e-3 * scale, None)), rcond=None)[0]  # a start
    for _ in range(iters):
        eta = np.clip(x @ b, -700, 700)
        mu = np.exp(eta)
        new = np.linalg.lstsq(x, eta + (y - mu) / mu, rcond=None)[0]
        if not np.all(np.isfinite(new)):
            return None
        if np.max(np.abs(new - b)) < 1e-10 * (1 + np.max(np.abs(b))):
            return new
        b = new
    return None


def explained(windows: list[RunWindows], names: tuple[str, ...], draw=None) -> float:
    """The imbalance explained by ``names`` (see RULE_E), on the drawn windows."""
    draw = draw if draw is not None else identity(windows)
    k = len(windows[0].tasks)
    rows_y, rows_task, rows_z = [], [], []
    for i, idx in draw:
        w = windows[i]
        u = w.u[idx]  # [n, K]
        z = []
        for name in names:
            v = w.stats[name][idx]
            z.append(np.log(np.where(v > 0, v, np.nan)) if name in LOG_STATS else v)
        z = np.stack(z, -1)  # [n, K, J]
        for kk in range(k):
            ok = np.isfinite(u[:, kk]) & np.isfinite(z[:, kk]).all(-1)
            rows_y.append(u[ok, kk])
            rows_task.append(np.full(ok.sum(), kk))
            rows_z.append(z[ok, kk])
    y, task, z = np.concatenate(rows_y), np.concatenate(rows_task), np.concatenate(rows_z)
    present = np.unique(task)
    task_u = pooled_u(windows, draw)  # [K] aggregate first, log after
    usable = [kk for kk in present if task_u[kk] > 0]
    if len(usable) < 2 or len(y) < len(present) + len(names) + 2:
        return math.nan
    sd = z.std(0)
    keep = sd > 0
    z = (z[:, keep] - z[:, keep].mean(0)) / sd[keep]
    fe = (task[:, None] == present[None, :]).astype(float)
    b = fit_log_link(np.concatenate([fe, z], 1), y)
    if b is None:
        return math.nan
    beta = b[len(present) :]
    zbar = np.array([z[task == kk].mean(0) for kk in usable])  # [K', J]
    f = zbar @ beta if beta.size else np.zeros(len(usable))
    yk = np.log(task_u[usable])
    n = np.array([(task == kk).sum() for kk in usable], dtype=float)

    def centre(v):
        return v - (n * v).sum() / n.sum()

    total = float((n * centre(yk) ** 2).sum())
    if not (total > 0 and np.all(np.isfinite(f)) and np.abs(f).max() < 1e6):
        return math.nan  # a degenerate fit (e.g. a statistic constant within every task)
    return 1 - float((n * (centre(yk) - centre(f)) ** 2).sum()) / total


def explained_interval(
    windows: list[RunWindows], names: tuple[str, ...], n_boot: int, seed: int
) -> tuple[float, float, float]:
    from taskgrad.analysis.windows import resample

    point = explained(windows, names)
    rng = np.random.default_rng(seed)
    reps = np.array([explained(windows, names, resample(windows, rng)) for _ in range(n_boot)])
    reps = reps[np.isfinite(reps)]
    if reps.size < 0.5 * n_boot or not math.isfinite(point):
        return point, math.nan, math.nan
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def rule_explained(
    windows: list[RunWindows], names: tuple[str, ...], n_boot: int = N_BOOT // 4
) -> Verdict:
    e, lo, hi = explained_interval(windows, names, n_boot, seed=7)
    return decide_explained(e, lo, hi, names)


def decide_explained(e: float, lo: float, hi: float, names: tuple[str, ...]) -> Verdict:
    what = f"imbalance explained by {', '.join(names)}"
    if not math.isfinite(e):
        text = (
            f"{what}: undefined (fewer than two tasks with a positive pooled squared norm, too "
            "few windows, or a degenerate fit)"
        )
    elif not (math.isfinite(lo) and math.isfinite(hi)):
        text = f"{what}: {fmt_explained(e)} (no interval: under half the replicates are defined)"
    else:
        text = f"{what}: {fmt_explained(e)} [{fmt_explained(lo)}, {fmt_explained(hi)}]"
    return Verdict.decide(e, lo, hi, hi < EXPLAINED_MARGIN, lo > EXPLAINED_MARGIN, text)


def verdict_of(explanation) -> Verdict:
    """The (e)/(f-i) verdict of an explain.Explanation."""
    e = explanation
    return decide_explained(e.explained, e.lo, e.hi, e.statistics)


def imbalance_remains(
    base: list[RunWindows], other: list[RunWindows], n_boot: int = N_BOOT
) -> Verdict:
    """(f-ii): pooled imbalance under another aggregation over token_mean's (independent
    groups, each block-bootstrapped)."""
    from taskgrad.analysis.windows import bootstrap, ratio_of

    keep_b, keep_o = signal(base, n_boot).detectable, signal(other, n_boot).detectable
    keep = keep_b & keep_o
    r_b = ratio_of(pooled_u(base, identity(base)), keep)
    r_o = ratio_of(pooled_u(other, identity(other)), keep)
    rb = bootstrap(base, lambda ws, d: ratio_of(pooled_u(ws, d), keep), n_boot, seed=8)
    ro = bootstrap(other, lambda ws, d: ratio_of(pooled_u(ws, d), keep), n_boot, seed=9)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = interval(ro / rb)
        point = r_o / r_b if math.isfinite(r_b) and r_b > 0 else math.nan
    if keep.sum() < 2:
        text = "imbalance undefined: fewer than two tasks with detectable signal under both"
    else:
        text = f"imbalance {times(r_o)} vs {times(r_b)}: ratio {ci_text(point, lo, hi)}"
    return Verdict.decide(point, lo, hi, lo >= REMAINS_MARGIN, hi < REMAINS_MARGIN, text)


# --- (g) gradient-proportional sampling does not beat uniform -------------------------------------

RULE_G = (
    "final mean held-out accuracy, grad_proportional minus uniform, paired by seed (same "
    "held-out prompts), t-interval over seeds (at least 3): holds if it lies below "
    f"+{100 * ACCURACY_MARGIN:g} points, contradicted if above 0, else undetermined"
)


def rule_ablation(ablation: dict[int, float], base: dict[int, float]) -> Verdict:
    """``ablation``, ``base``: seed -> final mean accuracy."""
    seeds = sorted(set(ablation) & set(base))
    d = np.array([ablation[s] - base[s] for s in seeds])
    if d.size < 3:
        text = f"{d.size} paired seed(s): at least 3 are needed"
        return Verdict(UNDETERMINED, float(d.mean()) if d.size else math.nan, math.nan,
                       math.nan, text)  # fmt: skip
    half = sps.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    m = float(d.mean())
    text = f"difference {100 * m:+.1f} [{100 * (m - half):+.1f}, {100 * (m + half):+.1f}] points"
    return Verdict.decide(m, m - half, m + half, m + half < ACCURACY_MARGIN, m - half > 0, text)


__all__ = [
    "CONTRADICTED", "HOLDS", "RULE_A", "RULE_B", "RULE_C", "RULE_D", "RULE_E", "RULE_F",
    "RULE_G", "UNDETERMINED", "Verdict", "explained", "fit_log_link", "gain_units",
    "imbalance_remains", "pooled", "rule_ablation", "rule_advantage", "rule_explained",
    "rule_imbalance", "rule_largest_lowest", "rule_rank", "verdict_of",
]  # fmt: skip
