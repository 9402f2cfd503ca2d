"""The report of ``taskgrad compare``: one line per strategy, built from run directories only.

Figures (seed means; bands are 95% t-intervals over seeds):

    curves     mean and worst-task held-out accuracy over training, every strategy
    tasks      each task's held-out accuracy over training, every strategy
    forest     final mean / worst-task accuracy minus a reference's (the baseline, the tuned
               static, equal_task for the Gram methods), with the Dunnett-simultaneous intervals
               and the MDE of comparison.py, and the aims of the comparison drawn in (MT-GRPO's
               +16 worst-task points over GRPO, Modular Gradient Surgery's +4.5 mean points
               over mixed RL)
    effort     what each strategy chose per task over training: its update weight relative to
               the mean weight, and its sampling probability times K (both 1 under uniform)
    imbalance  per-step imbalance (largest / smallest unbiased squared norm) per strategy
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from taskgrad import metrics as M
from taskgrad.analysis import figures as F
from taskgrad.analysis.comparison import Family
from taskgrad.analysis.runs import Run, eval_metric
from taskgrad.analysis.stats import seed_band

AIM_MEAN, AIM_WORST = 0.045, 0.16  # the comparison's aims, in accuracy (fraction)

Runs = dict[str, list[Run]]  # strategy -> its runs (one per seed)


def strategy_colors(names: list[str], baseline: str) -> dict[str, tuple]:
    """The baseline black, the rest spread over a qualitative map."""
    others = [n for n in names if n != baseline]
    cmap = plt.get_cmap("tab20" if len(others) > 10 else "tab10")
    colors = {n: cmap(i % cmap.N) for i, n in enumerate(others)}
    colors[baseline] = (0.0, 0.0, 0.0, 1.0)
    return colors


def _style(name: str, baseline: str) -> dict:
    return {"lw": 2.6 if name == baseline else 1.4, "ls": "--" if name == "static" else "-"}


def _curve(ax, frame: pd.DataFrame, color, style: dict, band: bool) -> None:
    mean, lo, hi = seed_band(frame)
    ax.plot(mean.index, mean, color=color, marker="o", ms=2.5, **style)
    if band and (lo.notna() & hi.notna()).any():
        ax.fill_between(mean.index, lo, hi, color=color, alpha=0.12, lw=0)


def _finish(fig, title: str, names: list[str], colors: dict, baseline: str) -> None:
    """Suptitle and one legend of the strategies under the panels."""
    handles = [Line2D([], [], color=colors[n], label=n, **_style(n, baseline)) for n in names]
    F.finish(fig, title, handles, ncol=6)


def fig_curves(by: Runs, baseline: str) -> F.Fig:
    names, colors = list(by), strategy_colors(list(by), baseline)
    fig, axes = F.grid(1, 2, width=6.0, height=4.0)
    for ax, (what, reduce) in zip(axes[0], (("mean", "mean"), ("worst-task", "min")), strict=True):
        for name in names:
            frame = pd.concat([getattr(r.heldout(), reduce)(axis=1) for r in by[name]], axis=1)
            _curve(ax, frame, colors[name], _style(name, baseline), band=name == baseline)
        F.labels(ax, "step", f"{what} held-out accuracy (fraction)", f"{what} accuracy")
    _finish(fig, "Held-out accuracy over training, per strategy", names, colors, baseline)
    metric = eval_metric([r for runs in by.values() for r in runs]).capitalize()
    caption = (
        f"{metric} accuracy on each task's fixed held-out set, averaged over tasks (left) or its "
        "minimum over tasks (right), at the evaluated steps (start, middle and end by default); "
        "mean over seeds. Band: 95% t-interval over seeds of the baseline "
        f"({baseline}); dashed: the static mix (tuned, or the weights given)."
    )
    return F.Fig("compare-curves", fig, caption)


def fig_tasks(by: Runs, baseline: str) -> F.Fig:
    names, colors = list(by), strategy_colors(list(by), baseline)
    tasks = next(iter(by.values()))[0].scored_tasks
    fig, axes = F.panels(len(tasks), width=4.6, height=3.4, max_cols=4)
    for ax, task in zip(axes, tasks, strict=True):
        for name in names:
            frame = pd.concat([r.heldout()[task] for r in by[name]], axis=1)
            _curve(ax, frame, colors[name], _style(name, baseline), band=False)
        F.labels(ax, "step", "held-out accuracy (fraction)", task)
    _finish(fig, "Held-out accuracy per task (mean over seeds)", names, colors, baseline)
    metric = eval_metric([r for runs in by.values() for r in runs])
    caption = f"Each task's {metric} held-out accuracy over training, mean over seeds."
    return F.Fig("compare-tasks", fig, caption)


def fig_forest(fams: list[Family], ref: str) -> F.Fig | None:
    """Differences against ``ref`` with their simultaneous intervals, per endpoint family."""
    rows = [[c for c in fam.contrasts if c.reference == ref] for fam in fams]
    if not any(rows):
        return None
    fig, axes = F.grid(1, 2, width=5.4, height=0.35 * max(map(len, rows)) + 1.6)
    for ax, fam, contrasts, (what, aim) in zip(
        axes[0], fams, rows, (("mean", AIM_MEAN), ("worst-task", AIM_WORST)), strict=True
    ):
        for i, c in enumerate(contrasts):
            if math.isfinite(c.mde):  # +- MDE: true differences smaller are often missed
                ax.plot([-c.mde, c.mde], [i, i], color="#bbbbbb", lw=6, alpha=0.5,
                        solid_capstyle="butt")  # fmt: skip
            finite = math.isfinite(c.low)
            xerr = [[c.estimate - c.low], [c.high - c.estimate]] if finite else None
            ax.errorbar(c.estimate, i, xerr=xerr, fmt="o", color="black", ms=4, capsize=3)
            ax.plot(list(c.per_seed.values()), [i] * len(c.per_seed), "x", color="#999999", ms=4)
        ax.axvline(0, color="black", lw=0.8)
        ax.axvline(aim, color="#c0392b", lw=1, ls=":")
        ax.set_yticks(range(len(contrasts)), [c.strategy for c in contrasts])
        ax.invert_yaxis()
        F.labels(ax, f"final {what} accuracy minus {ref}'s (fraction)", "", fam.endpoint)
    handles = [
        Line2D([], [], color="black", marker="o", ls="", label="difference, simultaneous 95%"),
        Line2D([], [], color="#bbbbbb", lw=6, label="+- MDE (80% power)"),
        Line2D([], [], color="#999999", marker="x", ls="", label="one seed"),
        Line2D([], [], color="#c0392b", ls=":", label="aim (+4.5 mean, +16 worst-task points)"),
    ]
    F.finish(fig, f"Final accuracy against {ref}, paired by seed and prompt", handles)
    caption = (
        f"Per strategy, final held-out accuracy minus {ref}'s (mean over tasks, left; the "
        "strategy's worst task minus the reference's, right). Dots: the difference with its "
        "Dunnett-simultaneous 95% interval over the endpoint's whole family (strategy x seed "
        "model, pooled variance); grey band: +- the minimum detectable effect at 80% power, the "
        "size a true difference needs to be declared 4 times in 5; crosses: single seeds; "
        "dotted: the comparison's aims."
    )
    return F.Fig(f"compare-forest-{ref}", fig, caption)


def effort(run: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """[steps, K] update weight / its mean over tasks, and sampling probability x K."""
    w = run.task_frame(M.balance_key("{task}", "weight"))
    w = w.div(w.mean(axis=1), axis=0)
    p = run.task_frame(M.balance_key("{task}", "sampling")) * len(run.tasks)
    return w, p


def fig_effort(by: Runs, baseline: str, pal: F.Palette) -> F.Fig | None:
    names = [n for n in by if n not in (baseline, "uniform")]
    if not names:
        return None
    tasks = next(iter(by.values()))[0].tasks
    fig, axes = F.panels(len(names), width=4.2, height=3.0, max_cols=4)
    for ax, name in zip(axes, names, strict=True):
        frames = [effort(r) for r in by[name]]
        for task in tasks:
            for j, ls in enumerate(("-", ":")):
                frame = pd.concat([f[j][task] for f in frames], axis=1).dropna(how="all")
                if not frame.empty:
                    mean = frame.mean(axis=1)
                    ax.plot(mean.index, mean, color=pal(task), ls=ls, lw=1.4)
        ax.axhline(1, color="#888888", lw=0.6)
        F.labels(ax, "step", "relative to uniform (1)", name)
    extra = [
        Line2D([], [], color="black", ls="-", label="update weight / mean weight"),
        Line2D([], [], color="black", ls=":", label="sampling probability x K"),
    ]
    F.finish(fig, "What each strategy chose per task", pal.handles(tasks) + extra)
    caption = (
        "Per step, mean over seeds: each task's update weight divided by the mean weight over "
        "tasks (solid) and, for sampling strategies, its probability of being sampled times K "
        "(dotted); both are 1 under uniform. Projection methods log the weights of their "
        "combined update."
    )
    return F.Fig("compare-effort", fig, caption)


def fig_imbalance(by: Runs, baseline: str) -> F.Fig | None:
    from taskgrad.analysis.windows import run_imbalance

    values = {n: [run_imbalance(r) for r in by[n]] for n in by}
    names = [n for n, v in values.items() if np.isfinite(v).any()]
    if not names:
        return None
    fig, axes = F.grid(1, 1, width=max(6.0, 0.55 * len(names) + 2), height=3.8)
    ax = axes[0][0]
    for i, name in enumerate(names):
        v = np.array(values[name], dtype=float)
        ax.plot([i] * len(v), v, "o", color="#555555", ms=5)
    counts = [f"{n} ({np.isfinite(values[n]).sum()}/{len(values[n])})" for n in names]
    ax.set_xticks(range(len(names)), counts, rotation=45, ha="right")
    F.set_log(ax)
    F.labels(ax, "", "imbalance (max / min pooled unbiased sq. norm)", "gradient imbalance per run")
    fig.suptitle("Gradient imbalance between tasks under each strategy", fontsize=12)
    caption = (
        "Per strategy, one point per seed: the run's pooled imbalance, the largest over the "
        "smallest sum over all measured steps of the unbiased squared gradient norm (raw task "
        "gradients, before the strategy's weights), among the tasks with detectable signal in "
        "that run. (n/N): the runs where at least two tasks had detectable signal, the only ones "
        "drawn; the strategies table pools the seeds instead."
    )
    return F.Fig("compare-imbalance", fig, caption)
