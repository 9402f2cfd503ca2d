"""``taskgrad report RUN_DIR ...``: the paper's findings, computed from run directories only.

Sections: runs; Figure 1 and held-out accuracy; imbalance and update shares; does gradient
predict gain; what explains the gradient (|advantage|, regression); length (decomposition and
loss aggregations); how tasks relate (cosines, proxy, transfer); configurations compared;
methods. ``build_report`` writes report.html (self-contained) and report.md (+ figures/).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from taskgrad.analysis import figures as F
from taskgrad.analysis import figures_explain as FE
from taskgrad.analysis import figures_tasks as FT
from taskgrad.analysis.analyse import GroupAnalysis, analyse
from taskgrad.analysis.document import Document
from taskgrad.analysis.explain import ratio
from taskgrad.analysis.gains import N_BOOT
from taskgrad.analysis.runs import group_runs, load_run
from taskgrad.analysis.stats import fmt, fmt_ci, fmt_explained, times

Section = Callable[[Document, list[GroupAnalysis], F.Palette], None]


def analyse_runs(run_dirs: list[str | Path], n_boot: int = N_BOOT) -> list[GroupAnalysis]:
    """Load, group by configuration, analyse each group."""
    if not run_dirs:
        raise ValueError("report: give at least one run directory")
    groups = group_runs([load_run(p) for p in run_dirs])
    return [analyse(g, n_boot) for g in groups]


def default_out(run_dirs: list[str | Path]) -> Path:
    if len(run_dirs) == 1:
        return Path(run_dirs[0])
    return Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")


def build_report(
    run_dirs: list[str | Path],
    out: str | Path | None = None,
    title: str | None = None,
    claims: bool = False,
    n_boot: int = N_BOOT,
) -> Path:
    """Write report.html and report.md for ``run_dirs`` into ``out``; returns ``out``.

    ``claims``: put the table of the paper's claims first (``taskgrad reproduce``).
    """
    out = Path(out) if out else default_out(run_dirs)
    items = analyse_runs(run_dirs, n_boot)
    doc = make_document(items, title or default_title(items), claims)
    doc.write(out)
    return out


def default_title(items: list[GroupAnalysis]) -> str:
    n = sum(len(a.group.runs) for a in items)
    return f"taskgrad report: {n} run{'s' * (n != 1)}, {len(items)} configuration(s)"


def make_document(items: list[GroupAnalysis], title: str, claims: bool = False) -> Document:
    doc = Document(title)
    pal = F.Palette(F.all_tasks(items))
    if claims:
        from taskgrad.analysis.claims import claims_section

        claims_section(doc, items)
    for section in SECTIONS:
        section(doc, items, pal)
    return doc


def figures_for(run_dirs: list[str | Path], n_boot: int = 200) -> list[F.Fig]:
    """Every figure the report of ``run_dirs`` holds (for inspection; caller closes them)."""
    items = analyse_runs(run_dirs, n_boot)
    return make_document(items, "figures", claims=False).figures()


# --- sections ----------------------------------------------------------------------------------


def section_runs(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("Runs")
    rows = []
    for a in items:
        g = a.group
        rows.append(
            [
                a.label,
                ", ".join(map(str, g.seeds)),
                str(max(r.steps for r in g.runs)),
                ", ".join(g.tasks),
                str(g.cfg("model.name_or_path")),
                str(g.cfg("grpo.loss_agg")),
                ", ".join(r.path.name for r in g.runs),
            ]
        )
    doc.table(["configuration", "seeds", "steps", "tasks", "model", "loss_agg", "run dirs"], rows)
    doc.para(
        "Runs whose config.yaml is identical apart from the seed, names, paths and checkpointing "
        "are seeds of one configuration and are aggregated; configurations are labelled by the "
        "config keys that differ between them.",
        note=True,
    )


def section_overview(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("Gradient size, learning gain and reward (the paper's Figure 1)")
    doc.figure(F.fig_overview(items, pal))
    doc.figure(F.fig_heldout(items, pal))
    rows = []
    for a in items:
        for task, r in a.accuracy.iterrows():
            rows.append([a.label, str(task), fmt(r.start), fmt_ci(r.end, r.lo, r.hi)])
    if rows:
        doc.table(["configuration", "task", "held-out accuracy at step 0", "at end [95% CI]"], rows)


def section_imbalance(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("Imbalance over training")
    rows = []
    for a in items:
        im = a.imbalance
        per_seed = ", ".join(f"{times(v)}" for v in im.per_seed_median)
        noise = a.noise.dropna()
        rows.append(
            [
                a.label,
                f"{times(im.median)} ({per_seed})",
                f"{times(im.mean_ratio)}",
                str(im.largest),
                str(im.smallest),
                f"{times(im.adam_median)}",
                f"{fmt(noise.min())}-{fmt(noise.max())}" if len(noise) else "n/a",
            ]
        )
    doc.table(
        [
            "configuration",
            "median imbalance (per seed)",
            "ratio of training means",
            "largest-gradient task",
            "smallest",
            "median imbalance, AdamW geometry",
            "noise / naive norm (range over tasks)",
        ],
        rows,
        "Imbalance = largest / smallest positive unbiased squared norm of a step; median over "
        "steps per seed (the table gives the median of those), and the ratio of the tasks' "
        "training-mean squared norms, which is less sensitive to a noisy smallest estimate.",
    )
    doc.figure(F.fig_imbalance(items, pal))
    doc.figure(F.fig_noise(items, pal))


def section_gain(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("Does gradient size predict learning gain?")
    rows = []
    for a in items:
        for pos, r in a.rank_by_position.items():
            centers = sorted({w.center for w in a.windows if w.position == pos})
            rows.append(
                [
                    a.label,
                    f"near {pos} (step {', '.join(map(str, centers))})",
                    str(r.n_units),
                    fmt_ci(r.rho, r.lo, r.hi),
                ]
            )
        rows.append(
            [
                a.label,
                "**pooled** (all windows and seeds)",
                str(a.rank.n_units),
                fmt_ci(a.rank.rho, a.rank.lo, a.rank.hi),
            ]
        )
    doc.table(
        ["configuration", "window", "(seed, window) units", "Spearman rho [95% CI]"],
        rows,
        "rho across tasks between the mean unbiased squared norm in the s steps before a "
        "window centre and the learning gain over the window.",
    )
    for a in items:
        doc.para(f"**{a.label}.** {a.rank.sentence()} {largest_sentence(a)}")
    doc.figure(FE.fig_gain_vs_grad(items, pal))


def largest_sentence(a: GroupAnalysis) -> str:
    lt = a.largest
    if not lt.ranks:
        return ""
    return (
        f"The largest-gradient task had the largest gain in {fmt(100 * lt.match_share, 0)}% of "
        f"{len(lt.ranks)} (seed, window) units and the smallest gain in "
        f"{fmt(100 * lt.lowest_share, 0)}% (chance: {fmt(100 / max(lt.n_tasks, 1), 0)}%)."
    )


def section_explain(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("What explains the gradient?")
    rows = []
    for a in items:
        adv = a.advantage
        per_task = ", ".join(f"{t} {fmt(v)}" for t, v in adv.per_task.items())
        rows.append(
            [
                a.label,
                fmt_ci(adv.within, adv.within_lo, adv.within_hi),
                per_task,
                fmt_ci(adv.across, adv.across_lo, adv.across_hi),
            ]
        )
    doc.table(
        ["configuration", "within-task rho [95% CI]", "per task", "across-task rho [95% CI]"],
        rows,
        "Spearman rho of mean |advantage| and the unbiased squared norm.",
    )
    doc.figure(FE.fig_adv_vs_grad(items, pal))
    regression_tables(doc, items)
    doc.figure(FE.fig_regression(items))


def regression_tables(doc: Document, items: list[GroupAnalysis]) -> None:
    rows, coefs = [], []
    for a in items:
        for r in a.regressions:
            rows.append(
                [
                    a.label,
                    r.name,
                    str(r.n),
                    fmt(r.r2_stats),
                    fmt(r.r2_task),
                    fmt(r.r2_both),
                    fmt(r.unique_task),
                    fmt_explained(r.imbalance_explained),
                ]
            )
        for stat, c in a.regressions[0].coefs.iterrows():
            coefs.append(
                [
                    a.label,
                    str(stat),
                    fmt_ci(c.coef, c.lo, c.hi),
                    fmt(c.p, 3),
                    fmt_ci(c.coef_fe, c.lo_fe, c.hi_fe),
                    fmt(c.p_fe, 3),
                ]
            )
    doc.table(
        [
            "configuration",
            "statistics",
            "rows",
            "R² statistics",
            "R² task",
            "R² both",
            "task beyond statistics",
            "imbalance explained by statistics (within-task effects)",
        ],
        rows,
        "OLS of ln(unbiased squared norm) on z-scored statistics, task fixed effects, or both; "
        "rows with a non-positive estimate are left out "
        f"({', '.join(str(a.nonpositive) for a in items)}"
        " per configuration).",
    )
    if coefs:
        doc.table(
            [
                "configuration",
                "statistic (z-scored)",
                "coef [95% CI], no task effects",
                "p",
                "coef [95% CI], task fixed effects",
                "p",
            ],
            coefs,
            "Change in ln squared norm per standard deviation of each statistic (HC1 "
            "errors; steps are autocorrelated, so intervals are optimistic).",
        )


def section_length(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("Length: a decomposition and other loss aggregations")
    doc.figure(F.fig_lengths(items, pal))
    rows = []
    for a in items:
        t = a.decomposition
        for task, r in t.iterrows():
            rows.append(
                [
                    a.label,
                    str(task),
                    fmt(r.abs_advantage),
                    fmt(r.response_length, 1),
                    fmt(r.normalisation, 3),
                    fmt(r.batch_share),
                    fmt(r.sqnorm, 3),
                    fmt(r.score, 3),
                    fmt(r.contribution, 3),
                ]
            )
        rows.append([a.label, "**max / min**", *(f"{times(ratio(t[c]))}" for c in t.columns)])
    doc.table(
        [
            "configuration",
            "task",
            "mean |A|",
            "response length (tokens)",
            "λ",
            "task weight w",
            "u",
            "score term S",
            "contribution w²u",
        ],
        rows,
        "Means over seeds and measured steps; u = |A|² λ² S exactly on these means.",
    )
    for a in items:
        if any(v == v for v in a.shares.values()):
            parts = ", ".join(f"{k} {fmt(v)}" for k, v in a.shares.items())
            doc.para(f"**{a.label}.** Share of the across-task variance of ln u: {parts}.")
    doc.figure(FE.fig_decomposition(items, pal))
    sets = aggregation_sets(items)
    if sets:
        aggregation_table(doc, sets)
    doc.figure(FE.fig_aggregation(sets, pal))


def aggregation_sets(items: list[GroupAnalysis]) -> list[list[GroupAnalysis]]:
    """Groups that differ only in the loss aggregation (two or more), one list per mixture."""
    from taskgrad.analysis.runs import config_key

    sets: dict[str, list[GroupAnalysis]] = {}
    for a in items:
        cfg = {
            **a.group.config,
            "grpo": {**a.group.config.get("grpo", {}), "loss_agg": None, "loss_constant": None},
        }
        sets.setdefault(config_key(cfg), []).append(a)
    return [s for s in sets.values() if len({a.group.cfg("grpo.loss_agg") for a in s}) > 1]


def aggregation_table(doc: Document, sets: list[list[GroupAnalysis]]) -> None:
    rows = []
    for members in sets:
        for a in members:
            t = a.decomposition
            rows.append(
                [
                    a.label,
                    str(a.group.cfg("grpo.loss_agg")),
                    f"{times(a.imbalance.median)}",
                    f"{times(ratio(t.sqnorm))}",
                    f"{times(ratio(t.score))}",
                    f"{times(ratio(t.contribution))}",
                ]
            )
    doc.table(
        [
            "configuration",
            "loss_agg",
            "median per-step imbalance",
            "max/min mean u",
            "max/min S",
            "max/min w²u",
        ],
        rows,
        "Does the imbalance survive when length no longer scales the task's gradient?",
    )


def section_tasks(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("How tasks relate: cosines, proxy, transfer")
    doc.figure(FT.fig_cosine(items))
    rows = [[a.label, fmt(a.proxy[0]), ", ".join(fmt(v) for v in a.proxy[1])] for a in items]
    doc.table(["configuration", "Spearman proxy vs full (pooled)", "summary.json, per seed"], rows)
    doc.figure(FT.fig_proxy(items, pal))
    transfer = FT.fig_transfer(items)
    if transfer is None:
        doc.para("No transfer matrix was measured (diagnostics.transfer_at is empty).", note=True)
    doc.figure(transfer)


def section_compare(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    if len(items) < 2:
        return
    doc.heading("Configurations compared")
    rows = []
    base = items[0].accuracy
    for a in items:
        if "mean" not in a.accuracy.index:
            continue
        m = a.accuracy.loc["mean"]
        diff = m.end - base.loc["mean"].end if "mean" in base.index else float("nan")
        rows.append([a.label, str(len(a.group.runs)), fmt_ci(m.end, m.lo, m.hi), fmt(diff)])
    doc.table(
        [
            "configuration",
            "seeds",
            "mean held-out accuracy at end [95% CI]",
            f"difference to {items[0].label}",
        ],
        rows,
    )
    doc.figure(F.fig_accuracy_compare(items))


def section_balance(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    fig = F.fig_balance(items, pal)
    if fig is not None:
        doc.heading("Balancing strategies")
        doc.figure(fig)


def section_methods(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    from taskgrad.analysis import explain, gains, measures

    doc.heading("Methods")
    doc.para("The statistics behind every number above, as stated in the code that computes them.")
    for module in (gains, explain, measures):
        doc.pre((module.__doc__ or "").strip())


SECTIONS: list[Section] = [
    section_runs,
    section_overview,
    section_imbalance,
    section_gain,
    section_explain,
    section_length,
    section_tasks,
    section_compare,
    section_balance,
    section_methods,
]
