r"""Per-configuration measurements besides the gradient estimators: transfer and accuracy.

(The gradient statistics, pooled over windows before any ratio, are in windows.py.)

transfer          ``transfer/<j>__<k>``: probe gain on k from task j's part of one step, mean over
                  seeds, with the logged standard error (its median is the noise floor: entries
                  whose 95% interval holds 0 are below the probe's resolution)
held-out accuracy ``eval/<k>/accuracy`` (greedy or avg@k by eval.samples, on the task's fixed
                  held-out set, the same for every seed); the interval of a final accuracy is
                  the t-interval over seeds, or with one seed the binomial normal approximation
                  1.96 sqrt(p (1 - p) / n) (for the task mean: 1.96 sqrt(sum_k p_k (1 - p_k) / n)
                  / K; conservative for avg@k, whose per-prompt outcomes vary less)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from taskgrad import metrics as M
from taskgrad.analysis.runs import Group
from taskgrad.analysis.stats import Z95, mean_ci


@dataclass
class Transfer:
    """One transfer matrix: mean over seeds (rows j: whose part of the step; columns k: the task
    probed), its standard error, and the noise floor (median 1.96 x standard error)."""

    step: int
    gain: pd.DataFrame
    se: pd.DataFrame
    floor: float

    @property
    def resolved(self) -> pd.DataFrame:
        """True where the entry's 95% interval excludes 0 (above the probe's resolution)."""
        return (self.gain.abs() > 1.96 * self.se).fillna(False)


def transfer(group: Group) -> dict[int, Transfer]:
    """Step -> the transfer matrix measured at that step (see Transfer)."""
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
        gain = pd.DataFrame(np.nan, index=tasks, columns=tasks)
        se = pd.DataFrame(np.nan, index=tasks, columns=tasks)
        for (j, k), key in keys.items():
            values = np.array([r.column(key).get(step, np.nan) for r in group.runs], dtype=float)
            errors = np.array([r.column(key + "/se").get(step, np.nan) for r in group.runs],
                              dtype=float)  # fmt: skip
            if np.isfinite(values).any():
                gain.loc[j, k] = np.nanmean(values)
                n = np.isfinite(errors).sum()
                se.loc[j, k] = math.sqrt(np.nansum(errors**2)) / n if n else np.nan
        floor = (
            float(np.nanmedian(1.96 * se.to_numpy()))
            if np.isfinite(se.to_numpy()).any()
            else math.nan
        )
        out[step] = Transfer(step, gain, se, floor)
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
