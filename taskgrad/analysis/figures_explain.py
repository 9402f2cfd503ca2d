"""Figures of the explanations: gradient vs gain, |advantage| vs gradient, regressions, the
norm decomposition and the loss-aggregation experiment (conventions: figures.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
from taskgrad.analysis.stats import fmt, fmt_ci, times

MARKERS = {"1/8": "o", "1/2": "s", "7/8": "^"}
MODEL_COLORS = {"statistics": "#9ecae1", "task identity": "#3182bd", "both": "#08519c"}


def fig_gain_vs_grad(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """Window gradient (before) vs learning gain (after), per task and window; rho in titles."""
    if not any(a.windows for a in items):
        return None
    fig, axes = panels(len(items), 4.8, 3.8)
    dropped = 0
    for ax, a in zip(axes, items, strict=True):
        for w in a.windows:
            for k, task in enumerate(a.group.tasks):
                if not (w.grad[k] > 0 and np.isfinite(w.gain[k])):
                    dropped += 1
                    continue
                ax.scatter(
                    w.grad[k],
                    w.gain[k],
                    color=pal(task),
                    marker=MARKERS[w.position],
                    s=30,
                    alpha=0.8,
                )
        set_log(ax, "x")
        ax.axhline(0, color="black", lw=0.6)
        r = a.rank
        labels(
            ax,
            f"mean {SQNORM_LABEL} before the window, log",
            "learning gain (Δ reward, fraction)",
            f"{a.label}: rho = {fmt_ci(r.rho, r.lo, r.hi)}",
        )
    windows = [
        Line2D([], [], color="#555555", marker=m, ls="", label=f"window near {p} of training")
        for p, m in MARKERS.items()
    ]
    finish(
        fig, "Does gradient size predict learning gain?", pal.handles(all_tasks(items)) + windows
    )
    caption = (
        "Each point is one task in one (seed, window) unit: x, the mean unbiased squared norm over "
        "the s steps before the window centre; y, the learning gain over the window. Titles: "
        "Spearman's rho across tasks, averaged over units, with its 95% bootstrap interval "
        f"(tasks, units and steps resampled). {dropped} points with a non-positive or undefined "
        "norm are not drawn (they count in rho)."
    )
    return Fig("gain-vs-gradient", fig, caption)


def fig_adv_vs_grad(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """The paper's scatter: mean |advantage| vs unbiased squared norm; within and across fits."""
    pairs = {a.label: explain.advantage_pairs(a.group) for a in items}
    if not any(len(p) for p in pairs.values()):
        return None
    fig, axes = panels(len(items), 4.8, 3.8)
    dropped = 0
    for ax, a in zip(axes, items, strict=True):
        p = pairs[a.label]
        dropped += int((p.sqnorm <= 0).sum())
        for task in a.group.tasks:
            t = p[(p.task == task) & (p.sqnorm > 0)]
            ax.scatter(t.abs_advantage, t.sqnorm, color=pal(task), s=12, alpha=0.45, lw=0)
            if task in a.advantage.fits and len(t):
                _fit_line(ax, a.advantage.fits[task], t.abs_advantage, pal(task), "--")
        means = a.advantage.task_means
        if means is not None and len(means):
            pos = means[means.sqnorm > 0]
            ax.scatter(
                pos.abs_advantage,
                pos.sqnorm,
                c=[pal(t) for t in pos.index],
                s=90,
                edgecolors="black",
                zorder=3,
            )
            if a.advantage.across_fit:
                _fit_line(ax, a.advantage.across_fit, pos.abs_advantage, "black", "-")
        set_log(ax)
        adv = a.advantage
        labels(
            ax,
            "mean |advantage| (group-std units)",
            f"{SQNORM_LABEL}, log",
            f"{a.label}: within rho {fmt(adv.within)}, across {fmt(adv.across)}",
        )
    extra = [
        Line2D([], [], color="#555555", ls="--", label="within-task fit"),
        Line2D([], [], color="black", marker="o", mec="black", ms=8, label="task mean, across fit"),
    ]
    finish(fig, "|advantage| vs gradient size", pal.handles(all_tasks(items)) + extra)
    caption = (
        "Points: one task at one step of one seed; large points: task means. Dashed: OLS of "
        "log10 squared norm on mean |advantage| within each task; black: the same across the task "
        "means. Titles: Spearman's rho within tasks (over steps, averaged) and across tasks (of "
        f"task means, averaged over seeds). {dropped} non-positive estimates are not drawn."
    )
    return Fig("advantage-vs-gradient", fig, caption)


def _fit_line(ax, fit: tuple[float, float], xs: pd.Series, color: str, ls: str) -> None:
    intercept, slope = fit
    grid_x = np.linspace(float(np.min(xs)), float(np.max(xs)), 20)
    ax.plot(grid_x, 10 ** (intercept + slope * grid_x), color=color, ls=ls, lw=1.5)


def fig_regression(items: list[GroupAnalysis]) -> Fig | None:
    """R^2 of ln u: statistics / task identity / both; and the imbalance each set explains."""
    if not any(np.isfinite(r.r2_stats) for a in items for r in a.regressions):
        return None
    fig, axes = grid(1, 2, 5.6, 3.9)
    left, right = axes[0]
    x = np.arange(len(items))
    for i, (name, color) in enumerate(MODEL_COLORS.items()):
        values = [_r2(a.regressions[0], name) for a in items]
        left.bar(x + (i - 1) * 0.27, values, 0.25, color=color)
    set_names = [r.name for r in items[0].regressions]
    set_colors = ["#636363", "#e6550d", "#31a354", "#756bb1"]
    width = 0.8 / len(set_names)
    for i in range(len(set_names)):
        values = [max(a.regressions[i].imbalance_explained, -1.0) for a in items]  # see caption
        right.bar(
            x + (i - (len(set_names) - 1) / 2) * width,
            values,
            width * 0.95,
            color=set_colors[i % 4],
        )
    right.axhline(0.5, color="black", ls=":", lw=0.8)
    for ax in (left, right):
        ax.set_xticks(x, [a.label for a in items], rotation=15, fontsize=8)
    labels(left, "configuration", "R² of ln squared norm (fraction)", "all statistics vs task")
    labels(
        right, "configuration", "imbalance explained (fraction)", "share of the imbalance explained"
    )
    handles = [Patch(color=c, label=f"model: {n}") for n, c in MODEL_COLORS.items()]
    handles += [Patch(color=set_colors[i % 4], label=n) for i, n in enumerate(set_names)]
    finish(fig, "What explains the gradient size?", handles, ncol=4)
    caption = (
        "Left: R^2 of OLS fits of ln(unbiased squared norm) over (seed, step, task) rows on the "
        "z-scored training statistics, on task identity (fixed effects), and on both. Right: the "
        "share of the spread of the tasks' mean ln squared norm (the imbalance) that each set of "
        "statistics would produce if it acted across tasks as it does within them (its "
        "fixed-effects coefficients applied to the task means); dotted: 0.5; values below -1 "
        "(effects that predict far larger or reversed task differences) are drawn at -1."
    )
    return Fig("regression", fig, caption)


def _r2(reg: explain.Regression, name: str) -> float:
    return {"statistics": reg.r2_stats, "task identity": reg.r2_task, "both": reg.r2_both}[name]


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
        shares = ", ".join(f"{k.split()[0]} {fmt(v)}" for k, v in a.shares.items())
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
