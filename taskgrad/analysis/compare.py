"""``taskgrad compare``: balancing strategies x seeds at matched compute, and their comparison.

Every run of a comparison shares one resolved config except ``balance.strategy`` (and its
options) and ``seed``: the same steps, prompts per step, completions per prompt and token budget,
so compute is matched by construction (sampling strategies move prompts between tasks at the
same total). Runs are independent and resumable: a finished run (summary.json) is reused, an
interrupted one resumes from its checkpoint (see ``reproduce.run_planned``).

The comparison table, per strategy, over seeds (mean and a 95% t-interval across seeds):

    final mean accuracy      mean over tasks of held-out accuracy at the last evaluation
    final worst-task acc.    min over tasks of held-out accuracy at the last evaluation
    AUC                      area under the mean-accuracy curve over evaluations / steps
    steps to target          first evaluated step whose worst-task accuracy >= target
                             (runs that never reach it count as not reached, shown as n/N)
    imbalance                median over steps of the largest/smallest unbiased squared norm
                             (geometric mean over seeds, t-interval of the logs)

and the difference of each strategy to the baseline (default ``uniform``) and to the tuned
``static`` mix, each with a paired interval (seeds are paired: same seed, same prompts at step 1,
same held-out set).

``static`` is compared as a *tuned* mixture: unless its weights are given, a small sweep
(``static_grid``: the uniform mix and each task in turn weighted ``factor``) is trained first on
tuning seeds disjoint from the comparison's (``TUNE_SEED`` on; a task's held-out set depends on
the seed, so tuning never sees the held-out prompts the comparison is scored on), and the weights
with the best tuning score, (final mean + final worst-task accuracy) / 2 averaged over tuning
seeds, are the ones compared. The sweep and its scores are written to ``tune_static.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskgrad import metrics as M
from taskgrad.analysis.reproduce import Planned, run_all
from taskgrad.analysis.runs import Run, load_run
from taskgrad.stats import mean_ci

RESERVED = ("seed", "run_name", "runs_root", "balance.strategy", "balance.options")
TUNE_SEED = 1000  # first tuning seed of the static sweep; comparison seeds are 0..seeds-1


def check_overrides(overrides: list[str] | None) -> None:
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if any(key == r or key.startswith(r + ".") for r in RESERVED):
            raise ValueError(
                f"compare: {item!r} is set per run; {', '.join(RESERVED)} are reserved"
            )


def plan(
    strategies: list[str],
    seeds: int,
    preset: str,
    overrides: list[str] | None = None,
    options: dict[str, list[str]] | None = None,
) -> list[Planned]:
    """Strategy-major runs (``<strategy>-s<seed>``); ``options[strategy]`` adds its overrides."""
    check_overrides(overrides)
    runs = []
    for strategy in strategies:
        for s in range(seeds):
            extra = [f"balance.strategy={strategy}", *(options or {}).get(strategy, [])]
            extra += [f"seed={s}", f"run_name={strategy}-s{s}"]
            runs.append(Planned(f"{strategy}-s{s}", preset, [*(overrides or []), *extra]))
    return runs


def weights_override(weights: list[float]) -> str:
    return "balance.options.weights=[" + ", ".join(f"{w:g}" for w in weights) + "]"


def static_grid(num_tasks: int, factor: float = 2.0) -> list[list[float]]:
    """The sweep of the tuned static baseline: uniform, then each task weighted ``factor``."""
    grid = [[1.0] * num_tasks]
    for k in range(num_tasks):
        grid.append([factor if j == k else 1.0 for j in range(num_tasks)])
    return grid


def tune_static(
    preset: str,
    out: Path,
    overrides: list[str] | None = None,
    grid: list[list[float]] | None = None,
    seeds: int = 1,
    jobs: int = 1,
) -> list[float]:
    """Train the static sweep on tuning seeds; write ``tune_static.md``; the chosen weights."""
    from taskgrad.config import load_config

    check_overrides(overrides)
    num_tasks = len(load_config(preset, overrides).tasks)
    grid = grid or static_grid(num_tasks)
    runs = []
    for i, weights in enumerate(grid):
        if len(weights) != num_tasks:
            raise ValueError(
                f"static sweep: {weights} has {len(weights)} weights, need {num_tasks}"
            )
        for s in range(TUNE_SEED, TUNE_SEED + seeds):
            extra = ["balance.strategy=static", weights_override(weights)]
            extra += [f"seed={s}", f"run_name=static{i}-s{s}"]
            runs.append(Planned(f"static{i}-s{s}", preset, [*(overrides or []), *extra]))
    paths = run_all(runs, out / "tune" / "runs", jobs)
    scores = [score_run(p, target=1.0) for p in paths]
    rows, best, best_score = [], grid[0], -math.inf
    for i, weights in enumerate(grid):
        mine = scores[i * seeds : (i + 1) * seeds]
        mean = float(np.mean([r.final_mean for r in mine]))
        worst = float(np.mean([r.final_worst for r in mine]))
        score = (mean + worst) / 2
        if score > best_score:
            best, best_score = weights, score
        rows.append((weights, mean, worst, score))
    lines = [
        f"# Static sweep on preset {preset}: {len(grid)} weightings x {seeds} tuning seed(s) "
        f"({TUNE_SEED}..{TUNE_SEED + seeds - 1})\n",
        "Score = (final mean + final worst-task held-out accuracy) / 2, mean over tuning seeds; "
        "the best is the `static` of the comparison.\n",
        "| weights | final mean acc. | final worst-task acc. | score | chosen |",
        "|---|---|---|---|---|",
    ]
    for weights, mean, worst, score in rows:
        mark = "yes" if weights is best else ""
        w = ", ".join(f"{x:g}" for x in weights)
        lines.append(
            f"| [{w}] | {100 * mean:.1f} | {100 * worst:.1f} | {100 * score:.1f} | {mark} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_static.md").write_text("\n".join(lines) + "\n")
    return list(best)


@dataclass
class RunScore:
    strategy: str
    seed: int
    final_mean: float
    final_worst: float
    auc: float
    steps_to_target: float  # NaN when never reached
    imbalance: float
    tokens_per_step: float = math.nan  # completion tokens generated per training step, mean
    minutes: float = math.nan  # training wall time (sum of time/step), evaluation excluded


def score_run(path: Path | Run, target: float) -> RunScore:
    run = path if isinstance(path, Run) else load_run(path)
    evals = run.heldout()  # [n_evals, K]
    mean, worst = evals.mean(axis=1), evals.min(axis=1)
    steps = evals.index.to_numpy(dtype=float)
    span = steps[-1] - steps[0] if len(steps) > 1 else 1.0
    auc = (
        float(np.trapezoid(mean.to_numpy(), steps) / span)
        if len(steps) > 1
        else float(mean.iloc[0])
    )
    reached = worst[worst >= target]
    imb = run.column(M.grad_scope_key("full", "imbalance"))
    # completion tokens per step = sum_k prompts_k * G * mean response length_k
    group = float(run.cfg("rollout.group_size", math.nan))
    prompts = run.task_frame(M.task_key("{task}", "prompts"))
    tokens = prompts * run.task_frame(M.task_key("{task}", "response_length"))
    step_time = run.column(M.time_key("step"))
    return RunScore(
        strategy=run.config["balance"]["strategy"],
        seed=run.seed,
        final_mean=float(mean.iloc[-1]),
        final_worst=float(worst.iloc[-1]),
        auc=auc,
        steps_to_target=float(reached.index[0]) if len(reached) else math.nan,
        imbalance=float(imb.median()) if imb.notna().any() else math.nan,
        tokens_per_step=float(tokens.sum(axis=1, min_count=1).mean() * group),
        minutes=float(step_time.sum() / 60) if step_time.notna().any() else math.nan,
    )


def ratio_interval(values: list[float]) -> tuple[float, float, float]:
    """Geometric mean and 95% t-interval of positive ratios (the t-interval of their logs)."""
    logs = [math.log(v) for v in values if math.isfinite(v) and v > 0]
    return tuple(math.exp(x) if math.isfinite(x) else math.nan for x in mean_ci(logs))


def _fmt(m: float, lo: float, hi: float, pct: bool = True) -> str:
    if not math.isfinite(m):
        return "-"
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.2f}")
    return f"{f(m)} [{f(lo)}, {f(hi)}]" if math.isfinite(lo) else f(m)


def references(strategies: list[str], baseline: str) -> list[str]:
    """What differences are paired against: the baseline, and the tuned ``static`` if run."""
    return [baseline] + (["static"] if "static" in strategies and baseline != "static" else [])


def table_rows(
    scores: list[RunScore], baseline: str, target: float
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (accuracies in points), one row per strategy.

    Differences (paired by seed) are to the baseline and, when it ran, to the tuned ``static``.
    """
    by: dict[str, list[RunScore]] = {}
    for s in scores:
        by.setdefault(s.strategy, []).append(s)
    refs = references(list(by), baseline)
    header = [
        "strategy", "seeds", "final mean acc.", "final worst-task acc.", "AUC (mean acc.)",
        f"steps to worst >= {target:.2f}", "imbalance (median)", "tokens / step",
        "train min / run",
    ]  # fmt: skip
    for ref in refs:
        header += [f"mean vs {ref}", f"worst vs {ref}"]
    rows = []
    for name, runs in by.items():
        reached = [r.steps_to_target for r in runs if math.isfinite(r.steps_to_target)]
        steps = (
            f"{np.median(reached):.0f} ({len(reached)}/{len(runs)})"
            if reached
            else f"- (0/{len(runs)})"
        )
        tokens = [r.tokens_per_step for r in runs if math.isfinite(r.tokens_per_step)]
        minutes = [r.minutes for r in runs if math.isfinite(r.minutes)]
        row = [
            name,
            str(len(runs)),
            _fmt(*mean_ci([r.final_mean for r in runs])),
            _fmt(*mean_ci([r.final_worst for r in runs])),
            _fmt(*mean_ci([r.auc for r in runs])),
            steps,
            _fmt(*ratio_interval([r.imbalance for r in runs]), pct=False),
            f"{np.mean(tokens):.0f}" if tokens else "-",
            f"{np.mean(minutes):.1f}" if minutes else "-",
        ]
        for ref in refs:
            base = {s.seed: s for s in by[ref]}
            d_mean = [r.final_mean - base[r.seed].final_mean for r in runs if r.seed in base]
            d_worst = [r.final_worst - base[r.seed].final_worst for r in runs if r.seed in base]
            same = name == ref
            row += [
                "-" if same else _fmt(*mean_ci(d_mean)),
                "-" if same else _fmt(*mean_ci(d_worst)),
            ]
        rows.append(row)
    return header, rows


def comparison_table(scores: list[RunScore], baseline: str, target: float) -> str:
    """The markdown comparison table (accuracies in points)."""
    header, rows = table_rows(scores, baseline, target)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def compare(
    strategies: list[str],
    seeds: int = 3,
    preset: str = "default",
    out: str | Path = "runs/compare",
    overrides: list[str] | None = None,
    baseline: str = "uniform",
    target: float = 0.5,
    jobs: int = 1,
    static_weights: list[float] | None = None,
    tune_seeds: int = 1,
    diagnostics: bool = False,
) -> Path:
    """Train (or reuse) strategies x seeds, then write compare.md and report.html / report.md.

    With ``static`` among the strategies and no ``static_weights``, the static sweep is trained
    first (``tune_static``) and its best weights are compared. ``diagnostics``: also write the
    full per-configuration report of ``taskgrad report`` into ``<out>/diagnostics``.
    """
    from taskgrad.analysis.runs import load_run

    out = Path(out)
    check_overrides(overrides)
    options: dict[str, list[str]] = {}
    tuned = "static" in strategies and static_weights is None
    if "static" in strategies:
        if tuned:
            static_weights = tune_static(preset, out, overrides, seeds=tune_seeds, jobs=jobs)
        options["static"] = [weights_override(static_weights)]
    paths = run_all(plan(strategies, seeds, preset, overrides, options), out / "runs", jobs)
    runs = [load_run(p) for p in paths]
    scores = [score_run(r, target) for r in runs]
    intro = (
        f"Strategies {', '.join(strategies)} on preset {preset}, {seeds} seed(s) each, at matched "
        f"compute: {describe_budget(runs[0])}. Held-out accuracy in points, mean over seeds with "
        "a 95% t-interval; differences to the baseline are paired by seed."
    )
    if static_weights is not None and "static" in strategies:
        w = ", ".join(f"{x:g}" for x in static_weights)
        intro += f" `static` weights: [{w}]" + (
            " (tuned, see tune_static.md)." if tuned else " (given)."
        )
    table = comparison_table(scores, baseline, target)
    out.mkdir(parents=True, exist_ok=True)
    title = f"taskgrad compare on preset {preset}"
    (out / "compare.md").write_text(f"# {title}\n\n{intro}\n\n{table}")
    write_report(out, title, intro, runs, scores, baseline, target, tuned)
    if diagnostics:
        from taskgrad.analysis.report import build_report

        build_report(paths, out / "diagnostics", title=f"{title}: per-configuration diagnostics")
    return out


def describe_budget(run: Run) -> str:
    """The compute every run of a comparison shares, from one run's resolved config."""
    k = len(run.tasks)
    return (
        f"{run.cfg('steps')} steps, {k} x {run.cfg('rollout.prompts_per_task')} prompts x "
        f"{run.cfg('rollout.group_size')} completions per step, at most "
        f"{run.cfg('rollout.max_new_tokens')} new tokens each; "
        f"model {run.cfg('model.name_or_path')}"
    )


def write_report(
    out: Path,
    title: str,
    intro: str,
    runs: list[Run],
    scores: list[RunScore],
    baseline: str,
    target: float,
    tuned: bool = False,
) -> None:
    """report.html / report.md of a comparison (figures: compare_report.py); ``tuned``: the
    static weights came from this comparison's sweep (tune_static.md), which is then shown."""
    from taskgrad.analysis import compare_report as C
    from taskgrad.analysis import figures as F
    from taskgrad.analysis.document import Document

    by: dict[str, list[Run]] = {}
    for run in runs:
        by.setdefault(run.config["balance"]["strategy"], []).append(run)
    doc = Document(title)
    doc.para(intro)
    doc.heading("Comparison")
    header, rows = table_rows(scores, baseline, target)
    doc.table(header, rows)
    doc.para(
        "Final: at the last evaluation. AUC: trapezoid area under the mean-accuracy curve over the "
        "evaluated steps, divided by their span. Imbalance: median over steps of the largest / "
        "smallest unbiased squared task-gradient norm (raw gradients, before the strategy's "
        "weights); geometric mean over seeds with the t-interval of the logs. Tokens / step: "
        "completion tokens generated per training step (the budget is matched; what is generated "
        "depends on which tasks are sampled and how long the policy answers). Train min: sum of "
        "step times (evaluation and probes excluded).",
        note=True,
    )
    if tuned and (out / "tune_static.md").exists():
        doc.heading("The tuned static baseline")
        lines = (out / "tune_static.md").read_text().splitlines()
        table = [ln for ln in lines if ln.startswith("|")]
        doc.para(" ".join(ln for ln in lines[1:] if ln and not ln.startswith("|")))
        doc.table(
            [c.strip() for c in table[0].strip("|").split("|")],
            [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]],
        )
    doc.heading("Accuracy over training")
    doc.figure(C.fig_curves(by, baseline))
    doc.figure(C.fig_tasks(by, baseline))
    for ref in references(list(by), baseline):
        doc.figure(C.fig_forest(by, ref))
    task_rows = []
    for name, rs in by.items():
        finals = [r.heldout().iloc[-1] for r in rs]
        for task in rs[0].tasks:
            task_rows.append([name, task, _fmt(*mean_ci([f[task] for f in finals]))])
    doc.table(["strategy", "task", "final held-out accuracy [95% CI]"], task_rows)
    doc.heading("What the strategies did")
    doc.figure(C.fig_effort(by, baseline, F.Palette(runs[0].tasks)))
    doc.figure(C.fig_imbalance(by, baseline))
    doc.table(
        ["strategy", "run directories"],
        [[name, ", ".join(r.path.name for r in rs)] for name, rs in by.items()],
    )
    doc.write(out)
