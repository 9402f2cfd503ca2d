"""The statistics helpers shared by the loop and the analysis (one copy of each).

spearman(x, y)       Pearson correlation of average ranks over the finite pairs (>= 3)
rowwise_spearman     the same for each row of [B, n] arrays (bootstrap replicates)
mean_ci(values)      mean of the finite values and its 95% t-interval,
                     mean +- t(0.975, n-1) * sd / sqrt(n); no interval with n < 2

scipy is imported when first used, so the core import stays light.
"""

from __future__ import annotations

import math

import numpy as np


def spearman(x, y) -> float:
    """Rank correlation of finite pairs (average ranks for ties); NaN if < 3 pairs or no spread."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return math.nan
    return float(rowwise_spearman(x[keep][None, :], y[keep][None, :])[0])


def rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of x, y [B, n] (values finite); NaN for a flat row."""
    from scipy import stats as sps

    rx = sps.rankdata(x, axis=1)  # [B, n] average ranks
    ry = sps.rankdata(y, axis=1)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(axis=1) / denom, np.nan)


def mean_ci(values) -> tuple[float, float, float]:
    """Mean of finite values and its 95% t-interval (NaN bounds with fewer than 2 values)."""
    from scipy import stats as sps

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size < 2:
        return float(v.mean()), math.nan, math.nan
    half = sps.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)
