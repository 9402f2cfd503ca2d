"""``taskgrad compare``: balancing strategies x seeds at matched compute, and their comparison.

Every run of a comparison shares one resolved config except ``balance.strategy`` (and its
options) and ``seed``: the same steps, prompts per step, completions per prompt and token budget,
so compute is matched by construction (sampling strategies move prompts between tasks at the
same total). Runs are independent and resumable: a finished run (summary.json) is reused, an
interrupted one resumes from its checkpoint (see ``reproduce.run_planned``). Held-out sets are
fixed and the same for every seed, so runs pair over seeds and over held-out prompts.

Per strategy, over seeds (mean and a 95% t-interval across that strategy's seeds):

    final mean accuracy      mean over tasks of held-out accuracy at the last evaluation
    final worst-task acc.    the final accuracy of the strategy's worst task, the task with the
                             lowest seed-mean final accuracy (min over tasks after averaging)
    AUC                      area under the mean-accuracy curve over evaluations / steps
    steps to target          first evaluated step whose worst-task accuracy >= target
                             (runs that never reach it count as not reached, shown as n/N)
    imbalance                pooled over the strategy's seeds (windows.py: sums of unbiased
                             squared norms over every step of every seed first, the ratio of
                             the tasks with detectable signal after; block-bootstrap interval
                             over windows and seeds), not an average of per-run ratios

The differences (comparison.py has the model and every approximation): per endpoint, final mean
accuracy (primary) and final worst-task accuracy (secondary), one family of contrasts: each
strategy against the baseline (default ``uniform``), against the tuned ``static`` mix, and each
Gram method (a strategy that reads the task-gradient Gram) against ``equal_task``, the
equal-task base mix those methods start from, so that method and base mix are separable. A
strategy x seed model (seeds as blocks, residual variance pooled over all strategies) gives
Dunnett-adjusted simultaneous 95% intervals and p-values (Holm's as a cross-check), the minimum
detectable effect at 80% power and a verdict: better / worse / undetermined (within MDE). A
paired bootstrap over held-out prompts and seeds (evals.jsonl) adds prompt sampling and splits
the variance into seed, prompt and per-prompt outcome noise.

``static`` is compared as a *tuned* mixture: unless its weights are given, a small sweep
(``static_grid``: the uniform mix and each task in turn weighted ``factor``) is trained first on
tuning seeds disjoint from the comparison's (``TUNE_SEED`` on, 3 by default). Each weighting's
tuning score is (final mean + final worst-task accuracy) / 2 (worst task as above), with a
t-interval over tuning seeds and its difference to the uniform mix, Dunnett-simultaneous over
the sweep (so the chosen weighting's interval stays valid after picking the best); the highest
mean score is the weighting compared. Tuning runs are scored on each task's "tune" held-out set
(``eval.split=tune``), disjoint from the "test" set the comparison is scored on, so the choice
never sees the test prompts. ``tune_static.md`` holds the sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from taskgrad import metrics as M
from taskgrad.analysis import windows as W
from taskgrad.analysis.comparison import (
    Bootstrap,
    Family,
    contrast_family,
    paired_bootstrap,
    worst_task_table,
)
from taskgrad.analysis.reproduce import Planned, run_all
from taskgrad.analysis.runs import Run, load_run
from taskgrad.stats import mean_ci

RESERVED = ("eval.split", "seed", "run_name", "runs_root", "balance.strategy", "balance.options")
TUNE_SEED = 1000  # first tuning seed of the static sweep; comparison seeds are 0..seeds-1
TUNE_SEEDS = 3  # tuning seeds per weighting: enough for an interval over them
EQUAL_TASK = "equal_task"  # the base mix of the Gram methods
ENDPOINTS = ("final mean accuracy (primary)", "final worst-task accuracy (secondary)")


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
    seeds: int = TUNE_SEEDS,
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
            extra = ["balance.strategy=static", weights_override(weights), "eval.split=tune"]
            extra += [f"seed={s}", f"run_name=static{i}-s{s}"]
            runs.append(Planned(f"static{i}-s{s}", preset, [*(overrides or []), *extra]))
    paths = run_all(runs, out / "tune" / "runs", jobs)
    finals: dict[str, dict[int, dict[str, float]]] = {}  # weighting -> seed -> task -> acc.
    for path, run in zip(paths, runs, strict=True):
        weighting, seed = run.name.split("-s")
        finals.setdefault(f"w{weighting.removeprefix('static')}", {})[int(seed)] = final_accuracies(
            load_run(path)
        )
    frames = {w: pd.DataFrame(by_seed).T for w, by_seed in finals.items()}
    lines, best = tuning_summary(grid, frames)
    head = (
        f"# Static sweep on preset {preset}: {len(grid)} weightings x {seeds} tuning seed(s) "
        f"({TUNE_SEED}..{TUNE_SEED + seeds - 1})\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_static.md").write_text(head + "\n" + "\n".join(lines) + "\n")
    return list(grid[best])


def tuning_summary(
    grid: list[list[float]], finals: dict[str, pd.DataFrame]
) -> tuple[list[str], int]:
    """The sweep's markdown (text and table) and the index of the chosen weighting.

    ``finals["w<i>"]``: tuning seeds x tasks, final held-out accuracy of weighting i. Score per
    seed = (mean over tasks + the weighting's worst task) / 2, so its mean over seeds is
    (mean + min over tasks of the seed means) / 2. Differences to weighting 0 (the uniform mix)
    form one Dunnett family over the sweep (strategy x seed model on the tuning seeds)."""
    worst, tasks = worst_task_table(finals)
    mean = pd.DataFrame({name: f.mean(axis=1) for name, f in finals.items()})
    score = (mean + worst) / 2  # tuning seeds x weightings
    best = int(np.argmax(score.mean(axis=0).to_numpy()))
    names = list(finals)
    fam = contrast_family(score, [(n, names[0]) for n in names[1:]], "tuning score")
    label = {
        n: "[" + ", ".join(f"{x:g}" for x in w) + "]" for n, w in zip(names, grid, strict=True)
    }
    lines = [
        "Score = (final mean + final worst-task held-out accuracy) / 2, in points; the worst task "
        "is the weighting's task with the lowest mean over tuning seeds. Mean over tuning seeds "
        f"with a 95% t-interval; difference to the first weighting {label[names[0]]} (the uniform "
        "mix) paired by tuning seed, with Dunnett-simultaneous 95% intervals over the sweep "
        f"(strategy x seed model; {fam.describe().rstrip('.')}). The highest mean score is the "
        "`static` of the comparison; its simultaneous interval stays valid although it was "
        "picked as the best.",
        "",
        tuning_verdict(fam, names, best, label),
        "",
        "| weights | final mean acc. | final worst-task acc. (task) | score [95% CI] | "
        f"score - {label[names[0]]} [simultaneous 95%] | p (Dunnett) | MDE (80% power) | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(names):
        c = fam.get(name, names[0])
        diff = [_fmt(c.estimate, c.low, c.high), _p(c.p_adjusted), _pts(c.mde)] if c else ["-"] * 3
        lines.append(
            f"| {label[name]} | {_fmt(*mean_ci(mean[name]))} | "
            f"{_fmt(*mean_ci(worst[name]))} ({tasks[name]}) | {_fmt(*mean_ci(score[name]))} | "
            + " | ".join(diff)
            + f" | {'yes' if i == best else ''} |"
        )
    return lines, best


def tuning_verdict(fam: Family, names: list[str], best: int, label: dict[str, str]) -> str:
    """One sentence: is the chosen weighting distinguishable from the uniform mix?"""
    chosen = label[names[best]]
    if best == 0:
        return f"Chosen: {chosen}, the uniform mix itself."
    c = fam.get(names[best], names[0])
    if c is None or not math.isfinite(c.low):
        return f"Chosen: {chosen}; with one tuning seed there is no interval over tuning seeds."
    gap = f"{_fmt(c.estimate, c.low, c.high)} points over the uniform mix on the tuning seeds"
    if c.verdict == "better":
        return f"Chosen: {chosen}, {gap}: distinguishable from the uniform mix."
    return (
        f"Chosen: {chosen}, {gap}: not distinguishable from the uniform mix (the interval holds "
        f"0; MDE {_pts(c.mde)} points), so `static` is the uniform mix up to tuning noise."
    )


@dataclass
class RunScore:
    strategy: str
    seed: int
    final_mean: float
    final_worst: float  # this run's min over tasks (the tables use the strategy's worst task)
    auc: float
    steps_to_target: float  # NaN when never reached
    imbalance: float
    tokens_per_step: float = math.nan  # completion tokens generated per training step, mean
    minutes: float = math.nan  # training wall time (sum of time/step), evaluation excluded
    final_tasks: dict[str, float] = field(default_factory=dict)  # task -> final accuracy


def final_accuracies(run: Run) -> dict[str, float]:
    """Task -> held-out accuracy at the last evaluation."""
    return {t: float(v) for t, v in run.heldout().iloc[-1].items()}


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
    imb = W.run_imbalance(run)
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
        imbalance=imb,
        tokens_per_step=float(tokens.sum(axis=1, min_count=1).mean() * group),
        minutes=float(step_time.sum() / 60) if step_time.notna().any() else math.nan,
        final_tasks=final_accuracies(run),
    )


def _num(v: float, digits: int) -> str:
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0"


def _fmt(m: float, lo: float, hi: float, pct: bool = True) -> str:
    if not math.isfinite(m):
        return "-"
    f = (lambda v: _num(100 * v, 1)) if pct else (lambda v: _num(v, 2))
    return f"{f(m)} [{f(lo)}, {f(hi)}]" if math.isfinite(lo) else f(m)


def _pts(v: float) -> str:
    return _num(100 * v, 1) if math.isfinite(v) else "-"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# --- the families of differences ---------------------------------------------------------------


def is_gram_method(name: str) -> bool:
    """Reads the task-gradient Gram (PCGrad, MGDA, CAGrad, ...): starts from the equal-task mix."""
    from taskgrad.balancing import STRATEGIES

    try:
        return bool(STRATEGIES.get(name).needs_gradients)
    except KeyError:
        return False


def references(strategies: list[str], baseline: str) -> list[str]:
    """What differences are taken against: the baseline, the tuned ``static`` and, when some
    Gram method ran, ``equal_task``, each only if it ran."""
    refs = [baseline]
    if "static" in strategies and baseline != "static":
        refs.append("static")
    if EQUAL_TASK in strategies and baseline != EQUAL_TASK and any(map(is_gram_method, strategies)):
        refs.append(EQUAL_TASK)
    return refs


def contrast_pairs(strategies: list[str], baseline: str) -> list[tuple[str, str]]:
    """(strategy, reference) of every reported difference, one family per endpoint."""
    pairs = [(s, baseline) for s in strategies if s != baseline]
    for ref in references(strategies, baseline)[1:]:
        for s in strategies:
            if s in (baseline, ref) or (ref == EQUAL_TASK and not is_gram_method(s)):
                continue
            if (s, ref) not in pairs and (ref, s) not in pairs:
                pairs.append((s, ref))
    return pairs


def endpoint_tables(scores: list[RunScore]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Seeds x strategies of final mean accuracy and of the strategy's worst task's final
    accuracy, and each strategy's worst task."""
    finals: dict[str, dict[int, dict[str, float]]] = {}
    for s in scores:
        finals.setdefault(s.strategy, {})[s.seed] = s.final_tasks
    frames = {name: pd.DataFrame(by_seed).T.sort_index() for name, by_seed in finals.items()}
    mean = pd.DataFrame({name: f.mean(axis=1) for name, f in frames.items()})
    worst, tasks = worst_task_table(frames)
    return mean, worst, tasks


def families(scores: list[RunScore], baseline: str) -> list[Family]:
    """The two endpoint families: final mean accuracy, then final worst-task accuracy."""
    mean, worst, _ = endpoint_tables(scores)
    pairs = contrast_pairs(list(mean.columns), baseline)
    return [contrast_family(t, pairs, e) for t, e in zip((mean, worst), ENDPOINTS, strict=True)]


def strategy_imbalance(runs: list[Run]) -> dict[str, str]:
    """Per strategy: the window-estimator imbalance pooled over its seeds (windows.imbalance:
    sums of unbiased squared norms over every measured step of every seed first, the ratio of
    the largest to the smallest among tasks with detectable signal after, a block-bootstrap
    interval over windows and seeds), as text; "-" where no run measured it. A run's own ratio
    is undefined whenever fewer than two tasks have detectable signal in its 100 steps (4 of
    the 6 uniform runs of the testbed): pooling the seeds, not averaging the runs where it
    happens to be defined, is what estimates the strategy's imbalance."""
    by: dict[str, list[Run]] = {}
    for run in runs:
        by.setdefault(run.config["balance"]["strategy"], []).append(run)
    out = {}
    for name, group in by.items():
        windows = [W.configured_windows(r) for r in group if W.measures_gradients(r)]
        if not windows:
            out[name] = "-"
            continue
        out[name] = W.imbalance(windows, W.signal(windows)).text()
    return out


def summary_rows(
    scores: list[RunScore], target: float, imbalances: dict[str, str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-strategy table (accuracies in points); ``imbalances``: the
    pooled imbalance per strategy (``strategy_imbalance``)."""
    by: dict[str, list[RunScore]] = {}
    for s in scores:
        by.setdefault(s.strategy, []).append(s)
    mean, worst, tasks = endpoint_tables(scores)
    header = [
        "strategy", "seeds", "final mean acc.", "final worst-task acc. (task)", "AUC (mean acc.)",
        f"steps to worst >= {target:.2f}", "imbalance (pooled over seeds)", "tokens / step",
        "train min / run",
    ]  # fmt: skip
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
        rows.append([
            name,
            str(len(runs)),
            _fmt(*mean_ci(mean[name])),
            f"{_fmt(*mean_ci(worst[name]))} ({tasks[name]})",
            _fmt(*mean_ci([r.auc for r in runs])),
            steps,
            (imbalances or {}).get(name, "-"),
            f"{np.mean(tokens):.0f}" if tokens else "-",
            f"{np.mean(minutes):.1f}" if minutes else "-",
        ])  # fmt: skip
    return header, rows


FAMILY_HEADER = [
    "strategy", "vs", "difference [simultaneous 95%]", "p (Dunnett)", "p (Holm)",
    "p (unadjusted)", "MDE (80% power)", "paired SD", "verdict",
]  # fmt: skip


def family_rows(fam: Family) -> list[list[str]]:
    """One row per contrast (points): the difference with its Dunnett interval, adjusted and
    unadjusted p, the MDE, the SD over seeds of the paired difference and the verdict."""
    return [
        [
            c.strategy,
            c.reference,
            _fmt(c.estimate, c.low, c.high),
            _p(c.p_adjusted),
            _p(c.p_holm),
            _p(c.p_raw),
            _pts(c.mde),
            _pts(c.paired_sd),
            c.verdict,
        ]
        for c in fam.contrasts
    ]


# --- prompts and seeds: the paired bootstrap ----------------------------------------------------


def final_outcomes(run: Run) -> dict[str, np.ndarray] | None:
    """Task -> per-prompt outcomes of the last evaluation (evals.jsonl), or None when the run has
    none there or they disagree with its logged accuracy (another evaluation's outcomes)."""
    step, scored = int(run.heldout().index[-1]), run.scored_tasks
    at = run.outcomes().get(step, {})
    if not set(scored) <= set(at):
        return None
    logged = run.heldout().iloc[-1]
    if any(abs(float(at[t].mean()) - float(logged[t])) > 1e-6 for t in scored):
        return None
    return {t: at[t] for t in scored}  # a distractor's outcomes are noise, not an endpoint


def bootstraps(
    runs: list[Run], pairs: list[tuple[str, str]]
) -> tuple[dict[tuple[str, str], Bootstrap], list[str]]:
    """The paired prompt-and-seed bootstrap of each pair's final mean accuracy, on the seeds both
    have outcomes for; notes say what could not be bootstrapped and why."""
    outcomes: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    missing: set[str] = set()
    for run in runs:
        name, found = run.config["balance"]["strategy"], final_outcomes(run)
        if found is None:
            missing.add(run.path.name)
        else:
            outcomes.setdefault(name, {})[run.seed] = found
    notes = [f"no usable per-prompt outcomes (evals.jsonl) in {', '.join(sorted(missing))}"]
    notes = notes if missing else []
    out = {}
    for a, b in pairs:
        seeds = sorted(set(outcomes.get(a, {})) & set(outcomes.get(b, {})))
        if not seeds:
            continue
        stack = {
            name: {t: np.stack([outcomes[name][s][t] for s in seeds]) for t in runs[0].scored_tasks}
            for name in (a, b)
        }
        try:
            out[(a, b)] = paired_bootstrap(stack[a], stack[b])
        except ValueError as e:  # another eval set (size) in one of them: not paired
            notes.append(f"{a} vs {b}: {e}")
    return out, notes


BOOT_HEADER = [
    "strategy", "vs", "seeds", "difference", "95% bootstrap (prompts and seeds)",
    "95% variance split (t)", "SD, prompts resampled alone", "SD, seeds resampled alone",
    "variance: seed / prompt / outcome", "outcome share of paired variance",
]  # fmt: skip


def boot_rows(boots: dict[tuple[str, str], Bootstrap]) -> list[list[str]]:
    """One row per contrast (points). Variance shares use the moment estimates clipped at 0 (a
    negative one is chance, or outcomes that are not independent across prompts)."""
    rows = []
    for (a, b), bs in boots.items():
        seed, prompt, outcome = (max(v, 0.0) for v in (bs.split.seed, bs.split.prompt,
                                                      bs.split.outcome))  # fmt: skip
        total = seed + prompt + outcome
        shares = (
            " / ".join(f"{100 * v / total:.0f}%" for v in (seed, prompt, outcome))
            if total > 0
            else "-"
        )
        within = seed + outcome
        rows.append([
            a, b, str(bs.seeds), _pts(bs.estimate), _fmt(bs.estimate, bs.low, bs.high),
            _fmt(bs.estimate, *bs.split.interval(bs.estimate)), _pts(bs.sd_prompts),
            _pts(bs.sd_seeds), shares, f"{100 * outcome / within:.0f}%" if within > 0 else "-",
        ])  # fmt: skip
    return rows


# --- the text ----------------------------------------------------------------------------------


@dataclass
class Section:
    """A heading, paragraphs and an optional table: written to compare.md and to the report."""

    heading: str
    paragraphs: list[str]
    header: list[str] | None = None
    rows: list[list[str]] | None = None


def methods(fams: list[Family], baseline: str, refs: list[str]) -> str:
    """The methods paragraph of the differences."""
    against = f"`{baseline}`"
    if "static" in refs:
        against += " and the tuned `static`"
    gram = ", and each Gram method against `equal_task`" if EQUAL_TASK in refs else ""
    return (
        "Differences are paired: the same seeds, the same held-out prompts. Per endpoint, a "
        "strategy x seed model y = mu + strategy + seed + e (seeds as blocks, least squares, "
        "residual variance pooled over all strategies) gives one family of contrasts: every "
        f"strategy against {against}{gram} ({len(fams[0].contrasts)} contrasts). Intervals are "
        "simultaneous 95% (single-step Dunnett: the critical value of the multivariate t with the "
        "contrasts' correlation), so the chance that any interval of a family misses its true "
        "difference is at most 5%; p (Dunnett) is adjusted likewise, p (Holm) is Holm's "
        "step-down on the unadjusted p (a cross-check). Final mean accuracy is the primary "
        "endpoint; final worst-task accuracy is secondary and its own family (nothing is "
        "adjusted across the two). MDE: the true difference whose simultaneous interval excludes "
        "0 with 80% probability, (c + t(0.8, df)) x SE. Verdict: better or worse when the "
        "interval excludes 0, otherwise undetermined (within MDE). Paired SD: the SD over seeds "
        "of the per-seed difference. The held-out prompts are fixed, so these intervals are "
        "about accuracy on those prompts; the last table adds prompt sampling."
    )


def sections(
    scores: list[RunScore],
    fams: list[Family],
    boots: dict[tuple[str, str], Bootstrap],
    notes: list[str],
    baseline: str,
    target: float,
    imbalances: dict[str, str] | None = None,
) -> list[Section]:
    """The comparison as text: per strategy, the two families, prompts and seeds."""
    header, rows = summary_rows(scores, target, imbalances)
    refs = references([s.strategy for s in scores], baseline)
    out = [
        Section(
            "Strategies",
            ["Mean over seeds with a 95% t-interval over that strategy's seeds (points)."],
            header,
            rows,
        ),
        Section("Differences", [methods(fams, baseline, refs)]),
    ]
    for fam in fams:
        out.append(Section(f"Differences: {fam.endpoint}", [fam.describe()], FAMILY_HEADER,
                           family_rows(fam)))  # fmt: skip
    boot_text = (
        "Final mean accuracy, per contrast (no multiplicity adjustment, no verdicts): the paired "
        "bootstrap resamples seeds and, per task, held-out prompts (the same for both "
        "strategies), 2000 replicates; margins: prompts or seeds resampled alone. It counts the "
        "per-prompt outcome noise in both margins (conservative when that noise dominates, too "
        "narrow with 3 seeds when seed shifts dominate); the variance split (unbiased moments: "
        "systematic seed shifts / which prompts were held out / per-prompt outcomes flipping "
        "between seeds) gives the t-interval on seeds - 1 df that kept its coverage in "
        "simulation. Evaluation noise = prompt + outcome; outcome share of paired variance: "
        "how much of the paired variance a larger held-out set would remove. Negative moment "
        "estimates (chance) count as 0 in the shares."
    )
    rows = boot_rows(boots)
    out.append(Section("Held-out prompts and seeds", [boot_text, *notes],
                       BOOT_HEADER if rows else None, rows or None))  # fmt: skip
    return out


def markdown(title: str, intro: str, secs: list[Section]) -> str:
    lines = [f"# {title}", "", intro, ""]
    for sec in secs:
        lines += [f"## {sec.heading}", ""]
        for para in sec.paragraphs:
            lines += [para, ""]
        if sec.header and sec.rows:
            lines.append("| " + " | ".join(sec.header) + " |")
            lines.append("|" + "---|" * len(sec.header))
            lines += ["| " + " | ".join(r) + " |" for r in sec.rows]
            lines.append("")
    return "\n".join(lines)


def comparison_table(scores: list[RunScore], baseline: str, target: float) -> str:
    """The comparison as markdown (without per-prompt outcomes: no bootstrap section)."""
    secs = sections(scores, families(scores, baseline), {}, [], baseline, target)
    return markdown("comparison", "", secs)


# --- the command -------------------------------------------------------------------------------


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
    tune_seeds: int = TUNE_SEEDS,
    diagnostics: bool = False,
    gap: bool = False,
) -> Path:
    """Train (or reuse) strategies x seeds, then write compare.md and report.html / report.md.

    With ``static`` among the strategies and no ``static_weights``, the static sweep is trained
    first (``tune_static``) and its best weights are compared. ``diagnostics``: also write the
    full per-configuration report of ``taskgrad report`` into ``<out>/diagnostics``. ``gap``:
    also train each task alone (interference.py) and state the aims as fractions of the gap.
    """
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
    fams = families(scores, baseline)
    boots, notes = bootstraps(runs, contrast_pairs(list(dict.fromkeys(strategies)), baseline))
    intro = (
        f"Strategies {', '.join(strategies)} on preset {preset}, {seeds} seed(s) each, at matched "
        f"compute: {describe_budget(runs[0])}. Held-out accuracy in points; differences paired by "
        "seed and held-out prompt, with multiplicity control per endpoint (see Differences)."
    )
    if static_weights is not None and "static" in strategies:
        w = ", ".join(f"{x:g}" for x in static_weights)
        intro += f" `static` weights: [{w}]" + (
            " (tuned, see tune_static.md)." if tuned else " (given)."
        )
    if gap:
        intro += " " + gap_sentence(out, preset, seeds, overrides, runs, baseline, jobs)
    secs = sections(scores, fams, boots, notes, baseline, target, strategy_imbalance(runs))
    out.mkdir(parents=True, exist_ok=True)
    title = f"taskgrad compare on preset {preset}"
    (out / "compare.md").write_text(markdown(title, intro, secs))
    write_report(out, title, intro, runs, secs, fams, baseline, tuned)
    if diagnostics:
        from taskgrad.analysis.report import build_report

        build_report(paths, out / "diagnostics", title=f"{title}: per-configuration diagnostics")
    return out


def gap_sentence(
    out: Path, preset: str, seeds: int, overrides, runs: list[Run], baseline: str, jobs: int
) -> str:
    """Train the single-task runs, write gap.md, and say what the aims are relative to it."""
    from taskgrad.analysis import interference as I

    model = I.initial_model(preset, overrides)
    paths = run_all(I.single_task_plan(preset, seeds, overrides, model), out / "single", jobs)
    multis = [r for r in runs if r.config["balance"]["strategy"] == "uniform"]
    found = I.gaps([load_run(p) for p in paths], multis)
    out.mkdir(parents=True, exist_ok=True)
    I.write_gap(out, found)
    return gap_text(*I.room(found))


def gap_text(mean_room: float, worst_room: float) -> str:
    """The intro's sentence on the stage 0 room (shares, not points)."""
    from taskgrad.analysis.compare_report import AIM_MEAN, AIM_WORST

    aims = f"the aims (+{100 * AIM_MEAN:g} mean, +{100 * AIM_WORST:g} worst-task points)"
    if mean_room <= 0 and worst_room <= 0:
        return (
            "Stage 0 (gap.md): no task ends higher trained alone than in the uniform mix, so "
            f"there is no interference gap for a reweighting to close; {aims} are absolute only."
        )

    def times(aim: float, room: float) -> str:
        return f"{aim / room:.1f}x that room" if room > 0 else "beyond a room of 0"

    return (
        f"Stage 0 (gap.md): trained alone, the tasks gain {100 * mean_room:.1f} points more on "
        f"average than in the uniform mix, the worst task {100 * worst_room:.1f}; {aims} are "
        f"{times(AIM_MEAN, mean_room)} and {times(AIM_WORST, worst_room)}."
    )


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
    secs: list[Section],
    fams: list[Family],
    baseline: str,
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
    for i, sec in enumerate(secs):
        doc.heading(sec.heading)
        for para in sec.paragraphs:
            doc.para(para)
        if sec.header and sec.rows:
            doc.table(sec.header, sec.rows)
        if i == 0:
            doc.para(SUMMARY_NOTE, note=True)
    if tuned and (out / "tune_static.md").exists():
        doc.heading("The tuned static baseline")
        lines = (out / "tune_static.md").read_text().splitlines()
        table = [ln for ln in lines if ln.startswith("|")]
        for para in (ln for ln in lines[1:] if ln and not ln.startswith("|")):
            doc.para(para)
        doc.table(
            [c.strip() for c in table[0].strip("|").split("|")],
            [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]],
        )
    doc.heading("Accuracy over training")
    doc.figure(C.fig_curves(by, baseline))
    doc.figure(C.fig_tasks(by, baseline))
    for ref in references(list(by), baseline):
        doc.figure(C.fig_forest(fams, ref))
    task_rows = []
    for name, rs in by.items():
        finals = [r.heldout().iloc[-1] for r in rs]
        for task in rs[0].scored_tasks:
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


SUMMARY_NOTE = (
    "Final: at the last evaluation. Worst task: the strategy's task with the lowest mean final "
    "accuracy over seeds (named). AUC: trapezoid area under the mean-accuracy curve over the "
    "evaluated steps, divided by their span. Imbalance: median over steps of the largest / "
    "smallest unbiased squared task-gradient norm (raw gradients, before the strategy's "
    "weights); geometric mean over seeds with the t-interval of the logs. Tokens / step: "
    "completion tokens generated per training step (the budget is matched; what is generated "
    "depends on which tasks are sampled and how long the policy answers). Train min: sum of "
    "step times (evaluation and probes excluded)."
)
