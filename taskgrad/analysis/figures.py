"""One function per figure. Each returns a ``Fig`` (or None when the runs hold no such data) whose
axes all carry x/y labels with units, with a legend (or a colour bar, for heat maps) and a title.

The look follows the paper's Figure 1: one panel per quantity, one colour per task (the same task
has the same colour in every figure), a smoothed line over faint raw values, open top/right
spines. Several configurations get one row (or column) each. Curves of several seeds are their
mean over seeds with a 95% t-band (stats.seed_band); smoothing is an EMA over about 1/20 of the
run, at least 3 steps (stats.ema). Log axes cannot show non-positive values (an unbiased
squared norm can be negative when noise dominates): they are left out, counted in the caption.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only: never open a window

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from taskgrad import metrics as M
from taskgrad.analysis import windows as W
from taskgrad.analysis.analyse import GroupAnalysis
from taskgrad.analysis.runs import Group, eval_metric
from taskgrad.analysis.stats import ema, mean_ci, seed_band, smoothing_span

# The paper's colours for its tasks, given to our procedural analogues (Code, Countdown,
# MATH -> arithmetic, FinQA -> table_qa, DeepScaleR -> multistep); others take tab10 in order.
PAPER_COLORS = {
    "code": "#377eb8",
    "countdown": "#984ea3",
    "arithmetic": "#4daf4a",
    "table_qa": "#e41a1c",
    "multistep": "#ff7f00",
    "linear_eq": "#a65628",
}
SQNORM_LABEL = "squared gradient norm (unbiased)"
REWARD_LABEL = "reward (fraction correct)"


@dataclass
class Fig:
    name: str  # file stem
    figure: Figure
    caption: str


class Palette:
    """Task -> colour, fixed for a whole report."""

    def __init__(self, tasks: list[str]) -> None:
        spare = [c for c in plt.get_cmap("tab10").colors if _hex(c) not in PAPER_COLORS.values()]
        self.colors: dict[str, str] = {}
        for task in tasks:
            if task in self.colors:
                continue
            self.colors[task] = PAPER_COLORS.get(task) or _hex(spare[len(self.colors) % len(spare)])

    def __call__(self, task: str) -> str:
        return self.colors.get(task, "#777777")

    def handles(self, tasks: list[str]) -> list[Line2D]:
        return [Line2D([], [], color=self(t), lw=2.5, label=t) for t in tasks]


def _hex(rgb) -> str:
    return matplotlib.colors.to_hex(rgb)


def grid(n_rows: int, n_cols: int, width: float = 4.6, height: float = 3.4):
    """A figure of panels (constrained layout: room is made for titles, legends, colour bars)."""
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(width * n_cols, height * n_rows + 0.9),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def panels(n: int, width: float = 4.6, height: float = 3.4, max_cols: int = 3):
    """One panel per configuration, wrapped after ``max_cols``; unused panels are hidden."""
    n_cols = min(n, max_cols)
    fig, axes = grid(-(-n // n_cols), n_cols, width, height)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def finish(fig: Figure, title: str, handles: list, ncol: int | None = None) -> None:
    """Suptitle and one legend under the panels, as in the paper."""
    fig.suptitle(title, fontsize=12)
    if handles:
        fits = max(1, int(fig.get_size_inches()[0] / 2.1))  # columns that fit the width
        n = min(ncol or 6, fits, len(handles))
        fig.legend(handles=handles, loc="outside lower center", ncol=n, frameon=False)


def labels(ax, x: str, y: str, title: str) -> None:
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title("\n".join(textwrap.wrap(title, 50)), fontsize=10)  # long labels: wrap, not clip


def row_title(group: Group, what: str, several: bool) -> str:
    return f"{group.label}: {what}" if several else what


# --- lines over training ---------------------------------------------------------------------


def band_line(
    ax, frame: pd.DataFrame, color: str, log: bool, raw: bool = True, ls: str = "-"
) -> int:
    """Mean over seeds (columns) per step: faint raw points, EMA line, 95% band.

    The mean includes negative estimates (they are unbiased); on a log axis, steps whose mean is
    undefined or not positive cannot be drawn. Returns how many raw points were left out.
    """
    frame = frame[frame.index > 0]
    mean, lo, hi = seed_band(frame)
    steps = mean.index.to_numpy()
    smooth = ema(mean.to_numpy(), smoothing_span(len(mean)))
    dropped = int((mean.isna() | (mean <= 0)).sum() if log else mean.isna().sum())
    keep = (lambda v: np.where(v > 0, v, np.nan)) if log else (lambda v: v)
    if raw:
        ax.plot(steps, keep(mean.to_numpy()), color=color, alpha=0.3, lw=0.6, marker=".", ms=3)
    ax.plot(steps, keep(smooth), color=color, lw=2, ls=ls)
    ok = np.isfinite(lo.to_numpy()) & np.isfinite(hi.to_numpy())
    if log:
        ok &= (lo.to_numpy() > 0) & (hi.to_numpy() > 0)
    if ok.any():
        ax.fill_between(
            steps, lo.to_numpy(), hi.to_numpy(), where=ok, color=color, alpha=0.15, lw=0
        )
    if log:
        set_log(ax)
    return dropped


def task_lines(ax, group: Group, pattern: str, pal: Palette, log: bool = False) -> int:
    """One band_line per task of ``pattern`` (e.g. ``task/{task}/reward``); returns drops."""
    dropped = 0
    for task in group.tasks:
        dropped += band_line(ax, group.stack(pattern.format(task=task)), pal(task), log)
    return dropped


def seeds_note(groups: list[Group]) -> str:
    counts = sorted({len(g.runs) for g in groups})
    if counts == [1]:
        return "One seed per configuration: lines are that run (faint: raw; bold: EMA)."
    return (
        "Lines are means over seeds (faint: raw mean; bold: its EMA) with a 95% t-band over seeds"
        f" ({'/'.join(map(str, counts))} seeds)."
    )


def set_log(ax, axis: str = "y") -> None:
    """Log scale if anything drawn is positive; otherwise say so (matplotlib cannot draw it)."""
    k = 1 if axis == "y" else 0
    values = [np.asarray(ln.get_ydata() if k else ln.get_xdata(), dtype=float) for ln in ax.lines]
    values += [
        np.asarray(c.get_offsets(), dtype=float).reshape(-1, 2)[:, k] for c in ax.collections
    ]
    values += [np.array([p.get_height() if k else p.get_x()], dtype=float) for p in ax.patches]
    flat = np.concatenate(values) if values else np.array([])
    if (flat[np.isfinite(flat)] > 0).any():
        (ax.set_yscale if k else ax.set_xscale)("log")
    else:
        empty(ax, "no positive values to show on a log scale")


def empty(ax, text: str = "not recorded in these runs") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")


def sq_pattern(group: Group, stat: str = "sqnorm_unbiased") -> str:
    return M.grad_key(W.scope_of(group.runs[0]), "{task}", stat)


def window_frame(a: GroupAnalysis, values) -> dict[int, pd.DataFrame]:
    """Task index -> [window end step, seed] frame of ``values(w)`` [W, K] per RunWindows."""
    out = {}
    for k in range(len(a.group.tasks)):
        cols = [pd.Series(values(w)[:, k], index=w.ends) for w in a.windows]
        out[k] = pd.concat(cols, axis=1) if cols else pd.DataFrame()
    return out


def window_lines(ax, a: GroupAnalysis, values, pal: Palette, log: bool = False) -> int:
    """Per task: the window means over seeds with a 95% t-band; returns undrawn points on log."""
    dropped = 0
    for k, frame in window_frame(a, values).items():
        task = a.group.tasks[k]
        mean, lo, hi = seed_band(frame)
        keep = (lambda v: np.where(v > 0, v, np.nan)) if log else (lambda v: v)
        dropped += int((mean.isna() | (mean <= 0)).sum()) if log else 0
        ax.plot(mean.index, keep(mean.to_numpy()), color=pal(task), lw=2, marker="o", ms=3)
        ok = np.isfinite(lo.to_numpy()) & np.isfinite(hi.to_numpy())
        if log:
            ok &= lo.to_numpy() > 0
        if ok.any():
            ax.fill_between(mean.index, lo, hi, where=ok, color=pal(task), alpha=0.15, lw=0)
    if log:
        set_log(ax)
    return dropped


def all_tasks(items: list[GroupAnalysis]) -> list[str]:
    return list(dict.fromkeys(t for a in items for t in a.group.tasks))


# --- the paper's Figure 1, held-out accuracy ---------------------------------------------------


def fig_overview(items: list[GroupAnalysis], pal: Palette) -> Fig:
    """Squared norm (window means, log), learning gain per window pair, training reward."""
    several = len(items) > 1
    fig, axes = grid(len(items), 3)
    dropped = 0
    for row, a in zip(axes, items, strict=True):
        g = a.group
        dropped += window_lines(row[0], a, lambda w: w.u, pal, log=True)
        labels(
            row[0], "step (window end)", f"{SQNORM_LABEL}, log",
            row_title(g, "squared gradient norm", several),
        )  # fmt: skip
        gain_bars(row[1], a, pal)
        labels(
            row[1],
            "step (between windows)",
            "learning gain (Δ reward, fraction)",
            row_title(g, "learning gain", several),
        )
        task_lines(row[2], g, M.task_key("{task}", "reward"), pal)
        labels(row[2], "step", REWARD_LABEL, row_title(g, "training reward", several))
    finish(
        fig,
        "Gradient size, learning gain and reward per task (the paper's Figure 1)",
        pal.handles(all_tasks(items)),
    )
    sizes = "; ".join(
        f"{a.label}: {int(np.median(a.windows[0].n))} steps per window" for a in items if a.windows
    )
    caption = (
        "Left: window means of the unbiased squared gradient norm per task, log scale, mean over "
        f"seeds with a 95% t-band ({sizes}; {dropped} window means that were not positive are not "
        "drawn). Middle: learning gain, the mean training reward over window w + 1 minus over "
        "window w, for disjoint window pairs; error bars: 95% t-interval over seeds. Right: "
        "training reward. " + seeds_note([a.group for a in items])
    )
    return Fig("fig1-overview", fig, caption)


def gain_bars(ax, a: GroupAnalysis, pal: Palette) -> None:
    """Grouped bars: mean gain over seeds per task at each window pair, 95% t error bars."""
    tasks = a.group.tasks
    pairs = min((len(w.starts) for w in a.windows), default=0) // 2
    if pairs == 0 or any(w.stats.get("reward") is None for w in a.windows):
        empty(ax, "run too short for two windows")
        return
    span = max(r.steps for r in a.group.runs)
    width = span / max(pairs, 1) / 2 / (len(tasks) + 1)
    for p in range(pairs):
        center = float(np.mean([w.ends[2 * p] for w in a.windows]))
        for k, task in enumerate(tasks):
            gains = [w.stats["reward"][2 * p + 1, k] - w.stats["reward"][2 * p, k]
                     for w in a.windows]  # fmt: skip
            mean, lo, hi = mean_ci(gains)
            x = center + (k - (len(tasks) - 1) / 2) * width
            err = [[mean - lo], [hi - mean]] if np.isfinite(lo) else None
            ax.bar(x, mean, width=width * 0.9, color=pal(task), alpha=0.8, yerr=err, capsize=2)
    ax.axhline(0, color="black", lw=0.6)


def fig_heldout(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """Held-out accuracy over training (top) and paired probe gains with 95% CIs (bottom)."""
    if not any(len(r.heldout()) for a in items for r in a.group.runs):
        return None
    probe = any(a.group.has_task_key(M.gain_key("{task}", "probe")) for a in items)
    fig, axes = grid(1 + probe, len(items))
    for col, a in enumerate(items):
        ax, g = axes[0][col], a.group
        frames = [r.heldout() for r in g.runs]
        for task in g.tasks:
            _points(ax, pd.concat([f[task] for f in frames], axis=1), pal(task))
        mean = pd.concat([f[g.tasks].mean(axis=1) for f in frames], axis=1)
        _points(ax, mean, "black", ls="--")
        labels(ax, "step", "held-out accuracy (fraction correct)", row_title(g, "held-out", True))
        if probe:
            probe_panel(axes[1][col], g, pal)
    extra = [Line2D([], [], color="black", ls="--", label="mean over tasks")]
    finish(fig, "Held-out accuracy and paired probe gains", pal.handles(all_tasks(items)) + extra)
    metric = eval_metric([r for a in items for r in a.group.runs])
    caption = (
        f"Top: {metric} accuracy on each task's fixed held-out set (eval.size prompts) at step 0 "
        "and every eval.every steps; band: 95% t-interval over seeds. "
        + (
            "Bottom: paired probe gain since the previous probe (same prompts and sampling seeds); "
            "error bars: the logged 95% interval (one seed) or the t-interval over seeds."
            if probe
            else "No probe gains were recorded (diagnostics.probe_every = 0)."
        )
    )
    return Fig("heldout", fig, caption)


def _points(ax, frame: pd.DataFrame, color: str, ls: str = "-") -> None:
    mean, lo, hi = seed_band(frame.dropna(how="all"))
    ax.plot(mean.index, mean, color=color, marker="o", ms=3, lw=1.5, ls=ls)
    ok = lo.notna() & hi.notna()
    if ok.any():
        ax.fill_between(mean.index, lo, hi, where=ok.to_numpy(), color=color, alpha=0.15, lw=0)


def probe_panel(ax, g: Group, pal: Palette) -> None:
    width = max(r.steps for r in g.runs) / 60
    for k, task in enumerate(g.tasks):
        gains_ = g.stack(M.gain_key(task, "probe")).dropna(how="all")
        if gains_.empty:
            continue
        mean, lo, hi = seed_band(gains_)
        if len(g.runs) == 1:
            lo = g.stack(M.gain_key(task, "probe_ci_low"))[0].reindex(mean.index)
            hi = g.stack(M.gain_key(task, "probe_ci_high"))[0].reindex(mean.index)
        x = mean.index + (k - (len(g.tasks) - 1) / 2) * width
        err = np.vstack([mean - lo, hi - mean]).clip(min=0)
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="o", ms=3, color=pal(task), capsize=2)
    ax.axhline(0, color="black", lw=0.6)
    labels(ax, "step", "probe gain (Δ reward, fraction)", f"{g.label}: paired probe gain")


# --- imbalance, update shares, noise, lengths ----------------------------------------------------


def fig_imbalance(items: list[GroupAnalysis], pal: Palette) -> Fig:
    """Window imbalance (log) and each task's pooled share of the update per window."""
    several = len(items) > 1
    applied = any(a.group.has_task_key(sq_pattern(a.group, "applied_share")) for a in items)
    fig, axes = grid(len(items), 2 + applied)
    for row, a in zip(axes, items, strict=True):
        g = a.group
        frame = pd.concat([W.window_imbalance(w) for w in a.windows], axis=1)
        if frame.notna().any().any():
            mean, _, _ = seed_band(frame)
            row[0].plot(mean.index, mean, color="black", lw=2, marker="o", ms=3)
            set_log(row[0])
        else:
            empty(row[0], "fewer than two tasks with detectable signal in any window")
        for level in (10, 30):
            row[0].axhline(level, color="black", ls=":", lw=0.8)
        labels(row[0], "step (window end)", "imbalance (largest / smallest, ×)",
               row_title(g, f"imbalance, pooled {a.imbalance.text()}", several))  # fmt: skip
        with np.errstate(invalid="ignore", divide="ignore"):
            window_lines(row[1], a, lambda w: w.dot_sum / w.total_sum[:, None], pal)
        row[1].axhline(1 / len(g.tasks), color="#888888", ls="--", lw=0.8)
        labels(row[1], "step (window end)", "share of update (fraction)",
               row_title(g, "share of the gradient (window sums)", several))  # fmt: skip
        if applied:
            task_lines(row[2], g, sq_pattern(g, "applied_share"), pal)
            labels(row[2], "step", "share of the AdamW step (fraction)",
                   row_title(g, "share of the applied AdamW step", several))  # fmt: skip
    extra = [
        Line2D([], [], color="black", lw=2, label="imbalance of window means"),
        Line2D([], [], color="black", ls=":", label="the paper's 10-30×"),
        Line2D([], [], color="#888888", ls="--", label="equal share 1/K"),
    ]
    finish(fig, "Gradient imbalance and each task's share of the update",
           pal.handles(all_tasks(items)) + extra, ncol=5)  # fmt: skip
    caption = (
        "Left: per window, the largest over the smallest window-mean unbiased squared norm among "
        "the tasks whose window t-interval lies above zero (log scale; mean over seeds); titles: "
        "the pooled imbalance over all windows and seeds with its 95% block-bootstrap interval, "
        "tasks without detectable signal named. Middle: each task's share of the update, "
        "sum_t <w_k G_k, g> / sum_t ||g||^2 over the window (sums first). "
        + ("Right: its share of the step AdamW applied, through per-task first moments (per "
           "step; the moments are exact, not estimated). " if applied else "")
        + seeds_note([a.group for a in items])
    )  # fmt: skip
    return Fig("imbalance", fig, caption)


def fig_noise(items: list[GroupAnalysis], pal: Palette) -> Fig:
    """Naive vs unbiased squared norms over windows, and each task's signal fraction."""
    several = len(items) > 1
    fig, axes = grid(len(items), 2)
    for row, a in zip(axes, items, strict=True):
        g = a.group
        window_lines(row[0], a, lambda w: w.u, pal, log=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            for k, frame in window_frame(a, lambda w: w.naive_sum / w.n).items():
                mean = frame.mean(axis=1)
                row[0].plot(mean.index, mean, color=pal(g.tasks[k]), lw=1.2, ls="--")
        set_log(row[0])
        labels(row[0], "step (window end)", "squared gradient norm, log",
               row_title(g, "naive vs unbiased", several))  # fmt: skip
        sig = a.signal
        frac = np.nan_to_num(sig.signal_fraction, nan=0.0)
        row[1].bar(range(len(g.tasks)), frac, color=[pal(t) for t in g.tasks])
        for k in range(len(g.tasks)):
            if not sig.detectable[k]:
                row[1].text(k, 0.02, "no detectable\nsignal", ha="center", fontsize=7)
        row[1].set_xticks(range(len(g.tasks)), g.tasks, rotation=20)
        row[1].axhline(1, color="black", lw=0.6, ls=":")
        labels(row[1], "task", "signal fraction (pooled unbiased / naive)",
               row_title(g, "how much of the naive norm is signal", several))  # fmt: skip
    extra = [
        Line2D([], [], color="black", lw=2, label="unbiased (split-half), window means"),
        Line2D([], [], color="black", lw=1.2, ls="--", label="naive ||g||²"),
    ]
    finish(fig, "How much of the naive squared norm is noise",
           pal.handles(all_tasks(items)) + extra)  # fmt: skip
    caption = (
        "Left: window means of the naive squared norm ||g_hat||^2 (dashed), inflated by sampling "
        "noise, and of the split-half estimate <g_A, g_B> (solid), which is not (window means that "
        "are not positive are not drawn). Right: the signal fraction, the pooled unbiased over the "
        "pooled naive squared norm (sums over all steps and seeds first); tasks whose pooled "
        "unbiased estimate has a 95% interval holding 0 have no detectable signal. Per task, "
        "per-step estimates that were exactly zero / negative: "
        + "; ".join(
            f"{a.label}: " + ", ".join(f"{t} {int(z)}/{int(n)}" for t, z, n in zip(
                a.group.tasks, a.signal.zeros + a.signal.negatives, a.signal.steps, strict=True))
            for a in items
        )
    )  # fmt: skip
    return Fig("noise", fig, caption)


def fig_lengths(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """Response length per task over training (the paper's response-length figure)."""
    length = M.task_key("{task}", "response_length")
    if not any(a.group.has_task_key(length) for a in items):
        return None
    fig, axes = panels(len(items))
    for ax, a in zip(axes, items, strict=True):
        task_lines(ax, a.group, length, pal)
        labels(ax, "step", "response length (tokens)", f"{a.label}: response length")
    finish(fig, "Response length per task", pal.handles(all_tasks(items)))
    caption = "Mean completion length per task and step, in tokens. " + seeds_note(
        [a.group for a in items]
    )
    return Fig("response-length", fig, caption)


def fig_accuracy_compare(items: list[GroupAnalysis]) -> Fig | None:
    """Final held-out accuracy per task and on average, one bar colour per configuration."""
    items = [a for a in items if len(a.accuracy)]
    if len(items) < 2:
        return None
    cats = [*all_tasks(items), "mean"]
    colors = plt.get_cmap("cividis")(np.linspace(0.05, 0.9, len(items)))
    fig, axes = grid(1, 1, width=max(6.0, 1.1 * len(cats) * len(items) ** 0.5), height=3.8)
    ax, width = axes[0][0], 0.8 / len(items)
    for i, a in enumerate(items):
        acc = a.accuracy.reindex(cats)
        x = np.arange(len(cats)) + (i - (len(items) - 1) / 2) * width
        err = np.vstack([acc.end - acc.lo, acc.hi - acc.end])
        ax.bar(
            x,
            acc.end,
            width * 0.95,
            color=colors[i],
            label=a.label,
            yerr=np.nan_to_num(err.clip(min=0)),
            capsize=2,
        )
        ax.plot(x, acc.start, "k_", ms=8)
    ax.set_xticks(range(len(cats)), cats)
    labels(ax, "task", "held-out accuracy at end (fraction)", "final held-out accuracy")
    handles = [Patch(color=colors[i], label=a.label) for i, a in enumerate(items)]
    handles.append(Line2D([], [], color="black", marker="_", ls="", ms=8, label="at step 0"))
    finish(fig, "Held-out accuracy by configuration", handles, ncol=2)
    metric = eval_metric([r for a in items for r in a.group.runs])
    caption = (
        f"Final {metric} held-out accuracy per task and its mean over tasks; error bars: 95% "
        "t-interval over seeds, or with one seed the binomial interval of the eval set; black "
        "ticks: accuracy at step 0."
    )
    return Fig("accuracy-by-config", fig, caption)


def fig_balance(items: list[GroupAnalysis], pal: Palette) -> Fig | None:
    """Per-task sampling probability and update weight chosen by a balancing strategy."""
    keys = (
        (M.balance_key("{task}", "sampling"), "sampling probability"),
        (M.balance_key("{task}", "weight"), "weight"),
    )
    rows = [a for a in items if any(a.group.has_task_key(k) for k, _ in keys)]
    rows = [a for a in rows if a.group.cfg("balance.strategy", "uniform") != "uniform"]
    if not rows:
        return None
    fig, axes = grid(len(rows), 2)
    for row, a in zip(axes, rows, strict=True):
        for ax, (key, what) in zip(row, keys, strict=True):
            task_lines(ax, a.group, key, pal)
            if what.startswith("sampling"):
                ax.axhline(1 / len(a.group.tasks), color="#888888", ls="--", lw=0.8)
            labels(ax, "step", f"task {what} (fraction)" if what.startswith("s") else "task weight",
                   f"{a.label}: {what}")  # fmt: skip
    extra = [Line2D([], [], color="#888888", ls="--", label="uniform 1/K")]
    finish(fig, "What the balancing strategy chose", pal.handles(all_tasks(rows)) + extra)
    caption = (
        "Per step, the probability with which each task's prompts were sampled (the same total "
        "number of prompts per step: same compute) and the weight on its part of the update, as "
        "logged under balance/ by the strategy. " + seeds_note([a.group for a in rows])
    )
    return Fig("balancing", fig, caption)
