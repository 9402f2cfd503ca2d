"""Figures of how tasks relate: gradient cosines, the proxy scope, the transfer matrix
(conventions: figures.py; heat maps carry a colour bar in place of a legend)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from taskgrad.analysis import measures
from taskgrad.analysis.analyse import GroupAnalysis
from taskgrad.analysis.figures import (
    Fig,
    Palette,
    all_tasks,
    finish,
    grid,
    labels,
    panels,
    set_log,
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
        "cos(g_j, g_k) = <g_j, g_k> / sqrt(u_j u_k) from the step's Gram matrix (undefined, and "
        "left out, when either unbiased squared norm is not positive), averaged over the steps of "
        "the first and of the second half of training and over seeds; the diagonal is 1."
    )
    return Fig("cosine", fig, caption)


def fig_proxy(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """Proxy (last attention block) vs full-model unbiased squared norm, per task and step."""
    pairs = {a.label: measures.proxy_pairs(a.group) for a in items}
    rows = [a for a in items if len(pairs[a.label])]
    if not rows:
        return None
    fig, axes = panels(len(rows), 4.6, 3.8)
    dropped = 0
    for ax, a in zip(axes, rows, strict=True):
        p = pairs[a.label]
        ok = (p.full > 0) & (p.proxy > 0)
        dropped += int((~ok).sum())
        for task in a.group.tasks:
            t = p[ok & (p.task == task)]
            ax.scatter(t.full, t.proxy, color=pal(task), s=12, alpha=0.5, lw=0)
        set_log(ax, "x")
        set_log(ax)
        labels(
            ax,
            "full-model squared norm (unbiased), log",
            "proxy squared norm (unbiased), log",
            f"{a.label}: Spearman {fmt(a.proxy[0])}",
        )
    finish(fig, "Does the cheap proxy track the full gradient?", pal.handles(all_tasks(rows)))
    caption = (
        "Each point: one task at one step of one seed. The proxy is the gradient of the last "
        "attention block (the paper's cheap stand-in). Titles: Spearman's rho over all points "
        f"(non-positive values included); {dropped} points with a non-positive estimate are not "
        "drawn on the log axes."
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
        vmax = max(float(np.nanmax(np.abs(m.to_numpy(dtype=float)))) for _, m in mats) or 1.0
        for ax, (step, m) in zip(row, mats, strict=True):
            heatmap(
                ax,
                m,
                vmax if np.isfinite(vmax) and vmax > 0 else 1.0,
                "Δ probe reward (fraction correct)",
            )
            labels(
                ax,
                "evaluated task k",
                "task j whose part of the step is applied",
                f"{a.label}: step {step}",
            )
        for ax in row[len(mats) :]:
            ax.set_visible(False)
    finish(fig, "Transfer between tasks within one step", [])
    caption = (
        "Row j, column k: the paired probe-reward change on task k when only task j's part of the "
        "AdamW step is applied (its fresh-gradient term, with the step's preconditioner and clip "
        "factor), at the steps in diagnostics.transfer_at; mean over seeds."
    )
    return Fig("transfer", fig, caption)
