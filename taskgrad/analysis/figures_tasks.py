"""Figures of how tasks relate: gradient cosines, the proxy scope, the transfer matrix
(conventions: figures.py; heat maps carry a colour bar in place of a legend)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from taskgrad.analysis.analyse import GroupAnalysis
from taskgrad.analysis.figures import (
    Fig,
    Palette,
    all_tasks,
    finish,
    grid,
    labels,
    panels,
)
from taskgrad.analysis.stats import fmt


def heatmap(ax, matrix: pd.DataFrame, vmax: float, bar_label: str):
    """A diverging heat map with values written in the cells and a labelled colour bar."""
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    for (i, j), v in np.ndenumerate(matrix.to_numpy(dtype=float)):
        ax.text(
            j,
            i,
            fmt(v),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if np.isfinite(v) and abs(v) > 0.6 * vmax else "black",
        )
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(bar_label)
    bar.ax.set_label("colorbar")  # lets tests tell colour bars from panels
    ax.spines[["top", "right"]].set_visible(True)
    return bar


def fig_cosine(items: list[GroupAnalysis]) -> Fig | None:
    """Mean pairwise task-gradient cosines over the first and second half of training."""
    rows = [a for a in items if a.cosines]
    if not rows:
        return None
    fig, axes = grid(len(rows), 2, 4.6, 3.9)
    for row, a in zip(axes, rows, strict=True):
        for ax, half in zip(row, ("early", "late"), strict=True):
            heatmap(ax, a.cosines[half], 1.0, "cosine (unitless)")
            labels(ax, "task", "task", f"{a.label}: {half} half of training")
    finish(fig, "Cosine similarity of task gradients", [])
    caption = (
        "cos(g_j, g_k) = I_jk / sqrt(U_j U_k) of the sums over the steps of the first and of the "
        "second half of training (and seeds) of the unbiased inner products and squared norms: "
        "sums first, the cosine after, so per-step noise does not bias it. Undefined (n/a) where "
        "either task has no detectable gradient signal (its pooled squared norm's 95% interval "
        "holds 0)."
    )
    return Fig("cosine", fig, caption)


def fig_proxy(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """Proxy (last attention block) vs full-model squared norm, window means per task."""
    rows = [a for a in items if any(w.proxy_sum is not None for w in a.windows)]
    if not rows:
        return None
    fig, axes = panels(len(rows), 4.6, 3.8)
    for ax, a in zip(axes, rows, strict=True):
        for w in a.windows:
            if w.proxy_sum is None:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                proxy = w.proxy_sum / w.n
            for k, task in enumerate(a.group.tasks):
                ax.scatter(w.u[:, k], proxy[:, k], color=pal(task), s=14, alpha=0.6, lw=0)
        ax.set_xscale("symlog", linthresh=1e-6)
        ax.set_yscale("symlog", linthresh=1e-7)
        rho, lo, hi = a.proxy
        labels(
            ax,
            "full-model squared norm (window mean), symlog",
            "proxy squared norm (window mean), symlog",
            f"{a.label}: rho {fmt(rho)} [{fmt(lo)}, {fmt(hi)}]",
        )
    finish(fig, "Does the cheap proxy track the full gradient?", pal.handles(all_tasks(rows)))
    caption = (
        "Each point: one task in one window of one seed (window means of the unbiased estimates, "
        "zero and negative included). The proxy is the gradient of the last attention block (the "
        "paper's cheap stand-in). Titles: Spearman's rho across tasks per window, averaged over "
        "windows and seeds, with its 95% block-bootstrap interval."
    )
    return Fig("proxy-vs-full", fig, caption)


def fig_transfer(items: list[GroupAnalysis]) -> Fig | None:
    """T[j, k]: probe gain on task k from applying only task j's part of one step."""
    rows = [a for a in items if a.transfer]
    if not rows:
        return None
    n_cols = min(4, max(len(a.transfer) for a in rows))
    fig, axes = grid(len(rows), n_cols, 4.8, 4.0)
    for row, a in zip(axes, rows, strict=True):
        mats = list(a.transfer.items())[:n_cols]
        vmax = max(float(np.nanmax(np.abs(t.gain.to_numpy(dtype=float)))) for _, t in mats)
        for ax, (step, t) in zip(row, mats, strict=True):
            shown = t.gain.where(t.resolved)  # below resolution: n/a
            heatmap(
                ax,
                shown,
                vmax if np.isfinite(vmax) and vmax > 0 else 1.0,
                "Δ probe reward (fraction correct)",
            )
            labels(
                ax,
                "evaluated task k",
                "task j whose part of the step is applied",
                f"{a.label}: step {step}, noise floor {fmt(t.floor, 3)}",
            )
        for ax in row[len(mats) :]:
            ax.set_visible(False)
    finish(fig, "Transfer between tasks within one step", [])
    caption = (
        "Row j, column k: the paired probe-reward change on task k when only task j's part of the "
        "AdamW step is applied (its fresh-gradient term, with the step's preconditioner and clip "
        "factor), at the steps in diagnostics.transfer_at; mean over seeds. Entries whose 95% "
        "interval (over probe prompts) holds 0 are below the probe's resolution and shown as n/a; "
        "titles give the noise floor, the median half-width of that interval."
    )
    return Fig("transfer", fig, caption)
