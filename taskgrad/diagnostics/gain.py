"""The paper's windowed learning gain, from each task's history of mean training rewards.

gain_k(c) = mean reward of steps c+1..c+s  -  mean reward of steps c-s+1..c   (s = gain_window)

Logged s steps late, centred on c = step - s. The rewards are of different prompt batches, so
the gain is noisy; paired probe gains (probe.py) measure the same thing with less noise.
"""

from __future__ import annotations

import math

import torch

from taskgrad import metrics as M


def latest_gains(history: dict[str, list[float]], tasks: list[str], s: int) -> torch.Tensor:
    """The most recent windowed gain per task, [K] float64 (NaN before 2s steps)."""
    out = []
    for task in tasks:
        r = history.get(task, [])
        known = s > 0 and len(r) >= 2 * s
        out.append(sum(r[-s:]) / s - sum(r[-2 * s : -s]) / s if known else math.nan)
    return torch.tensor(out, dtype=torch.float64)


def window_gains(
    history: dict[str, list[float]], tasks: list[str], step: int, s: int
) -> dict[str, float]:
    """The windowed gain centred s steps back, once 2s steps are known."""
    out: dict[str, float] = {}
    if s > 0 and step >= 2 * s:
        center = step - s  # mean reward of steps center+1..step minus center-s+1..center
        for task in tasks:
            r = history[task]
            after, before = r[center : center + s], r[center - s : center]
            out[M.gain_key(task, "window")] = sum(after) / s - sum(before) / s
        out[M.WINDOW_CENTER] = center
    return out
