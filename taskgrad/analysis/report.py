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
from taskgrad.analysis.runs import group_runs, load_run
from taskgrad.analysis.stats import fmt, fmt_ci, times
from taskgrad.analysis.windows import N_BOOT

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
        im, sig = a.imbalance, a.signal
        per_seed = ", ".join(times(v) for v in im.per_seed)
        fractions = [f"{t} {fmt(f)}" for t, f in zip(sig.tasks, sig.signal_fraction, strict=True)]
        rows.append([
            a.label, im.text(), per_seed, str(im.largest), str(im.smallest),
            ", ".join(fractions),
        ])  # fmt: skip
    doc.table(
        ["configuration", "imbalance, pooled [95% CI]", "per seed", "largest-gradient task",
         "smallest", "signal fraction (pooled unbiased / naive)"],
        rows,
        "Imbalance = the largest over the smallest pooled unbiased squared norm (sums over all "
        "measured steps and seeds first, the ratio after) among the tasks with detectable "
        "gradient signal (95% block-bootstrap interval of the pooled estimate above 0); an "
        "undetectable task makes every ratio with it undefined, so it is named, not included.",
    )  # fmt: skip
    rows = []
    for a in items:
        for task, r in a.shares.iterrows():
            rows.append([a.label, str(task), fmt_ci(r.share, r.lo, r.hi)])
    doc.table(["configuration", "task", "share of the update, pooled [95% CI]"], rows)
    doc.figure(F.fig_imbalance(items, pal))
    doc.figure(F.fig_noise(items, pal))


def section_gain(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("Does gradient size predict learning gain?")
    rows = []
    for a in items:
        for key in ("b", "c"):
            v = a.verdicts[key]
            rows.append([a.label, f"({key})", v.text, v.outcome])
    doc.table(
        ["configuration", "claim", "statistic", "verdict"],
        rows,
        "Units: disjoint pairs of windows (w, w + 1) in each seed; the gradient is window w's "
        "mean unbiased squared norm, the gain the mean reward over window w + 1 minus window w.",
    )
    doc.figure(FE.fig_gain_vs_grad(items, pal))


def section_explain(doc: Document, items: list[GroupAnalysis], pal: F.Palette) -> None:
    doc.heading("What explains the gradient?")
    rows = [[a.label, a.verdicts["d"].text, a.verdicts["d"].outcome] for a in items]
    doc.table(
        ["configuration", "|advantage| and squared norm: Spearman rho [95% CI]", "claim (d)"],
        rows,
        "Within: across windows, per (seed, task) series, averaged; across: of the task means, "
        "per seed, averaged. Window means of u are noisy, which attenuates both.",
    )
    doc.figure(FE.fig_adv_vs_grad(items, pal))
    rows = [
        [a.label, e.name, fmt_ci(e.explained, e.lo, e.hi)]
        for a in items for e in a.explanations
    ]  # fmt: skip
    doc.table(
        ["configuration", "statistics", "imbalance explained [95% CI]"],
        rows,
        "Within-task effects of the statistics from a log-link GLM of window-mean squared norms "
        "(variance proportional to the mean squared; zero and negative window means kept) with "
        "task fixed effects, applied to the task means; 1: they account for the imbalance, 0: "
        "for none of it, negative: they predict the opposite order. Intervals: block bootstrap "
        "over seeds and windows.",
    )
    doc.figure(FE.fig_regression(items))


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
        if any(v == v for v in a.decomposition_shares.values()):
            parts = ", ".join(f"{k} {fmt(v)}" for k, v in a.decomposition_shares.items())
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
                    a.imbalance.text(),
                    f"{times(ratio(t.sqnorm))}",
                    f"{times(ratio(t.score))}",
                    f"{times(ratio(t.contribution))}",
                ]
            )
    doc.table(
        [
            "configuration",
            "loss_agg",
            "imbalance, pooled [95% CI]",
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
    rows = [[a.label, fmt_ci(*a.proxy)] for a in items]
    doc.table(
        ["configuration", "proxy vs full: Spearman rho across tasks per window, mean [95% CI]"],
        rows,
    )
    doc.figure(FT.fig_proxy(items, pal))
    transfer = FT.fig_transfer(items)
    if transfer is None:
        doc.para("No transfer matrix was measured (diagnostics.transfer_at is empty).", note=True)
    else:
        for a in items:
            for step, t in a.transfer.items():
                n = int(t.resolved.to_numpy().sum())
                doc.para(
                    f"**{a.label}, step {step}.** Noise floor (median 95% half-width over probe "
                    f"prompts) {fmt(t.floor, 3)}; {n} of {t.gain.size} entries above it, the "
                    "others below the probe's resolution."
                )
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
    from taskgrad.analysis import explain, measures, verdicts, windows

    doc.heading("Methods")
    doc.para("The statistics behind every number above, as stated in the code that computes them.")
    for module in (windows, verdicts, explain, measures):
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
