"""Small, general statistics used by the findings; NaN (a logged ``null``) is always tolerated.

spearman, rowwise_spearman, mean_ci   from taskgrad.stats (shared with the loop)
seed_band(M)           mean over runs and a 95% t-interval of that mean, per step:
                       mean +- t(0.975, n-1) * sd / sqrt(n); no band with n < 2
percentile_ci(x)       the 2.5% and 97.5% quantiles of bootstrap replicates (NaNs dropped)
ema(x, span)           exponential moving average, alpha = 2 / (span + 1), skipping NaNs;
                       figures use span = max(3, n / 20) steps
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from taskgrad.stats import mean_ci, rowwise_spearman, spearman

__all__ = [
    "Z95", "ema", "fmt", "fmt_ci", "mean_ci", "nanmedian", "percentile_ci", "quiet",
    "rowwise_spearman", "seed_band", "smoothing_span", "spearman", "times",
]  # fmt: skip

Z95 = 1.959963984540054  # the 97.5% normal quantile


def seed_band(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per row (step): mean over columns (runs) and its 95% t-interval; NaN-aware.

    With n finite values at a step the band is mean +- t(0.975, n-1) * sd(ddof=1) / sqrt(n);
    steps with n < 2 get the mean and no band (NaN).
    """
    n = frame.notna().sum(axis=1)
    mean = frame.mean(axis=1, skipna=True)
    sd = frame.std(axis=1, ddof=1, skipna=True)
    t = pd.Series(
        [sps.t.ppf(0.975, k - 1) if k >= 2 else np.nan for k in n], index=frame.index, dtype=float
    )
    half = t * sd / np.sqrt(n.where(n > 0))
    return mean, mean - half, mean + half


def percentile_ci(samples, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval; NaN replicates (undefined statistic) are dropped."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size < 10:  # too few defined replicates to place 2.5% quantiles
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(s, [tail, 100 - tail])
    return float(lo), float(hi)


def ema(values, span: float) -> np.ndarray:
    """Exponential moving average, alpha = 2 / (span + 1); NaNs are skipped (the average carries
    over them) and positions before the first finite value stay NaN."""
    alpha = 2.0 / (max(span, 1.0) + 1.0)
    out = np.full(len(values), np.nan)
    acc = math.nan
    for i, v in enumerate(np.asarray(values, dtype=float)):
        if math.isfinite(v):
            acc = v if not math.isfinite(acc) else alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def smoothing_span(n_points: int) -> float:
    """A span that smooths like the paper's curves: about 1/20 of the run, at least 3 steps."""
    return max(3.0, n_points / 20)


def nanmedian(values) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table: 'n/a' for undefined, scientific for very small or large."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) < 10 ** -(digits + 1) or abs(value) >= 1e5):
        return f"{value:.{digits}e}"
    return f"{value:.{digits}f}"


def fmt_ci(value: float, lo: float, hi: float, digits: int = 2) -> str:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


@contextlib.contextmanager
def quiet():
    """Silence numpy's 'mean of empty slice' warnings: all-NaN replicates are dropped later."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def times(value: float | None) -> str:
    """A ratio for a table: '12.3×', or 'n/a' when undefined."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}×"


def fmt_explained(value: float) -> str:
    """A share explained that can be very negative (a model worse than none): '< -1' below -1."""
    return "< -1" if math.isfinite(value) and value < -1 else fmt(value)
