r"""The statistics of ``taskgrad compare``: strategy x seed contrasts with multiplicity control,
their minimum detectable effects, and a paired bootstrap over held-out prompts and seeds.

**Model** (one per endpoint). y_{s,i} = mu + alpha_s + beta_i + e_{s,i}, e iid N(0, sigma^2):
strategy s, seed i. A seed is a block (same initial model draw, same first prompts), so the model
is additive in strategy and seed; a strategy x seed interaction is not estimable and is part of
the residual. Fitted by OLS on the cells present (intercept, treatment-coded strategies and
seeds). With every seed complete it is the classical two-way layout: alpha_a - alpha_b is the
difference of the two strategies' seed means, SE = s sqrt(2 / n), s^2 the residual mean square
pooled over all S strategies on df = (S - 1)(n - 1). A missing run makes the layout unbalanced;
OLS still gives unbiased contrasts, their covariance s^2 L (X'X)^-1 L' and df = N - rank(X)
(a seed with a single run then informs nothing; it only costs no df). Nothing is dropped.

**Estimand.** Held-out sets are fixed and the same for every seed, so alpha_a - alpha_b is the
difference in expected accuracy *on those prompts* over training seeds; seed-based intervals
treat the prompts as fixed. The bootstrap below adds prompt sampling.

**Family.** Per endpoint, every contrast reported for it (each strategy against the baseline,
against the tuned ``static``, each Gram method against ``equal_task``): the family-wise error
rate of the simultaneous intervals is <= alpha within an endpoint. The two endpoints (final mean
accuracy, primary; final worst-task accuracy, secondary) are separate families; nothing is
adjusted across them.

**Dunnett (single-step max-t).** Under the null, T_c = est_c / SE_c over the family is
multivariate t with df and correlation R = D^-1/2 C D^-1/2, C = L (X'X)^-1 L' (with one control
and complete seeds R has 0.5 off the diagonal, as in Dunnett 1955). The critical value c solves
P(max_c |T_c| <= c) = 1 - alpha (``scipy.stats.multivariate_t.cdf``, randomised quasi-Monte
Carlo with a fixed seed, error ~2e-4 in probability); intervals est +- c SE; adjusted
p = P(max |T| >= |t_c|). Contrasts against several references are linearly dependent
(A - static = (A - uniform) - (static - uniform)), so R is singular, which scipy's integration
does not handle (it returns a wrong probability): R is then replaced by
(1 - RIDGE) R + RIDGE I, RIDGE = 1e-3; against a simulation of max |T| with the singular R
(8 strategies x 6 seeds, 13 contrasts) P(max |T| <= c) came out 0.9496 +- 0.0002 for 0.95
(tests/test_comparison.py checks it).

**Holm** is the cross-check: Holm's step-down on the unadjusted two-sided t p-values of the same
family (valid under any dependence; ignores the correlation).

**MDE** of a contrast: (c + t_{power, df}) SE, the true difference whose simultaneous interval
excludes 0 with probability ~power (it treats the noncentral t as a shifted t: for c = 2.7 on
35 df the exact power at the MDE is 79.7%, for c = 3.0 on 4 df 78.6%). SE uses the estimated s,
so the printed MDE is itself an estimate.

**Verdict** (three outcomes): better if the simultaneous interval lies above 0, worse if below,
otherwise undetermined (within MDE): then |est| < c SE < MDE.

**Worst task** of a strategy: the task with the lowest seed-mean accuracy, k*; its per-seed
value is that task's accuracy, so the mean over seeds is min_k of the seed means (the minimum is
taken after averaging; a per-run minimum is biased low by every task's noise). Choosing k* on the
same data is a small selection effect, left uncorrected.

**Paired bootstrap over prompts and seeds** (final mean accuracy, two strategies, the seeds both
ran). Outcomes Y_s[i, k, j] (seed i, task k, prompt j); the difference is
D = mean_k mean_{i, j} (Y_a - Y_b)[i, k, j]. A replicate resamples seeds (with replacement) and,
per task, prompts (with replacement), the same indices for both strategies (paired over seeds and
prompts: the prompts are the same on every seed); percentile interval. Resampling prompts alone
(seeds fixed) and seeds alone (prompts fixed) gives the two margins' SDs. This crossed
("pigeonhole", Owen 2007) bootstrap counts the prompt x seed interaction (a prompt's outcome
flipping between seeds) in both margins, so it overstates Var(D) when that interaction is large,
and with few seeds its seed margin is too narrow (by about sqrt((n - 1) / n), and discrete);
tests/test_comparison.py measures its coverage in both regimes.

**Variance split** (``variance_split``): unbiased two-way random-effects moments of Var(D), per
task d_ij = mu + a_i + b_j + e_ij: seed (systematic seed shifts, a), prompt (which prompts were
held out, b) and outcome (per-prompt flips between seeds, e; the part a larger held-out set
shrinks). Evaluation noise is prompt + outcome; seed noise is the seed part. Its t-interval,
D +- t(0.975, n - 1) sqrt(Var), is the prompts-and-seeds interval that keeps its nominal coverage
in those simulations. The bootstrap and the split are per contrast (no multiplicity adjustment)
and give no verdicts.

**Measured** (tests/test_comparison.py, fixed seeds). 8 strategies x 6 seeds, 13 contrasts
against two controls, 500 replicates at a planted null: family-wise error 0.052 (Dunnett), 0.032
(Holm), 0.328 (unadjusted), MC SE 0.010. A planted difference of 1x / 1.5x the MDE was declared
better in 78.2% / 100% of 500 replicates. Prompts and seeds drawn afresh (300 replicates, 2 tasks
x 120 prompts): crossed-bootstrap coverage of the 95% interval 99.3% (6 seeds, outcome flips
dominate), 95.3% (6 seeds, mixed), 84.7% (3 seeds, seed shifts dominate); the variance split's
t-interval 95.7%, 96.0%, 96.0%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

ALPHA = 0.05
POWER = 0.8
RIDGE = 1e-3  # shrinkage of a singular contrast correlation towards I before integrating
QMC_SEED = 0  # fixed: critical values and p-values are reproducible
QMC_POINTS = 100_000  # integration points: error ~2e-4 in probability, ~0.002 in c (13 contrasts)


# --- the strategy x seed model -----------------------------------------------------------------


@dataclass(frozen=True)
class BlockFit:
    """OLS fit of y = mu + alpha_s + beta_i + e on the cells of a seeds x strategies table."""

    strategies: list[str]
    coef: np.ndarray  # [S] alpha_s - alpha_{strategies[0]} (0 for the first)
    cov_unscaled: np.ndarray  # [S, S] (X'X)^-1 of ``coef`` (row and column 0 zero)
    sigma2: float  # residual mean square (NaN when df = 0)
    df: int
    n_obs: int

    def contrast(self, a: str, b: str) -> tuple[float, float]:
        """alpha_a - alpha_b and its unscaled variance l' (X'X)^-1 l."""
        v = self.vector(a, b)
        return float(v @ self.coef), float(v @ self.cov_unscaled @ v)

    def vector(self, a: str, b: str) -> np.ndarray:
        v = np.zeros(len(self.strategies))
        v[self.strategies.index(a)] += 1.0
        v[self.strategies.index(b)] -= 1.0
        return v


def fit_blocks(table: pd.DataFrame) -> BlockFit:
    """Fit the additive strategy x seed model; ``table``: index seeds, columns strategies, NaN
    where a run is missing. Strategies without any value are left out."""
    table = table.dropna(axis=1, how="all")
    strategies = [str(c) for c in table.columns]
    seeds = list(table.index)
    cells = [
        (s, i, float(table.iat[i, s]))
        for s in range(len(strategies))
        for i in range(len(seeds))
        if np.isfinite(table.iat[i, s])
    ]
    n_s, n_i = len(strategies), len(seeds)
    x = np.zeros((len(cells), n_s + n_i - 1))  # intercept, strategies 1.., seeds 1..
    x[:, 0] = 1.0
    for row, (s, i, _) in enumerate(cells):
        if s > 0:
            x[row, s] = 1.0
        if i > 0:
            x[row, n_s + i - 1] = 1.0
    y = np.array([c[2] for c in cells])
    rank = np.linalg.matrix_rank(x)
    if rank < x.shape[1]:
        raise ValueError(
            "comparison: strategies and seeds are not connected (some strategy shares no seed "
            "with the others); its differences are not estimable"
        )
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = xtx_inv @ x.T @ y
    df = len(y) - rank
    resid = y - x @ beta
    sigma2 = float(resid @ resid / df) if df > 0 else math.nan
    coef = np.concatenate([[0.0], beta[1:n_s]])
    cov = np.zeros((n_s, n_s))
    cov[1:, 1:] = xtx_inv[1:n_s, 1:n_s]
    return BlockFit(strategies, coef, cov, sigma2, df, len(y))


# --- the multivariate t: Dunnett's critical value and adjusted p -------------------------------


def _mvt(corr: np.ndarray, df: int):
    from scipy import stats as sps

    if np.linalg.eigvalsh(corr).min() < 1e-8:  # dependent contrasts: see RIDGE in the docstring
        corr = (1 - RIDGE) * corr + RIDGE * np.eye(len(corr))
    return sps.multivariate_t(shape=corr, df=df)


def _inside(mvt, c: float) -> float:
    """P(max |T| <= c)."""
    bound = np.full(mvt.dim, c)
    return float(mvt.cdf(bound, lower_limit=-bound, maxpts=QMC_POINTS, random_state=QMC_SEED))


def dunnett_critical(corr: np.ndarray, df: int, alpha: float = ALPHA) -> float:
    """c with P(max_j |T_j| <= c) = 1 - alpha, T multivariate t(df) with correlation ``corr``."""
    corr = np.asarray(corr, dtype=float)
    key = (tuple(np.round(corr, 10).ravel()), len(corr), int(df), float(alpha))
    return _critical_cached(key)


@lru_cache(maxsize=256)
def _critical_cached(key: tuple) -> float:
    from scipy import optimize
    from scipy import stats as sps

    flat, m, df, alpha = key
    if df < 1:
        return math.nan
    low = float(sps.t.ppf(1 - alpha / 2, df))  # one comparison: c cannot be smaller
    if m == 1:
        return low
    high = float(sps.t.ppf(1 - alpha / (2 * m), df))  # Bonferroni: c cannot be larger
    mvt = _mvt(np.array(flat).reshape(m, m), df)

    def gap(c: float) -> float:
        return _inside(mvt, c) - (1 - alpha)

    # the integration is noisy at ~1e-4: at the bracket's ends, trust the bound
    if gap(low) >= 0:
        return low
    if gap(high) <= 0:
        return high
    return float(optimize.brentq(gap, low, high, xtol=1e-4))


def max_t_pvalues(t: np.ndarray, corr: np.ndarray, df: int) -> np.ndarray:
    """Single-step adjusted p-values P(max_j |T_j| >= |t_c|) for each observed t_c."""
    from scipy import stats as sps

    t = np.abs(np.asarray(t, dtype=float))
    if df < 1:
        return np.full(t.shape, math.nan)
    if len(t) == 1:
        return 2 * sps.t.sf(t, df)
    mvt = _mvt(np.asarray(corr, dtype=float), df)
    out = []
    for value in t:
        out.append(0.0 if np.isinf(value) else 1.0 - _inside(mvt, float(value)))
    return np.clip(np.array(out), 0.0, 1.0)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest p times (m - i + 1), made monotone, capped
    at 1 (NaN stays NaN and does not count in m). statsmodels' ``multipletests`` gives the same
    (tests check it) but collects garbage on every call, too slow for the simulations."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * (len(order) - np.arange(len(order)))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def mde(critical: float, df: int, se: float, power: float = POWER) -> float:
    """Minimum detectable effect: (c + t_{power, df}) SE."""
    from scipy import stats as sps

    if df < 1 or not math.isfinite(critical):
        return math.nan
    return float((critical + sps.t.ppf(power, df)) * se)


def verdict(low: float, high: float) -> str:
    """better / worse when the interval excludes 0, otherwise undetermined."""
    if math.isfinite(low) and low > 0:
        return "better"
    if math.isfinite(high) and high < 0:
        return "worse"
    return "undetermined (within MDE)"


# --- a family of contrasts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Contrast:
    """strategy - reference on one endpoint, with its simultaneous interval."""

    strategy: str
    reference: str
    estimate: float
    se: float
    low: float  # simultaneous (Dunnett) interval
    high: float
    p_adjusted: float  # single-step Dunnett
    p_holm: float
    p_raw: float  # unadjusted two-sided t, pooled SE
    mde: float
    paired_sd: float  # SD over the seeds both ran of the per-seed difference
    per_seed: dict[int, float] = field(default_factory=dict)  # seed -> difference

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)


@dataclass(frozen=True)
class Family:
    """All contrasts of one endpoint, with the numbers that describe the family."""

    endpoint: str
    contrasts: list[Contrast]
    df: int
    residual_sd: float
    critical: float
    alpha: float
    power: float
    strategies: int
    seeds: int

    def get(self, strategy: str, reference: str) -> Contrast | None:
        for c in self.contrasts:
            if (c.strategy, c.reference) == (strategy, reference):
                return c
        return None

    def describe(self) -> str:
        """One sentence: the family and its model."""
        if self.df < 1:
            return (
                f"{len(self.contrasts)} contrast(s), no residual degrees of freedom (one seed): "
                "no intervals."
            )
        return (
            f"{len(self.contrasts)} contrast(s) in the family; {self.strategies} strategies x "
            f"{self.seeds} seeds, pooled residual SD {100 * self.residual_sd:.2f} points on "
            f"{self.df} df; Dunnett's critical value {self.critical:.3f} for "
            f"{100 * (1 - self.alpha):.0f}% simultaneous intervals; MDE at "
            f"{100 * self.power:.0f}% power."
        )


def contrast_family(
    table: pd.DataFrame,
    pairs: list[tuple[str, str]],
    endpoint: str = "",
    alpha: float = ALPHA,
    power: float = POWER,
    adjusted_p: bool = True,
) -> Family:
    """Fit the strategy x seed model to ``table`` (index seeds, columns strategies) and test
    every (strategy, reference) in ``pairs`` as one family. ``adjusted_p=False`` skips the
    Dunnett p-values (one integration each; the intervals do not need them)."""
    from scipy import stats as sps

    fit = fit_blocks(table)
    pairs = [(a, b) for a, b in pairs if a in fit.strategies and b in fit.strategies]
    est = np.array([fit.contrast(a, b)[0] for a, b in pairs])
    width = fit.cov_unscaled.shape[0]  # no pairs (one strategy: stage 0 alone) is an empty family
    vectors = np.array([fit.vector(a, b) for a, b in pairs]).reshape(len(pairs), width)
    cov = vectors @ fit.cov_unscaled @ vectors.T  # [m, m], unscaled
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd) if len(pairs) else cov
    se = sd * math.sqrt(fit.sigma2) if fit.df > 0 else np.full(len(pairs), math.nan)
    crit = dunnett_critical(corr, fit.df, alpha) if len(pairs) else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, est / se, np.where(est == 0, 0.0, np.sign(est) * np.inf))
    p_raw = 2 * sps.t.sf(np.abs(t), fit.df) if fit.df > 0 else np.full(len(pairs), math.nan)
    p_adj = (
        max_t_pvalues(t, corr, fit.df)
        if adjusted_p and len(pairs)
        else np.full(len(pairs), math.nan)
    )
    p_holm = holm(p_raw)
    contrasts, values = [], table.to_numpy(dtype=float)
    column = {str(name): j for j, name in enumerate(table.columns)}
    for k, (a, b) in enumerate(pairs):
        d = values[:, column[a]] - values[:, column[b]]  # NaN where either run is missing
        diffs = {int(s): float(x) for s, x in zip(table.index, d, strict=True) if np.isfinite(x)}
        contrasts.append(
            Contrast(
                a, b, float(est[k]), float(se[k]),
                float(est[k] - crit * se[k]), float(est[k] + crit * se[k]),
                float(p_adj[k]), float(p_holm[k]), float(p_raw[k]),
                mde(crit, fit.df, float(se[k]), power),
                float(np.std(list(diffs.values()), ddof=1)) if len(diffs) > 1 else math.nan,
                diffs,
            )
        )  # fmt: skip
    n_seeds = int(table[fit.strategies].notna().any(axis=1).sum())
    return Family(
        endpoint, contrasts, fit.df, math.sqrt(fit.sigma2) if fit.df > 0 else math.nan,
        crit, alpha, power, len(fit.strategies), n_seeds,
    )  # fmt: skip


def worst_task_table(finals: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per strategy (``finals[s]``: index seeds, columns tasks, final accuracies) the task with
    the lowest seed-mean accuracy and its per-seed values: a seeds x strategies table whose
    column means are min over tasks of the seed means."""
    columns, chosen = {}, {}
    for name, frame in finals.items():
        task = str(frame.mean(axis=0).idxmin())
        chosen[name] = task
        columns[name] = frame[task]
    return pd.DataFrame(columns), chosen


# --- the paired bootstrap over prompts and seeds ----------------------------------------------


@dataclass(frozen=True)
class VarianceSplit:
    """Var(D) of a difference of final mean accuracy, split by the two-way random-effects
    moments (see the module docstring); components can come out negative by chance."""

    seed: float  # systematic seed-to-seed shifts, / n
    prompt: float  # which prompts were held out, / n_prompts
    outcome: float  # per-prompt outcome flips between seeds (prompt x seed), / (n n_prompts)
    seeds: int

    @property
    def total(self) -> float:
        return self.seed + self.prompt + self.outcome

    @property
    def se(self) -> float:
        return math.sqrt(self.total) if self.total > 0 else math.nan

    def interval(self, estimate: float, level: float = 0.95) -> tuple[float, float]:
        """estimate +- t(level, n - 1) SE (n - 1 df: conservative when the seed part is small)."""
        from scipy import stats as sps

        if self.seeds < 2 or not math.isfinite(self.se):
            return math.nan, math.nan
        half = float(sps.t.ppf((1 + level) / 2, self.seeds - 1)) * self.se
        return estimate - half, estimate + half

    @property
    def outcome_share_paired(self) -> float:
        """Share of the paired (per-seed) variance that per-prompt outcome flips explain."""
        within = self.seed + self.outcome
        return self.outcome / within if within > 0 else math.nan


def variance_split(diff: dict[str, np.ndarray]) -> VarianceSplit:
    """Unbiased moments of Var(D), D = mean_k mean_{i, j} diff[k][i, j] ([n, n_k] per task),
    under d^k_{ij} = mu_k + a^k_i + b^k_j + e^k_{ij} (seeds shared by the tasks, prompts not):
    Var(D) = Var(mean_k a^k_.) + sum_k var(b^k) / (K^2 n_k) + sum_k var(e^k) / (K^2 n n_k),
    estimated from the per-seed means s_i, the prompt means and each task's residual mean
    square MS_k: seed = var(s) / n - outcome, prompt = sum_k (var_j(d_.j) - MS_k / n) /
    (K^2 n_k), outcome = sum_k MS_k / (K^2 n n_k)."""
    k_tasks = len(diff)
    n = next(iter(diff.values())).shape[0]
    if n < 2:
        return VarianceSplit(math.nan, math.nan, math.nan, n)
    per_seed = np.mean([d.mean(axis=1) for d in diff.values()], axis=0)  # [n]
    prompt = outcome = 0.0
    for d in diff.values():
        n_k = d.shape[1]
        resid = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + d.mean()
        ms = float((resid**2).sum() / ((n - 1) * (n_k - 1))) if n_k > 1 else 0.0
        outcome += ms / (k_tasks**2 * n * n_k)
        spread = float(d.mean(axis=0).var(ddof=1)) if n_k > 1 else 0.0
        prompt += (spread - ms / n) / (k_tasks**2 * n_k)
    seed = float(per_seed.var(ddof=1)) / n - outcome
    return VarianceSplit(seed, prompt, outcome, n)


@dataclass(frozen=True)
class Bootstrap:
    """Difference of final mean accuracy (a - b) over the seeds both ran: the paired bootstrap
    over prompts and seeds, each resampled alone, and the moment split of its variance."""

    estimate: float
    low: float  # percentile interval, prompts and seeds resampled together
    high: float
    sd: float  # bootstrap SD, prompts and seeds resampled together
    sd_prompts: float  # prompts resampled alone (seeds fixed)
    sd_seeds: float  # seeds resampled alone (prompts fixed)
    paired_sd: float  # observed SD over seeds of the per-seed difference
    split: VarianceSplit
    prompts: dict[str, int]

    @property
    def seeds(self) -> int:
        return self.split.seeds


def paired_bootstrap(
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    replicates: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Bootstrap:
    """``a[task]``, ``b[task]``: outcomes [n_seeds, n_prompts] of two strategies, rows the same
    seeds in the same order, columns the task's held-out prompts in eval_set order."""
    tasks = list(a)
    if set(b) != set(tasks):
        raise ValueError(f"bootstrap: tasks differ: {sorted(a)} vs {sorted(b)}")
    n = a[tasks[0]].shape[0]
    for k in tasks:
        if a[k].shape != b[k].shape or a[k].shape[0] != n:
            raise ValueError(f"bootstrap: {k}: outcomes {a[k].shape} vs {b[k].shape}")
    diff = {k: a[k].astype(float) - b[k].astype(float) for k in tasks}  # [n, n_k]
    rng = np.random.default_rng(seed)
    v = rng.multinomial(n, np.full(n, 1 / n), size=replicates).astype(float)  # [B, n] seed counts
    both, prompts, seeds = (np.zeros(replicates) for _ in range(3))
    for k in tasks:
        d, n_k = diff[k], diff[k].shape[1]
        w = rng.multinomial(n_k, np.full(n_k, 1 / n_k), size=replicates).astype(float)
        scale = len(tasks) * n * n_k  # replicate = sum_ij v_i w_j d_ij / (n n_k), mean over k
        both += ((v @ d) * w).sum(axis=1) / scale
        prompts += w @ d.sum(axis=0) / scale
        seeds += v @ d.sum(axis=1) / scale
    per_seed = np.mean([diff[k].mean(axis=1) for k in tasks], axis=0)  # [n]
    lo, hi = np.quantile(both, [(1 - level) / 2, (1 + level) / 2])
    return Bootstrap(
        float(per_seed.mean()), float(lo), float(hi), float(both.std(ddof=1)),
        float(prompts.std(ddof=1)), float(seeds.std(ddof=1)),
        float(per_seed.std(ddof=1)) if n > 1 else math.nan,
        variance_split(diff), {k: diff[k].shape[1] for k in tasks},
    )  # fmt: skip
