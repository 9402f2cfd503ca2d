r"""The interference gap: how much each task loses by being trained with the others.

Stage 0 of a comparison. Each task is trained alone with the same prompts per step (its own
``rollout.prompts_per_task``), group size, token limit, steps and seeds as in the multi-task
runs, and from the same initial model (the multi-task tiny model's path is pinned, so the warm
start is the same). Per task k and seed i, paired with the multi-task ``uniform`` run of that
seed on the same held-out prompts:

    gap_k = mean_i [ acc_k(single, i) - acc_k(multi uniform, i) ]      (final held-out accuracy)

with a t-interval over seeds. The gap is the room a reweighting has: a strategy cannot make a task
learn more than it learns alone (at the same per-task budget) except through transfer, so the
comparison's aims are stated as fractions of it as well as in points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from taskgrad.analysis.reproduce import Planned
from taskgrad.analysis.runs import Run
from taskgrad.stats import mean_ci


def single_task_plan(
    preset: str, seeds: int, overrides: list[str] | None, model: str | None
) -> list[Planned]:
    """One run per scored task and seed: the task alone, everything else as in the mix."""
    from taskgrad.config import load_config, to_dict

    cfg = load_config(preset, overrides)
    runs = []
    for spec in to_dict(cfg)["tasks"]:
        if not spec.get("scored", True):
            continue
        task = "tasks=" + yaml.safe_dump([spec], default_flow_style=True, width=10**6).strip()
        for s in range(seeds):
            name = f"single-{spec['name']}-s{s}"
            extra = [task, "balance.strategy=uniform", f"seed={s}", f"run_name={name}"]
            extra += [f"model={model}"] if model else []
            runs.append(Planned(name, preset, [*(overrides or []), *extra]))
    return runs


def initial_model(preset: str, overrides: list[str] | None) -> str | None:
    """The multi-task runs' tiny model directory (built now if needed), to pin it for the
    single-task runs; None when the config names a real model (the same for every run)."""
    from taskgrad.config import load_config
    from taskgrad.policy import TINY, resolve_model_path
    from taskgrad.tasks import build_tasks

    cfg = load_config(preset, overrides)
    if cfg.model.name_or_path != TINY:
        return None
    tasks = build_tasks(cfg.tasks, eval_size=cfg.eval.size, seed=cfg.seed)
    return resolve_model_path(cfg.model, cfg.tasks, tasks)


@dataclass
class Gap:
    task: str
    single: float  # mean final accuracy alone
    multi: float  # mean final accuracy in the uniform mix
    gap: float  # mean paired difference
    lo: float
    hi: float
    seeds: int


def final_task_accuracy(run: Run, task: str) -> float:
    held = run.heldout()
    return float(held[task].iloc[-1]) if task in held and len(held) else math.nan


def gaps(singles: list[Run], multis: list[Run]) -> list[Gap]:
    """Per scored task, the paired gap over the seeds both sides have."""
    multi = {r.seed: r for r in multis}
    out = []
    for task in multis[0].scored_tasks if multis else []:
        pairs = [(final_task_accuracy(r, task), final_task_accuracy(multi[r.seed], task))
                 for r in singles if r.tasks == [task] and r.seed in multi]  # fmt: skip
        if not pairs:
            continue
        a, b = np.array(pairs).T
        m, lo, hi = mean_ci(a - b)
        out.append(Gap(task, float(np.mean(a)), float(np.mean(b)), m, lo, hi, len(pairs)))
    return out


def room(found: list[Gap]) -> tuple[float, float]:
    """The room on the comparison's endpoints: the mean over tasks of the (positive part of
    the) gap, and the gap of the task that is worst in the mix."""
    if not found:
        return math.nan, math.nan
    mean_room = float(np.mean([max(g.gap, 0.0) for g in found]))
    worst = min(found, key=lambda g: g.multi)
    return mean_room, max(worst.gap, 0.0)


def gap_markdown(found: list[Gap]) -> str:
    lines = [
        "| task | alone | in the uniform mix | gap (alone - mix) [95% CI] | seeds |",
        "|---|---|---|---|---|",
    ]
    for g in found:
        ci = f"[{100 * g.lo:+.1f}, {100 * g.hi:+.1f}]" if math.isfinite(g.lo) else ""
        lines.append(
            f"| {g.task} | {100 * g.single:.1f} | {100 * g.multi:.1f} | "
            f"{100 * g.gap:+.1f} {ci} | {g.seeds} |"
        )
    mean_room, worst_room = room(found)
    lines.append("")
    lines.append(
        f"Room for a reweighting: mean over tasks of the positive gaps {100 * mean_room:.1f} "
        f"points; the gap of the task worst in the mix {100 * worst_room:.1f} points."
    )
    return "\n".join(lines) + "\n"


def write_gap(out: Path, found: list[Gap]) -> Path:
    path = out / "gap.md"
    path.write_text("# Interference gap (stage 0)\n\n" + (__doc__ or "").split("\n\n")[1] + "\n\n"
                    + gap_markdown(found))  # fmt: skip
    return path
