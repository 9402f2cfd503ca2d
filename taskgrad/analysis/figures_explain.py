"""Figures of the explanations: gradient vs gain, |advantage| vs gradient, regressions, the
norm decomposition and the loss-aggregation experiment (conventions: figures.py)."""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from taskgrad.analysis import explain
from taskgrad.analysis.analyse import GroupAnalysis
from taskgrad.analysis.figures import (
    SQNORM_LABEL,
    Fig,
    Palette,
    all_tasks,
    empty,
    finish,
    grid,
    labels,
    panels,
    set_log,
)
from taskgrad.analysis.stats import fmt, times

SET_COLORS = ["#636363", "#e6550d", "#31a354", "#756bb1"]


def fig_gain_vs_grad(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """Window gradient (before) vs learning gain (after), per task and unit; verdict in titles."""
    if not any(len(a.units.grad) for a in items):
        return None
    fig, axes = panels(len(items), 4.8, 3.8)
    for ax, a in zip(axes, items, strict=True):
        for k, task in enumerate(a.group.tasks):
            ax.scatter(a.units.grad[:, k], a.units.gain[:, k], color=pal(task), s=30, alpha=0.8)
        ax.set_xscale("symlog", linthresh=_linthresh(a.units.grad))
        ax.axhline(0, color="black", lw=0.6)
        v = a.verdicts["c"]
        labels(
            ax,
            f"window-mean {SQNORM_LABEL} before, symlog",
            "learning gain (Δ window-mean reward)",
            f"{a.label}: {v.text} ({v.outcome})",
        )
    finish(fig, "Does gradient size predict learning gain?", pal.handles(all_tasks(items)))
    caption = (
        "Each point is one task in one (seed, window pair) unit: x, the window mean of the "
        "unbiased squared norm over window w (zero and negative means included: symlog axis); "
        "y, the mean reward over window w + 1 minus over window w. Titles: claim (c)'s statistic, "
        "Spearman's rho across tasks averaged over units with its 95% t-interval, and its "
        "verdict."
    )
    return Fig("gain-vs-gradient", fig, caption)


def _linthresh(values: np.ndarray) -> float:
    pos = np.abs(values[np.isfinite(values) & (values != 0)])
    return float(np.percentile(pos, 10)) if pos.size else 1e-6


def fig_adv_vs_grad(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """The paper's scatter on window means: mean |advantage| vs unbiased squared norm."""
    if not any(w.stats.get("abs_advantage") is not None for a in items for w in a.windows):
        return None
    fig, axes = panels(len(items), 4.8, 3.8)
    for ax, a in zip(axes, items, strict=True):
        values = []
        for w in a.windows:
            adv = w.stats["abs_advantage"]
            for k, task in enumerate(a.group.tasks):
                ax.scatter(adv[:, k], w.u[:, k], color=pal(task), s=14, alpha=0.5, lw=0)
                values.append(w.u[:, k])
        ax.set_yscale("symlog", linthresh=_linthresh(np.concatenate(values)))
        v = a.verdicts["d"]
        labels(ax, "window-mean |advantage|", f"window-mean {SQNORM_LABEL}, symlog",
               f"{a.label}: {v.outcome}")  # fmt: skip
    finish(fig, "|advantage| vs gradient size (window means)", pal.handles(all_tasks(items)))
    caption = (
        "Each point: one task in one window of one seed (window means, zero and negative squared "
        "norms included). Claim (d) compares the rank correlation within each task (across "
        "windows) with the one across tasks (of their means): "
        + "; ".join(f"{a.label}: {a.verdicts['d'].text}" for a in items)
    )
    return Fig("advantage-vs-gradient", fig, caption)


def fig_regression(items: list[GroupAnalysis]) -> Fig | None:
    """The imbalance each set of statistics explains, with its 95% interval."""
    if not any(np.isfinite(e.explained) for a in items for e in a.explanations):
        return None
    fig, axes = grid(1, 1, 7.0, 3.9)
    ax = axes[0][0]
    x = np.arange(len(items))
    names = [e.name for e in items[0].explanations]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        for j, a in enumerate(items):
            e = next(e for e in a.explanations if e.name == name)
            value = max(e.explained, -1.0) if np.isfinite(e.explained) else np.nan
            xi = x[j] + (i - (len(names) - 1) / 2) * width
            ax.bar(xi, value, width * 0.95, color=SET_COLORS[i % 4])
            if np.isfinite(e.lo) and np.isfinite(e.hi):
                lo, hi = max(e.lo, -1.0), min(e.hi, 1.0)
                ax.plot([xi, xi], [lo, hi], color="black", lw=1)
    ax.axhline(0.5, color="black", ls=":", lw=0.8)
    ax.set_xticks(x, [a.label for a in items], rotation=15, fontsize=8)
    labels(
        ax, "configuration", "imbalance explained (fraction)", "share of the imbalance explained"
    )
    handles = [Patch(color=SET_COLORS[i % 4], label=n) for i, n in enumerate(names)]
    handles.append(Line2D([], [], color="black", label="95% block-bootstrap interval"))
    finish(fig, "What explains the gradient size?", handles, ncol=3)
    caption = (
        "The share of the spread of the tasks' log pooled squared norm (the imbalance) that each "
        "set of statistics would produce if it acted across tasks as it does within them: "
        "within-task effects from a log-link GLM of window-mean squared norms (zero and negative "
        "included) with task fixed effects, applied to the task means. Dotted: 0.5, the margin "
        "of claims (e) and (f); values and interval ends below -1 are drawn at -1."
    )
    return Fig("regression", fig, caption)


FACTORS = {
    "|advantage|²": ("abs_advantage", 2, "#fdae6b"),
    "length normalisation²": ("normalisation", 2, "#74c476"),
    "score term": ("score", 1, "#9e9ac8"),
    "squared norm": ("sqnorm", 1, "#636363"),
    "contribution w²·u": ("contribution", 1, "#252525"),
}


def fig_decomposition(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """Per task, each factor of the squared norm relative to the smallest task (log scale)."""
    items = [a for a in items if (a.decomposition.sqnorm > 0).sum() >= 2]
    if not items:
        return None
    fig, axes = panels(len(items), 5.0, 3.8)
    for ax, a in zip(axes, items, strict=True):
        table, tasks = a.decomposition, a.group.tasks
        width = 0.8 / len(FACTORS)
        for i, (col, power, color) in enumerate(FACTORS.values()):
            v = table[col].reindex(tasks) ** power
            rel = v.where(v > 0) / v[v > 0].min() if (v > 0).any() else v * np.nan
            ax.bar(
                np.arange(len(tasks)) + (i - (len(FACTORS) - 1) / 2) * width,
                rel,
                width * 0.95,
                color=color,
            )
        set_log(ax)
        ax.set_xticks(range(len(tasks)), tasks, rotation=15)
        for tick, task in zip(ax.get_xticklabels(), tasks, strict=True):
            tick.set_color(pal(task))
        shares = ", ".join(f"{k.split()[0]} {fmt(v)}" for k, v in a.decomposition_shares.items())
        labels(
            ax, "task", "ratio to the smallest task (×, log)", f"{a.label}\nln-variance: {shares}"
        )
    handles = [Patch(color=c, label=name) for name, (_, _, c) in FACTORS.items()]
    finish(fig, "Decomposing the squared norm: u = |A|² · λ² · S", handles, ncol=5)
    caption = (
        "For each task, the mean over seeds and steps of each factor of its unbiased squared "
        "norm u = |A|^2 lambda^2 S, divided by the smallest task's value: mean |advantage| "
        "squared, the length normalisation lambda (1/mean response length for token_mean and "
        "seq_mean, 1/loss_constant for constant) squared, and the score term S that remains; and "
        "the task's contribution to the mixed update w^2 u (w: its share of the batch "
        "objective). Titles: the share of the across-task variance of ln u carried by each factor."
    )
    return Fig("decomposition", fig, caption)


def fig_aggregation(sets: list[list[GroupAnalysis]], pal: Palette) -> Fig | None:
    """The length experiment: per-task u, S and w^2 u under each loss aggregation."""
    if not sets:
        return None
    panels = (
        ("sqnorm", "squared norm u"),
        ("score", "score term S"),
        ("contribution", "contribution w²·u"),
    )
    fig, axes = grid(len(sets), 3, 4.6, 3.6)
    for row, members in zip(axes, sets, strict=True):
        aggs = [a.group.cfg("grpo.loss_agg", "token_mean") for a in members]
        tasks = members[0].group.tasks
        width = 0.8 / len(tasks)
        for ax, (col, title) in zip(row, panels, strict=True):
            ratios = []
            for i, a in enumerate(members):
                v = a.decomposition[col].reindex(tasks)
                ratios.append(explain.ratio(v))
                for k, task in enumerate(tasks):
                    if v[task] > 0:
                        ax.bar(
                            i + (k - (len(tasks) - 1) / 2) * width,
                            v[task],
                            width * 0.95,
                            color=pal(task),
                        )
            set_log(ax)
            ax.set_xticks(range(len(aggs)), aggs)
            ratio_text = ", ".join(f"{times(r)}" for r in ratios)
            labels(ax, "grpo.loss_agg", f"{title}, log", f"{title}: max/min {ratio_text}")
            if not any(np.isfinite(ratios)):
                empty(ax)
    finish(
        fig,
        "Does the imbalance survive other loss aggregations?",
        pal.handles(list(dict.fromkeys(t for s in sets for a in s for t in a.group.tasks))),
    )
    caption = (
        "The same mixture trained under each loss aggregation (token_mean: every token of the "
        "batch weighs the same; seq_mean: every sequence; constant: a fixed normaliser, no length "
        "dependence). Bars: per-task means over seeds and steps; titles: the largest over the "
        "smallest task, per aggregation in the order of the x axis. A task whose mean "
        "unbiased estimate is not positive (noise-dominated) has no bar."
    )
    return Fig("loss-aggregation", fig, caption)
